"""A single-profile node in a container, with Debian's real containerd, runc, CNI plugins and etcd.

One ``k4sinit dev`` container runs the whole ``single`` profile (datastore
etcd) for every test of this module: etcd 3.4, containerd 1.6, runc 1.1 and
the CNI plugins come from Debian's packages (installed here when missing);
kube-apiserver, kube-scheduler, kube-controller-manager and kubelet are the
stand-ins of ``tests/standins`` (this machine cannot get the real ones), which
serve their real health endpoints with the node's generated PKI. Before the
boot, an image tarball made by ``rootfs/oci.py`` goes into the node's
``imagesDir``; a oneshot of the config runs it with ``ctr run`` through the
supervised containerd once the ``images`` role has imported it.

The container shares the host's filesystem, and containerd keeps its root and
state at the fixed paths of the containerd role (/var/lib/containerd,
/run/containerd). The fixture claims them (a marker file; it refuses paths
that are not its own, or a containerd already serving the socket), holds a
lock so two runs of this module never share them, and removes them after the
node has stopped and its cgroup (everything containerd, etcd and the shims
ran in) is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from k4sinit.cgroups import Cgroup
from k4sinit.devenv import cleanup, host_cgroup2_mount
from k4sinit.services import containerd
from rootfs import oci

from .conftest import Container, pid_alive, wait_until

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or host_cgroup2_mount() is None,
    reason="a container needs root and a cgroup2 hierarchy on the host",
)

REPO = Path(__file__).resolve().parent.parent
STANDINS = REPO / "tests" / "standins" / "bin"
PACKAGES = ("etcd-server", "containerd", "runc", "containernetworking-plugins")
BINARIES = ("/usr/bin/etcd", "/usr/bin/containerd", "/usr/bin/ctr", "/usr/sbin/runc")
CNI_BIN_DIR = "/usr/lib/cni"  # Debian's containernetworking-plugins
LOCK = Path("/run/lock/k4sinit-test-node.lock")
MARKER = ".k4sinit-test-node"  # in a host directory this module created (and will remove)
HOST_DIRS = (Path(containerd.ROOT), Path(containerd.STATE))
ROLES = (
    "etcd",
    "kube-apiserver",
    "kube-scheduler",
    "kube-controller-manager",
    "containerd",
    "images",
    "kubelet",
)

# ctr-run: ``ctr run`` through the supervised containerd once the images are in.
# --cpu-shares 0: ctr's default (1024) makes runc write cpu.weight, and this host's
# cgroup2 has no cpu controller (preflight's "cgroup controllers" check); 0 sets none.
CONFIG = """\
node:
  profile: single
  name: testnode
  datastore: etcd
  dataDir: {tmp}/data
  binPath: [{standins}, /usr/bin, /usr/sbin]
  imagesDir: {tmp}/images
  cniBinDir: {cni}
  cniConfDir: {tmp}/cni
  roles:  # the stand-ins' scratch files (PEM for ssl) stay in the test's dir, even SIGKILLed
    kube-apiserver: {{env: {{TMPDIR: {tmp}/scratch}}}}
    kube-scheduler: {{env: {{TMPDIR: {tmp}/scratch}}}}
    kube-controller-manager: {{env: {{TMPDIR: {tmp}/scratch}}}}
    kubelet: {{env: {{TMPDIR: {tmp}/scratch}}}}
boot: {{preflight: warn}}
services:
  ctr-run:
    command: [ctr, -n, k8s.io, run, --rm, --cpu-shares, "0", {image}, t1]
    dependsOn: {{images: Completed}}
    restartPolicy: Never
"""


def _installed(package: str) -> bool:
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, check=False
    )
    return "ok installed" in out.stdout


def _install_packages() -> None:
    """Debian's etcd, containerd, runc and CNI plugins (scripts/setup installs them too)."""
    missing = [p for p in PACKAGES if not _installed(p)]
    if not missing:
        return
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    output = ""
    for argv in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
    ):
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
        output += proc.stdout + proc.stderr
        if proc.returncode != 0:
            break
    still = [p for p in PACKAGES if not _installed(p)]
    if still:
        pytest.skip(f"cannot install {', '.join(still)} with apt-get: {output.strip()[-500:]}")


def _socket_accepts(path: str) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(1)
        try:
            s.connect(path)
        except OSError:
            return False
        return True


