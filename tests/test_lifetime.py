"""How long k4sinit and its services live: signals, a killed daemon, escapees, a crash.

- Every signal whose default would kill ``k4sinit run`` stops it in order instead.
- A ``run`` killed by SIGKILL leaves its services running; a second ``run`` at
  the same socket refuses to start them twice, naming them.
- Without cgroups, processes that left their service's process group (setsid)
  die with a stop of the service and with the daemon.
- ``k4sinit dev`` killed or hung up leaves no container and no cgroup behind.
- A crash inside the daemon stops the services with the reaper still reaping.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import structlog
import trio
import trio.testing
from structlog.testing import capture_logs

from k4sinit.config import load_config_text
from k4sinit.core.netspec import NetworkSpec
from k4sinit.daemon import Daemon, describe_survivors, survivors
from k4sinit.network import Network
from k4sinit.pid1.container import host_cgroup2_mount
from k4sinit.supervision.cgroups import own_cgroup
from k4sinit.supervision.reaper import PR_SET_CHILD_SUBREAPER

from .conftest import DaemonProcess, child_cmd, pid_alive, services_config, wait_until


def kill_pids(pids: list[int]) -> None:
    """SIGKILL what a test left running (by pid, verified alive first)."""
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(pid).kill()


def read_pids(path: Path) -> list[int]:
    with contextlib.suppress(FileNotFoundError):
        return [int(p) for p in path.read_text().split()]
    return []


# --- signals to k4sinit run ---------------------------------------------------------------

STOPPING_SIGNALS = ["SIGUSR1", "SIGUSR2", "SIGQUIT", "SIGALRM", "SIGTERM", "SIGINT"]


@pytest.mark.parametrize("name", STOPPING_SIGNALS)
def test_each_signal_stops_run_in_order_and_removes_the_socket(
    start_daemon: Any, tmp_path: Path, name: str
) -> None:
    pid_file = tmp_path / "a.pid"
    grandchild = tmp_path / "grandchild.pid"
    daemon = start_daemon(
        services_config(
            {
                "a": {"command": child_cmd("--pid-file", str(pid_file))},
                "b": {
                    "command": child_cmd("--grandchild", str(grandchild)),
                    "dependsOn": {"a": "Started"},
                },
            }
        )
    )
    pids: list[int] = []
    try:
        daemon.wait_for(lambda s: all(x["state"] == "running" for x in s.values()))
        wait_until(grandchild.exists, what="the grandchild's pid file")
        pids += [
            *read_pids(pid_file),
            *read_pids(grandchild),
            *(s["pid"] for s in daemon.status().values()),
        ]
        daemon.proc.send_signal(getattr(signal, name))
        assert daemon.proc.wait(timeout=60) == 0, daemon.log_text()
        events = daemon.log_events()
        assert any(
            e.get("event") == "shutdown requested" and e.get("reason") == name for e in events
        ), daemon.log_text()
        stopped = [e["service"] for e in events if e.get("state") == "stopped"]
        assert stopped == ["b", "a"]  # reverse dependency order
        assert not [p for p in pids if pid_alive(p)]
        assert not daemon.socket.exists()
    finally:
        kill_pids(pids or read_pids(grandchild))  # what a daemon killed by the signal left


def test_a_second_run_refuses_while_services_of_a_killed_one_survive(
    start_daemon: Any, tmp_path: Path
) -> None:
    pid_files = {name: tmp_path / f"{name}.pid" for name in ("a", "b")}
    text = services_config(
        {name: {"command": child_cmd("--pid-file", str(path))} for name, path in pid_files.items()}
    )
    first = start_daemon(text, name="node")
    survivors: list[int] = []
    try:
        first.wait_for(lambda s: all(x["state"] == "running" for x in s.values()))
        survivors = [pid for path in pid_files.values() for pid in read_pids(path)]
        assert len(survivors) == 2
        first.proc.kill()
        first.proc.wait(timeout=30)
        assert all(pid_alive(p) for p in survivors)  # what SIGKILL leaves: orphans
        for path in pid_files.values():
            path.unlink()

        second = DaemonProcess(first.config, first.socket, tmp_path / "second.log")
        try:
            code = second.proc.wait(timeout=60)
        finally:
            second.stop()
        log = second.log_text()
        assert code == 1, log
        refusal = next(
            e for e in second.log_events() if e.get("event", "").startswith("cannot start")
        )
        message = refusal["event"]
        assert str(first.socket) in message
        for name, pid in zip(pid_files, survivors, strict=True):
            assert f"{name} (pid {pid})" in message
        # No duplicates: nothing was started, the survivors are untouched.
        assert not any(path.exists() for path in pid_files.values())
        assert all(pid_alive(p) for p in survivors)
    finally:
        kill_pids(survivors)


def test_survivors_are_found_in_the_cgroups_of_an_earlier_run(tmp_path: Path) -> None:
    # A cgroup2 hierarchy as k4sinit leaves it when killed: the services' cgroups
    # still hold their processes (here: files, as cgroupfs shows them).
    mount = tmp_path / "cgroup"
    base = mount / own_cgroup().lstrip("/")
    base.mkdir(parents=True)
    (mount / "cgroup.controllers").write_text("")
    for name, procs in (("etcd", "4242\n4243\n"), ("kubelet", ""), ("api", "77\n")):
        (base / "services" / name).mkdir(parents=True)
        (base / "services" / name / "cgroup.procs").write_text(procs)
    socket = str(tmp_path / "k.sock")
    found = survivors(socket, mount=mount)
    assert found == {"api": [77], "etcd": [4242, 4243]}
    assert survivors(socket, cgroups=False, mount=mount) == {}
    message = describe_survivors(socket, found)
    assert f"earlier k4sinit at {socket} still run: api (pid 77), etcd (pids 4242, 4243)" in message
    assert message.endswith("(kill 77 4242 4243)")


# --- without cgroups: processes that leave the service's process group -------------------

ESCAPEES = 50

# Each escapee writes its own pid; half are setsid'd children of the service, half
# double-forked away (their parent exits, they re-parent to the subreaper).
ESCAPING = textwrap.dedent("""\
    for i in $(seq %(half)d); do
        setsid sh -c 'echo $$ >> "$0"; exec sleep 1000' "$1" &
        (setsid sh -c 'echo $$ >> "$0"; exec sleep 1000' "$1" &)
    done
    exec sleep 1000
