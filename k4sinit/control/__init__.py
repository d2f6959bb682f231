"""The control socket: wire types shared by server and client, the server, the client.

Protocol: over a unix stream socket the client sends ONE request, a JSON object
on one line of at most :data:`MAX_REQUEST` bytes; the server answers with JSON
lines, each ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``,
then closes. Streaming requests (``logs`` with ``follow``) get one line per
result until the client goes away. ``logs`` may send its backlog as several
result lines (lists to concatenate). A request that is malformed, too big or
late gets an error line and the connection is closed; the daemon is never
disturbed.

Trust, both ways. The server serves only peers whose uid (SO_PEERCRED) is root
or its own; its socket is mode 0600 in a directory that it owns and that no one
else may write (it refuses to start otherwise: in someone else's or a shared
directory the socket could be renamed and replaced). The client believes only a
server whose uid is root or the client's own.

Admission: no client can keep another out. The accept loop never waits for a
slot, and an accept error (EMFILE...) is logged and backed off, never fatal. Every
phase of a connection is bounded: the request line by :data:`REQUEST_TIMEOUT` and
:data:`MAX_REQUEST`, every reply line by :data:`SEND_TIMEOUT` (a client that does
not read is dropped), a reply by :data:`REPLY_CHUNK` bytes held at a time, a
follower by the bounded channel of ``ServiceRunner.follow_logs``. Operator commands
(:data:`OPERATOR_OPS`: power, stop, start, restart, kill) are served as soon as
they are read and never wait for a slot; the read-only requests share
:data:`MAX_CONNECTIONS` slots and followers :data:`MAX_FOLLOWERS`, and a client that
finds them all taken is told "busy" at once. When the daemon runs out of file
descriptors (accept fails), or when the socket holds a quarter of the daemon's
RLIMIT_NOFILE, the oldest connection still waiting for its request line is dropped
to make room: the daemon keeps descriptors for its services and for the next client.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import socket
import stat
import struct
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from signal import Signals
from typing import TYPE_CHECKING, Any, TypedDict

import trio

# The wire forms of a service's state, re-exported: the CLI reads every reply from here.
from k4sinit.core.state import ExitJSON as ExitJSON
from k4sinit.core.state import LogLineJSON as LogLineJSON
from k4sinit.core.state import ServiceDetail as ServiceDetail
from k4sinit.core.state import ServiceSnapshot as ServiceSnapshot

if TYPE_CHECKING:  # types only: the CLI does not load pyroute2 to read a reply
    from k4sinit.network import InterfaceSnapshot as InterfaceSnapshot
    from k4sinit.network import NetworkSnapshot as NetworkSnapshot
    from k4sinit.node.preflight import CheckJSON as CheckJSON
    from k4sinit.node.preflight import SummaryJSON as SummaryJSON

DEFAULT_SOCKET = "/run/k4sinit/control.sock"
MAX_REQUEST = 64 * 1024
REQUEST_TIMEOUT = 10.0  # to send the request line
SEND_TIMEOUT = 10.0  # for the client to take each reply line
MAX_CONNECTIONS = 64  # read-only requests (status, logs, kubeconfig) served at once
MAX_FOLLOWERS = 64  # ``logs -f`` clients at once
REPLY_CHUNK = 64 * 1024  # a long reply (the logs backlog) is sent in lines of about this size
ACCEPT_BACKOFF = 0.1  # after an accept error such as EMFILE
LISTEN_BACKLOG = 64  # connections the kernel queues for accept(); more wait in connect()
ACCEPT_LOG_INTERVAL = 10.0  # a streak of accept errors is logged at most this often

OPS = (
    "status",
    "logs",
    "start",
    "stop",
    "restart",
    "kill",
    "stop_all",
    "reboot",
    "poweroff",
    "halt",
    "kubeconfig",
)
POWER_OPS = ("reboot", "poweroff", "halt")
NAMED_OPS = ("logs", "start", "stop", "restart", "kill")
# What an operator must always get through with, however busy the socket is.
OPERATOR_OPS = ("start", "stop", "restart", "kill", "stop_all", *POWER_OPS)


class RequestError(Exception):
    """A request the daemon refuses; the message is sent to the client as is."""


@dataclass(frozen=True, slots=True)
class Request:
    """One control request. ``name`` is a service; ``lines``/``follow`` are for logs;
    ``signal`` (a name: ``KILL`` or ``SIGKILL``) is for kill."""

    op: str
    name: str | None = None
    lines: int = 50
    follow: bool = False
    signal: str = "TERM"

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"op": self.op}
        if self.name is not None:
            data["name"] = self.name
        if self.op == "logs":
            data.update(lines=self.lines, follow=self.follow)
        if self.op == "kill":
            data["signal"] = self.signal
        return data

    def signal_number(self) -> Signals:
        """The ``signal`` field as a signal; RequestError names an unknown one."""
        name = self.signal.upper()
        try:
            return Signals[name if name.startswith("SIG") else "SIG" + name]
        except KeyError:
            raise RequestError(f"unknown signal {self.signal!r}; e.g. TERM, KILL, HUP") from None

    @classmethod
    def from_json(cls, data: Any) -> Request:
        """Validate a decoded request; raises :class:`RequestError` naming the problem."""
        if not isinstance(data, dict):
            raise RequestError(f"request must be a JSON object, got {type(data).__name__}")
        op = data.get("op")
        if op not in OPS:
            raise RequestError(f"unknown op {_show(op)}; expected one of {', '.join(OPS)}")
        name = data.get("name")
        if name is not None and not isinstance(name, str):
            raise RequestError("'name' must be a string")
        if op in NAMED_OPS and not name:
            raise RequestError(f"op {op!r} needs a service 'name'")
        lines = data.get("lines", 50)
        if not isinstance(lines, int) or isinstance(lines, bool) or not 0 <= lines <= 100_000:
            raise RequestError("'lines' must be an integer from 0 to 100000")
        follow = data.get("follow", False)
        if not isinstance(follow, bool):
            raise RequestError("'follow' must be true or false")
        sig = data.get("signal", "TERM")
        if not isinstance(sig, str):
            raise RequestError("'signal' must be a signal name such as \"KILL\"")
        request = cls(op=op, name=name, lines=lines, follow=follow, signal=sig)
        request.signal_number()  # refuse an unknown signal here, before anything acts
        return request


def _show(value: Any) -> str:
    """A short rendering of a client's JSON value for an error message."""
    if isinstance(value, list):
        return "(a JSON array)"
    if isinstance(value, dict):
        return "(a JSON object)"
    text = repr(value)
    return text if len(text) <= 60 else text[:59] + "…"


