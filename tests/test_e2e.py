"""The diskless node end to end: the image ``scripts/run-node`` boots, a real single-node cluster.

One VM for the module, as a user meets it: ``rootfs/node.py``'s image (the single
profile of ``etc/k4sinit/node-vm.yaml``: Kubernetes v1.37, containerd 2, kine,
CoreDNS and kube-proxy from the k4s build of ``rootfs/k4s``), DHCP from qemu's user
network, the control socket relayed over the virtio-serial port to the host, where
the host's own ``k4sinit`` CLI is used, and the apiserver forwarded to a host port,
where kubectl (the k4s build's) is used with the admin kubeconfig the node hands
out. The tests run in file order on that one VM and the last two end it: reboot
(the node comes back Ready), then poweroff (qemu exits 0).

Run alone with ``pytest -m e2e``; it is part of ``scripts/test``. Under TCG on two
shared cores Kubernetes is slow: each wait names what it waits for and fails with
the console's tail; the durations of the phases are printed at the end.
"""

from __future__ import annotations

import ipaddress
import json
import re
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from k4sinit.control import ControlClientError
from k4sinit.core.nodespec import Datastore, Profile, profile_roles

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "rootfs"))
import node  # noqa: E402 (rootfs/ is a directory of scripts, not a package)
import vm  # noqa: E402

pytestmark = [pytest.mark.vm, pytest.mark.e2e]

#: The single profile's long-running roles (the images oneshot is checked apart).
ROLES = tuple(r for r in profile_roles(Profile.SINGLE, Datastore.KINE) if r != "images")
BOOT_TIMEOUT = 900  # TCG: the kernel, the root's copy, the first start of the control plane
POD_TIMEOUT = 300  # a pod's sandbox, CNI and container, each a few seconds of TCG
TIMES: dict[str, float] = {}
#: A web server from the air-gap busybox image, and a Service in front of it.
WEB = """\
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  containers:
  - name: httpd
    image: k4sinit.local/busybox:1
    imagePullPolicy: Never
    command: [sh, -c, 'mkdir -p /www && echo "hello from $(hostname)" > /www/index.html
      && echo serving && exec httpd -f -p 8080 -h /www']
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"""
CLIENT = """\
apiVersion: v1
kind: Pod
metadata: {name: client}
spec:
  containers:
  - {name: client, image: k4sinit.local/busybox:1, imagePullPolicy: Never, command: [sleep, "3600"]}
"""


def all_ready(status: dict[str, Any]) -> bool:
    services = {s["name"]: s for s in status["services"]}
    return (
        all(services.get(r, {}).get("ready") for r in ROLES)
        and services.get("images", {}).get("state") == "completed"
    )


def wait_status(machine: vm.VM, predicate: Any, timeout: float, what: str) -> dict[str, Any]:
    """Poll ``status`` over the control port until ``predicate`` holds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            status: dict[str, Any] = machine.request("status", timeout=30)
            last = status
            if predicate(status):
                return status
        except ControlClientError as exc:  # the node may be between boots; keep asking
            last = exc
        if machine.exit_code is not None:
            break
        time.sleep(1)
    pytest.fail(
        f"{what}: not within {timeout:g}s; last status: {last!r}\nconsole:\n{machine.tail(60)}"
    )


def by_name(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in status["services"]}


def back_with_a_new_pid(
    machine: vm.VM, before: dict[str, dict[str, Any]], role: str, timeout: float
) -> dict[str, dict[str, Any]]:
    """Every service once ``role`` is ready again in a process other than before's."""

    def back(status: dict[str, Any]) -> bool:
        now = by_name(status)[role]
        return bool(now["ready"]) and now["pid"] != before[role]["pid"]

    return by_name(wait_status(machine, back, timeout, f"{role} back with a new pid"))


class Kube(node.Cluster):
    """The node's cluster, as the tests use it (see rootfs/node.py's Cluster)."""

    def start_time(self, pod: str) -> str:
        """When the pod's container process started (field 22 of /proc/1/stat): it changes
        only if the container was started again."""
        stat = self.run("exec", pod, "--", "cat", "/proc/1/stat").stdout
        return stat.rpartition(")")[2].split()[19]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def image(vm_tools: None, userland: Any) -> Path:
    started = time.monotonic()
    path = node.build_image(quiet=True)
    TIMES["image build (or cache hit)"] = time.monotonic() - started
    return path


@pytest.fixture(scope="module")
def api_port() -> int:
    """The host port forwarded to the node's apiserver."""
    return free_port()


