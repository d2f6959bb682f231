"""A node in a container with the real Kubernetes roles: the k4s build, natively.

One ``k4sinit dev`` container runs the ``single`` profile for every test of this
module, with the binaries ``rootfs/k4s/gobuild.py`` builds (k4s with its role
links, runc, the shim, the CNI plugins) and the air-gap images of the node image
(Kubernetes' pause, busybox). Every role runs as the real program with the flags
and files k4sinit writes, except kubelet: this host's cgroup2 has no controllers
for it (its hierarchy is cgroup v1), so kubelet runs only in the VM
(tests/test_e2e.py). The test registers the Node object kubelet would, so
kube-proxy finds its node and becomes ready. A second, shorter container runs
the controller profile with etcd.

The container has its own network namespace: a bridge with the node's address
(10.99.0.1, ``advertiseAddress``) and no default route. kubectl and DNS queries
run inside it (``nsenter --net``). It shares the host's filesystem, and
containerd keeps its root and state at the fixed paths of the containerd role
(/var/lib/containerd, /run/containerd): the fixture claims them (a marker file;
it refuses paths that are not its own, or a containerd already serving the
socket), holds a lock so two runs of this module never share them, and removes
them after the node has stopped and its cgroup (everything the roles and the
shims ran in) is gone.
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
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from k4sinit.pid1.container import cleanup, host_cgroup2_mount
from k4sinit.services import containerd
from k4sinit.supervision.cgroups import Cgroup

from .conftest import Container, pid_alive, wait_until

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "rootfs"))
import oci  # rootfs/ is a directory of scripts, not a package

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or host_cgroup2_mount() is None,
    reason="a container needs root and a cgroup2 hierarchy on the host",
)

REPO = Path(__file__).resolve().parent.parent
LOCK = Path("/run/lock/k4sinit-test-node.lock")
MARKER = ".k4sinit-test-node"  # in a host directory this module created (and will remove)
HOST_DIRS = (Path(containerd.ROOT), Path(containerd.STATE))
ADDRESS = "10.99.0.1"
NAME = "testnode"
PAUSE = "k4sinit.local/pause:3.10.2"
ROLES = (
    "kine",
    "kube-apiserver",
    "kube-scheduler",
    "kube-controller-manager",
    "manifests",
    "coredns",
    "containerd",
    "images",
    "kube-proxy",
)

CONFIG = """\
node:
  profile: {profile}
  name: {name}
  datastore: {datastore}
  dataDir: {tmp}/data
  advertiseAddress: {address}
  binPath: [{bin}, /usr/sbin, /usr/bin, /sbin, /bin]
  imagesDir: {tmp}/images
  cniBinDir: {cni}
  cniConfDir: {tmp}/cni
  pauseImage: {pause}
  roles:
    kubelet: {{disabled: true}}  # this host's cgroup2 has no controllers for it
network:
  interfaces:
    - {{name: br0, kind: bridge, addresses: [{address}/24]}}
