"""Health probes: one check, the Kubernetes threshold logic, and the probe loop.

Three layers, each usable alone:

* :class:`Prober` runs one check of a :data:`~k4sinit.core.spec.ProbeAction` and
  turns every probe failure into a :class:`ProbeResult` with a short, human
  reason. It spawns nothing: exec probes go through an injected
  :data:`ExecRunner`, because k4sinit has exactly one process waiter.
* :class:`ProbeTracker` is the pure threshold logic (no trio, no I/O).
* :func:`run_probe` is the loop: initial delay, then one check every
  ``period`` seconds (start to start, on trio's clock), reporting verdict
  changes through a callback. With ``fast_first`` (readiness and startup
  probes) it checks sooner until the first success: 50 ms after the first
  check, then twice as long each time, up to ``period``; so a service is not
  seen ready a whole period late. Failures of those extra checks are counted
  at most once a period, so ``failureThreshold`` periods keep their meaning.

The runner builds one ``Prober(run_exec)`` and, per probe, starts::

    tracker = await nursery.start(run_probe, probe, prober.check, on_verdict)
"""

from __future__ import annotations

import errno
import functools
import os
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn, assert_never

import trio

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
from k4sinit.supervision.timeouts import DaemonLate, call_with_timeout

ExecRunner = Callable[[Sequence[str], float], Awaitable[tuple[int | None, str]]]
"""``run_exec(argv, timeout) -> (exit code, or None if killed at the timeout; output)``.

It must enforce ``timeout`` itself (kill and reap the child) and clean up if
cancelled: :meth:`Prober.check` only cancels it as a backstop, after
``timeout + EXEC_GRACE`` seconds. It raises :class:`ProbeInconclusive` when
the daemon cannot run the command for reasons of its own (out of file
descriptors, memory or processes), and :class:`~k4sinit.supervision.timeouts.DaemonLate`
when the daemon was too late itself to tell (see :mod:`k4sinit.supervision.timeouts`).
"""

USER_AGENT = "k4sinit-probe"
FIRST_INTERVAL = 0.05  # seconds between the first checks of a fast_first probe
EXEC_GRACE = 1.0  # seconds run_exec gets past the timeout to kill and reap
_BODY_LIMIT = 64 * 1024  # body bytes read (and discarded) after the status line
_CHUNK = 16 * 1024
_OUTPUT_LIMIT = 200
_CLIENT_CERT_REJECTED = "TLS: server rejected our client certificate (or none was sent)"
# Alerts a server sends when it does not accept the client certificate.
_CLIENT_CERT_ALERTS = frozenset(
    {
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "SSLV3_ALERT_CERTIFICATE_REVOKED",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "TLSV1_ALERT_ACCESS_DENIED",
        "TLSV1_ALERT_UNKNOWN_CA",
    }
)


# Errors that say the daemon is short of something, not that the service is unwell.
_OWN_SHORTAGE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """The outcome of one check, with a short reason for people.

    An ``inconclusive`` result (``ok`` is False) says nothing about the
    service: the daemon could not make the check, or was too late itself to
    see the answer. :class:`ProbeTracker` does not count it either way.
    """

    ok: bool
    message: str
    inconclusive: bool = False


class ProbeInconclusive(Exception):
    """A check could not be made for the daemon's own reasons (e.g. EMFILE).

    The message says why; :meth:`Prober.check` turns it into an inconclusive
    :class:`ProbeResult`.
    """


CheckFn = Callable[[ProbeAction, float], Awaitable[ProbeResult]]
"""``check(action, timeout) -> ProbeResult``, e.g. :meth:`Prober.check`."""

VerdictFn = Callable[[bool, ProbeResult], Awaitable[None] | None]
"""``on_verdict(healthy, result)``: plain or async; called on each verdict change."""