def _host_mounts_under(directory: Path) -> list[str]:
    prefix = f"{directory}/"
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        target = line.split()[4]
        if target == str(directory) or target.startswith(prefix):
            out.append(target)
    return out


def _remove_host_dir(directory: Path) -> None:
    """Remove a directory of ours; never across a mount point of the host's."""
    if not directory.exists():
        return
    mounts = _host_mounts_under(directory)
    assert not mounts, f"host mounts under {directory}, not removing it: {mounts}"
    shutil.rmtree(directory)


def _claim_host_dirs() -> None:
    """Make containerd's root and state ours (with a marker); left-overs of an earlier run go."""
    if _socket_accepts(containerd.SOCKET):
        pytest.skip(
            f"a containerd already serves {containerd.SOCKET} on this host; the node's "
            "containerd needs that path (stop the host's: systemctl stop containerd)"
        )
    for directory in HOST_DIRS:
        if directory.exists() and not (directory / MARKER).exists():
            pytest.skip(f"{directory} exists and is not this test's; not touching it")
        _remove_host_dir(directory)  # a crashed earlier run's
        directory.mkdir(mode=0o711, parents=True)
        (directory / MARKER).write_text("made by tests/test_node.py; removed after the test\n")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Container]:
    """The booted node (every role ready), shared by this module; stopped and cleaned up after."""
    _install_packages()
    missing = [b for b in BINARIES if not Path(b).exists()]
    if missing or not Path(CNI_BIN_DIR, "bridge").exists():
        pytest.skip(f"missing after install: {missing or CNI_BIN_DIR}")
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run of this module waits here
        _claim_host_dirs()
        tmp = tmp_path_factory.mktemp("node")
        (tmp / "images").mkdir()
        (tmp / "scratch").mkdir()
        (tmp / "images" / "hello.tar").write_bytes(oci.hello_archive("/bin/busybox"))
        config = CONFIG.format(tmp=tmp, standins=STANDINS, cni=CNI_BIN_DIR, image=oci.HELLO_REF)
        container = Container(tmp, config)
        try:
            _wait_up(container)
            yield container
        finally:
            container.stop()
            # Everything the node ran (containerd, etcd, the shims, the stand-ins)
            # lived in the container's cgroup; stop() removes it only when empty.
            left = _all_pids(container.cgroup) if container.cgroup.exists() else []
            if container.cgroup.exists():
                cleanup(Cgroup(container.cgroup))  # kill what survived before removing files
            for directory in HOST_DIRS:
                _remove_host_dir(directory)
            assert not left, f"processes survived the node in {container.cgroup}: {left}"


def _wait_up(container: Container, timeout: float = 60) -> None:
    """Until every service is ready, or completed (the oneshots), or one of them failed."""

    def up() -> bool:
        if container.proc.poll() is not None:
            raise AssertionError("the container ended early")
        with contextlib.suppress(json.JSONDecodeError, KeyError):
            states = container.status()
            failed = [n for n, s in states.items() if s["state"] == "failed"]
            assert not failed, f"failed: {failed}"
            return all(s["ready"] or s["state"] == "completed" for s in states.values())
        return False

    try:
        wait_until(up, timeout=timeout, what="every service ready or completed")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nlog:\n{container.log_text()[-3000:]}") from None


def first(events: list[dict[str, Any]], service: str, **fields: Any) -> int:
    """The index of ``service``'s first state event with ``fields``."""
    for i, event in enumerate(events):
        if (
            event.get("event") == "state"
            and event.get("service") == service
            and all(event.get(k) == v for k, v in fields.items())
        ):
            return i
    raise AssertionError(f"no state event of {service} with {fields}")


def test_the_single_profile_comes_up_in_dependency_order(node: Container) -> None:
    status = node.status()
    assert list(status)[: len(ROLES)] == list(ROLES)
    for role in ROLES:
        expected = "completed" if role == "images" else "running"
        assert status[role]["state"] == expected, status[role]
        assert role == "images" or status[role]["ready"], status[role]
    # Each service starts only after what it depends on was ready (or completed).
    events = node.events()
    for name, service in status.items():
        started = first(events, name, state="running")
        for dep, condition in service["depends_on"].items():
            if dep not in status:
                continue  # the built-in network and pki conditions
            met = (
                first(events, dep, state="completed")
                if condition == "Completed"
                else first(events, dep, state="running", ready=True)
            )
            assert met < started, f"{name} started before {dep} was {condition}"
    assert dict(status["kube-apiserver"]["depends_on"]) == {
        "etcd": "Ready",
        "network": "Ready",
        "pki": "Ready",
    }
    assert status["kubelet"]["depends_on"]["images"] == "Completed"
    out = node.cli("status")
    assert out.returncode == 0, out.stdout + out.stderr


