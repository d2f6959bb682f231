"""The control socket carried over one virtio-serial port, between a VM's PID 1 and its host.

::

    host                                           guest (k4sinit is PID 1)
    k4sinit status --socket S                      daemon's control socket
        |                                               ^
    S (unix, 0600) -- HostRelay -- qemu chardev --- virtio-serial --- GuestBridge
                                   socket          /dev/vportNpM (name PORT_NAME)

A virtio-serial port is one byte stream, so conversations are multiplexed on it
as JSON lines, each a frame tagged with a session number the host chooses::

    host -> guest  {"ping": true}                      who is there?
                   {"boot": B, "s": N, "open": true}   a client connected
                   {"boot": B, "s": N, "data": "..."}  bytes from the client
                   {"boot": B, "s": N, "close": true}  the client hung up
    guest -> host  {"hello": B}                        the bridge (re)started or answers a
                                                       ping; B is new at every boot
                   {"s": N, "data": "..."}             bytes from the daemon
                   {"s": N, "close": true}             the daemon ended the conversation

``data`` is at most :data:`CHUNK` bytes, carried as a latin-1 string (byte
transparent). The bridge relays bytes only: the daemon's own control server
parses and checks every request, so the port adds no second parser of
requests, and the peer-uid check sees the bridge (root, in PID 1). Who may use
the port is decided on the host, by the 0600 socket the relay listens on.

A frame for another boot (``boot`` is not the bridge's) is dropped: after a
reboot, nothing the host sent to the previous boot is acted on. Malformed
frames are logged and dropped; neither side ever dies of what it reads.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from k4sinit.control.wire import MAX_CONNECTIONS

#: The port's name, as qemu's ``-device virtserialport,name=...`` sets it.
PORT_NAME = "org.k4sinit.control"
#: Bytes of one ``data`` frame, before JSON escaping.
CHUNK = 16 * 1024
#: Longest frame line read: a CHUNK escaped as \\u00XX (6 bytes a byte) plus the rest.
MAX_FRAME = 6 * CHUNK + 256
#: Frames queued for one session before it is dropped as too slow.
SESSION_QUEUE = 256
#: While the host is not connected, a virtio port reads EOF and polls "hung up":
#: this is how often the bridge looks again.
IDLE_POLL = 0.5
#: How long a host client waits for a guest that has not said hello yet (booting).
#: The longest pause between looks for a missing port or an absent host.
MAX_IDLE_POLL = 5.0
GUEST_WAIT = 120.0
#: How long the host relay waits for qemu to make the port's socket.
PORT_WAIT = 30.0


def find_port(name: str = PORT_NAME, sysfs: str = "/sys", dev: str = "/dev") -> str | None:
    """The device node of the virtio-serial port called ``name``, or None."""
    ports = Path(sysfs, "class/virtio-ports")
    with contextlib.suppress(OSError):
        for entry in sorted(ports.iterdir()):
            with contextlib.suppress(OSError):
                if (entry / "name").read_text().strip() == name:
                    return str(Path(dev, entry.name))
    return None


def encode(frame: dict[str, Any]) -> bytes:
    return json.dumps(frame, separators=(",", ":")).encode() + b"\n"


def decode(line: bytes) -> dict[str, Any]:
    """One frame; ValueError names what is wrong with it."""
    try:
        frame = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(frame, dict):
        raise ValueError(f"a frame is a JSON object, got {type(frame).__name__}")
    data = frame.get("data")
    if data is not None and not isinstance(data, str):
        raise ValueError("'data' must be a string")
    return frame


def to_bytes(data: str) -> bytes:
    try:
        return data.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError("'data' holds characters beyond latin-1") from None


class LineReader:
    """Splits a byte stream into lines of at most ``limit`` bytes; longer ones are
    dropped whole (reported by ``dropped``), never buffered without bound."""

    def __init__(self, limit: int = MAX_FRAME) -> None:
        self._limit = limit
        self._buffer = bytearray()
        self._discarding = False
        self.dropped = 0

    def feed(self, data: bytes) -> list[bytes]:
        lines = []
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                break
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            if self._discarding:
                self._discarding = False
            elif len(line) > self._limit:
                self.dropped += 1
            else:
                lines.append(line)
        if len(self._buffer) > self._limit:
            self._buffer.clear()
            if not self._discarding:
                self.dropped += 1
            self._discarding = True
        return lines


# --- the guest side ---------------------------------------------------------------


class GuestBridge:
    """In PID 1: serves the host's conversations by relaying each to ``socket_path``.

    ``open_port()`` returns a fresh file descriptor of the port (the device node;
    tests pass one end of a socket pair). Runs until cancelled; a port that cannot
    be opened or a host that is away is looked at again later (see :meth:`run`).
    """

    def __init__(self, open_port: Callable[[], int], socket_path: str, log: Any) -> None:
        self._open_port = open_port
        self._socket_path = socket_path
        self._log = log
        self.boot = secrets.token_hex(8)
        self._sessions: dict[int, trio.MemorySendChannel[bytes | None]] = {}
        self._write_lock = trio.Lock()
        self._fd = -1

    @classmethod
    def for_name(cls, name: str, socket_path: str, log: Any) -> GuestBridge:
        """A bridge on the virtio-serial port called ``name``, looked up at each
        (re)open: the kernel adds ports some time after the driver loads."""

        def open_named_port() -> int:
            device = find_port(name)
            if device is None:
                raise FileNotFoundError(errno.ENOENT, f"no virtio-serial port named {name}")
            return os.open(device, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)

        return cls(open_named_port, socket_path, log)

    async def run(self) -> None:
        """Relay until cancelled (never returns otherwise).

        While there is no port, or no host on it (reads end at once), look again
        after :data:`IDLE_POLL` seconds, doubling up to :data:`MAX_IDLE_POLL`.
        """
        delay = IDLE_POLL
        reported: str | None = None
        while True:
            try:
                self._fd = self._open_port()
            except OSError as exc:
                if reported != str(exc):
                    self._log.info("control port: not there (yet)", reason=str(exc))
                    reported = str(exc)
                await trio.sleep(delay)
                delay = min(delay * 2, MAX_IDLE_POLL)
                continue
            os.set_blocking(self._fd, False)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._send_frame, {"hello": self.boot})
                    if await self._read_frames(nursery):
                        delay = IDLE_POLL
                    nursery.cancel_scope.cancel()
            except* Exception as group:
                # The port is an operator's convenience: whatever goes wrong on it
                # (the host vanishing mid-write, a bug) must not reach PID 1's nursery.
                self._log.error(
                    "control port: relay failed; reopening", error=repr(group.exceptions[0])
                )
            finally:
                self._sessions.clear()
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd = -1
            await trio.sleep(delay)
            delay = min(delay * 2, MAX_IDLE_POLL)

    async def _read_frames(self, nursery: trio.Nursery) -> bool:
        """Dispatch frames until the host goes away (EOF); True if there were any."""
        reader = LineReader()
        talked = False
        while True:
            data = await _read_some(self._fd)
            if not data:
                return talked
            if not talked:
                self._log.info("control port: the host is there", boot=self.boot)
                talked = True
            for line in reader.feed(data):
                await self._dispatch(line, nursery)
            if reader.dropped:
                self._log.warning("control port: dropped over-long frames", count=reader.dropped)
                reader.dropped = 0

    async def _dispatch(self, line: bytes, nursery: trio.Nursery) -> None:
        try:
            frame = decode(line)
            if frame.get("ping"):
                await self._send_frame({"hello": self.boot})
                return
            if frame.get("boot") != self.boot:
                return  # meant for an earlier boot, or before the host knew this one
            session = frame.get("s")
            if not isinstance(session, int) or isinstance(session, bool):
                raise ValueError("'s' must be an integer")
            if frame.get("open"):
                if session in self._sessions or len(self._sessions) >= MAX_CONNECTIONS:
                    await self._send_frame({"s": session, "close": True})
                    return
                send, receive = trio.open_memory_channel[bytes | None](SESSION_QUEUE)
                self._sessions[session] = send
                nursery.start_soon(self._converse, session, receive)
            elif (channel := self._sessions.get(session)) is not None:
                data = None if frame.get("close") else to_bytes(frame.get("data") or "")
                try:
                    channel.send_nowait(data)
                except trio.BrokenResourceError:
                    self._sessions.pop(session, None)  # the daemon already ended it
                except trio.WouldBlock:  # a client flooding a daemon that stopped reading
                    self._sessions.pop(session, None)
                    await channel.aclose()
        except ValueError as exc:
            self._log.warning("control port: bad frame dropped", error=str(exc))

    async def _converse(
        self, session: int, inbound: trio.MemoryReceiveChannel[bytes | None]
    ) -> None:
        """One conversation: the host's bytes to the daemon, the daemon's back."""
        try:
            async with inbound, await trio.open_unix_socket(self._socket_path) as stream:

                async def to_daemon() -> None:
                    async for data in inbound:
                        if data is None:
                            break
                        await stream.send_all(data)
                    # The client hung up (or flooded us): the daemon sees EOF, as
                    # on its own socket, and ends the conversation its way.
                    await stream.send_eof()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(to_daemon)
                    while data := await stream.receive_some(CHUNK):
                        await self._send_frame({"s": session, "data": data.decode("latin-1")})
                    nursery.cancel_scope.cancel()
        except* (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as group:
            # Nurseries wrap what their tasks raise: except* matches it bare or grouped.
            self._log.debug(
                "control port: conversation ended", session=session, error=str(group.exceptions[0])
            )
        finally:
            self._sessions.pop(session, None)
            await send_last_frame(self._send_frame, {"s": session, "close": True})

    async def _send_frame(self, frame: dict[str, Any]) -> None:
        async with self._write_lock:
            await _write_all(self._fd, encode(frame))


async def _read_some(fd: int) -> bytes:
    """Bytes from a non-blocking fd; b"" at EOF (a virtio port whose host is away)."""
    while True:
        try:
            return os.read(fd, 65536)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(fd)
        except OSError as exc:
            if exc.errno in (errno.EPIPE, errno.ECONNRESET, errno.ENODEV):
                return b""
            raise


async def _write_all(fd: int, data: bytes) -> None:
    """Write everything to a non-blocking fd. A virtio port whose host is away
    polls as hung up yet refuses writes: pause instead of spinning."""
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(fd)
            try:
                written = os.write(fd, view)
            except BlockingIOError:
                await trio.sleep(IDLE_POLL / 5)
                continue
        view = view[written:]


async def send_last_frame(
    send: Callable[[dict[str, Any]], Awaitable[None]], frame: dict[str, Any]
) -> None:
    """Send a closing frame even from a cancelled conversation; a gone peer is fine."""
    with (
        contextlib.suppress(OSError, trio.BrokenResourceError, trio.ClosedResourceError),
        trio.CancelScope(shield=True),
        trio.move_on_after(5),
    ):
        await send(frame)