class Prober:
    """Runs single checks; holds the SSL contexts built so far (one per TLSConfig).

    A context is rebuilt when one of its files changes (size, mtime or inode),
    so rotated certificates are picked up without a restart.
    """

    def __init__(self, run_exec: ExecRunner) -> None:
        self._run_exec = run_exec
        self._ssl: dict[TLSConfig, tuple[tuple[tuple[int, int, int], ...], ssl.SSLContext]] = {}

    # The timeout is part of the probe (it names it in the result), hence ASYNC109.
    async def check(self, action: ProbeAction, timeout: float) -> ProbeResult:  # noqa: ASYNC109
        """Run one check of ``action``, bounded by ``timeout`` seconds.

        Never raises for a failing probe (refused, reset, TLS, bad HTTP, missing
        files, timeout): those are ``ProbeResult(ok=False, ...)``. A check the
        daemon could not make (out of file descriptors), or could not wait for
        because its own loop was late (see :mod:`k4sinit.supervision.timeouts`: time the
        daemon was late does not count against ``timeout``), is an
        inconclusive result. Cancellation from outside propagates; the
        connection is closed on the way out.
        """
        if isinstance(action, FileAction):
            return _file(action)  # a stat: nothing to wait for
        limit = timeout + EXEC_GRACE if isinstance(action, ExecAction) else timeout
        try:
            return await call_with_timeout(
                limit, functools.partial(self._check, action, timeout), allowance=timeout
            )
        except trio.TooSlowError:
            return ProbeResult(False, f"timed out after {timeout:g}s")
        except DaemonLate as exc:
            return ProbeResult(False, f"not counted: no answer, but {exc}", inconclusive=True)
        except ProbeInconclusive as exc:
            return ProbeResult(False, f"not counted: {exc}", inconclusive=True)

    async def _check(self, action: ProbeAction, seconds: float) -> ProbeResult:
        match action:
            case HTTPGetAction():
                return await self._http_get(action)
            case TCPSocketAction():
                where = _host_port(action.host, action.port)
                try:
                    stream = await trio.open_tcp_stream(action.host, action.port)
                except OSError as exc:
                    _raise_own_shortage(exc)
                    return ProbeResult(False, _connect_error(exc, action.host, where))
                await trio.aclose_forcefully(stream)
                return ProbeResult(True, f"TCP connect to {where}")
            case UnixSocketAction():
                try:
                    unix = await trio.open_unix_socket(action.path)
                except FileNotFoundError:
                    return ProbeResult(False, f"no socket at {action.path}")
                except ConnectionRefusedError:
                    return ProbeResult(False, f"connection refused on {action.path}")
                except OSError as exc:
                    _raise_own_shortage(exc)
                    return ProbeResult(False, f"cannot connect to {action.path}: {_why(exc)}")
                await trio.aclose_forcefully(unix)
                return ProbeResult(True, f"connected to {action.path}")
            case FileAction():
                return _file(action)
            case ExecAction():
                return await self._exec(action, seconds)
            case NotifyAction():  # the runner answers these from the service's messages
                raise ValueError("a notify probe is not checked, the service notifies")
            case _:
                assert_never(action)

    async def _exec(self, action: ExecAction, seconds: float) -> ProbeResult:
        code, output = await self._run_exec(action.command, seconds)
        if code is None:
            return ProbeResult(False, f"timed out after {seconds:g}s")
        lines = [line.strip() for line in output.splitlines() if line.strip()]
        tail = f": {lines[-1][:_OUTPUT_LIMIT]}" if lines else ""
        if code < 0:
            return ProbeResult(False, f"exec killed by signal {-code}{tail}")
        return ProbeResult(code == 0, f"exec exited {code}{tail}")

    async def _http_get(self, action: HTTPGetAction) -> ProbeResult:
        where = _host_port(action.host, action.port)
        url = f"{action.scheme.lower()}://{where}{action.path}"
        context = None
        if action.scheme.upper() == "HTTPS":
            try:
                context = self._ssl_context(action.tls)
            except OSError as exc:  # includes ssl.SSLError (bad PEM, key mismatch)
                return ProbeResult(False, f"TLS config: {_why(exc)}")
        try:
            tcp = await trio.open_tcp_stream(action.host, action.port)
        except OSError as exc:
            _raise_own_shortage(exc)
            return ProbeResult(False, _connect_error(exc, action.host, where))
        import h11  # here, not with the module: only httpGet probes use it

        stream: trio.abc.Stream = tcp
        tls_up = False
        try:
            if context is not None:
                hostname = action.tls.server_name or action.host
                stream = trio.SSLStream(
                    tcp, context, server_hostname=hostname, https_compatible=True
                )
                await stream.do_handshake()
                tls_up = True
            status = await _get_status(stream, action, where)
        except (OSError, trio.BrokenResourceError, h11.ProtocolError) as exc:
            return ProbeResult(False, _io_error(exc, url, where, tls_up=tls_up))
        finally:
            await trio.aclose_forcefully(stream)
        if status is None:
            # A TLS 1.3 server checks our certificate after our side of the
            # handshake is done: a rejection often looks like a plain hang-up.
            return ProbeResult(
                False, _CLIENT_CERT_REJECTED if tls_up else f"no response from {url}"
            )
        if 200 <= status < 400:
            return ProbeResult(True, f"HTTP {status}")
        return ProbeResult(False, f"HTTP {status} from {url}")

    def _ssl_context(self, tls: TLSConfig) -> ssl.SSLContext:
        """The cached context for ``tls``; raises OSError/ssl.SSLError on bad files."""
        files = [f for f in (tls.ca_file, tls.cert_file, tls.key_file) if f is not None]
        stamp = tuple((s.st_mtime_ns, s.st_size, s.st_ino) for s in map(os.stat, files))
        cached = self._ssl.get(tls)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        if tls.ca_file is not None:
            context = ssl.create_default_context(cafile=tls.ca_file)
        else:  # like kubelet: HTTPS probes without a CA do not verify the server
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if tls.cert_file is not None:
            context.load_cert_chain(tls.cert_file, tls.key_file)
        self._ssl[tls] = (stamp, context)
        return context