def decode_request(line: bytes) -> Request:
    """Parse one request line; raises :class:`RequestError` naming what is wrong.

    Hostile but well-formed JSON (nesting beyond the parser's recursion limit, an
    integer of more digits than Python converts) is a malformed request too.
    """
    try:
        data = json.loads(line)
    except RecursionError:
        raise RequestError("malformed request: JSON nested too deeply") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RequestError(f"malformed request: {exc}") from None
    except ValueError as exc:
        if "integer string conversion" not in str(exc):
            raise RequestError(f"malformed request: {exc}") from None
        limit = sys.get_int_max_str_digits()  # int() refuses longer numbers
        raise RequestError(f"malformed request: a number with more than {limit} digits") from None
    return Request.from_json(data)


# --- replies: what each request's result holds (the daemon builds, the CLI reads) ------
# ``status`` -> StatusReply; ``status NAME`` -> ServiceDetail, or NetworkReply, PKIReply,
# PreflightReply for those names; ``logs`` -> lists of LogLineJSON; ``start`` ->
# StartReply; ``stop``/``restart`` -> ServiceSnapshot; ``kill`` -> KillReply;
# ``kubeconfig`` -> KubeconfigReply; ``stop_all`` and the power ops -> StoppedReply.


class PKIStatus(TypedDict):
    """The built-in ``pki`` condition."""

    ready: bool
    reason: str


class DaemonInfo(TypedDict):
    """k4sinit itself."""

    pid: int
    rss_bytes: int
    uptime: float
    version: str


class MemoryInfo(TypedDict):
    """/proc/meminfo's MemTotal and MemAvailable, in bytes."""

    total: int
    available: int


class StatusReply(TypedDict):
    daemon: DaemonInfo
    memory: MemoryInfo
    services: list[ServiceSnapshot]  # in dependency order
    network: NetworkSnapshot
    pki: PKIStatus
    preflight: SummaryJSON | None  # None: no checks ran
    image: dict[str, Any] | None  # image.ImageInfo.to_json(); None: no image.json


class NetworkReply(TypedDict):
    network: NetworkSnapshot


class PKIReply(TypedDict):
    pki: PKIStatus


class PreflightReply(TypedDict):
    preflight: list[CheckJSON]


