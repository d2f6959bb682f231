"""cgroup2: kill-all, removal, limits and stats, on a real hierarchy and on fake directories.

The real tests use a cgroup2 hierarchy where a test may make its own cgroup
(this host's /sys/fs/cgroup/unified, or /sys/fs/cgroup on a pure cgroup2
host); each test's cgroup is killed and removed afterwards, even on failure.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

from k4sinit.core.spec import Resources
from k4sinit.supervision import process
from k4sinit.supervision.cgroups import (
    Cgroup,
    CgroupTree,
    CgroupUnavailable,
    ServiceCgroup,
    Stats,
    own_cgroup,
)
from k4sinit.supervision.reaper import Reaper
from tests.conftest import pid_alive, wait_until


def writable_cgroup2() -> tuple[Path, Path] | None:
    """(mount, our own cgroup in it) of a cgroup2 hierarchy we may write to."""
    if os.geteuid() != 0:
        return None
    try:
        ours = own_cgroup()
    except CgroupUnavailable:
        return None
    for mount in (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup")):
        if (mount / "cgroup.controllers").exists():
            base = mount / ours.lstrip("/")
            if os.access(base, os.W_OK):
                return mount, base
    return None


FOUND = writable_cgroup2()
MOUNT, HIERARCHY = FOUND if FOUND else (None, None)
needs_cgroup2 = pytest.mark.skipif(
    FOUND is None, reason="needs root and a writable cgroup2 hierarchy"
)


def _kill_and_remove(path: Path) -> None:
    """Tear a test cgroup down whatever state the test left it in."""
    if not path.exists():
        return
    with contextlib.suppress(OSError):
        (path / "cgroup.kill").write_text("1")
    deadline = time.monotonic() + 10
    while "populated 1" in (path / "cgroup.events").read_text():
        for root, _, _ in os.walk(path):
            for pid in (Path(root) / "cgroup.procs").read_text().split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        if time.monotonic() > deadline:
            raise AssertionError(f"test cgroup {path} did not empty")
        time.sleep(0.01)
    for root, _, _ in sorted(os.walk(path), key=lambda entry: -len(entry[0])):
        Path(root).rmdir()


@pytest.fixture
def cgroup_dir() -> Iterator[Path]:
    """A fresh, uniquely named cgroup; killed and removed after the test."""
    assert HIERARCHY is not None
    path = HIERARCHY / f"k4sinit-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    try:
        yield path
    finally:
        _kill_and_remove(path)


Spawn = Callable[[Path], int]


@pytest.fixture
def sleeper() -> Iterator[Spawn]:
    """``sleeper(cgroup) -> pid``: a ``sleep 1000`` placed in the cgroup before it runs."""
    children: list[subprocess.Popen[bytes]] = []

    def spawn(cgroup: Path) -> int:
        child = subprocess.Popen(
            ["sh", "-c", f'echo 0 > "{cgroup}/cgroup.procs" && exec sleep 1000'],
            stdin=subprocess.DEVNULL,
        )
        children.append(child)
        wait_until(lambda: child.pid in pids_of(cgroup), timeout=10, what="sleeper in cgroup")
        return child.pid

    yield spawn
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            child.kill()
        child.wait(timeout=10)


def double_forked_sleeper(cgroup: Path) -> int:
    """A ``sleep 1000`` whose parent has exited (an orphan, as daemons make); its pid."""
    before = set(pids_of(cgroup))
    subprocess.run(
        ["sh", "-c", f'echo 0 > "{cgroup}/cgroup.procs" && {{ sleep 1000 & }}'],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        check=True,
        timeout=10,
    )
    # The sh has exited; what it left in the cgroup is the orphan.
    (orphan,) = wait_until(lambda: set(pids_of(cgroup)) - before, timeout=10, what="orphan")
    return orphan


def gone(pid: int) -> Callable[[], bool]:
    """A condition for :func:`wait_until`: ``pid`` has exited and been reaped."""
    return lambda: not pid_alive(pid)


def pids_of(cgroup: Path) -> list[int]:
    return [int(pid) for pid in (cgroup / "cgroup.procs").read_text().split()]


# --- a real cgroup2 hierarchy -------------------------------------------------------


@needs_cgroup2
async def test_kill_and_wait_empties_the_cgroup_double_forked_and_nested_too(
    cgroup_dir: Path, sleeper: Spawn
) -> None:
    nested = cgroup_dir / "nested"
    nested.mkdir()
    direct = sleeper(cgroup_dir)
    orphan = double_forked_sleeper(cgroup_dir)
    deep = sleeper(nested)
    cgroup = Cgroup(cgroup_dir)
    assert cgroup.populated()
    assert sorted(cgroup.pids()) == sorted([direct, orphan])
    with trio.fail_after(30):
        assert await cgroup.kill_and_wait(within=20) is True
    assert not cgroup.populated()
    assert cgroup.pids() == []
    assert Cgroup(nested).pids() == []
    for pid in (direct, orphan, deep):
        wait_until(gone(pid), timeout=10, what=f"pid {pid} gone")


@needs_cgroup2
async def test_a_node_stop_kills_every_cgroup_but_k4sinits_own(
    cgroup_dir: Path, sleeper: Spawn
) -> None:
    tree = CgroupTree(cgroup_dir)
    for group in ("init", "services/containerd", "shims", "kubepods/besteffort/pod1"):
        (cgroup_dir / group).mkdir(parents=True)
    ours = sleeper(cgroup_dir / "init")  # k4sinit itself lives here: it must survive
    service = sleeper(cgroup_dir / "services/containerd")
    shim = sleeper(cgroup_dir / "shims")
    pod = sleeper(cgroup_dir / "kubepods/besteffort/pod1")  # made by kubelet, not by us
    said: list[str] = []
    with trio.fail_after(30):
        assert await tree.kill_everything(within=20, say=said.append) is True
    for pid in (service, shim, pod):
        wait_until(gone(pid), timeout=10, what=f"pid {pid} gone")
    assert pid_alive(ours) and pids_of(cgroup_dir / "init") == [ours]
    assert said == [
        f"killing 1 process(es) left in {cgroup_dir}/services",
        f"killing 1 process(es) left in {cgroup_dir}/shims",
        f"killing 1 process(es) left in {cgroup_dir}/kubepods",
    ]


@needs_cgroup2
def test_kill_then_populated_turns_false(cgroup_dir: Path, sleeper: Spawn) -> None:
    pid = sleeper(cgroup_dir)
    cgroup = Cgroup(cgroup_dir)
    assert cgroup.populated()
    cgroup.kill()
    wait_until(lambda: not cgroup.populated(), timeout=10, what="cgroup empty")
    wait_until(lambda: not pid_alive(pid), timeout=10, what="sleeper gone")


@needs_cgroup2
async def test_kill_and_wait_on_an_empty_cgroup_is_true_at_once(cgroup_dir: Path) -> None:
    with trio.fail_after(10):
        assert await Cgroup(cgroup_dir).kill_and_wait(within=5) is True


@needs_cgroup2
def test_remove_removes_the_tree(cgroup_dir: Path) -> None:
    for sub in ("a", "a/b", "a/b/c", "d"):
        (cgroup_dir / sub).mkdir()
    Cgroup(cgroup_dir).remove()
    assert not cgroup_dir.exists()


@needs_cgroup2
def test_remove_keeps_busy_cgroups_quietly(cgroup_dir: Path, sleeper: Spawn) -> None:
    for sub in ("busy", "idle", "idle/x"):
        (cgroup_dir / sub).mkdir()
    sleeper(cgroup_dir / "busy")
    Cgroup(cgroup_dir).remove()
    assert (cgroup_dir / "busy").is_dir()
    assert not (cgroup_dir / "idle").exists()


@needs_cgroup2
def test_apply_without_controllers_warns_limits_not_enforced(cgroup_dir: Path) -> None:
    # A fresh cgroup delegates nothing, so its child has no controller at all.
    service = ServiceCgroup(cgroup_dir / "svc")
    warnings = service.apply(
        Resources(memory=64 * 1024 * 1024, cpu_millis=500, pids=10, cpu_weight=1000)
    )
    assert (cgroup_dir / "svc").is_dir()
    assert service.controllers() == set()
    assert warnings == [
        "memory limit not enforced: no memory controller here",
        "cpu limit not enforced: no cpu controller here",
        "pids limit not enforced: no pids controller here",
        "cpu weight not enforced: no cpu controller here",
    ]
    assert ServiceCgroup(cgroup_dir / "other").apply(Resources()) == []
    assert (cgroup_dir / "other").is_dir()


@needs_cgroup2
def test_stats_of_a_real_cgroup_without_controllers(cgroup_dir: Path, sleeper: Spawn) -> None:
    if (cgroup_dir / "memory.current").exists() or (cgroup_dir / "pids.current").exists():
        pytest.skip(
            "this host's cgroup has the memory or pids controller; the test is of one without"
        )
    sleeper(cgroup_dir)
    sleeper(cgroup_dir)
    stats = ServiceCgroup(cgroup_dir).stats()
    assert stats.pids == 2
    assert stats.memory_bytes is None
    assert stats.memory_peak_bytes is None
    assert stats.oom_kills is None
    assert stats.cpu_seconds is None or stats.cpu_seconds >= 0  # cpu.stat is a core file


@needs_cgroup2
def test_discover_finds_our_own_cgroup() -> None:
    assert MOUNT is not None and HIERARCHY is not None
    tree = CgroupTree.discover(mount=MOUNT)
    assert tree.base.path == HIERARCHY
    assert tree.services.path == HIERARCHY / "services"
    assert tree.init.path == HIERARCHY / "init"


# --- fake directories and files -------------------------------------------------------


def test_stats_and_oom_kills_parse_the_files(tmp_path: Path) -> None:
    (tmp_path / "memory.current").write_text("52428800\n")
    (tmp_path / "memory.peak").write_text("73400320\n")
    (tmp_path / "cpu.stat").write_text(
        "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\nnr_periods 0\n"
    )
    (tmp_path / "pids.current").write_text("3\n")
    (tmp_path / "cgroup.procs").write_text("10\n11\n")
    (tmp_path / "memory.events").write_text(
        "low 0\nhigh 0\nmax 12\noom 3\noom_kill 2\noom_group_kill 0\n"
    )
    service = ServiceCgroup(tmp_path)
    assert service.oom_kills() == 2
    stats = service.stats()
    assert stats == Stats(
        memory_bytes=52428800,
        memory_peak_bytes=73400320,
        cpu_seconds=2.5,
        pids=3,
        oom_kills=2,
    )
    assert stats.to_json() == {
        "memory_bytes": 52428800,
        "memory_peak_bytes": 73400320,
        "cpu_seconds": 2.5,
        "pids": 3,
        "oom_kills": 2,
    }


def test_stats_of_an_empty_directory_are_none(tmp_path: Path) -> None:
    service = ServiceCgroup(tmp_path)
    assert service.oom_kills() == 0
    assert service.stats() == Stats(
        memory_bytes=None, memory_peak_bytes=None, cpu_seconds=None, pids=0, oom_kills=None
    )


def test_stats_pids_fall_back_to_cgroup_procs(tmp_path: Path) -> None:
    (tmp_path / "cgroup.procs").write_text("10\n11\n12\n")
    (tmp_path / "memory.current").write_text("max\n")  # not a number: None
    stats = ServiceCgroup(tmp_path).stats()
    assert (stats.pids, stats.memory_bytes) == (3, None)


def test_populated_reads_cgroup_events(tmp_path: Path) -> None:
    cgroup = Cgroup(tmp_path)
    (tmp_path / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    assert cgroup.populated()
    (tmp_path / "cgroup.events").write_text("populated 0\nfrozen 0\n")
    assert not cgroup.populated()


def test_discover_without_cgroup2_raises(tmp_path: Path) -> None:
    with pytest.raises(CgroupUnavailable, match="no cgroup2 hierarchy mounted at"):
        CgroupTree.discover(mount=tmp_path)


def test_own_cgroup_parses_the_unified_line(tmp_path: Path) -> None:
    path = tmp_path / "cgroup"
    path.write_text("12:pids:/system.slice\n1:name=systemd:/init.scope\n0::/k4sinit/init\n")
    assert own_cgroup(str(path)) == "/k4sinit/init"
    path.write_text("0::/\n")
    assert own_cgroup(str(path)) == "/"


def test_own_cgroup_v1_only_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "cgroup"
    path.write_text("4:memory:/x\n3:cpuset:/\n1:name=systemd:/\n")
    with pytest.raises(CgroupUnavailable, match="cgroup v1 only"):
        own_cgroup(str(path))


def test_own_cgroup_unreadable_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(CgroupUnavailable, match="cannot read"):
        own_cgroup(str(tmp_path / "missing"))


@needs_cgroup2
async def test_a_multicall_binary_joins_its_cgroup_and_still_sees_its_role_name(
    cgroup_dir: Path, tmp_path: Path
) -> None:
    """u-root/k4s dispatches on argv[0]: the cgroup join must not lose it."""
    multicall = tmp_path / "k4s"
    multicall.write_text('#!/bin/sh\necho "role=$(basename "$0") args=$*"\ncat /proc/self/cgroup\n')
    multicall.chmod(0o755)
    reaper = Reaper()
    async with trio.open_nursery() as nursery:
        await nursery.start(reaper.run)
        spawned = process.spawn(
            reaper,
            ["kube-apiserver", "--secure-port=6443"],
            env={"PATH": "/usr/bin:/bin"},
            executable=str(multicall),
            cgroup_procs=str(cgroup_dir / "cgroup.procs"),
            dispatch_dir=str(tmp_path / "dispatch"),
        )
        with trio.fail_after(30):
            async with trio.lowlevel.FdStream(spawned.stdout) as out:
                text = b""
                while chunk := await out.receive_some():
                    text += chunk
            trio.lowlevel.FdStream(spawned.stderr).close()
            assert (await spawned.child.wait()).code == 0
        nursery.cancel_scope.cancel()
    lines = text.decode().splitlines()
    assert lines[0] == "role=kube-apiserver args=--secure-port=6443"
    assert any(line.endswith("/" + cgroup_dir.name) for line in lines if line.startswith("0::"))
    assert os.readlink(tmp_path / "dispatch" / "kube-apiserver") == str(multicall)
