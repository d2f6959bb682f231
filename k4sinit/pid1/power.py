"""The end of a node's life: kill what is left, sync, unmount, reboot(2).

Runs after the supervisor has stopped every service in reverse dependency
order, outside trio (nothing else runs by then), as PID 1 only. In a pid
namespace reboot(2) ends the namespace: the parent sees its init killed by
SIGHUP (reboot) or SIGINT (power-off, halt).
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import os
import signal
import time
from collections.abc import Callable

from k4sinit.host.system import MS_RDONLY, MS_REMOUNT, mount, mounted, umount

# The process's own symbols, libc's among them (as reaper.py does): find_library
# would run ldconfig in a subprocess at import, ~3 ms of every start.
_libc = ctypes.CDLL(None, use_errno=True)

MNT_DETACH = 2
KEEP_MOUNTED = ("/", "/proc", "/sys", "/dev")  # remounted read-only or left to the kernel


class Action(enum.Enum):
    """How a shutdown ends (``k4sinit reboot|poweroff|halt``, signals)."""

    REBOOT = 0x01234567  # RB_AUTOBOOT
    POWEROFF = 0x4321FEDC  # RB_POWER_OFF
    HALT = 0xCDEF0123  # RB_HALT_SYSTEM

    @property
    def verb(self) -> str:
        """``reboot``, ``poweroff`` or ``halt``: the command and the log's word for it."""
        return self.name.lower()


RB_DISABLE_CAD = 0  # ctrl-alt-del sends SIGINT to init instead of rebooting at once


def disable_ctrl_alt_del() -> bool:
    """Hand ctrl-alt-del to init as SIGINT (fails harmlessly in a container)."""
    return int(_libc.reboot(RB_DISABLE_CAD)) == 0


PF_KTHREAD = 0x00200000  # include/linux/sched.h: a kernel thread


def kill_everything(say: Callable[[str], None], grace: float = 5.0) -> None:
    """SIGTERM every process but us, reap for up to ``grace`` seconds, then SIGKILL.

    As PID 1 every process is our descendant or an orphan of ours, so
    waitpid(-1) collects them all.
    """
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(-1, sig)
        if _reap_until_none_left(wait):
            return
        say(f"processes left after {signal.Signals(sig).name}: {_count_others()}")


def _reap_until_none_left(seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return True
        if pid == 0:
            time.sleep(0.02)
    return False


def _count_others() -> int:
    """Processes other than us, kernel threads not counted (they take no signal)."""
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or entry == str(os.getpid()):
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                flags = int(f.read().rpartition(b")")[2].split()[6])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
        if not flags & PF_KTHREAD:
            count += 1
    return count


def unmount_all(say: Callable[[str], None]) -> None:
    """Unmount what can be (deepest first); remount / read-only."""
    for target in sorted(mounted(), key=len, reverse=True):
        if target in KEEP_MOUNTED or target.startswith(("/proc/", "/sys/", "/dev/")):
            continue
        try:
            umount(target)
        except OSError:
            with contextlib.suppress(OSError):
                umount(target, MNT_DETACH)  # busy: lazily, it goes with the kernel
    with contextlib.suppress(OSError):
        mount("", "/", "", MS_REMOUNT | MS_RDONLY)


def reboot(action: Action) -> None:
    """reboot(2). Returns only if the kernel refused (not PID 1, no CAP_SYS_BOOT)."""
    os.sync()
    if _libc.reboot(action.value) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"reboot({action.verb}): {os.strerror(err)}")