def test_preflight_is_in_status_and_only_warned(node: Container) -> None:
    out = node.cli("status", "preflight")
    table = out.stdout
    # This host's cgroup2 has no controllers: a fatal failure, which
    # boot.preflight: warn let pass (the node booted).
    assert out.returncode == 1
    assert table.splitlines()[0].split() == ["CHECK", "RESULT", "DETAIL"]

    def result(check: str) -> str:
        match = re.search(rf"^{re.escape(check)}\s+(pass|warn|FAIL!?)\s", table, re.M)
        assert match, f"no row {check!r} in:\n{table}"
        return match.group(1)

    assert result("cgroup controllers") == "FAIL!"
    for binary in ("etcd", "containerd", "containerd-shim-runc-v2", "runc", "kube-apiserver"):
        assert result(f"binary {binary}") == "pass"
    assert result("overlay") == "pass"


def test_killing_the_apiserver_restarts_it_alone(node: Container) -> None:
    before = node.status()
    [host_pid] = node.host_pids("services", "kube-apiserver")
    restarts = before["kube-apiserver"]["restarts"]
    os.kill(host_pid, signal.SIGKILL)

    def restarted() -> dict[str, dict[str, Any]] | None:
        now = node.status()
        api = now["kube-apiserver"]
        done = api["restarts"] == restarts + 1 and api["ready"] and api["state"] == "running"
        return now if done else None

    after = wait_until(restarted, timeout=30, what="kube-apiserver restarted and ready")
    api = after["kube-apiserver"]
    assert api["pid"] != before["kube-apiserver"]["pid"]
    assert api["last_exit"] == {"signal": "SIGKILL"}
    [new_host_pid] = node.host_pids("services", "kube-apiserver")
    assert new_host_pid != host_pid and not pid_alive(host_pid)
    for name in ("kube-scheduler", "kube-controller-manager"):
        assert after[name]["pid"] == before[name]["pid"], name
        assert after[name]["restarts"] == 0, name
        assert after[name]["state"] == "running" and after[name]["ready"], name
    assert node.cli("status").returncode == 0


def test_the_image_tarball_was_imported(node: Container) -> None:
    log = node.cli("logs", "images").stdout
    assert "/images/hello.tar" in log and "importing " in log
    assert f"unpacking {oci.HELLO_REF}" in log
    assert "imported 1 image archive(s)" in log
    out = subprocess.run(
        ["ctr", "--address", containerd.SOCKET, "-n", "k8s.io", "images", "ls", "-q"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert oci.HELLO_REF in out.stdout.split()


def test_a_container_runs_through_the_supervised_containerd(node: Container) -> None:
    status = wait_until(
        lambda: (s := node.status())["ctr-run"]["state"] in ("completed", "failed") and s,
        timeout=30,
        what="ctr-run to end",
    )
    log = node.cli("logs", "ctr-run").stdout
    assert status["ctr-run"]["state"] == "completed", log
    assert "hello from a container" in log


def test_stopping_the_node_leaves_nothing_behind(node: Container) -> None:
    host_pids = [int(p) for p in _all_pids(node.cgroup)]
    assert host_pids
    node.stop()
    assert node.proc.returncode == 0
    stopped = [
        e["service"]
        for e in node.events()
        if e.get("event") == "state" and e.get("state") == "stopped"
    ]
    # Reverse dependency order: dependents stop before what they depend on.
    assert stopped.index("kubelet") < stopped.index("containerd")
    assert stopped.index("kube-scheduler") < stopped.index("kube-apiserver")
    assert stopped.index("kube-apiserver") < stopped.index("etcd")
    assert not node.cgroup.exists()
    assert not any(pid_alive(p) for p in host_pids)


def _all_pids(cgroup: Path) -> list[str]:
    pids = []
    for procs in cgroup.rglob("cgroup.procs"):
        with contextlib.suppress(OSError):
            pids += procs.read_text().split()
    return pids