boot: {{preflight: warn}}
services: {{}}
"""


def bin_dir(tmp: Path, userland: Any) -> Path:
    """A binPath directory as the image's /bbin: a link per k4s role, runc, the shim,
    and k4sinit itself (the manifests role runs it)."""
    directory = tmp / "bin"
    directory.mkdir()
    for role in userland.roles():
        (directory / role).symlink_to(userland.k4s)
    (directory / "runc").symlink_to(userland.runc)
    (directory / "containerd-shim-runc-v2").symlink_to(userland.shim)
    (directory / "k4sinit").symlink_to(REPO / ".venv/bin/k4sinit")
    return directory


def config_text(tmp: Path, userland: Any, *, profile: str, datastore: str) -> str:
    return CONFIG.format(
        profile=profile,
        name=NAME,
        datastore=datastore,
        tmp=tmp,
        address=ADDRESS,
        bin=bin_dir(tmp, userland),
        cni=userland.dir / "cni",
        pause=PAUSE,
    )


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
        (directory / MARKER).write_text(
            "made by tests/test_control_plane.py; removed after the test\n"
        )


@pytest.fixture(scope="module")
def host_lock() -> Iterator[None]:
    """Held for the module: another run of it waits here (containerd's paths are fixed)."""
    LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def claimed_host_dirs() -> Iterator[None]:
    """containerd's fixed root and state, ours for the block (take host_lock first)."""
    _claim_host_dirs()
    try:
        yield
    finally:
        for directory in HOST_DIRS:
            _remove_host_dir(directory)


def stop_and_check(container: Container) -> None:
    """Stop the container; fail if any process outlived it (then kill those)."""
    container.stop()
    # Everything the node ran (kine, the apiserver, containerd, the shims...) lived in
    # the container's cgroup; stop() removes it only when empty.
    left = _all_pids(container.cgroup) if container.cgroup.exists() else []
    if container.cgroup.exists():
        cleanup(Cgroup(container.cgroup))  # kill what survived before removing files
    assert not left, f"processes survived the node in {container.cgroup}: {left}"


@pytest.fixture(scope="module")
def node(
    tmp_path_factory: pytest.TempPathFactory, userland: Any, host_lock: None
) -> Iterator[Container]:
    """The booted node (every role ready), shared by this module; stopped and cleaned up after."""
    with claimed_host_dirs():
        tmp = tmp_path_factory.mktemp("node")
        images = tmp / "images"
        images.mkdir()
        (images / "pause.tar").write_bytes(oci.pause_archive(userland.pause, PAUSE))
        (images / "busybox.tar").write_bytes(oci.busybox_archive())
        container = Container(tmp, config_text(tmp, userland, profile="single", datastore="kine"))
        try:
            started = time.monotonic()
            _wait_up(container, but=("kube-proxy",))
            # What kubelet does first: register its Node. kube-proxy waits for it.
            node_object = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": NAME}}
            kubectl(container, "create", "-f", "-", stdin=yaml.safe_dump(node_object))
            _wait_up(container)
            print(
                f"\nnative single node (no kubelet): all ready in {time.monotonic() - started:.1f}s"
            )
            yield container
        finally:
            stop_and_check(container)


def kubectl(
    container: Container, *args: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """The k4s build's kubectl, as admin, in the container's network namespace."""
    userland_k4s = container.config.parent / "bin" / "kubectl"
    kubeconfig = container.config.parent / "data/kubeconfigs/admin.conf"
    argv = [*nsenter(container), str(userland_k4s), f"--kubeconfig={kubeconfig}", *args]
    out = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=120)
    if check:
        assert out.returncode == 0, f"kubectl {' '.join(args)}: {out.stdout}{out.stderr}"
    return out


def nsenter(container: Container) -> list[str]:
    return ["nsenter", f"--net=/proc/{container.init_pid}/ns/net", "--"]


def _wait_up(container: Container, timeout: float = 120, but: tuple[str, ...] = ()) -> None:
    """Until every service (``but`` those) is ready, or completed (the oneshots), or one failed."""

    def up() -> bool:
        if container.proc.poll() is not None:
            raise AssertionError("the container ended early")
        with contextlib.suppress(json.JSONDecodeError, KeyError):
            states = container.status()
            failed = [n for n, s in states.items() if s["state"] == "failed"]
            assert not failed, f"failed: {failed}"
            return all(
                s["ready"] or s["state"] == "completed" or n in but for n, s in states.items()
            )
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
    assert list(status) == list(ROLES)
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
        "kine": "Ready",
        "network": "Ready",
        "pki": "Ready",
    }
    out = node.cli("status")
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_role_is_the_real_program_of_its_version(node: Container, userland: Any) -> None:
    version = kubectl(node, "version", "-o", "json")
    server = json.loads(version.stdout)["serverVersion"]
    assert server["gitVersion"] == userland.versions["kubernetes"], server
    status = node.status()
    for role in ROLES:
        if role in ("images", "manifests"):  # a shell script; k4sinit itself
            continue
        executables = {os.readlink(f"/proc/{pid}/exe") for pid in node.host_pids("services", role)}
        assert executables == {str(userland.k4s.resolve())}, role
        # A flag or a config field the program refused would have made it exit.
        assert status[role]["restarts"] == 0, (role, node.cli("logs", role).stdout[-2000:])


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
    for binary in ("kine", "containerd", "containerd-shim-runc-v2", "runc", "kube-apiserver"):
        assert result(f"binary {binary}") == "pass"
    assert result("overlay") == "pass"


