"""The ``metrics`` section: the opt-in Prometheus endpoint
(:class:`~k4sinit.core.monitoring.MetricsSpec`)::

    metrics:
      listen: /run/k4sinit/metrics.sock   # the default; or host:port, [::1]:9100, :9100

``metrics: {}`` turns it on at the default socket.
"""

from __future__ import annotations

from k4sinit.config.reader import Reader, given
from k4sinit.core.monitoring import MetricsSpec, parse_address

__all__ = ["read_metrics"]


def read_metrics(top: Reader) -> MetricsSpec | None:
    """``metrics``: where to listen; None when the section is absent."""
    r = top.mapping("metrics", hint="write it as metrics: {listen: /run/k4sinit/metrics.sock}")
    if r is None:
        return None
    listen = r.string("listen", hint="an absolute socket path or host:port")
    r.finish()
    if listen is not None and not listen.startswith("/"):
        try:
            parse_address(listen)
        except ValueError as exc:
            r.error(
                f"invalid listen address: {exc}",
                "an absolute unix socket path, or host:port such as 127.0.0.1:9100",
                key="listen",
            )
            listen = None
    return MetricsSpec(**given(listen=listen))
