"""The control socket: wire types shared by server and client, the server, the client.

Protocol: over a unix stream socket the client sends ONE request, a JSON object
on one line of at most :data:`MAX_REQUEST` bytes; the server answers with JSON
lines, each ``{"ok": true, "result": ...}`` or ``{"ok": false, "error": "..."}``,
then closes. Streaming requests (``logs`` with ``follow``) get one line per
result until the client goes away. A request that is malformed, too big or
late gets an error line and the connection is closed; the daemon is never
disturbed.

Only peers whose uid (SO_PEERCRED) is root or the daemon's own are served; the
socket itself is mode 0600 in a 0700 directory.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from signal import Signals
from typing import Any

import trio

DEFAULT_SOCKET = "/run/k4sinit/control.sock"
MAX_REQUEST = 64 * 1024
REQUEST_TIMEOUT = 10.0
MAX_CONNECTIONS = 64

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
            raise RequestError(f"unknown op {op!r}; expected one of {', '.join(OPS)}")
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


def encode(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def ok(result: Any) -> dict[str, Any]:
    return {"ok": True, "result": result}


def error(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}


# --- server -------------------------------------------------------------------

Send = Callable[[dict[str, Any]], Awaitable[None]]
Handler = Callable[[Request, Send], Awaitable[None]]


def peer_uid(sock: trio.socket.SocketType) -> int:
    """The uid of the process at the other end of a unix socket (SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class ControlServer:
    """Serves :class:`Request` s on a unix socket, each by calling ``handler``.

    ``handler(request, send)`` sends result objects with ``send(ok(...))`` and
    raises :class:`RequestError` to refuse. Any other exception is logged and
    answered with an error; it never reaches the daemon.
    """

    def __init__(self, path: str, handler: Handler, log: Any) -> None:
        self.path = path
        self._handler = handler
        self._log = log
        self._allowed_uids = {0, os.getuid()}
        self.connections = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen until cancelled; ``started`` once the socket accepts connections."""
        listener = await self._bind()
        try:
            async with trio.open_nursery() as nursery:
                task_status.started()
                async with listener:
                    while True:
                        stream = await listener.accept()
                        nursery.start_soon(self._serve_one, stream)
        finally:
            _unlink_quietly(self.path)

    async def _bind(self) -> trio.SocketListener:
        directory = os.path.dirname(self.path) or "."
        os.makedirs(directory, mode=0o700, exist_ok=True)
        if await trio.Path(self.path).exists():
            if await _is_live_socket(self.path):
                raise OSError(errno.EADDRINUSE, f"another k4sinit is listening on {self.path}")
            _unlink_quietly(self.path)  # stale socket of a previous run
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)  # no window in which the socket is open to others
        try:
            await sock.bind(self.path)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        sock.listen(MAX_CONNECTIONS)
        return trio.SocketListener(sock)

    async def _serve_one(self, stream: trio.SocketStream) -> None:
        async with stream:
            self.connections += 1
            try:
                await self._converse(stream)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the client went away; nothing to answer
            finally:
                self.connections -= 1

    async def _converse(self, stream: trio.SocketStream) -> None:
        async def send(obj: dict[str, Any]) -> None:
            await stream.send_all(encode(obj))

        uid = peer_uid(stream.socket)
        if uid not in self._allowed_uids:
            self._log.warning("control: refused peer", uid=uid)
            await send(error(f"permission denied for uid {uid}"))
            return
        if self.connections > MAX_CONNECTIONS:
            await send(error("too many connections; try again"))
            return
        try:
            line: bytes | None = None
            with trio.move_on_after(REQUEST_TIMEOUT):
                line = await _receive_line(stream, MAX_REQUEST)
            if line is None:
                raise RequestError(f"no request within {REQUEST_TIMEOUT:g}s")
            try:
                data = json.loads(line)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise RequestError(f"malformed request: {exc}") from None
            request = Request.from_json(data)
            if request.follow:
                await _until_hangup(stream, self._handler(request, send))
            else:
                await self._handler(request, send)
        except RequestError as exc:
            await send(error(str(exc)))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            raise
        except Exception as exc:  # a bug in one request must not reach the daemon
            self._log.exception("control: request failed")
            await send(error(f"internal error: {exc!r}"))


async def _until_hangup(stream: trio.SocketStream, streaming: Awaitable[None]) -> None:
    """Run a streaming reply until it ends or the client hangs up.

    A follower of a quiet service would otherwise notice a gone client only at
    its next line, holding a connection slot until then.
    """

    async def watch_client(cancel_scope: trio.CancelScope) -> None:
        while await stream.receive_some(4096):
            pass  # a streaming client has nothing more to say; ignore chatter
        cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_client, nursery.cancel_scope)
        await streaming
        nursery.cancel_scope.cancel()


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


async def _is_live_socket(path: str) -> bool:
    try:
        stream = await trio.open_unix_socket(path)
    except OSError:
        return False
    await stream.aclose()
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
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise ControlClientError(
                f"no k4sinit control socket at {path} (is the daemon running?)"
            ) from None
        except OSError as exc:
            raise ControlClientError(
                f"cannot reach k4sinit at {path}: {exc.strerror or exc}"
            ) from None
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


def request(path: str, req: Request, timeout: float | None = 30.0) -> Any:
    """Send ``req`` and return its single result."""
    for result in stream_request(path, req, timeout):
        return result
    raise ControlClientError("k4sinit closed the connection without an answer")
