"""The lab cluster end to end: a controller with a disk, and a diskless worker that joins it by token.

What ``scripts/cluster`` boots (rootfs/lab.py, rootfs/cluster.py's image): one
private L2 network in a network namespace of the test's own, the controller (the
single profile: control plane and pods; a blank raw disk, formatted at its first
boot), then, once it makes a join token, worker-1 from the same image with the
token on its kernel command line. The tests run in file order on that lab:

1. the controller boots from its blank disk and makes a join token;
2. the worker joins by token and turns Ready, each node with its own podCIDR;
3. a 2-replica Deployment spreads across both nodes; pods reach each other
   across nodes by IP, and its Service answers from either node;
4. the controller reboots: the same CA and objects, the worker's pod kept
   running meanwhile, every node Ready again;
5. the worker rebooted: Ready again under its name, a pod on it again; then
   powered off: NotReady, its pod rescheduled on the controller;
6. a worker with a bad token: a clear error in ``status``, no crash loop.

Under TCG two VMs share two cores (the controller has two vCPUs, the worker
one): the timeouts are what the slowest run here needed with room, never
stretched to hide a failure. Each
phase's duration, and the figures (a worker's boot to Ready, each node's memory,
a pod's start on the worker, the controller's reboot until every node is
Ready), are printed as they come and at the end. Run alone: ``pytest
tests/test_cluster.py`` (marked vm and e2e: it is not run by ``-m "not vm"``).
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from k4sinit.control import ControlClientError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "rootfs"))
import cluster  # noqa: E402 (rootfs/ is a directory of scripts, not a package)
import lab  # noqa: E402
import node  # noqa: E402
import vm  # noqa: E402

pytestmark = [pytest.mark.vm, pytest.mark.e2e]

TOKEN_TIMEOUT = 900  # controller's qemu start to a join token: boot, disk, apiserver
JOIN_TIMEOUT = 600  # worker's qemu start to its node Ready: boot, join, TLS bootstrap, CNI
POD_TIMEOUT = 300
ROUTE_TIMEOUT = 150  # two of pod-network's one-minute watches, and room
REBOOT_TIMEOUT = 900
EVICTION_TIMEOUT = 420  # NotReady after the node monitor's grace, then the pods' 10 s toleration
TIMES: dict[str, float] = {}
FIGURES: dict[str, Any] = {}

WEB = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      terminationGracePeriodSeconds: 1
      # One per node while both can run pods; a node tainted unreachable does not count.
      topologySpreadConstraints:
      - {maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule,
         nodeTaintsPolicy: Honor, labelSelector: {matchLabels: {app: web}}}
      # Moved 10 s after their node is lost (the default is 300 s).
      tolerations:
      - {key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 10}
      - {key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: 10}
      containers:
      - name: httpd
        image: k4sinit.local/busybox:1
        imagePullPolicy: Never
        command: [sh, -c, 'mkdir -p /www && echo "hello from $(hostname)" > /www/index.html
          && exec httpd -f -p 8080 -h /www']
        readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 2}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"""


def say(pytestconfig: pytest.Config, line: str) -> None:
    """Print now, past pytest's capture: the phases of a long run as they end."""
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        print(f"cluster: {line}", flush=True)


def phase(pytestconfig: pytest.Config, name: str, started: float) -> None:
    TIMES[name] = time.monotonic() - started
    say(pytestconfig, f"{name}: {TIMES[name]:.1f} s")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Kube(node.Cluster):
    """kubectl on the host against the lab's forwarded apiserver."""

    def nodes(self) -> dict[str, dict[str, Any]]:
        return {item["metadata"]["name"]: item for item in self.json("get", "nodes")["items"]}

    def ready_nodes(self) -> set[str]:
        return {name for name, item in self.nodes().items() if is_ready(item)}

    def web_pods(self) -> list[dict[str, Any]]:
        """The Deployment's pods that are not being deleted."""
        pods = self.json("get", "pods", "-l", "app=web")["items"]
        return [p for p in pods if not p["metadata"].get("deletionTimestamp")]

    def exec_sh(self, pod: str, script: str) -> str:
        return self.run("exec", pod, "--", "sh", "-c", script, timeout=120).stdout

    def start_time(self, pod: str) -> str:
        """When the container's process started (field 22 of /proc/1/stat)."""
        stat = self.run("exec", pod, "--", "cat", "/proc/1/stat").stdout
        return stat.rpartition(")")[2].split()[19]


