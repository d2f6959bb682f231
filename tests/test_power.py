"""The end of a node (k4sinit/pid1/power.py): actions, the kill, the unmounts, reboot(2).

What a shutdown asks for is typed from the request or signal to reboot(2):
Action values are the kernel's magic numbers, the power ops and PID 1's
signals map onto them, and the first request wins. The kill and reboot(2)
run for real as PID 1 of a new pid namespace, where kill(-1) reaches only
the namespace and reboot(2) only ends it (the parent sees its init killed
by SIGHUP for a reboot, SIGINT for power-off and halt). The unmounts would
remount the host's / read-only, so they run against stand-ins for the mount
table, as does the order of boot.finish().
"""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from k4sinit.control.wire import POWER_OPS
from k4sinit.core.config import Config
from k4sinit.core.log import get_logger
from k4sinit.daemon import INIT_SIGNALS, RUN_SIGNALS, Daemon
from k4sinit.daemon.daemon import POWER_ACTIONS
from k4sinit.host.system import MS_RDONLY
from k4sinit.pid1 import boot, power
from k4sinit.pid1.power import Action

REPO = Path(__file__).resolve().parent.parent


def test_actions_are_the_kernels_reboot_commands() -> None:
    # include/uapi/linux/reboot.h
    assert Action.REBOOT.value == 0x01234567  # LINUX_REBOOT_CMD_RESTART
    assert Action.POWEROFF.value == 0x4321FEDC  # LINUX_REBOOT_CMD_POWER_OFF
    assert Action.HALT.value == 0xCDEF0123  # LINUX_REBOOT_CMD_HALT
    assert [a.verb for a in Action] == ["reboot", "poweroff", "halt"]


def test_every_power_request_names_the_action_of_its_verb() -> None:
    assert set(POWER_ACTIONS) == set(POWER_OPS)
    assert {op.value: action.verb for op, action in POWER_ACTIONS.items()} == {
        "reboot": "reboot",
        "poweroff": "poweroff",
        "halt": "halt",
    }


def test_pid_1s_signals_follow_busybox_init_and_run_only_stops() -> None:
    assert dict(INIT_SIGNALS) == {
        signal.SIGTERM: Action.REBOOT,
        signal.SIGINT: Action.REBOOT,  # ctrl-alt-del
        signal.SIGUSR1: Action.HALT,
        signal.SIGUSR2: Action.POWEROFF,
        signal.SIGPWR: Action.POWEROFF,
    }
    assert set(RUN_SIGNALS.values()) == {None}


async def test_the_first_shutdown_request_decides_how_the_node_ends(tmp_path: Path) -> None:
    daemon = Daemon(Config("t", {}), str(tmp_path / "sock"), get_logger(), power=True)
    daemon.request_shutdown("SIGUSR2", Action.POWEROFF)
    daemon.request_shutdown("k4sinit reboot", Action.REBOOT)
    daemon.request_shutdown("k4sinit stop --all", None)
    assert daemon.action is Action.POWEROFF


class _Log:
    """A stand-in logger that keeps nothing."""

    def info(self, *_: Any, **__: Any) -> None:
        pass

    warning = error = debug = info


# --- the end, in order (stand-ins: nothing is killed, unmounted or rebooted) -------------


class _Writer:
    """A stand-in for the log writer: flushing is a step of the sequence."""

    def __init__(self, steps: list[str]) -> None:
        self.steps = steps

    def wait_idle(self, _: float) -> None:
        self.steps.append("flush logs")