""") % {"half": ESCAPEES // 2}


def run_without_cgroups(tmp_path: Path, text: str) -> DaemonProcess:
    config = tmp_path / "k4sinit.yaml"
    config.write_text(text)
    return DaemonProcess(
        config,
        tmp_path / "k4sinit.sock",
        tmp_path / "k4sinit.log",
        extra_args=("--no-cgroups",),
    )


@pytest.fixture
def escapees(tmp_path: Path) -> Iterator[Path]:
    """The file the escapees write their pids to; every pid in it is killed afterwards."""
    path = tmp_path / "escapees.pids"
    yield path
    kill_pids(read_pids(path))


def escaping_service(pids: Path) -> str:
    return services_config({"escaper": {"command": ["sh", "-c", ESCAPING, "escaper", str(pids)]}})


def all_escaped(daemon: DaemonProcess, pids: Path) -> list[int]:
    """The escapees' pids, once the daemon is up and every one has written its pid."""
    daemon.wait_socket()
    wait_until(lambda: len(read_pids(pids)) == ESCAPEES, what="50 escapees")
    return read_pids(pids)


def test_without_cgroups_a_stop_kills_the_escapees_of_the_service(
    tmp_path: Path, escapees: Path
) -> None:
    daemon = run_without_cgroups(tmp_path, escaping_service(escapees))
    try:
        pids = all_escaped(daemon, escapees)
        assert all(pid_alive(p) for p in pids)
        warning = [e for e in daemon.log_events() if e.get("event", "").startswith("no cgroups")]
        assert warning and "best effort" in warning[0]["event"], daemon.log_text()
        out = daemon.cli("stop", "escaper")
        assert out.returncode == 0, out.stderr
        wait_until(
            lambda: not [p for p in pids if pid_alive(p)], timeout=30, what="escapees to die"
        )
    finally:
        daemon.stop()


def test_without_cgroups_a_stop_kills_the_escapees_beside_a_running_service(
    tmp_path: Path, escapees: Path
) -> None:
    """The search skips the other services' process trees (escapees.descendants):
    the escapees, re-parented to k4sinit, are still found; the bystander lives on."""
    config = services_config(
        {
            "bystander": {"command": ["sleep", "1000"]},
            "escaper": {"command": ["sh", "-c", ESCAPING, "escaper", str(escapees)]},
        }
    )
    daemon = run_without_cgroups(tmp_path, config)
    try:
        pids = all_escaped(daemon, escapees)
        assert daemon.cli("stop", "escaper").returncode == 0
        wait_until(
            lambda: not [p for p in pids if pid_alive(p)], timeout=30, what="escapees to die"
        )
        bystander = daemon.status()["bystander"]
        assert bystander["state"] == "running" and pid_alive(bystander["pid"])
    finally:
        daemon.stop()


def test_without_cgroups_the_daemons_exit_kills_every_escapee(
    tmp_path: Path, escapees: Path
) -> None:
    daemon = run_without_cgroups(tmp_path, escaping_service(escapees))
    try:
        pids = all_escaped(daemon, escapees)
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(timeout=60) == 0, daemon.log_text()
        assert not [p for p in pids if pid_alive(p)]
    finally:
        daemon.stop()