def is_ready(item: dict[str, Any]) -> bool:
    conditions = item["status"].get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def wait_until(what: str, condition: Callable[[], Any], timeout: float, kube: Kube) -> Any:
    return kube.wait(what, condition, timeout, explain=())


def logged(machine: vm.VM, service: str, line: str) -> bool:
    """``line`` is among ``service``'s log lines on ``machine``."""
    return line in machine.k4sinit("logs", service).stdout


def node_status(the_lab: lab.Lab, name: str) -> dict[str, Any]:
    result: dict[str, Any] = the_lab.vms[name].request("status", timeout=30)
    return result


# --- the lab ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def image(vm_tools: None, userland: Any, pytestconfig: pytest.Config) -> Path:
    started = time.monotonic()
    path = cluster.build_image(userland=userland, quiet=True)
    phase(pytestconfig, "image build (or cache hit)", started)
    return path


TEST_NETNS = "k4sinit-lab-test-"


def remove_stale_test_namespaces() -> None:
    """Delete the lab namespaces of earlier test runs that were SIGKILLed (their pytest's
    pid is gone and nothing runs in them): a lab's own close removes its namespace."""
    for entry in Path("/run/netns").glob(TEST_NETNS + "*"):
        pid = entry.name.removeprefix(TEST_NETNS)
        if pid.isdigit() and not Path("/proc", pid).exists():
            pids = subprocess.run(["ip", "netns", "pids", entry.name], capture_output=True)
            if not pids.stdout.strip():
                subprocess.run(["ip", "netns", "delete", entry.name], check=False)