class StartReply(ServiceSnapshot):
    started: bool  # False: it was already running


class KillReply(ServiceSnapshot):
    signal: str  # the signal's name: SIGTERM


class KubeconfigReply(TypedDict):
    path: str
    kubeconfig: str


class StoppedReply(TypedDict):
    services: list[ServiceSnapshot]


def encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def ok(result: Any) -> dict[str, Any]:
    return {"ok": True, "result": result}


def error(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}


# --- server -------------------------------------------------------------------

Send = Callable[[dict[str, Any]], Awaitable[None]]
Handler = Callable[[Request, Send], Awaitable[None]]

# accept() errors that mean "no resources right now": wait and try again.
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


class ControlSocketError(OSError):
    """The control socket cannot be set up; the message names the path and the fix."""


class ClientNotReading(trio.BrokenResourceError):
    """A client did not take a reply line within :data:`SEND_TIMEOUT`; it was dropped."""


def peer_uid(sock: trio.socket.SocketType | socket.socket) -> int:
    """The uid of the process at the other end of a unix socket (SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class ControlServer:
    """Serves :class:`Request` s on a unix socket, each by calling ``handler``.

    ``handler(request, send)`` sends result objects with ``send(ok(...))`` and
    raises :class:`RequestError` to refuse. Any other exception is logged and
    answered with an error; it never reaches the daemon. ``send`` raises
    :class:`trio.BrokenResourceError` (:class:`ClientNotReading` after
    :data:`SEND_TIMEOUT`) once the client is gone; the handler lets it propagate.
    Admission is described in the module docstring.
    """

    def __init__(self, path: str, handler: Handler, log: Any) -> None:
        self.path = path
        self._handler = handler
        self._log = log
        self._allowed_uids = {0, os.getuid()}
        self.connections = 0
        self._readers = trio.CapacityLimiter(MAX_CONNECTIONS)
        self._followers = trio.CapacityLimiter(MAX_FOLLOWERS)
        # Connections still waiting for their request line, oldest first.
        self._waiting: dict[object, trio.CancelScope] = {}

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled; ``started`` once the socket accepts connections.

        Raises :class:`ControlSocketError` (before ``started``) if the socket cannot
        be set up; after that nothing a client does or an accept error ends it.
        """
        listener = await self._bind()
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                async with listener:
                    await self._accept_forever(listener, nursery)
        finally:
            _unlink_quietly(self.path)

    async def _accept_forever(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        # The control socket's share of the daemon's descriptors: past it, the oldest
        # connection still waiting for its request line makes room for a new one.
        budget = max(16, resource.getrlimit(resource.RLIMIT_NOFILE)[0] // 4)
        logged_at: float | None = None
        failures = 0
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                # Out of descriptors (EMFILE: services, RLIMIT_NOFILE) or anything
                # else: the socket stays. Logged at most every ACCEPT_LOG_INTERVAL.
                failures += 1
                now = trio.current_time()
                if logged_at is None or now - logged_at >= ACCEPT_LOG_INTERVAL:
                    self._log.error(
                        "control: accept failed; backing off",
                        error=os.strerror(exc.errno) if exc.errno else str(exc),
                        failures=failures,
                        connections=self.connections,
                    )
                    logged_at, failures = now, 0
                if exc.errno in ACCEPT_CAPACITY_ERRNOS:
                    self._drop_oldest_waiting()
                await trio.sleep(ACCEPT_BACKOFF)
                continue
            if self.connections >= budget:
                self._drop_oldest_waiting()
            nursery.start_soon(self._serve_one, stream)

    def _drop_oldest_waiting(self) -> None:
        """Free a descriptor: end the oldest connection that has not sent its request."""
        for scope in self._waiting.values():
            if not scope.cancel_called:
                scope.cancel()
                return

    async def _bind(self) -> trio.SocketListener:
        await trio.to_thread.run_sync(_prepare_socket_path, self.path)
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # no window in which the socket is open to others
        try:
            await sock.bind(self.path)
            os.chmod(self.path, 0o600)
            sock.listen(LISTEN_BACKLOG)
        except OSError as exc:
            sock.close()
            raise ControlSocketError(
                f"cannot bind the control socket {self.path}: {exc.strerror or exc}"
            ) from None
        finally:
            os.umask(old_umask)
        return trio.SocketListener(sock)

    async def _serve_one(self, stream: trio.SocketStream) -> None:
        async with stream:
            self.connections += 1
            try:
                await self._converse(stream)
            except ClientNotReading:
                self._log.warning("control: client did not read its reply; dropped")
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the client went away; nothing to answer
            finally:
                self.connections -= 1

    async def _converse(self, stream: trio.SocketStream) -> None:
        async def send(obj: dict[str, Any]) -> None:
            with trio.move_on_after(SEND_TIMEOUT):
                await stream.send_all(encode(obj))
                return
            raise ClientNotReading(f"client did not read for {SEND_TIMEOUT:g}s")

        uid = peer_uid(stream.socket)
        if uid not in self._allowed_uids:
            self._log.warning("control: refused peer", uid=uid)
            await send(error(f"permission denied for uid {uid}"))
            return
        try:
            request = await self._read_request(stream)
            if request.op in OPERATOR_OPS:
                await self._handler(request, send)
                return
            pool, kind = (
                (self._followers, "followers") if request.follow else (self._readers, "readers")
            )
            try:
                pool.acquire_nowait()
            except trio.WouldBlock:
                raise RequestError(
                    f"busy: {pool.total_tokens} {kind} are being served; try again"
                ) from None
            try:
                if request.follow:
                    await _until_hangup(stream, self._handler(request, send))
                else:
                    await self._handler(request, send)
            finally:
                pool.release()
        except RequestError as exc:
            await send(error(str(exc)))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise
        except Exception as exc:  # a bug in one request must not reach the daemon
            self._log.exception("control: request failed")
            await send(error(f"internal error: {exc!r}"))

    async def _read_request(self, stream: trio.SocketStream) -> Request:
        """The request line, within :data:`REQUEST_TIMEOUT`; RequestError otherwise."""
        key = object()
        line: bytes | None = None
        with trio.move_on_after(REQUEST_TIMEOUT) as scope:
            self._waiting[key] = scope
            try:
                line = await _receive_line(stream, MAX_REQUEST)
            finally:
                del self._waiting[key]
        if scope.cancelled_caught and trio.current_time() < scope.deadline:
            raise RequestError("no request yet; dropped to make room for other clients")
        if line is None:
            raise RequestError(f"no request within {REQUEST_TIMEOUT:g}s")
        return decode_request(line)


def _prepare_socket_path(path: str) -> None:
    """Check the socket's directory and clear ``path``; ControlSocketError if we may not."""
    _ensure_private_directory(os.path.dirname(path) or ".")
    _clear_socket_path(path)
    if os.path.lexists(path):  # a socket, and a live one
        raise ControlSocketError(f"another k4sinit is listening on {path}")


def _ensure_private_directory(directory: str) -> None:
    """Make ``directory`` (0700) or check that it is ours and that no one else can write it.

    Anyone who can write the directory can rename our socket and put theirs in its
    place; raises :class:`ControlSocketError` saying so.
    """
    try:
        link: os.stat_result | None = os.lstat(directory)
    except OSError:
        link = None  # made below
    if link is not None and stat.S_ISLNK(link.st_mode) and link.st_uid not in (0, os.geteuid()):
        raise ControlSocketError(
            f"control socket directory {directory} is a symlink owned by uid "
            f"{link.st_uid}; remove it or choose another --socket"
        )
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        info = os.stat(directory)
    except OSError as exc:
        raise ControlSocketError(
            f"cannot make the control socket directory {directory}: {exc.strerror or exc}"
        ) from None
    if info.st_uid != os.geteuid():
        raise ControlSocketError(
            f"control socket directory {directory} is owned by uid {info.st_uid}, not by "
            f"k4sinit's uid {os.geteuid()}; remove it or choose another --socket"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o022:
        raise ControlSocketError(
            f"control socket directory {directory} is writable by others (mode {mode:04o}); "
            f"use a directory of its own (e.g. {directory.rstrip('/')}/k4sinit/) or chmod go-w it"
        )


def _clear_socket_path(path: str) -> None:
    """Remove what a previous run (or anyone) left at ``path``, unless it is live.

    A stale socket or a symlink (dangling or not: never followed) is removed; a live
    socket is left for the caller to refuse; anything else is refused.
    """
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode) or (stat.S_ISSOCK(info.st_mode) and not _is_live_socket(path)):
        _unlink_quietly(path)
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise ControlSocketError(f"{path} exists and is not a socket; remove it")


async def _until_hangup(stream: trio.SocketStream, streaming: Awaitable[None]) -> None:
    """Run a streaming reply until it ends or the client hangs up.

    A follower of a quiet service would otherwise notice a gone client only at
    its next line, holding a connection slot until then.
    """

    async def watch_client(cancel_scope: trio.CancelScope) -> None:
        while await stream.receive_some(4096):
            pass  # a streaming client has nothing more to say; ignore chatter
        cancel_scope.cancel()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_client, nursery.cancel_scope)
            await streaming
            nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The nursery wraps a gone or non-reading client (BrokenResourceError,
        # ClientNotReading) in a group; the caller's policy is for the bare error.
        gone, rest = group.split((trio.BrokenResourceError, trio.ClosedResourceError))
        if gone is None or rest is not None:
            raise
        leaves = list(_leaves(gone))
        first = next((e for e in leaves if isinstance(e, ClientNotReading)), leaves[0])
        raise first from None


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


async def _receive_line(stream: trio.SocketStream, limit: int) -> bytes | None:
    """One newline-terminated line (or all data up to EOF); RequestError past ``limit``."""
    buffer = bytearray()
    while True:
        data = await stream.receive_some(65536)
        if not data:
            return bytes(buffer) if buffer else None
        end = data.find(b"\n")
        if end >= 0:
            buffer += data[:end]
        else:
            buffer += data
        if len(buffer) > limit:
            raise RequestError(f"request too large (over {limit} bytes)")
        if end >= 0:
            return bytes(buffer)


def _is_live_socket(path: str) -> bool:
    """Whether something accepts connections at ``path`` (a quick local connect)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


# --- client (synchronous: the CLI needs no event loop) --------------------------


class ControlClientError(Exception):
    """The daemon could not be reached or refused the request."""


def socket_path(cli_value: str | None = None) -> str:
    """The socket to use: ``--socket``, else ``$K4SINIT_SOCKET``, else the default."""
    return cli_value or os.environ.get("K4SINIT_SOCKET") or DEFAULT_SOCKET


def stream_request(path: str, request: Request, timeout: float | None = 30.0) -> Iterator[Any]:
    """Send ``request`` and yield each result; raises :class:`ControlClientError`."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            _connect(sock, path, timeout)
        except FileNotFoundError:
            raise ControlClientError(
                f"no k4sinit control socket at {path} (is the daemon running?)"
            ) from None
        except BlockingIOError:
            raise ControlClientError(
                f"k4sinit at {path} is busy: it did not take the connection within {timeout}s"
            ) from None
        except OSError as exc:
            raise ControlClientError(
                f"cannot reach k4sinit at {path}: {exc.strerror or exc}"
            ) from None
        server_uid = peer_uid(sock)
        if server_uid not in (0, os.getuid()):
            # Someone else's socket at our path (a hijacked directory): its answers
            # are lies and our request (stop --all) must not reach it.
            raise ControlClientError(
                f"refusing to talk to {path}: it is served by uid {server_uid}, not by root or you"
            )
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            # A refusal (wrong uid, too many clients) may come before we have
            # sent anything and close the socket: read it below, don't hide it.
            sock.sendall(encode(request.to_json()))
        with sock.makefile("rb") as replies:
            try:
                for raw in replies:
                    reply = json.loads(raw)
                    if not reply.get("ok"):
                        raise ControlClientError(str(reply.get("error")))
                    yield reply.get("result")
            except TimeoutError:
                raise ControlClientError(
                    f"k4sinit at {path} did not answer within {timeout}s"
                ) from None


def _connect(sock: socket.socket, path: str, timeout: float | None) -> None:
    """Connect, waiting up to ``timeout`` in a busy daemon's full listen queue; then
    every read and write on ``sock`` is bounded by ``timeout`` too.

    A unix socket with a Python timeout is non-blocking, and its connect fails at once
    with EAGAIN when the listen queue is full. A blocking connect waits instead, as
    long as SO_SNDTIMEO allows.
    """
    seconds = 0.0 if timeout is None else max(timeout, 0.001)
    sock.setsockopt(
        socket.SOL_SOCKET,
        socket.SO_SNDTIMEO,
        struct.pack("ll", int(seconds), int((seconds % 1) * 1_000_000)),
    )
    sock.connect(path)
    sock.settimeout(timeout)


def request(path: str, req: Request, timeout: float | None = 30.0) -> Any:
    """Send ``req`` and return its single result."""
    for result in stream_request(path, req, timeout):
        return result
    raise ControlClientError("k4sinit closed the connection without an answer")
