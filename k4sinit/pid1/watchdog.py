"""The hardware watchdog: PID 1 pets it only while it is healthy.

As systemd's RuntimeWatchdogSec and Talos do: once the device is open, the
machine resets unless someone writes to it within its timeout. PID 1 writes
(:meth:`Watchdog.pet`) every third of the timeout from a trio task
(:meth:`Watchdog.run`), so:

- a hung event loop (a blocking call, a deadlock) writes nothing: the machine
  resets after the timeout;
- a service marked ``critical: true`` that stays ``failed`` for longer than
  ``graceSeconds`` stops the petting (:func:`critical_failure`, logged once):
  the machine resets a timeout later. A critical service stopped by an
  operator is not failed and does not count.
- a clean shutdown disarms it with the magic close (``V``, then close:
  :meth:`Watchdog.disarm`) once the services have stopped, before the last
  steps and reboot(2); so does a failed boot, before its fallback (an
  emergency shell is not reset from under the operator).

Opening is PID 1's, at boot, after coldplug has loaded the driver
(``i6300esb`` in qemu): :func:`open_watchdog` returns None, with a warning
naming the device, when it is missing, busy (another opener), or refuses the
timeout; never a failed boot. The timeout is set with WDIOC_SETTIMEOUT and read
back with WDIOC_GETTIMEOUT (a driver rounds it to what it can do). A driver
built with ``nowayout`` ignores the magic close: the machine then resets after
a power-off request that does not power off; such kernels are not supported.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import struct
from collections.abc import Callable, Iterable
from typing import Any

import trio

from k4sinit.core.monitoring import WatchdogSpec
from k4sinit.core.state import State
from k4sinit.supervision.runner import ServiceRunner

# linux/watchdog.h: _IOWR('W', 6, int), _IOR('W', 7, int)
WDIOC_SETTIMEOUT = 0xC0045706
WDIOC_GETTIMEOUT = 0x80045707
MAGIC_CLOSE = b"V"

#: Says why PID 1 must stop petting (None: healthy).
Health = Callable[[], str | None]


class Watchdog:
    """An open watchdog device; see the module docstring.

    ``timeout`` is what the driver took (seconds); :meth:`run` pets every third of it.
    """

    def __init__(self, fd: int, device: str, timeout: float) -> None:
        self.fd: int | None = fd
        self.device = device
        self.timeout = timeout
        self.pets = 0

    @property
    def interval(self) -> float:
        return self.timeout / 3

    def pet(self) -> None:
        """Restart the device's countdown (a write; quietly nothing once disarmed)."""
        if self.fd is not None:
            os.write(self.fd, b"\0")
            self.pets += 1

    def disarm(self) -> None:
        """The magic close: the driver stops the countdown. Idempotent; errors ignored."""
        fd, self.fd = self.fd, None
        if fd is None:
            return
        with contextlib.suppress(OSError):
            os.write(fd, MAGIC_CLOSE)
        with contextlib.suppress(OSError):
            os.close(fd)

    async def run(self, healthy: Health, log: Any) -> None:
        """Pet every :attr:`interval` while ``healthy()`` says nothing; until cancelled.

        Once it names a reason, that is logged (an error: the machine resets in
        at most :attr:`timeout` seconds) and petting stops for good: a reset is
        the point. Cancellation leaves the device armed (the caller disarms).
        """
        while True:
            reason = healthy()
            if reason is not None:
                log.error(
                    "watchdog: no longer petted; the machine resets",
                    device=self.device,
                    reason=reason,
                    within_seconds=self.timeout,
                )
                await trio.sleep_forever()
            try:
                self.pet()
            except OSError as exc:
                log.error("watchdog: cannot pet", device=self.device, error=exc.strerror)
                await trio.sleep_forever()
            await trio.sleep(self.interval)


def open_watchdog(spec: WatchdogSpec, log: Any) -> Watchdog | None:
    """Open ``spec.device`` and set its timeout; None (a warning naming the device) if not."""
    try:
        fd = os.open(spec.device, os.O_WRONLY | os.O_CLOEXEC)
    except OSError as exc:
        why = "busy: another process has it open" if exc.errno == errno.EBUSY else exc.strerror
        log.warning("watchdog: not used", device=spec.device, error=why)
        return None
    try:
        fcntl.ioctl(fd, WDIOC_SETTIMEOUT, struct.pack("i", round(spec.timeout)))
        got = struct.unpack("i", fcntl.ioctl(fd, WDIOC_GETTIMEOUT, struct.pack("i", 0)))[0]
    except OSError as exc:
        watchdog = Watchdog(fd, spec.device, spec.timeout)
        watchdog.disarm()
        log.warning(
            "watchdog: not used",
            device=spec.device,
            error=f"cannot set a timeout of {spec.timeout:g}s: {exc.strerror}",
        )
        return None
    log.info("watchdog: armed", device=spec.device, timeout_seconds=got, grace=spec.grace)
    return Watchdog(fd, spec.device, float(got))


def critical_failure(runners: Iterable[ServiceRunner], grace: float, now: float) -> str | None:
    """Why a critical service stops the petting: failed for longer than ``grace``; else None."""
    for runner in runners:
        if runner.spec.critical and runner.state is State.FAILED and now - runner.since > grace:
            return (
                f"critical service {runner.name} failed {now - runner.since:.0f}s ago "
                f"(graceSeconds {grace:g}): {runner.reason}"
            )
    return None