def test_the_clusters_own_objects_are_applied(node: Container) -> None:
    bindings = json.loads(kubectl(node, "get", "clusterrolebindings", "-o", "json").stdout)
    roles = {b["metadata"]["name"]: b["roleRef"]["name"] for b in bindings["items"]}
    csr = "system:certificates.k8s.io:certificatesigningrequests"
    assert roles["k4sinit:kubelet-bootstrap"] == "system:node-bootstrapper"
    assert roles["k4sinit:node-autoapprove-bootstrap"] == f"{csr}:nodeclient"
    assert roles["k4sinit:node-autoapprove-certificate-rotation"] == f"{csr}:selfnodeclient"
    assert roles["k4sinit:node-proxier"] == "system:node-proxier"
    assert roles["system:coredns"] == "system:coredns"
    service = json.loads(
        kubectl(node, "-n", "kube-system", "get", "svc", "kube-dns", "-o", "json").stdout
    )
    assert service["spec"]["clusterIP"] == "10.96.0.10"
    slices = kubectl(node, "-n", "kube-system", "get", "endpointslices", "-o", "json").stdout
    (dns,) = [
        s
        for s in json.loads(slices)["items"]
        if s["metadata"]["labels"].get("kubernetes.io/service-name") == "kube-dns"
    ]
    assert dns["endpoints"][0]["addresses"] == [ADDRESS]  # this node's advertiseAddress


def test_a_manifest_dropped_into_the_directory_is_applied_and_updated(node: Container) -> None:
    directory = node.config.parent / "data/manifests"
    path = directory / "demo.yaml"
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "k4sinit-demo", "namespace": "default"},
        "data": {"greeting": "hello"},
    }

    def greeting() -> str | None:
        out = kubectl(node, "get", "configmap", "k4sinit-demo", "-o", "json", check=False)
        return json.loads(out.stdout)["data"]["greeting"] if out.returncode == 0 else None

    try:
        path.write_text(yaml.safe_dump(config_map))
        wait_until(lambda: greeting() == "hello", timeout=60, what="the ConfigMap applied")
        config_map["data"] = {"greeting": "changed"}
        path.write_text(yaml.safe_dump(config_map))
        wait_until(lambda: greeting() == "changed", timeout=60, what="the ConfigMap updated")
    finally:
        path.unlink(missing_ok=True)
    log = node.cli("logs", "manifests", "-n", "200").stdout
    assert "configmap/k4sinit-demo serverside-applied" in log