def _file(action: FileAction) -> ProbeResult:
    # A stat in the trio thread: the node's paths are local (tmpfs), and a
    # thread hop per check cost ~13x the CPU (bench/idle.py).
    if os.path.exists(action.path):
        return ProbeResult(True, f"file {action.path} exists")
    return ProbeResult(False, f"file {action.path} does not exist")


async def _get_status(stream: trio.abc.Stream, action: HTTPGetAction, where: str) -> int | None:
    """Send the GET; return the status, or None if the peer closed before replying.

    Reads and discards up to 64 KiB of body so the server sees an orderly close.
    Raises OSError, trio.BrokenResourceError or h11.ProtocolError.
    """
    import h11

    given = {name.lower() for name, _ in action.headers}
    defaults = (("Host", where), ("User-Agent", USER_AGENT), ("Connection", "close"))
    headers = [*action.headers, *((n, v) for n, v in defaults if n.lower() not in given)]
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(method="GET", target=action.path, headers=headers)
    await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
    status = None
    received = 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            if received > _BODY_LIMIT:
                return status
            data = await stream.receive_some(_CHUNK)
            if not data and status is None:
                return None
            received += len(data)
            conn.receive_data(bytes(data))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            return status


def _io_error(exc: Exception, url: str, where: str, *, tls_up: bool) -> str:
    """A short reason for an error talking HTTP(S) to ``url``."""
    import h11

    if isinstance(exc, h11.RemoteProtocolError):
        return f"bad HTTP response from {url}: {exc}"
    if isinstance(exc, h11.LocalProtocolError):  # e.g. a header value with a newline
        return f"bad HTTP request for {url}: {exc}"
    cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"TLS: server certificate not trusted: {cause.verify_message}"
    if isinstance(cause, ssl.SSLEOFError) and not tls_up:
        return f"TLS: {where} closed the connection during the handshake"
    if isinstance(cause, ssl.SSLError):
        reason = cause.reason or ""
        if reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED":
            return _CLIENT_CERT_REJECTED
        if reason in _CLIENT_CERT_ALERTS:
            return f"TLS: server rejected our client certificate ({_words(reason)})"
        return f"TLS: {_words(reason) if reason else _why(cause)}"
    if tls_up:  # message-less break or reset right after a TLS 1.3 handshake
        return _CLIENT_CERT_REJECTED
    if isinstance(cause, ConnectionResetError):
        return f"connection reset by {where}"
    if isinstance(cause, OSError):
        return f"{url}: {_why(cause)}"
    return f"connection to {where} broken"


def _raise_own_shortage(exc: OSError) -> None:
    """Raise ProbeInconclusive if ``exc`` (or a connection attempt in it) is the daemon's shortage."""
    group = exc.__cause__
    attempts = list(group.exceptions) if isinstance(group, ExceptionGroup) else []
    for error in (exc, *attempts):
        if isinstance(error, OSError) and error.errno in _OWN_SHORTAGE_ERRNOS:
            raise ProbeInconclusive(f"k4sinit cannot open a socket: {_why(error)}") from exc


def _connect_error(exc: OSError, host: str, where: str) -> str:
    """A short reason for a failed ``trio.open_tcp_stream``."""
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve {host}: {_why(exc)}"
    group = exc.__cause__
    attempts = list(group.exceptions) if isinstance(group, ExceptionGroup) else [exc]
    if all(isinstance(e, ConnectionRefusedError) for e in attempts):
        return f"connection refused to {where}"
    return f"cannot connect to {where}: {_why(attempts[0])}"