def test_finish_kills_then_flushes_then_unmounts_then_reboots(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    steps: list[str] = []
    monkeypatch.setattr(power, "kill_everything", lambda say: steps.append("kill everything"))
    monkeypatch.setattr(power, "unmount_all", lambda say: steps.append("unmount"))
    monkeypatch.setattr(power, "reboot", lambda action: steps.append(f"reboot({action.verb})"))
    with pytest.raises(boot.BootError, match=r"reboot\(halt\) refused by the kernel"):
        boot.finish(Action.HALT, _Log(), _Writer(steps))  # type: ignore[arg-type]
    assert steps == ["kill everything", "flush logs", "unmount", "reboot(halt)"]


def test_unmount_all_goes_deepest_first_and_leaves_root_read_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    table = {
        "/": "tmpfs",
        "/proc": "proc",
        "/sys": "sysfs",
        "/sys/fs/cgroup": "cgroup2",
        "/dev": "devtmpfs",
        "/dev/pts": "devpts",
        "/run": "tmpfs",
        "/var/lib/k4sinit": "tmpfs",
        "/var/lib/k4sinit/busy": "overlay",
        "/tmp": "tmpfs",
    }
    calls: list[tuple[str, ...]] = []

    def umount(target: str, flags: int = 0) -> None:
        calls.append(("umount", target, *(["detach"] if flags == power.MNT_DETACH else [])))
        if target == "/var/lib/k4sinit/busy" and not flags:
            raise OSError(16, "busy")

    def mount(source: str, target: str, fstype: str, flags: int, *_: Any) -> None:
        calls.append(("mount", target, "read-only" if flags & MS_RDONLY else "rw"))

    monkeypatch.setattr(power, "mounted", lambda: dict(table))
    monkeypatch.setattr(power, "umount", umount)
    monkeypatch.setattr(power, "mount", mount)
    said: list[str] = []
    power.unmount_all(said.append)
    assert calls == [
        ("umount", "/var/lib/k4sinit/busy"),
        ("umount", "/var/lib/k4sinit/busy", "detach"),  # busy: lazily
        ("umount", "/var/lib/k4sinit"),
        ("umount", "/run"),
        ("umount", "/tmp"),
        ("mount", "/", "read-only"),
    ]
    assert said == []


# --- for real, as PID 1 of a pid namespace ------------------------------------------------

# Every snippet refuses to act unless it is PID 1 of its own namespace: kill(-1) or
# reboot(2) outside one would reach the whole machine.
AS_PID_1 = """
import os, sys
if os.getpid() != 1:
    sys.exit("not PID 1 of a new pid namespace: refusing")
"""


def as_pid_1(unshare: str, snippet: str) -> subprocess.CompletedProcess[str]:
    code = AS_PID_1 + textwrap.dedent(snippet)
    return subprocess.run(
        [unshare, "--pid", "--fork", "--mount-proc", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def test_kill_everything_terms_then_kills_what_ignores_it(unshare: str) -> None:
    done = as_pid_1(
        unshare,
        """
        import signal, subprocess
        from k4sinit.pid1 import power
        polite = subprocess.Popen(["sleep", "1000"])
        stubborn = subprocess.Popen(
            [sys.executable, "-c",
             "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
             "print('ready', flush=True); time.sleep(1000)"],
            stdout=subprocess.PIPE, text=True,
        )
        assert stubborn.stdout.readline() == "ready\\n"
        said = []
        power.kill_everything(said.append, grace=0.5)
        print(said)
        print(power._count_others())
        """,
    )
    assert done.returncode == 0, done.stderr
    said, left = done.stdout.splitlines()
    assert said == "['processes left after SIGTERM: 1']"
    assert left == "0"


@pytest.mark.parametrize(
    ("action", "ends_by"),
    [("REBOOT", signal.SIGHUP), ("POWEROFF", signal.SIGINT), ("HALT", signal.SIGINT)],
)
def test_reboot_in_a_pid_namespace_ends_it_as_the_action_says(
    unshare: str, action: str, ends_by: signal.Signals
) -> None:
    done = as_pid_1(
        unshare,
        f"""
        from k4sinit.pid1 import power
        power.reboot(power.Action.{action})
        sys.exit("reboot(2) returned")
        """,
    )
    # unshare reports its child's death by a signal as 128+N (pid1/container.py).
    assert done.returncode in (128 + ends_by, -ends_by), done.stderr
