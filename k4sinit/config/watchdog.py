"""The ``watchdog`` section: a hardware watchdog PID 1 pets while healthy
(:class:`~k4sinit.core.monitoring.WatchdogSpec`)::

    watchdog:
      device: /dev/watchdog   # the default
      timeoutSeconds: 30      # the device's timeout (5 to 3600); petted every third of it
      graceSeconds: 60        # how long a `critical: true` service may stay failed

Only the file is checked here; a missing or busy device is a warning at boot.
"""

from __future__ import annotations

from k4sinit.config.reader import Reader, given
from k4sinit.core.monitoring import MAX_WATCHDOG_TIMEOUT, MIN_WATCHDOG_TIMEOUT, WatchdogSpec

__all__ = ["read_watchdog"]


def read_watchdog(top: Reader) -> WatchdogSpec | None:
    """``watchdog``: device, timeout and grace; None when the section is absent."""
    r = top.mapping("watchdog", hint="write it as watchdog: {device: /dev/watchdog}")
    if r is None:
        return None
    device = r.absolute_path("device")
    timeout = r.number("timeoutSeconds", MIN_WATCHDOG_TIMEOUT, maximum=MAX_WATCHDOG_TIMEOUT)
    grace = r.number("graceSeconds", maximum=MAX_WATCHDOG_TIMEOUT)
    r.finish()
    return WatchdogSpec(**given(device=device, timeout=timeout, grace=grace))
