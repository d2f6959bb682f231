"""The diskless node end to end: the image ``scripts/run-node`` boots, booted once in qemu.

One VM for the module, as a user meets it: ``rootfs/node.py``'s image (the single
profile of ``etc/k4sinit/node-vm.yaml``, the roles served by the test stand-ins
because no k4s binary exists here), DHCP from qemu's user network, the control
socket relayed over the virtio-serial port to the host, where the host's own
``k4sinit`` CLI is used. The tests run in file order on that one VM and the last
two end it: reboot (the VM comes back), then poweroff (qemu exits 0).

Run alone with ``pytest -m e2e``; it is part of ``scripts/test``. Under TCG on two
busy cores a boot to all-ready takes minutes: each wait below is generous, and the
durations are printed at the end (and kept in the console log next to the image).
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from k4sinit.control import ControlClientError
from k4sinit.nodespec import Datastore, Profile, profile_roles

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "rootfs"))
import node  # noqa: E402 (rootfs/ is a directory of scripts, not a package)
import vm  # noqa: E402

pytestmark = [pytest.mark.vm, pytest.mark.e2e]

#: The single profile's long-running roles (the images oneshot is checked apart).
ROLES = tuple(r for r in profile_roles(Profile.SINGLE, Datastore.KINE) if r != "images")
BOOT_TIMEOUT = 600  # TCG, two cores shared with the rest of the machine
TIMES: dict[str, float] = {}


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
            last = machine.request("status", timeout=30)
            if predicate(last):
                return last  # type: ignore[no-any-return]
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


@pytest.fixture(scope="module")
def image(vm_tools: None) -> Path:
    started = time.monotonic()
    path = node.build_image(quiet=True)
    TIMES["image build (or cache hit)"] = time.monotonic() - started
    return path


@pytest.fixture(scope="module")
def machine(image: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[vm.VM]:
    """The running node; qemu is killed by pid on teardown, whatever happened."""
    work = tmp_path_factory.mktemp("e2e")
    the_vm = vm.VM(
        image,
        log_path=work / "console.log",
        control_socket=work / "control.sock",
        memory_mb=node.NODE_MEMORY_MB,
        reboot=True,
    )
    with the_vm:
        wait_status(the_vm, all_ready, BOOT_TIMEOUT, "every role ready")
        TIMES["qemu start to all ready"] = time.monotonic() - the_vm.started
        yield the_vm


def test_boot_stages_run_in_order(machine: vm.VM) -> None:
    machine.wait_for("hello from a container", 120)  # the demo runs after the roles are up
    console = machine.console
    stages = [
        r"k4sinit starting.*pid=1\b",  # from the initramfs
        r"TEST STAND-INS",  # the banner
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
        r"hello from a container",
    ]
    position = 0
    for stage in stages:  # each after the one before
        m = re.compile(stage).search(console, position)
        assert m, f"{stage!r} not on the console after {stages[stages.index(stage) - 1]!r}"
        position = m.end()
    assert "Traceback" not in console


def test_roles_became_ready_in_dependency_order(machine: vm.VM) -> None:
    # The demo exits a moment after its output (ctr removes the container first).
    wait_status(
        machine,
        lambda s: by_name(s)["hello-container"]["state"] == "completed",
        120,
        "hello-container completed",
    )
    ready_at: dict[str, float] = {}
    started_at: dict[str, float] = {}
    for role in (*ROLES, "images", "hello-container"):
        detail = machine.request("status", role)
        events = detail["events"]
        started_at[role] = next(e["time"] for e in events if e["reason"].startswith("started"))
        oneshot = role in ("images", "hello-container")  # counted when completed
        done = [e for e in events if (e["state"] == "completed" if oneshot else e["ready"])]
        assert done, f"{role} never {'completed' if oneshot else 'ready'}: {events}"
        ready_at[role] = done[0]["time"]
    for dependent, dependency in (
        ("kube-apiserver", "kine"),
        ("kube-scheduler", "kube-apiserver"),
        ("kube-controller-manager", "kube-apiserver"),
        ("images", "containerd"),
        ("kubelet", "images"),
        ("kubelet", "kube-apiserver"),
        ("hello-container", "images"),
    ):
        assert started_at[dependent] >= ready_at[dependency], (dependent, dependency)
    network = machine.request("status", "network")["network"]
    assert network["ready"]
    pki = machine.request("status")["pki"]
    assert pki["ready"], pki


def test_dhcp_lease_from_qemus_user_network(machine: vm.VM) -> None:
    out = machine.k4sinit("status", "network")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "10.0.2.15/24" in out.stdout


def test_banner_and_status_say_the_roles_are_stand_ins(machine: vm.VM) -> None:
    assert re.search(r"TEST STAND-INS.*not Kubernetes", machine.console)
    out = machine.k4sinit("status")
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"^image: .*TEST STAND-INS", out.stdout, re.M), out.stdout
    for role in ROLES:
        assert re.search(rf"^{role}\s+running\s+yes\b", out.stdout, re.M), out.stdout


def test_pause_image_imported_and_a_container_printed_on_the_console(machine: vm.VM) -> None:
    logs = machine.k4sinit("logs", "images", "-n", "200")
    assert logs.returncode == 0, logs.stderr
    assert re.search(r"k4sinit\.local/pause:3\.10", logs.stdout), logs.stdout
    assert "hello from a container" in machine.console
    hello = by_name(machine.request("status"))["hello-container"]
    assert hello["state"] == "completed", hello


def test_logs_of_a_role(machine: vm.VM) -> None:
    out = machine.k4sinit("logs", "kube-apiserver", "-n", "5")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert 1 <= len(lines) <= 5 and all(line.startswith(("stdout[", "stderr[")) for line in lines)


def test_restart_of_a_role_leaves_the_others_alone(machine: vm.VM) -> None:
    before = by_name(machine.request("status"))
    out = machine.k4sinit("restart", "kube-scheduler")
    assert out.returncode == 0, out.stdout + out.stderr
    after = back_with_a_new_pid(machine, before, "kube-scheduler", 120)
    for role in set(ROLES) - {"kube-scheduler"}:
        assert after[role]["pid"] == before[role]["pid"], role


def test_apiserver_killed_comes_back_and_its_dependents_keep_running(machine: vm.VM) -> None:
    before = by_name(machine.request("status"))
    out = machine.k4sinit("kill", "kube-apiserver", "-s", "KILL")
    assert out.returncode == 0, out.stdout + out.stderr
    started = time.monotonic()
    after = back_with_a_new_pid(machine, before, "kube-apiserver", 180)
    TIMES["apiserver SIGKILL to ready again"] = time.monotonic() - started
    assert after["kube-apiserver"]["restarts"] == before["kube-apiserver"]["restarts"] + 1
    assert after["kube-apiserver"]["last_exit"] == {"signal": "SIGKILL"}
    for role in ("kine", "kube-scheduler", "kube-controller-manager", "containerd", "kubelet"):
        assert after[role]["pid"] == before[role]["pid"], role
        assert after[role]["restarts"] == before[role]["restarts"], role


def test_reboot_brings_the_node_back(machine: vm.VM) -> None:
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
    TIMES["k4sinit reboot to all ready again"] = time.monotonic() - started


def test_poweroff_ends_qemu_cleanly(machine: vm.VM, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    out = machine.k4sinit("poweroff", timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert machine.wait(120) == 0
    assert machine.powered_off and not machine.panicked
    TIMES["k4sinit poweroff to qemu exit"] = time.monotonic() - started
    TIMES["whole run"] = time.monotonic() - machine.started
    with capsys.disabled():
        print("\ne2e durations (TCG): " + json.dumps({k: round(v, 1) for k, v in TIMES.items()}))
