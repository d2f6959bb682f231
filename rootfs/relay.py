"""The host's end of k4sinit's control port: a unix socket relayed into the VM.

:class:`HostRelay` serves a control socket on the host (mode 0600) and carries
each connection as a session over qemu's virtio-serial chardev to the guest's
:class:`k4sinit.control.port.GuestBridge`; the frames are described there.
It is host tooling (rootfs/vm.py runs it in a thread), not part of the node.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from typing import Any

import trio

from k4sinit import control
from k4sinit.control.port import (
    CHUNK,
    GUEST_WAIT,
    MAX_FRAME,
    PORT_WAIT,
    SESSION_QUEUE,
    LineReader,
    decode,
    encode,
    send_last_frame,
    to_bytes,
)


class HostRelay:
    """On the host: serves ``listen_path`` (a control socket, mode 0600) by relaying
    each connection over the port, which qemu exposes as the unix socket ``port_path``.

    :meth:`run` returns when the port's socket closes (qemu ended). A client that
    connects before the guest said hello waits for it; clients of a boot that
    ends (the guest rebooted) get an error line and are closed.
    """

    def __init__(self, port_path: str, listen_path: str) -> None:
        self.port_path = port_path
        self.listen_path = listen_path
        self.boot: str | None = None
        self._guest_up = trio.Event()
        self._sessions: dict[int, trio.MemorySendChannel[bytes | None]] = {}
        self._next_session = 1
        self._port: trio.SocketStream | None = None
        self._write_lock = trio.Lock()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Relay until the port closes; ``started`` once ``listen_path`` accepts."""
        self._port = await self._connect_port()
        listener = await self._listen()
        try:
            async with self._port, listener, trio.open_nursery() as nursery:
                nursery.start_soon(self._serve, listener, nursery)
                task_status.started()
                await self._send_frame({"ping": True})
                await self._read_frames()
                nursery.cancel_scope.cancel()
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.listen_path)

    async def _connect_port(self) -> trio.SocketStream:
        with trio.move_on_after(PORT_WAIT):
            while True:
                try:
                    return await trio.open_unix_socket(self.port_path)
                except (FileNotFoundError, ConnectionRefusedError):
                    await trio.sleep(0.05)  # qemu has not made it yet
        raise OSError(errno.ETIMEDOUT, f"no control port socket at {self.port_path}")

    async def _listen(self) -> trio.SocketListener:
        os.makedirs(os.path.dirname(self.listen_path) or ".", mode=0o700, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.listen_path)
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            await sock.bind(self.listen_path)
        finally:
            os.umask(old_umask)
        sock.listen(control.MAX_CONNECTIONS)
        return trio.SocketListener(sock)

    async def _serve(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            stream = await listener.accept()
            nursery.start_soon(self._relay_client, stream)

    async def _read_frames(self) -> None:
        assert self._port is not None
        reader = LineReader(limit=MAX_FRAME)
        while data := await self._port.receive_some(65536):
            for line in reader.feed(data):
                with contextlib.suppress(ValueError):  # a garbled frame: drop it
                    await self._dispatch(decode(line))
        self._end_sessions(b"")

    async def _dispatch(self, frame: dict[str, Any]) -> None:
        if "hello" in frame:
            if frame["hello"] != self.boot:
                self._end_sessions(_error_line("the node rebooted during this request; ask again"))
                self.boot = str(frame["hello"])
            self._guest_up.set()
            return
        channel = self._sessions.get(frame.get("s"))  # type: ignore[arg-type]
        if channel is None:
            return
        if frame.get("close"):
            self._sessions.pop(frame["s"], None)
            channel.close()
            return
        try:
            channel.send_nowait(to_bytes(frame.get("data") or ""))
        except (trio.WouldBlock, trio.BrokenResourceError, ValueError):
            self._sessions.pop(frame["s"], None)  # too slow, gone, or garbled: end it
            channel.close()

    def _end_sessions(self, last_words: bytes) -> None:
        for channel in self._sessions.values():
            with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError):
                if last_words:
                    channel.send_nowait(last_words)
            channel.close()
        self._sessions.clear()

    async def _relay_client(self, stream: trio.SocketStream) -> None:
        async with stream:
            with trio.move_on_after(GUEST_WAIT):
                await self._guest_up.wait()
            if not self._guest_up.is_set():
                with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                    await stream.send_all(
                        _error_line(
                            f"the node's control port did not answer within {GUEST_WAIT:g}s"
                        )
                    )
                return
            session, boot = self._next_session, self.boot
            self._next_session += 1
            send, receive = trio.open_memory_channel[bytes | None](SESSION_QUEUE)
            self._sessions[session] = send
            try:
                await self._send_frame({"boot": boot, "s": session, "open": True})
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._client_to_guest, stream, session, boot)
                    async for data in receive:
                        if data:
                            await stream.send_all(data)
                    nursery.cancel_scope.cancel()
            except* (OSError, trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the client or the port went away (bare, or grouped by the nursery)
            finally:
                if self._sessions.pop(session, None) is not None:
                    await send_last_frame(
                        self._send_frame, {"boot": boot, "s": session, "close": True}
                    )

    async def _client_to_guest(
        self, stream: trio.SocketStream, session: int, boot: str | None
    ) -> None:
        while data := await stream.receive_some(CHUNK):
            await self._send_frame({"boot": boot, "s": session, "data": data.decode("latin-1")})
        await self._send_frame({"boot": boot, "s": session, "close": True})

    async def _send_frame(self, frame: dict[str, Any]) -> None:
        assert self._port is not None
        async with self._write_lock:
            await self._port.send_all(encode(frame))


def _error_line(message: str) -> bytes:
    return control.encode(control.error(message))
