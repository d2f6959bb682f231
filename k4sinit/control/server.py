"""The control server: serves :class:`~k4sinit.control.wire.Request` s on a unix socket.

The protocol and its limits are in :mod:`k4sinit.control.wire`; this is the
daemon's side of it, on trio.

Trust: the server serves only peers whose uid (SO_PEERCRED) is root or its own;
its socket is mode 0600 in a directory that it owns and that no one else may
write (it refuses to start otherwise: in someone else's or a shared directory
the socket could be renamed and replaced).

Admission: no client can keep another out. The accept loop never waits for a
slot, and an accept error (EMFILE...) is logged and backed off, never fatal. Every
phase of a connection is bounded: the request line by :data:`REQUEST_TIMEOUT` and
:data:`MAX_REQUEST`, every reply line by :data:`SEND_TIMEOUT` (a client that does
not read is dropped), a reply by :data:`REPLY_CHUNK` bytes held at a time, a
follower by the bounded channel of ``ServiceRunner.follow_logs``. Operator commands
(:data:`OPERATOR_OPS`: power, stop, start, restart, kill, reload) are served as soon as
they are read and never wait for a slot; the read-only requests share
:data:`MAX_CONNECTIONS` slots and followers :data:`MAX_FOLLOWERS`, and a client that
finds them all taken is told "busy" at once. When the daemon runs out of file
descriptors (accept fails), or when the socket holds a quarter of the daemon's
RLIMIT_NOFILE, the oldest connection still waiting for its request line is dropped
to make room: the daemon keeps descriptors for its services and for the next client.
A request that is malformed, too big or late gets an error line and the connection
is closed; the daemon is never disturbed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import socket
import stat
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import trio

from k4sinit.control.wire import (
    MAX_CONNECTIONS,
    MAX_FOLLOWERS,
    MAX_REQUEST,
    OPERATOR_OPS,
    REQUEST_TIMEOUT,
    SEND_TIMEOUT,
    Request,
    RequestError,
    decode_request,
    encode,
    error,
    peer_uid,
)

ACCEPT_BACKOFF = 0.1  # after an accept error such as EMFILE
LISTEN_BACKLOG = 64  # connections the kernel queues for accept(); more wait in connect()
ACCEPT_LOG_INTERVAL = 10.0  # a streak of accept errors is logged at most this often

#: How a handler sends one reply line (``ok(...)`` or ``error(...)``).
Send = Callable[[dict[str, Any]], Awaitable[None]]
#: What the server calls for each request: ``handler(request, send)``.
Handler = Callable[[Request, Send], Awaitable[None]]

# accept() errors that mean "no resources right now": wait and try again.
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


class AcceptErrors:
    """A listener's accept errors: each backed off, a streak logged at most every
    :data:`ACCEPT_LOG_INTERVAL` (``"<what>: accept failed; backing off"``)."""

    def __init__(self, log: Any, what: str) -> None:
        self._log = log
        self._what = what
        self._logged_at: float | None = None
        self._failures = 0

    async def back_off(self, exc: OSError, **fields: Any) -> None:
        """Count ``exc``, log the streak if it is time (with ``fields``), sleep a little."""
        self._failures += 1
        now = trio.current_time()
        if self._logged_at is None or now - self._logged_at >= ACCEPT_LOG_INTERVAL:
            self._log.error(
                f"{self._what}: accept failed; backing off",
                error=os.strerror(exc.errno) if exc.errno else str(exc),
                failures=self._failures,
                **fields,
            )
            self._logged_at, self._failures = now, 0
        await trio.sleep(ACCEPT_BACKOFF)


class ControlSocketError(OSError):
    """The control socket cannot be set up; the message names the path and the fix."""


class ClientNotReading(trio.BrokenResourceError):
    """A client did not take a reply line within :data:`SEND_TIMEOUT`; it was dropped."""


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
        errors = AcceptErrors(self._log, "control")
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                # Out of descriptors (EMFILE: services, RLIMIT_NOFILE) or anything
                # else: the socket stays.
                if exc.errno in ACCEPT_CAPACITY_ERRNOS:
                    self._drop_oldest_waiting()
                await errors.back_off(exc, connections=self.connections)
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