def dns_query(node: Container, name: str) -> str:
    """The first A record CoreDNS (on the node, port 53) answers for ``name``."""
    query = struct.pack(">HHHHHH", 0x4B34, 0x0100, 1, 0, 0, 0)
    query += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    query += struct.pack(">HH", 1, 1)
    script = (
        "import socket,sys; s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM); s.settimeout(5);"
        f"s.sendto(sys.stdin.buffer.read(),('{ADDRESS}',53)); sys.stdout.buffer.write(s.recv(512))"
    )
    out = subprocess.run(
        [*nsenter(node), "python3", "-c", script], input=query, capture_output=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    answer = out.stdout
    assert answer[:2] == query[:2] and answer[3] & 0x0F == 0, f"rcode {answer[3] & 0x0F}"
    return socket.inet_ntoa(answer[-4:])


def test_coredns_serves_the_cluster_domain(node: Container) -> None:
    assert dns_query(node, "kubernetes.default.svc.cluster.local") == "10.96.0.1"
    assert dns_query(node, "kube-dns.kube-system.svc.cluster.local") == "10.96.0.10"


def test_kube_proxy_writes_the_services_rules(node: Container) -> None:
    def rules() -> str:
        out = subprocess.run(
            [*nsenter(node), "iptables-save", "-t", "nat"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert out.returncode == 0, out.stderr
        return out.stdout

    wait_until(lambda: "10.96.0.10/32" in rules(), timeout=60, what="kube-dns's rules")
    saved = rules()
    assert "-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp" in saved  # the kubernetes Service
    assert f"--to-destination {ADDRESS}:53" in saved  # kube-dns to CoreDNS on the node


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

    after = wait_until(restarted, timeout=120, what="kube-apiserver restarted and ready")
    api = after["kube-apiserver"]
    assert api["pid"] != before["kube-apiserver"]["pid"]
    assert api["last_exit"] == {"signal": "SIGKILL"}
    [new_host_pid] = node.host_pids("services", "kube-apiserver")
    assert new_host_pid != host_pid and not pid_alive(host_pid)
    for name in ("kine", "kube-scheduler", "kube-controller-manager", "coredns", "containerd"):
        assert after[name]["pid"] == before[name]["pid"], name
        assert after[name]["restarts"] == before[name]["restarts"], name
        assert after[name]["state"] == "running" and after[name]["ready"], name
    assert node.cli("status").returncode == 0


def ctr(*args: str) -> subprocess.CompletedProcess[str]:
    """The k4s build's ctr, at the node's containerd socket (on the shared filesystem)."""
    k4s = REPO / "rootfs/out/k4s/k4s"
    argv = [str(k4s), "ctr", "--address", containerd.SOCKET, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_containerd_runs_the_cri_plugin_with_the_air_gap_images(node: Container) -> None:
    plugins = ctr("plugins", "ls")
    assert plugins.returncode == 0, plugins.stderr
    rows = {tuple(line.split()[:2]): line.split()[-1] for line in plugins.stdout.splitlines()[1:]}
    assert rows[("io.containerd.grpc.v1", "cri")] == "ok"  # our version 3 config was taken
    assert rows[("io.containerd.snapshotter.v1", "overlayfs")] == "ok"
    log = node.cli("logs", "images").stdout
    assert "imported 2 image archive(s)" in log
    images = ctr("-n", "k8s.io", "images", "ls", "-q")
    assert {PAUSE, oci.BUSYBOX_REF} <= set(images.stdout.split())


def test_a_container_runs_under_the_supervised_containerd_and_runc(node: Container) -> None:
    # --cpu-shares 0: ctr's default (1024) makes runc write cpu.weight, and this host's
    # cgroup2 has no cpu controller (preflight's "cgroup controllers" check); 0 sets none.
    run = ctr(
        "-n", "k8s.io", "run", "--rm", "--cpu-shares", "0", oci.BUSYBOX_REF, "t1",
        "echo", "hello from a container",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "hello from a container"


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
    assert stopped.index("kube-proxy") < stopped.index("kube-apiserver")
    assert stopped.index("coredns") < stopped.index("manifests") < stopped.index("kube-apiserver")
    assert stopped.index("kube-scheduler") < stopped.index("kube-apiserver")
    assert stopped.index("kube-apiserver") < stopped.index("kine")
    assert not node.cgroup.exists()
    assert not any(pid_alive(p) for p in host_pids)


def test_the_controller_profile_runs_on_etcd(
    tmp_path: Path, userland: Any, host_lock: None, node: Container
) -> None:
    """etcd (a k4s role too) under the real apiserver: the other datastore's flags."""
    assert node.proc.returncode is not None  # the single node is down: the ports are free
    with claimed_host_dirs():
        container = Container(
            tmp_path, config_text(tmp_path, userland, profile="controller", datastore="etcd")
        )
        try:
            _wait_up(container)
            status = container.status()
            assert list(status) == [
                "etcd",
                "kube-apiserver",
                "kube-scheduler",
                "kube-controller-manager",
                "manifests",
                "coredns",
            ]
            health = kubectl(container, "get", "--raw", "/readyz/etcd").stdout
            assert health.strip() == "ok"
        finally:
            stop_and_check(container)


def _all_pids(cgroup: Path) -> list[str]:
    pids = []
    for procs in cgroup.rglob("cgroup.procs"):
        with contextlib.suppress(OSError):
            pids += procs.read_text().split()
    return pids