@pytest.fixture(scope="module")
def the_lab(
    image: Path, tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[lab.Lab]:
    """The lab, torn down whatever happened: qemu killed by pid, the namespace deleted."""
    remove_stale_test_namespaces()
    work = tmp_path_factory.mktemp("lab")
    options = lab.LabOptions(
        image=image,
        disk=work / "controller-disk.raw",
        run_dir=work / "run",
        netns=f"{TEST_NETNS}{os.getpid()}",
        api_port=free_port(),
    )
    the_lab = lab.Lab(options, say=lambda line: say(pytestconfig, line))
    with the_lab:
        try:
            yield the_lab
        finally:
            the_lab.close(graceful=False)  # the tests powered off what they meant to
    assert not os.path.exists(the_lab.network.path)
    say(
        pytestconfig,
        "durations (s, TCG): " + json.dumps({k: round(v, 1) for k, v in TIMES.items()}),
    )
    say(pytestconfig, "figures: " + json.dumps(FIGURES))


@pytest.fixture(scope="module")
def token(the_lab: lab.Lab, pytestconfig: pytest.Config) -> str:
    started = time.monotonic()
    the_lab.boot_controller()
    token = the_lab.create_token(TOKEN_TIMEOUT)
    phase(pytestconfig, "controller qemu start to a join token", started)
    return token


@pytest.fixture(scope="module")
def kube(the_lab: lab.Lab, token: str, userland: Any) -> Kube:
    socket_path = the_lab.socket(lab.CONTROLLER)
    kube = Kube(socket_path, userland.k4s, the_lab.options.api_port, the_lab.options.run_dir / "kc")
    kube.refresh()
    return kube


# --- 1. the controller ---------------------------------------------------------------


def test_the_controller_formats_its_blank_disk_and_makes_a_join_token(
    the_lab: lab.Lab, token: str
) -> None:
    assert token.startswith("K4S1::https://192.168.44.10:6443::sha256:")
    console = the_lab.vms[lab.CONTROLLER].console
    assert re.search(r"/dev/vda is blank: making ext4", console), console[-3000:]
    preflight = node_status(the_lab, lab.CONTROLLER)["preflight"]
    assert preflight["failed"] == 0, preflight  # the storage row among them: mounted, writable
    listed = the_lab.vms[lab.CONTROLLER].k4sinit("token", "list")
    assert listed.returncode == 0 and token.rpartition("::")[2].split(".")[0] in listed.stdout


# --- 2. the worker joins ---------------------------------------------------------------


def test_a_diskless_worker_joins_by_token_and_turns_ready(
    the_lab: lab.Lab, token: str, kube: Kube, pytestconfig: pytest.Config
) -> None:
    started = time.monotonic()
    the_lab.boot_worker(1, token)
    wait_until("worker-1 Ready", lambda: "worker-1" in kube.ready_nodes(), JOIN_TIMEOUT, kube)
    phase(pytestconfig, "worker qemu start to node Ready", started)
    FIGURES["worker boot to node Ready (s)"] = round(TIMES["worker qemu start to node Ready"], 1)
    wait_until(
        "both nodes Ready",
        lambda: kube.ready_nodes() == {"controller", "worker-1"},
        POD_TIMEOUT,
        kube,
    )
    nodes = kube.nodes()
    cidrs = {name: item["spec"]["podCIDR"] for name, item in nodes.items()}
    assert len(set(cidrs.values())) == 2 and all(
        re.fullmatch(r"10\.244\.\d+\.0/24", c) for c in cidrs.values()
    ), cidrs
    addresses = {
        name: next(a["address"] for a in item["status"]["addresses"] if a["type"] == "InternalIP")
        for name, item in nodes.items()
    }
    assert addresses == {"controller": "192.168.44.10", "worker-1": "192.168.44.11"}
    worker = node_status(the_lab, "worker-1")
    services = {s["name"]: s for s in worker["services"]}
    assert set(services) >= {"containerd", "kubelet", "kube-proxy", "pod-network"}
    assert "kube-apiserver" not in services  # a worker: no control plane of its own
    assert worker["pki"]["ready"]
    # The routes of the host-gateway network, both ways. A node may turn Ready before the
    # other node's pod-network has seen its podCIDR (a watch event, or the check at the
    # end of each one-minute watch): within ROUTE_TIMEOUT, not at once.
    for here, there in (("worker-1", lab.CONTROLLER), (lab.CONTROLLER, "worker-1")):
        line = f"route to {cidrs[there]} via {addresses[there]} (node {there})"
        routed = functools.partial(logged, the_lab.vms[here], "pod-network", line)
        wait_until(f"{here}'s route to {there}'s pods", routed, ROUTE_TIMEOUT, kube)


def test_each_nodes_memory_in_use(the_lab: lab.Lab) -> None:
    for name in (lab.CONTROLLER, "worker-1"):
        memory = node_status(the_lab, name)["memory"]
        used = (memory["total"] - memory["available"]) / 2**20
        FIGURES[f"{name}: memory in use (MiB)"] = round(used)
        assert 0 < used < memory["total"] / 2**20


# --- 3. pods across nodes ---------------------------------------------------------------


@pytest.fixture(scope="module")
def web(kube: Kube, pytestconfig: pytest.Config) -> dict[str, dict[str, Any]]:
    """The Deployment's two pods, by node."""
    started = time.monotonic()
    kube.apply_pods(WEB)

    def spread() -> dict[str, dict[str, Any]] | None:
        pods = kube.web_pods()
        by_node = {p["spec"].get("nodeName"): p for p in pods if is_ready(p)}
        return by_node if set(by_node) == {"controller", "worker-1"} else None

    by_node = wait_until("a web pod Ready on each node", spread, POD_TIMEOUT, kube)
    phase(pytestconfig, "Deployment applied to a pod Ready on each node", started)
    return by_node  # type: ignore[no-any-return]


def test_a_deployment_spreads_across_both_nodes(web: dict[str, dict[str, Any]]) -> None:
    pod = web["worker-1"]
    created = pod["metadata"]["creationTimestamp"]
    running = pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"]
    seconds = _seconds(running) - _seconds(created)
    FIGURES["a pod's start on the worker: created to running (s)"] = seconds
    assert seconds >= 0


def _seconds(stamp: str) -> int:
    return int(time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ")))


def test_a_pod_on_the_worker_reaches_a_pod_on_the_controller_by_ip(
    kube: Kube, web: dict[str, dict[str, Any]]
) -> None:
    here, there = web["worker-1"], web["controller"]
    ip = there["status"]["podIP"]
    out = kube.exec_sh(here["metadata"]["name"], f"timeout 30 wget -qO- http://{ip}:8080")
    assert out == f"hello from {there['metadata']['name']}\n"
    # And back, by the worker pod's own address (not its node's: no masquerade in between).
    ip = here["status"]["podIP"]
    out = kube.exec_sh(there["metadata"]["name"], f"timeout 30 wget -qO- http://{ip}:8080")
    assert out == f"hello from {here['metadata']['name']}\n"


def test_the_service_answers_from_either_node(kube: Kube, web: dict[str, dict[str, Any]]) -> None:
    cluster_ip = kube.json("get", "service", "web")["spec"]["clusterIP"]
    names = {p["metadata"]["name"] for p in web.values()}
    for where, pod in web.items():
        answers: set[str] = set()
        for _ in range(30):  # kube-proxy picks an endpoint at random: both within a few tries
            out = kube.exec_sh(pod["metadata"]["name"], f"timeout 30 wget -qO- http://{cluster_ip}")
            answers.add(out.strip().removeprefix("hello from "))
            if answers == names:
                break
        assert answers == names, (where, answers)


# --- 4. the controller reboots ----------------------------------------------------------


def test_the_controller_reboots_into_the_same_cluster(
    the_lab: lab.Lab, kube: Kube, web: dict[str, dict[str, Any]], pytestconfig: pytest.Config
) -> None:
    ca_before = _ca(kube.kubeconfig)
    worker_pod = web["worker-1"]["metadata"]["name"]
    started_worker_pod = kube.start_time(worker_pod)
    kube.run("create", "configmap", "survivor", "--from-literal=made=before-the-reboot")
    controller = the_lab.vms[lab.CONTROLLER]
    boots = controller.console.count("k4sinit starting")
    boot_id = kube.nodes()["controller"]["status"]["nodeInfo"]["bootID"]
    started = time.monotonic()
    out = controller.k4sinit("reboot", timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    controller.wait_for(r"reboot: Restarting system", 120)
    assert controller.exit_code is None  # qemu stayed: the guest rebooted

    def back() -> bool:
        if controller.console.count("k4sinit starting") <= boots:
            return False
        try:
            kube.refresh()  # the same CA, checked below; the relay may be between boots
        except ControlClientError:
            return False
        # Ready as reported by its new boot, not a status left from before the reboot.
        rebooted = kube.nodes()["controller"]["status"]["nodeInfo"]["bootID"] != boot_id
        return rebooted and kube.ready_nodes() == {"controller", "worker-1"}

    wait_until("every node Ready after the controller's reboot", back, REBOOT_TIMEOUT, kube)
    phase(pytestconfig, "controller reboot to every node Ready", started)
    FIGURES["controller reboot to every node Ready (s)"] = round(
        TIMES["controller reboot to every node Ready"], 1
    )
    assert "/dev/vda is blank" not in controller.console.split("reboot: Restarting system")[-1]
    assert _ca(kube.kubeconfig) == ca_before  # the same CA: the PKI was on the disk
    data = kube.json("get", "configmap", "survivor")["data"]
    assert data == {"made": "before-the-reboot"}
    assert kube.json("get", "deployment", "web")["spec"]["replicas"] == 2
    # The worker's pod ran on while the control plane was away.
    assert kube.start_time(worker_pod) == started_worker_pod


def _ca(kubeconfig: Path) -> str:
    doc = yaml.safe_load(kubeconfig.read_text())
    data: str = doc["clusters"][0]["cluster"]["certificate-authority-data"]
    return base64.b64decode(data).decode()


# --- 4b. a worker rebooted ----------------------------------------------------------------


def test_a_worker_rebooted_rejoins_under_its_name_and_runs_pods_again(
    the_lab: lab.Lab, kube: Kube, pytestconfig: pytest.Config
) -> None:
    """Diskless: it keeps nothing, joins again with the token on its command line."""
    worker = the_lab.vms["worker-1"]
    boot_id = kube.nodes()["worker-1"]["status"]["nodeInfo"]["bootID"]
    started = time.monotonic()
    out = worker.k4sinit("reboot", timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    worker.wait_for(r"reboot: Restarting system", 120)
    assert worker.exit_code is None  # qemu stayed: the guest rebooted

    def back() -> bool:
        """Ready, and reported by the new boot (a Node stays Ready for the monitor's grace)."""
        item = kube.nodes()["worker-1"]
        return item["status"]["nodeInfo"]["bootID"] != boot_id and is_ready(item)

    wait_until("worker-1 Ready again after its reboot", back, JOIN_TIMEOUT, kube)
    phase(pytestconfig, "worker reboot to node Ready again", started)
    FIGURES["worker reboot to node Ready again (s)"] = round(
        TIMES["worker reboot to node Ready again"], 1
    )
    assert set(kube.nodes()) == {"controller", "worker-1"}  # the same Node, no second one
    # Its pod may have moved while it was away (10 s toleration): a rollout spreads the
    # Deployment again, one pod per node, so a pod runs on the rebooted worker.
    started = time.monotonic()
    before = {p["metadata"]["name"] for p in kube.web_pods()}
    kube.run("rollout", "restart", "deployment/web")

    def spread_again() -> bool:
        new = [p for p in kube.web_pods() if p["metadata"]["name"] not in before]
        ready = [p for p in new if is_ready(p)]
        return len(ready) == 2 and {p["spec"].get("nodeName") for p in ready} == {
            "controller",
            "worker-1",
        }

    wait_until("a web pod Ready on each node again", spread_again, POD_TIMEOUT, kube)
    phase(pytestconfig, "rollout to a pod Ready on the rebooted worker", started)


# --- 5. the worker powered off --------------------------------------------------------


def test_a_worker_powered_off_goes_not_ready_and_its_pods_move(
    the_lab: lab.Lab, kube: Kube, pytestconfig: pytest.Config
) -> None:
    lost = {
        p["metadata"]["name"] for p in kube.web_pods() if p["spec"].get("nodeName") == "worker-1"
    }
    assert lost
    started = time.monotonic()
    assert the_lab.power_off("worker-1"), "worker-1 did not power off"
    phase(pytestconfig, "worker poweroff to qemu exit", started)
    wait_until(
        "worker-1 NotReady", lambda: "worker-1" not in kube.ready_nodes(), EVICTION_TIMEOUT, kube
    )
    phase(pytestconfig, "worker poweroff to node NotReady", started)

    def moved() -> bool:
        pods = [p for p in kube.web_pods() if p["metadata"]["name"] not in lost]
        ready = [p for p in pods if is_ready(p)]
        return len(ready) == 2 and all(p["spec"]["nodeName"] == "controller" for p in ready)

    wait_until("both web pods Ready on the controller", moved, EVICTION_TIMEOUT, kube)
    phase(pytestconfig, "worker poweroff to its pods Ready elsewhere", started)


# --- 6. a bad token ---------------------------------------------------------------------


def test_a_bad_token_is_a_clear_error_not_a_crash_loop(
    the_lab: lab.Lab, token: str, pytestconfig: pytest.Config
) -> None:
    rest, _, secret_part = token.rpartition(".")
    wrong = "x" * 16 if secret_part != "x" * 16 else "y" * 16
    worker = the_lab.boot_worker(2, f"{rest}.{wrong}")
    started = time.monotonic()
    reason = ""
    deadline = started + JOIN_TIMEOUT
    while time.monotonic() < deadline:
        try:
            services = {s["name"]: s for s in node_status(the_lab, "worker-2")["services"]}
            reason = services["kubelet"]["reason"] or ""
        except (ControlClientError, KeyError):
            pass
        if "cannot join" in reason:
            break
        time.sleep(2)
    phase(pytestconfig, "bad token: qemu start to the error in status", started)
    assert "cannot join" in reason, f"{reason!r}\n{worker.tail(40)}"
    assert "signature" in reason and wrong not in reason, reason  # never the secret
    kubelet = {s["name"]: s for s in node_status(the_lab, "worker-2")["services"]}["kubelet"]
    assert kubelet["state"] == "waiting" and kubelet["restarts"] == 0, kubelet
    assert "join failed" in worker.console and wrong not in worker.console
    worker.kill()
    assert isinstance(worker, vm.VM)
