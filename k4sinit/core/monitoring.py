"""What the ``metrics`` and ``watchdog`` sections ask for: pure types, no I/O, no trio.

``metrics: {listen: ...}`` opts into the Prometheus endpoint
(k4sinit.control.metrics serves it); ``watchdog: {device, timeoutSeconds,
graceSeconds}`` into petting a hardware watchdog (k4sinit.pid1.watchdog).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

DEFAULT_METRICS_SOCKET = "/run/k4sinit/metrics.sock"
DEFAULT_WATCHDOG_DEVICE = "/dev/watchdog"
DEFAULT_WATCHDOG_TIMEOUT = 30.0  # seconds; the i6300esb driver's own default
DEFAULT_WATCHDOG_GRACE = 60.0  # seconds a critical service may stay failed
# The watchdog's timeout: at least 5 s (PID 1 pets at a third of it and has gaps of
# a few seconds around its own start and shutdown); at most 1 h (drivers cap it lower).
MIN_WATCHDOG_TIMEOUT = 5.0
MAX_WATCHDOG_TIMEOUT = 3600.0


@dataclass(frozen=True, slots=True)
class MetricsSpec:
    """The ``metrics`` section: where the Prometheus text endpoint listens.

    ``listen`` is an absolute unix socket path, or ``host:port`` (``[::1]:9100``
    for IPv6; ``:9100`` for every address).
    """

    listen: str = DEFAULT_METRICS_SOCKET

    @property
    def unix_path(self) -> str | None:
        """The socket path when ``listen`` is one, else None."""
        return self.listen if self.listen.startswith("/") else None

    @property
    def tcp(self) -> tuple[str | None, int]:
        """(host, port) when ``listen`` is an address (host None: every address).

        Raises ValueError for a path (see :attr:`unix_path`) or a malformed address.
        """
        return parse_address(self.listen)


def parse_address(text: str) -> tuple[str | None, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` -> (host or None, port); ValueError says why."""
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ValueError(f"{text!r} is neither an absolute socket path nor host:port")
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} is not a number from 1 to 65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in brackets is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError(f"write an IPv6 address in brackets: [{host}]:{port_text}")
    return (host or None), int(port_text)


@dataclass(frozen=True, slots=True)
class WatchdogSpec:
    """The ``watchdog`` section: a hardware watchdog PID 1 pets while it is healthy.

    ``timeout``: the device's timeout (WDIOC_SETTIMEOUT), petted every third of
    it; ``grace``: how long a ``critical`` service may stay failed before PID 1
    stops petting (and the machine resets).
    """

    device: str = DEFAULT_WATCHDOG_DEVICE
    timeout: float = DEFAULT_WATCHDOG_TIMEOUT
    grace: float = DEFAULT_WATCHDOG_GRACE
