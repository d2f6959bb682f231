"""Kubernetes probes: ``readinessProbe``, ``livenessProbe`` and ``startupProbe``
with one handler each (``exec``, ``httpGet``, ``tcpSocket``, and k4sinit's
``unixSocket``, ``file`` and ``notify``), and their timing (:class:`~k4sinit.core.spec.Probe`).

``notify: {}`` (systemd's sd_notify) is a readiness probe (``READY=1``; no
timing: nothing is polled) or a liveness probe (``WATCHDOG=1`` every
``periodSeconds``; no ``timeoutSeconds``), never a startup probe.

What ``httpGet`` sends is checked against what HTTP (h11) can send: a header
name is an HTTP token, values and the path printable ASCII.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

from k4sinit.config.reader import Reader, given
from k4sinit.core.names import is_domain
from k4sinit.core.spec import (
    ExecAction,
    FileAction,
    HTTPGetAction,
    NotifyAction,
    Probe,
    ProbeAction,
    TCPSocketAction,
    TLSConfig,
    UnixSocketAction,
)

__all__ = ["read_probe"]

_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an HTTP token
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]*")  # what h11 sends: ASCII, no control characters
_REQUEST_TARGET = re.compile(r"[\x21-\x7e]+")  # h11's request-target: visible ASCII
_PORT_HINT = "named ports are not supported, give the number"


def read_probe(parent: Reader, key: str, *, single_success: bool = False) -> Probe | None:
    """A Kubernetes probe: exactly one handler, plus timing (seconds may be fractional)."""
    r = parent.mapping(key)
    if r is None:
        return None
    actions = [read(h) for name, read in _HANDLERS if (h := r.mapping(name)) is not None]
    timing = given(
        initial_delay=r.number("initialDelaySeconds"),
        period=r.number("periodSeconds", above=True),
        timeout=r.number("timeoutSeconds", above=True),
        success_threshold=r.integer("successThreshold", 1),
        failure_threshold=r.integer("failureThreshold", 1),
    )
    r.finish()
    handlers = [name for name, _ in _HANDLERS if name in r.data]
    if not handlers:
        r.error("a probe needs a handler", f"add one of {', '.join(n for n, _ in _HANDLERS)}")
    elif len(handlers) > 1:
        r.error(f"more than one handler ({', '.join(handlers)}), a probe takes exactly one")
    if single_success and timing.get("success_threshold", 1) != 1:
        r.error(f"must be 1 for {key}", key="successThreshold")
    if len(actions) != 1 or actions[0] is None:
        return None
    if isinstance(actions[0], NotifyAction):
        _check_notify(r, key)
    return Probe(actions[0], **timing)


# Timing keys that mean nothing for a notify probe, by probe.
_NOTIFY_UNUSED = {
    "readinessProbe": (
        "initialDelaySeconds",
        "periodSeconds",
        "timeoutSeconds",
        "successThreshold",
        "failureThreshold",
    ),
    "livenessProbe": ("timeoutSeconds",),
}


def _check_notify(r: Reader, key: str) -> None:
    """Where ``notify`` may be, and which timing it takes (see the module docstring)."""
    unused = _NOTIFY_UNUSED.get(key)
    if unused is None:
        r.error(
            f"notify is not a {key} handler",
            "use it as readinessProbe (READY=1) or livenessProbe (WATCHDOG=1)",
            key="notify",
        )
        return
    why = {
        "readinessProbe": "READY=1 makes the service ready, nothing is polled",
        "livenessProbe": "WATCHDOG=1 must come every periodSeconds",
    }[key]
    for name in unused:
        if name in r.data:
            r.error(f"has no meaning with notify: {why}", f"remove {name}", key=name)


def _read_exec(r: Reader) -> ExecAction | None:
    command = r.strings("command", required=True, non_empty=True)
    r.finish()
    return None if command is None else ExecAction(command)


def _read_http_get(r: Reader) -> HTTPGetAction | None:
    scheme = r.choice("scheme", ("HTTP", "HTTPS"))
    host = _probe_host(r)
    port = r.integer("port", 1, maximum=65535, required=True, hint=_PORT_HINT)
    path = r.string("path")
    if path is not None and not path.startswith("/"):
        r.error(f"must start with '/', got {path!r}", key="path")
    elif path is not None and not _REQUEST_TARGET.fullmatch(path):
        hint = "percent-encode the rest, like %20 for a space"
        r.error(
            f"invalid path {path!r}: HTTP sends printable ASCII without spaces", hint, key="path"
        )
    headers = []
    for h in r.items("httpHeaders", "a mapping with name and value"):
        name, value = h.string("name", required=True), h.string("value", required=True)
        h.finish()
        if name is not None and not _HEADER_NAME.fullmatch(name):
            h.error(f"invalid HTTP header name {name!r}", key="name")
        elif value is not None and ("\r" in value or "\n" in value):
            h.error("an HTTP header value cannot contain a line break", key="value")
        elif value is not None and not _HEADER_VALUE.fullmatch(value):
            h.error("an HTTP header value must be printable ASCII", key="value")
        elif name is not None and value is not None:
            headers.append((name, value))
    tls = _read_tls(r, scheme)
    r.finish()
    if port is None:
        return None
    options = given(host=host, path=path, scheme=scheme, tls=tls)
    return HTTPGetAction(port=port, headers=tuple(headers), **options)


def _read_tls(parent: Reader, scheme: str | None) -> TLSConfig | None:
    r = parent.mapping("tls")
    if r is None:
        return None
    tls = TLSConfig(
        **given(
            ca_file=r.string("caFile"),
            cert_file=r.string("certFile"),
            key_file=r.string("keyFile"),
            server_name=r.string("serverName"),
        )
    )
    r.finish()
    if (tls.cert_file is None) != (tls.key_file is None):
        r.error("certFile and keyFile must be given together")
    if scheme != "HTTPS":
        r.error("tls needs scheme HTTPS", "add scheme: HTTPS")
    return tls


def _probe_host(r: Reader) -> str | None:
    """``host``: a DNS name or an IP address (it goes into a Host header as it is)."""
    host = r.string("host")
    if host is None:
        return None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not is_domain(host):
            r.error(f"invalid host {host!r}", "a host name or an IP address", key="host")
            return None
    return host


def _read_tcp_socket(r: Reader) -> TCPSocketAction | None:
    host = _probe_host(r)
    port = r.integer("port", 1, maximum=65535, required=True, hint=_PORT_HINT)
    r.finish()
    return None if port is None else TCPSocketAction(port=port, **given(host=host))


def _read_unix_socket(r: Reader) -> UnixSocketAction | None:
    path = r.absolute_path("path", required=True)
    r.finish()
    return None if path is None else UnixSocketAction(path)


def _read_file(r: Reader) -> FileAction | None:
    path = r.absolute_path("path", required=True)
    r.finish()
    return None if path is None else FileAction(path)


def _read_notify(r: Reader) -> NotifyAction:
    for key in r.data:
        r.error(f"unknown key {key!r}", "notify takes no options: write notify: {}", key=key)
    return NotifyAction()


_HANDLERS: tuple[tuple[str, Callable[[Reader], ProbeAction | None]], ...] = (
    ("exec", _read_exec),
    ("httpGet", _read_http_get),
    ("tcpSocket", _read_tcp_socket),
    ("unixSocket", _read_unix_socket),
    ("file", _read_file),
    ("notify", _read_notify),
)
