"""The hardware watchdog in qemu: an ``i6300esb`` with ``-action watchdog=reset``.

A small image (no Kubernetes: one ``sleep`` service, a 20 s watchdog) is built
once and booted twice, one qemu at a time, with qemu's reboots allowed (a reset
shows as the kernel's banner a second time on the console):

- booted with ``k4sinit.debug=hang``: coldplug loads i6300esb, PID 1 arms the
  watchdog and the node runs for three timeouts without a reset; then the
  ``debug_hang`` control request blocks PID 1's event loop, and the watchdog
  resets the VM (the banner again);
- booted without it: ``debug_hang`` is refused, and ``k4sinit poweroff``
  disarms the watchdog (the magic close) and qemu exits 0, without a reset.

Run it niced, alone (TCG shares the machine's two cores):
``nice -n 19 .venv/bin/python -m pytest tests/test_watchdog_vm.py``.
Needs what tests/test_vm.py needs (root, qemu, Debian's kernel, the Go
userland and u-root, built when out of date).
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from k4sinit.control import ControlClientError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "rootfs"))
import build  # noqa: E402 (rootfs/ is a directory of scripts, not a package)
import vm  # noqa: E402

pytestmark = pytest.mark.vm

TIMEOUT = 20  # the watchdog's, seconds: petted every ~7 s
CONFIG = f"""\
watchdog: {{device: /dev/watchdog, timeoutSeconds: {TIMEOUT}}}
services:
  hello:
    command: [sh, -c, 'echo hello from the watchdog vm; exec sleep 100000']
    critical: true
"""
WATCHDOG = ["-device", "i6300esb", "-action", "watchdog=reset"]
BANNER = re.compile(r"Linux version \d")
BOOT_TIMEOUT = 600  # TCG on 2 busy cores: ~35 s when quiet, many minutes beside other VMs


@pytest.fixture(scope="module")
def image(vm_tools: None, userland: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("watchdog-image")
    config = out / "config.yaml"
    config.write_text(CONFIG)
    image = build.build(config, out, userland=userland, quiet=True)
    shutil.rmtree(out / "rootfs")
    return image


def boot(image: Path, name: str, append: str = "") -> vm.VM:
    return vm.VM(
        image,
        log_path=image.with_name(f"console-{name}.log"),
        control_socket=image.with_name(f"{name}.sock"),
        append=append,
        reboot=True,  # a reset boots again, so the console shows it
        quiet=False,  # the kernel's banner
        extra=WATCHDOG,
    )


def banners(machine: vm.VM) -> int:
    return len(BANNER.findall(machine.console))


def test_a_healthy_node_runs_on_and_a_hung_pid_1_is_reset(image: Path) -> None:
    machine = boot(image, "hang", "k4sinit.debug=hang")
    with machine:
        try:
            machine.wait_for(r"watchdog: armed.*device=/dev/watchdog", BOOT_TIMEOUT)
            machine.wait_for(r"supervising", BOOT_TIMEOUT)
        except vm.VMError as exc:
            pytest.fail(f"no armed watchdog (console in {machine.log_path}): {exc}")
        # Healthy for three timeouts: no reset meanwhile.
        healthy_until = time.monotonic() + 3 * TIMEOUT
        while time.monotonic() < healthy_until:
            assert banners(machine) == 1 and machine.exit_code is None, machine.tail()
            time.sleep(1)
        assert machine.request("status")["services"][0]["state"] == "running"
        assert machine.request("debug_hang", timeout=60) == {"hanging": True}
        machine.wait_for(r"debug: blocking the event loop", 60)
        hung = time.monotonic()
        try:
            machine.wait_for(r"(?s)Linux version \d.*Linux version \d", 4 * TIMEOUT + 120)
        except vm.VMError as exc:
            pytest.fail(f"no reset after the hang (console in {machine.log_path}): {exc}")
        reset_after = time.monotonic() - hung
    assert reset_after > TIMEOUT / 2  # the watchdog's doing, not the request's
    assert "Kernel panic" not in machine.console


def test_poweroff_disarms_the_watchdog_and_debug_hang_is_refused(image: Path) -> None:
    machine = boot(image, "poweroff")
    with machine:
        try:
            machine.wait_for(r"watchdog: armed", BOOT_TIMEOUT)
            machine.wait_for(r"ready=True .*service=hello", BOOT_TIMEOUT)
        except vm.VMError as exc:
            pytest.fail(f"no armed watchdog (console in {machine.log_path}): {exc}")
        with pytest.raises(ControlClientError, match=r"only with k4sinit\.debug=hang"):
            machine.request("debug_hang")
        assert machine.k4sinit("poweroff").returncode == 0
        try:
            machine.wait_for(re.escape(vm.POWER_OFF), BOOT_TIMEOUT)
            code = machine.wait(60)
        except vm.VMError as exc:
            pytest.fail(f"the VM did not power off (console in {machine.log_path}): {exc}")
    console = machine.console
    assert code == 0
    assert banners(machine) == 1
    assert console.index("watchdog: disarmed") < console.index(vm.POWER_OFF)