@pytest.fixture(scope="module")
def machine(
    image: Path, api_port: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[vm.VM]:
    """The running node; qemu is killed by pid on teardown, whatever happened."""
    work = tmp_path_factory.mktemp("e2e")
    the_vm = vm.VM(
        image,
        log_path=work / "console.log",
        control_socket=work / "control.sock",
        memory_mb=node.NODE_MEMORY_MB,
        reboot=True,
        forward=[(api_port, node.API_PORT)],
    )
    with the_vm:
        wait_status(the_vm, all_ready, BOOT_TIMEOUT, "every role ready")
        TIMES["qemu start to all roles ready"] = time.monotonic() - the_vm.started
        yield the_vm


@pytest.fixture(scope="module")
def kube(
    machine: vm.VM, api_port: int, userland: Any, tmp_path_factory: pytest.TempPathFactory
) -> Kube:
    work = tmp_path_factory.mktemp("kube")
    assert machine.control_socket is not None
    kube = Kube(machine.control_socket, userland.k4s, api_port, work / "kubeconfig")
    kube.refresh()
    return kube


def test_boot_stages_run_in_order(machine: vm.VM, userland: Any) -> None:
    console = machine.console
    kubernetes = re.escape(userland.versions["kubernetes"])
    stages = [
        r"k4sinit starting.*pid=1\b",  # from the initramfs
        rf"image: kubernetes {kubernetes}, containerd v2\.",  # the banner
        r"stage 1: mounted cgroup2 on /sys/fs/cgroup",
        r"switching into a tmpfs root",
        r"k4sinit starting.*pid=1\b",  # re-executed in the tmpfs root
        r"stage 1: coldplug: loaded .*virtio_net.*virtio_console|"
        r"stage 1: coldplug: loaded .*virtio_console.*virtio_net",
        r"stage 1: machine id",
        r"preflight: \d+ passed, 0 warnings, 0 failed",
        r"system ready",
        r"supervising",
        r"dhcp lease +address=10\.0\.2\.15/24 interface=eth0",
        r"pki: created: ca, ",
    ]
    position = 0
    for stage in stages:  # each after the one before
        m = re.compile(stage).search(console, position)
        assert m, f"{stage!r} not on the console after {stages[stages.index(stage) - 1]!r}"
        position = m.end()
    assert "Traceback" not in console


def test_roles_became_ready_in_dependency_order(machine: vm.VM) -> None:
    ready_at: dict[str, float] = {}
    started_at: dict[str, float] = {}
    for role in (*ROLES, "images"):
        events = machine.request("status", role)["events"]
        started_at[role] = next(e["time"] for e in events if e["reason"].startswith("started"))
        done = [
            e for e in events if (e["state"] == "completed" if role == "images" else e["ready"])
        ]
        assert done, f"{role} never {'completed' if role == 'images' else 'ready'}: {events}"
        ready_at[role] = done[0]["time"]
    for dependent, dependency in (
        ("kube-apiserver", "kine"),
        ("kube-scheduler", "kube-apiserver"),
        ("kube-controller-manager", "kube-apiserver"),
        ("manifests", "kube-apiserver"),
        ("coredns", "manifests"),
        ("images", "containerd"),
        ("kubelet", "images"),
        ("kubelet", "kube-apiserver"),
        ("kube-proxy", "kubelet"),
        ("kube-proxy", "manifests"),
    ):
        assert started_at[dependent] >= ready_at[dependency], (dependent, dependency)
    for role in (*ROLES, "images"):
        TIMES[f"{role}: start to ready"] = ready_at[role] - started_at[role]
    assert machine.request("status", "network")["network"]["ready"]
    pki = machine.request("status")["pki"]
    assert pki["ready"], pki


def test_status_names_the_versions_in_the_image(machine: vm.VM, userland: Any) -> None:
    out = machine.k4sinit("status")
    assert out.returncode == 0, out.stdout + out.stderr
    v = userland.versions
    line = (
        f"image: kubernetes {v['kubernetes']}, containerd {v['containerd']}, kine {v['kine']}, "
        f"etcd {v['etcd']}, coredns {v['coredns']}, runc {v['runc']}"
    )
    assert line in out.stdout, out.stdout
    for role in ROLES:
        assert re.search(rf"^{role}\s+running\s+yes\b", out.stdout, re.M), out.stdout
    assert "10.0.2.15/24" in machine.k4sinit("status", "network").stdout


def test_the_node_registers_and_becomes_ready(machine: vm.VM, kube: Kube, userland: Any) -> None:
    item = kube.wait("the node Ready", kube.node_ready, POD_TIMEOUT)
    TIMES["qemu start to node Ready"] = time.monotonic() - machine.started
    assert item["metadata"]["name"] == "k4s-node"
    info = item["status"]["nodeInfo"]
    assert info["kubeletVersion"] == userland.versions["kubernetes"]
    assert info["containerRuntimeVersion"] == f"containerd://{userland.versions['containerd'][1:]}"
    assert info["osImage"] == "k4sinit diskless node"
    addresses = {a["type"]: a["address"] for a in item["status"]["addresses"]}
    assert addresses["InternalIP"] == "10.0.2.15"


def test_a_pod_from_the_air_gap_image_runs_on_the_cni_bridge(machine: vm.VM, kube: Kube) -> None:
    kube.apply_pods(WEB)
    pod = kube.wait_pod_ready("web", POD_TIMEOUT)
    TIMES["qemu start to first pod Running"] = time.monotonic() - machine.started
    assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network("10.244.0.0/16")
    assert "serving" in kube.run("logs", "web").stdout
    assert kube.run("exec", "web", "--", "cat", "/www/index.html").stdout == "hello from web\n"
    images = kube.run("get", "pod", "web", "-o", "jsonpath={.status.containerStatuses[0].imageID}")
    assert images.stdout  # the image as containerd imported it from the air-gap directory


def test_a_cluster_ip_service_reaches_the_pod_through_kube_proxy(kube: Kube) -> None:
    kube.apply_pods(CLIENT)
    kube.wait_pod_ready("client", POD_TIMEOUT)
    cluster_ip = kube.json("get", "service", "web")["spec"]["clusterIP"]
    assert ipaddress.ip_address(cluster_ip) in ipaddress.ip_network("10.96.0.0/12")
    # busybox's wget -T crashes (Debian 1.35); its timeout applet bounds the wait instead.
    out = kube.run("exec", "client", "--", "timeout", "30", "wget", "-qO-", f"http://{cluster_ip}")
    assert out.stdout == "hello from web\n"


def test_cluster_dns_resolves_a_service_by_its_name(kube: Kube) -> None:
    out = kube.run("exec", "client", "--", "timeout", "30", "wget", "-qO-", "http://web.default")
    assert out.stdout == "hello from web\n"
    lookup = kube.run("exec", "client", "--", "nslookup", "kubernetes.default.svc.cluster.local")
    assert "Address: 10.96.0.1" in lookup.stdout, lookup.stdout


def test_the_apiserver_killed_comes_back_and_the_pods_keep_running(
    machine: vm.VM, kube: Kube
) -> None:
    started_web = kube.start_time("web")
    before = by_name(machine.request("status"))
    out = machine.k4sinit("kill", "kube-apiserver", "-s", "KILL")
    assert out.returncode == 0, out.stdout + out.stderr
    started = time.monotonic()
    after = back_with_a_new_pid(machine, before, "kube-apiserver", BOOT_TIMEOUT)
    TIMES["apiserver SIGKILL to ready again"] = time.monotonic() - started
    # Under TCG the restarted apiserver may itself give up once in its start (its
    # post-start hook "start-service-ip-repair-controllers" has a fixed timeout) and
    # be restarted again by policy: what counts is that the first exit was our SIGKILL
    # and that it is back. How many restarts it took is printed.
    restarts = after["kube-apiserver"]["restarts"] - before["kube-apiserver"]["restarts"]
    TIMES["apiserver restarts after the SIGKILL"] = restarts
    assert restarts >= 1
    events = machine.request("status", "kube-apiserver")["events"]
    backoffs = [e["reason"] for e in events if e["state"] == "backoff"]
    assert backoffs[-restarts].startswith("killed by SIGKILL"), backoffs
    for role in set(ROLES) - {"kube-apiserver"}:
        assert after[role]["pid"] == before[role]["pid"], role
    kube.wait("the node Ready", kube.node_ready, POD_TIMEOUT)
    assert kube.start_time("web") == started_web
    web = kube.json("get", "pod", "web")["status"]["containerStatuses"][0]
    assert web["restartCount"] == 0 and web["ready"], web


def test_containerd_stopped_and_started_leaves_the_containers_running(
    machine: vm.VM, kube: Kube
) -> None:
    started_web = kube.start_time("web")
    out = machine.k4sinit("stop", "containerd")
    assert out.returncode == 0, out.stdout + out.stderr
    # containerd's cgroup is empty now (k4sinit killed what was left in it): the
    # containers live on because their shims moved to /shims.
    assert by_name(machine.request("status"))["containerd"]["state"] == "stopped"
    out = machine.k4sinit("start", "containerd")
    assert out.returncode == 0, out.stdout + out.stderr
    started = time.monotonic()
    wait_status(machine, lambda s: by_name(s)["containerd"]["ready"], 300, "containerd ready again")
    # kubelet reconnects: exec goes through kubelet and containerd again.
    kube.wait("exec in web again", lambda: kube.start_time("web"), POD_TIMEOUT)
    TIMES["containerd start to exec working again"] = time.monotonic() - started
    assert kube.start_time("web") == started_web
    assert kube.json("get", "pod", "web")["status"]["containerStatuses"][0]["restartCount"] == 0
    kube.wait("the node Ready", kube.node_ready, POD_TIMEOUT)


def test_kubelet_killed_comes_back_and_leaves_the_pods_alone(machine: vm.VM, kube: Kube) -> None:
    started_web = kube.start_time("web")
    before = by_name(machine.request("status"))
    out = machine.k4sinit("kill", "kubelet", "-s", "KILL")
    assert out.returncode == 0, out.stdout + out.stderr
    started = time.monotonic()
    after = back_with_a_new_pid(machine, before, "kubelet", 300)
    TIMES["kubelet SIGKILL to ready again"] = time.monotonic() - started
    assert after["kubelet"]["last_exit"] == {"signal": "SIGKILL"}
    kube.wait("the node Ready", kube.node_ready, POD_TIMEOUT)
    # Healthy is not yet serving: the new kubelet answers exec once it has synced its pods.
    assert (
        kube.wait("exec in web again", lambda: kube.start_time("web"), POD_TIMEOUT) == started_web
    )
    TIMES["kubelet SIGKILL to exec working again"] = time.monotonic() - started
    for name in ("web", "client"):
        status = kube.json("get", "pod", name)["status"]["containerStatuses"][0]
        assert status["restartCount"] == 0 and status["ready"], (name, status)


def test_reboot_brings_the_node_back_ready(machine: vm.VM, kube: Kube) -> None:
    boots = machine.console.count("k4sinit starting")
    started = time.monotonic()
    out = machine.k4sinit("reboot", timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.match(r"reboot: \d+ services stopped", out.stdout)
    machine.wait_for(r"reboot: Restarting system", 120)
    assert machine.exit_code is None  # qemu stayed: the guest rebooted
    wait_status(
        machine,
        lambda s: machine.console.count("k4sinit starting") > boots and all_ready(s),
        BOOT_TIMEOUT,
        "every role ready after the reboot",
    )
    kube.refresh()  # a diskless node: a new cluster, a new CA
    kube.wait("the node Ready after the reboot", kube.node_ready, POD_TIMEOUT)
    TIMES["k4sinit reboot to node Ready again"] = time.monotonic() - started


def test_poweroff_stops_the_node_first_and_leaves_no_pod_behind(
    machine: vm.VM, kube: Kube, capsys: pytest.CaptureFixture[str]
) -> None:
    kube.apply_pods(WEB)
    kube.wait_pod_ready("web", POD_TIMEOUT)
    position = len(machine.console)
    started = time.monotonic()
    out = machine.k4sinit("poweroff", timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert machine.wait(120) == 0
    assert machine.powered_off and not machine.panicked
    TIMES["k4sinit poweroff to qemu exit"] = time.monotonic() - started
    TIMES["whole run"] = time.monotonic() - machine.started
    console = machine.console[position:]
    stopped = re.findall(r"service=(\S+) state=stopped", console)
    for node_role in ("kubelet", "kube-proxy"):  # the node's side first
        for later in ("containerd", "kube-apiserver", "kine"):
            assert stopped.index(node_role) < stopped.index(later), (node_role, later, stopped)
    # The pods' processes (their shims gone) were killed in kubelet's cgroups, by name,
    # and nothing at all was left for the last kill of every process.
    assert re.search(r"killing \d+ process\(es\) left in /sys/fs/cgroup/kubepods", console)
    assert "processes left after" not in console
    with capsys.disabled():
        print("\ne2e durations (TCG): " + json.dumps({k: round(v, 1) for k, v in TIMES.items()}))
