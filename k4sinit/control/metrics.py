"""The metrics endpoint: Prometheus text over HTTP/1.1 (h11) on trio.

``GET /metrics`` (or ``HEAD``) answers with what ``scrape()`` returns (the text
format of k4sinit.core.prometheus); ``/`` names the endpoint; anything else is a
404 or a 405. Keep-alive is served; a request body is read and ignored.

It listens on a unix socket (0600, in a directory only k4sinit may write, as
the control socket) or on a TCP address (``metrics.listen``). Nothing a client
does reaches the daemon, with the control socket's bounds (control/wire.py):

- :data:`~k4sinit.control.wire.MAX_CONNECTIONS` connections at once. At the
  limit, the oldest connection still waiting for a request is dropped to make
  room; if every one is being answered, the newcomer gets a 503.
- Each request (its head and body) within
  :data:`~k4sinit.control.wire.REQUEST_TIMEOUT`, at most
  :data:`~k4sinit.control.wire.MAX_REQUEST` bytes; each reply taken within
  :data:`~k4sinit.control.wire.SEND_TIMEOUT` (a client that does not read is
  dropped).
- Scrapes are coalesced: concurrent requests share one collection, and a
  result younger than :data:`MIN_SCRAPE_INTERVAL` is served again, so a flood
  costs the daemon at most a few collections a second.
- Accept errors (EMFILE...) are logged at most every 10 s and backed off.

A socket that cannot be bound is logged (``metrics: cannot listen``), never
fatal: the node runs on without its metrics.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import h11
import trio

from k4sinit.control.server import (
    ACCEPT_CAPACITY_ERRNOS,
    LISTEN_BACKLOG,
    AcceptErrors,
    _prepare_socket_path,
    _unlink_quietly,
)
from k4sinit.control.wire import MAX_CONNECTIONS, MAX_REQUEST, REQUEST_TIMEOUT, SEND_TIMEOUT
from k4sinit.core.monitoring import MetricsSpec
from k4sinit.core.prometheus import CONTENT_TYPE

MIN_SCRAPE_INTERVAL = 0.5  # seconds a collected result is served again
SERVER_NAME = b"k4sinit"
PLAIN = "text/plain; charset=utf-8"

#: What the server calls for a fresh body (the text format, encoded).
Scrape = Callable[[], Awaitable[bytes]]


class Coalesced:
    """Calls of :meth:`get` share one run of ``collect``; a result is reused for ``max_age`` s.

    A caller cancelled while it collects leaves the others to collect again;
    an exception from ``collect`` reaches every caller waiting on that run.
    """

    def __init__(self, collect: Scrape, max_age: float = MIN_SCRAPE_INTERVAL) -> None:
        self._collect = collect
        self._max_age = max_age
        self._result: tuple[float, bytes] | None = None
        self._running: trio.Event | None = None
        self._error: BaseException | None = None
        self.collections = 0

    async def get(self) -> bytes:
        while True:
            if self._result is not None and trio.current_time() - self._result[0] < self._max_age:
                return self._result[1]
            if self._running is not None:
                running = self._running
                await running.wait()
                if self._error is not None and self._running is None:
                    raise self._error
                continue
            self._running = trio.Event()
            self._error = None
            try:
                self.collections += 1
                body = await self._collect()
                self._result = (trio.current_time(), body)
                return body
            except Exception as exc:
                self._error = exc
                raise
            finally:
                running, self._running = self._running, None
                running.set()


class MetricsServer:
    """Serves the metrics endpoint; see the module docstring."""

    def __init__(self, spec: MetricsSpec, scrape: Scrape, log: Any) -> None:
        self.spec = spec
        self.scraper = Coalesced(scrape)
        self._log = log
        self.connections = 0
        # Connections waiting for a request (keep-alive idle ones too), oldest first.
        self._waiting: dict[object, trio.CancelScope] = {}
        self.address: str | None = None  # what it listens on, once it does

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled; ``started`` once listening (or once the bind failed, logged)."""
        try:
            listeners = await self._bind()
        except OSError as exc:
            self._log.error(
                "metrics: cannot listen", listen=self.spec.listen, error=exc.strerror or str(exc)
            )
            task_status.started()
            return
        self._log.info("metrics: listening", listen=self.address)
        path = self.spec.unix_path
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                for listener in listeners:
                    nursery.start_soon(self._accept_forever, listener, nursery)
        finally:
            for listener in listeners:
                with trio.CancelScope(shield=True):
                    await listener.aclose()
            if path is not None:
                _unlink_quietly(path)

    async def _bind(self) -> list[trio.SocketListener]:
        path = self.spec.unix_path
        if path is None:
            host, port = self.spec.tcp
            listeners = await trio.open_tcp_listeners(port, host=host, backlog=LISTEN_BACKLOG)
            self.address = self.spec.listen
            return listeners
        await trio.to_thread.run_sync(_prepare_socket_path, path)
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            await sock.bind(path)
            os.chmod(path, 0o600)
            sock.listen(LISTEN_BACKLOG)
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(old_umask)
        self.address = path
        return [trio.SocketListener(sock)]

    async def _accept_forever(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        errors = AcceptErrors(self._log, "metrics")
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno in ACCEPT_CAPACITY_ERRNOS:
                    self._drop_oldest_waiting()
                await errors.back_off(exc, connections=self.connections)
                continue
            if self.connections >= MAX_CONNECTIONS and not self._drop_oldest_waiting():
                nursery.start_soon(self._refuse, stream)
                continue
            nursery.start_soon(self._serve_one, stream)

    def _drop_oldest_waiting(self) -> bool:
        """End the oldest connection waiting for a request; False if there is none."""
        for scope in self._waiting.values():
            if not scope.cancel_called:
                scope.cancel()
                return True
        return False

    async def _refuse(self, stream: trio.abc.Stream) -> None:
        """A 503 for a client that finds every slot answering (best effort, bounded)."""
        conn = h11.Connection(h11.SERVER)
        with trio.move_on_after(1):
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(_response(conn, 503, b"busy: try again\n", close=True))
        with trio.CancelScope(shield=True), trio.move_on_after(1):
            await stream.aclose()

    async def _serve_one(self, stream: trio.abc.Stream) -> None:
        self.connections += 1
        try:
            async with stream:
                await self._converse(stream, h11.Connection(h11.SERVER, MAX_REQUEST))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away
        except OSError as exc:
            if exc.errno not in (errno.ECONNRESET, errno.EPIPE):
                raise
        finally:
            self.connections -= 1

    async def _converse(self, stream: trio.abc.Stream, conn: h11.Connection) -> None:
        """Requests until the client closes, errs, idles past the timeout or stops reading."""
        while True:
            try:
                request = await self._read_request(stream, conn)
            except h11.RemoteProtocolError as exc:
                if conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    status = exc.error_status_hint
                    await self._send(stream, _response(conn, status, b"bad request\n", close=True))
                return
            if request is None:
                return
            status, content_type, body = await self._answer(request)
            response = _response(
                conn,
                status,
                body,
                content_type=content_type,
                head_only=request.method == b"HEAD",
                close=False,
            )
            await self._send(stream, response)
            if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _read_request(
        self, stream: trio.abc.Stream, conn: h11.Connection
    ) -> h11.Request | None:
        """A whole request (head, body read and dropped) within REQUEST_TIMEOUT; None: gone."""
        key = object()
        request: h11.Request | None = None
        body = 0
        with trio.move_on_after(REQUEST_TIMEOUT) as scope:
            self._waiting[key] = scope
            try:
                while True:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(bytes(await stream.receive_some(65536)))
                        continue
                    if isinstance(event, h11.Request):
                        request = event
                        del self._waiting[key]  # being answered: not to be dropped
                    elif isinstance(event, h11.EndOfMessage):
                        return request
                    elif isinstance(event, h11.ConnectionClosed):
                        return None
                    elif isinstance(event, h11.Data):
                        body += len(event.data)  # a body we do not need: counted, dropped
                        if body > MAX_REQUEST:
                            return None
            finally:
                self._waiting.pop(key, None)
        return None  # late, or dropped to make room

    async def _answer(self, request: h11.Request) -> tuple[int, str, bytes]:
        """(status, content type, body) for a request."""
        target = request.target.split(b"?", 1)[0]
        if target not in (b"/metrics", b"/"):
            return 404, PLAIN, b"not found: the metrics are at /metrics\n"
        if request.method not in (b"GET", b"HEAD"):
            return 405, PLAIN, b"method not allowed: GET /metrics\n"
        if target == b"/":
            return 200, PLAIN, b"k4sinit metrics: GET /metrics\n"
        return 200, CONTENT_TYPE, await self.scraper.get()

    async def _send(self, stream: trio.abc.Stream, data: bytes) -> None:
        with trio.move_on_after(SEND_TIMEOUT):
            await stream.send_all(data)
            return
        raise trio.BrokenResourceError(f"client did not read for {SEND_TIMEOUT:g}s")


def _response(
    conn: h11.Connection,
    status: int,
    body: bytes,
    *,
    content_type: str = PLAIN,
    head_only: bool = False,
    close: bool,
) -> bytes:
    """One whole response as bytes (h11 frames it; HEAD gets the head alone)."""
    headers = [
        (b"Content-Type", content_type.encode()),
        (b"Content-Length", str(len(body)).encode()),
        (b"Server", SERVER_NAME),
    ]
    if close:
        headers.append((b"Connection", b"close"))
    reason = HTTPStatus(status).phrase.encode()
    data = conn.send(h11.Response(status_code=status, headers=headers, reason=reason)) or b""
    if not head_only:
        data += conn.send(h11.Data(data=body)) or b""
    data += conn.send(h11.EndOfMessage()) or b""
    return data