def _why(exc: BaseException) -> str:
    if (
        isinstance(exc, OSError)
        and exc.errno
        and not isinstance(exc, ssl.SSLError | socket.gaierror)
    ):
        return os.strerror(exc.errno)
    if isinstance(exc, socket.gaierror) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def _words(reason: str) -> str:
    return reason.lower().replace("_", " ")


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class ProbeTracker:
    """Kubernetes probe thresholds: turns a stream of results into verdicts.

    The verdict starts unknown (``healthy is None``; for readiness that means
    "not ready"). ``success_threshold`` consecutive successes make it True,
    ``failure_threshold`` consecutive failures make it False; any result of
    the other kind resets the count. Pure logic: no trio, no I/O.
    """

    def __init__(self, probe: Probe) -> None:
        self._success_threshold = probe.success_threshold
        self._failure_threshold = probe.failure_threshold
        self._healthy: bool | None = None
        self._last: ProbeResult | None = None
        self._successes = 0
        self._failures = 0

    @property
    def healthy(self) -> bool | None:
        """The current verdict; None until the first threshold is reached."""
        return self._healthy

    @property
    def last(self) -> ProbeResult | None:
        """The most recent result, if any."""
        return self._last

    @property
    def successes(self) -> int:
        """Consecutive successes up to now (0 after a failure)."""
        return self._successes

    @property
    def failures(self) -> int:
        """Consecutive failures up to now (0 after a success)."""
        return self._failures

    def record(self, result: ProbeResult, *, count_failure: bool = True) -> bool | None:
        """Count ``result``; return the new verdict if it changed, else None.

        An inconclusive result becomes ``last`` but changes no count; so does a
        failure with ``count_failure`` False (an extra check of a fast start).
        """
        self._last = result
        if result.inconclusive or (not result.ok and not count_failure):
            return None
        if result.ok:
            self._successes, self._failures = self._successes + 1, 0
            reached = self._successes >= self._success_threshold
        else:
            self._successes, self._failures = 0, self._failures + 1
            reached = self._failures >= self._failure_threshold
        if not reached or self._healthy is result.ok:
            return None
        self._healthy = result.ok
        return result.ok


async def run_probe(
    probe: Probe,
    check: CheckFn,
    on_verdict: VerdictFn,
    *,
    fast_first: bool = False,
    task_status: trio.TaskStatus[ProbeTracker] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Probe forever: after ``initial_delay``, one check every ``period`` seconds.

    Calls ``check(probe.action, probe.timeout)`` (which must not raise for
    probe failures, see :meth:`Prober.check`), feeds a :class:`ProbeTracker`
    and calls ``on_verdict(healthy, result)`` on each verdict change; an async
    ``on_verdict`` is awaited before the next check. Checks never overlap:
    periods are measured start to start on trio's clock, and a check (plus
    callback) that overruns its period is followed at once by the next.
    With ``fast_first``, the interval starts at :data:`FIRST_INTERVAL` and
    doubles up to ``period`` until the first success (see the module
    docstring). Reports the tracker through ``task_status.started`` as soon as
    it runs (so the caller can read ``healthy`` and ``last``). Ends only by
    cancellation.
    """
    tracker = ProbeTracker(probe)
    task_status.started(tracker)
    due = trio.current_time() + probe.initial_delay
    interval = min(FIRST_INTERVAL, probe.period) if fast_first else probe.period
    counted = -float("inf")  # when the last failure was counted
    succeeded = False
    while True:
        await trio.sleep_until(due)
        result = await check(probe.action, probe.timeout)
        # A period's worth of time since the last counted failure (less a rounding error).
        count = succeeded or due - counted >= probe.period - 1e-9
        verdict = tracker.record(result, count_failure=count)
        if count and not result.ok and not result.inconclusive:
            counted = due
        if verdict is not None:
            pending = on_verdict(verdict, result)
            if pending is not None:
                await pending
        succeeded = succeeded or result.ok
        interval = probe.period if succeeded else interval
        due = max(due + interval, trio.current_time())
        interval = min(interval * 2, probe.period)


def describe(action: ProbeAction) -> str:
    """A short human form of a probe action, e.g. ``httpGet https://127.0.0.1:6443/readyz``."""
    match action:
        case HTTPGetAction():
            return f"httpGet {action.scheme.lower()}://{_host_port(action.host, action.port)}{action.path}"
        case TCPSocketAction():
            return f"tcpSocket {_host_port(action.host, action.port)}"
        case UnixSocketAction():
            return f"unixSocket {action.path}"
        case FileAction():
            return f"file {action.path}"
        case ExecAction():
            return "exec " + " ".join(action.command)
        case NotifyAction():
            return "notify (NOTIFY_SOCKET)"