def test_without_cgroups_escapees_that_clear_their_environment_die_with_the_daemon(
    tmp_path: Path, escapees: Path
) -> None:
    # `env -i` drops the tag that names the service: the stop of the service
    # cannot know them (best effort, as the start-up warning says), but they are
    # still below k4sinit, the subreaper, and die when it exits.
    untagged = ESCAPING.replace("setsid sh -c", "env -i setsid sh -c")
    text = services_config(
        {"escaper": {"command": ["sh", "-c", untagged, "escaper", str(escapees)]}}
    )
    daemon = run_without_cgroups(tmp_path, text)
    try:
        pids = all_escaped(daemon, escapees)
        out = daemon.cli("stop", "escaper")
        assert out.returncode == 0, out.stderr
        assert all(pid_alive(p) for p in pids)
        daemon.proc.send_signal(signal.SIGTERM)
        assert daemon.proc.wait(timeout=60) == 0, daemon.log_text()
        assert not [p for p in pids if pid_alive(p)]
        assert any(
            e.get("event") == "killing processes left below k4sinit" for e in daemon.log_events()
        )
    finally:
        daemon.stop()


# --- k4sinit dev: the container ends with it ------------------------------------------------

needs_container = pytest.mark.skipif(
    os.geteuid() != 0 or host_cgroup2_mount() is None,
    reason="a container needs root and a cgroup2 hierarchy on the host",
)

CONTAINER = services_config({"sleeper": {"command": ["sleep", "1000"]}})


def container_pids(cgroup: Path) -> list[int]:
    """Every process in the container's host cgroup tree (none once it is gone)."""
    pids = []
    with contextlib.suppress(OSError):  # removed while we look
        for procs in cgroup.rglob("cgroup.procs"):
            pids += [int(p) for p in procs.read_text().split()]
    return pids


@needs_container
@pytest.mark.parametrize("name", ["SIGHUP", "SIGKILL"])
def test_dev_killed_or_hung_up_leaves_no_container_and_no_cgroup(boot: Any, name: str) -> None:
    node = boot(CONTAINER)
    try:
        node.wait_ready()
        pids = container_pids(node.cgroup)
        assert node.init_pid in pids and len(pids) >= 3  # unshare, init, the service
        node.proc.send_signal(getattr(signal, name))
        node.proc.wait(timeout=60)
        wait_until(
            lambda: not [p for p in pids if pid_alive(p)], timeout=60, what="the container to end"
        )
        wait_until(lambda: not node.cgroup.exists(), timeout=30, what="the cgroup to be removed")
        if name == "SIGHUP":  # an orderly stop of the container, not a kill
            events = node.events()
            assert any(e.get("event") == "shutdown requested" for e in events), node.log_text()
    finally:
        # What a failure left: the fixture's SIGTERM to a dead `dev` would not reach it.
        with contextlib.suppress(OSError):
            (node.cgroup / "cgroup.kill").write_text("1")
        wait_until(
            lambda: not container_pids(node.cgroup),
            what="the container's cgroup to empty",
        )


# --- a crash inside the daemon ------------------------------------------------------------


class CrashingNetwork(Network):
    """The built-in network condition, which raises once told to (a bug in a daemon task)."""

    def __init__(self) -> None:
        super().__init__(NetworkSpec(), structlog.get_logger(), resolv_conf=None, hosts=None)
        self.crash = trio.Event()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        await self.crash.wait()
        raise RuntimeError("a bug in a daemon task")


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.2)


@pytest.fixture
def not_a_subreaper() -> Iterator[None]:
    """Daemon.run makes this (the test) process a child subreaper: undo it afterwards."""
    yield
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


async def test_a_crash_stops_the_services_while_the_reaper_still_reaps(
    tmp_path: Path, clock: trio.testing.MockClock, not_a_subreaper: None
) -> None:
    config = load_config_text(
        services_config({"a": {"command": child_cmd(), "terminationGracePeriodSeconds": 30}}),
        "test.yaml",
    )
    network = CrashingNetwork()
    with capture_logs() as logs:
        daemon = Daemon(config, str(tmp_path / "k.sock"), structlog.get_logger(), network=network)
        runner = daemon.supervisor["a"]
        pid = None
        with pytest.raises(BaseException) as crash:
            async with trio.open_nursery() as nursery:
                await nursery.start(daemon.run)
                with trio.fail_after(60):
                    while runner.pid is None or runner.state.value != "running":
                        await runner.changed()
                pid = runner.pid
                start = trio.current_time()
                network.crash.set()
        assert "a bug in a daemon task" in repr(crash.value)
    assert pid is not None and not pid_alive(pid)
    assert not [e for e in logs if e["event"] == "process will not die"], logs
    assert runner.last_exit is not None and runner.last_exit.signal == signal.SIGTERM
    assert trio.current_time() - start < 30  # it died of its stop signal, no wait at all
