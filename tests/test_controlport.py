"""The control socket over one multiplexed stream: HostRelay <-> GuestBridge <-> ControlServer.

The virtio-serial port of a VM is stood in for by a unix socket pair (HostRelay
connects to a listening socket as it does to qemu's chardev socket; the bridge is
handed the accepted end's fd as if it were /dev/vportNpM). Clients are the real
synchronous CLI client (control.request / stream_request) in threads. The real port
in a VM is exercised by tests/test_e2e.py.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio

from k4sinit import control
from k4sinit.control import ControlClientError, Request, RequestError, ok
from k4sinit.control import port as controlport
from k4sinit.control.port import GuestBridge, LineReader
from k4sinit.control.server import ControlServer, Send

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "rootfs"))
from relay import HostRelay


@dataclass
class Handler:
    """A control handler: status echoes the name, logs-follow streams until cancelled,
    restart blocks until released (a request in flight)."""

    follow_cancelled: trio.Event = field(default_factory=trio.Event)
    blocked: trio.Event = field(default_factory=trio.Event)
    release: trio.Event = field(default_factory=trio.Event)

    async def __call__(self, request: Request, send: Send) -> None:
        if request.op == "status":
            await send(
                ok({"name": request.name, "pad": "x" * 50_000 if request.name == "big" else ""})
            )
        elif request.op == "logs":
            try:
                for i in range(1_000_000):
                    await send(ok({"line": i}))
                    await trio.sleep(0.01)
            finally:
                self.follow_cancelled.set()
        elif request.op == "restart":
            self.blocked.set()
            await self.release.wait()
            await send(ok("released"))
        else:
            raise RequestError(f"not in this test: {request.op}")


@dataclass
class Rig:
    tmp: Path
    nursery: trio.Nursery
    handler: Handler
    port_end: socket.socket | None = None
    relay_scope: trio.CancelScope | None = None
    bridge_scope: trio.CancelScope | None = None

    @property
    def client_path(self) -> str:
        return str(self.tmp / "host" / "control.sock")

    async def ask(self, op: str, name: str | None = None) -> Any:
        return await trio.to_thread.run_sync(
            lambda: control.request(self.client_path, Request(op=op, name=name), timeout=20)
        )

    async def start_bridge(self) -> GuestBridge:
        assert self.port_end is not None
        fd = self.port_end.fileno()
        bridge = GuestBridge(
            lambda: os.dup(fd), str(self.tmp / "guest.sock"), structlog.get_logger()
        )
        scope = trio.CancelScope()

        async def run() -> None:
            with scope:
                await bridge.run()

        self.bridge_scope = scope
        self.nursery.start_soon(run)
        return bridge


@pytest.fixture
async def rig(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[Rig]:
    handler = Handler()
    server = ControlServer(str(tmp_path / "guest.sock"), handler, structlog.get_logger())
    await nursery.start(server.serve)
    port_listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    port_listener.bind(str(tmp_path / "port.sock"))  # what qemu's chardev socket would be
    port_listener.listen(1)
    r = Rig(tmp_path, nursery, handler)
    relay = HostRelay(str(tmp_path / "port.sock"), r.client_path)
    relay_started = trio.Event()

    async def run_relay() -> None:
        await nursery.start(relay.run)
        relay_started.set()

    nursery.start_soon(run_relay)
    port_end, _ = await trio.to_thread.run_sync(port_listener.accept)
    port_listener.close()
    port_end.setblocking(False)
    r.port_end = port_end
    await relay_started.wait()
    await r.start_bridge()
    try:
        yield r
    finally:
        port_end.close()
        nursery.cancel_scope.cancel()


async def test_requests_reach_the_guest_daemon_and_answers_come_back(rig: Rig) -> None:
    with trio.fail_after(20):
        assert await rig.ask("status", "a") == {"name": "a", "pad": ""}
        big = await rig.ask("status", "big")  # several data frames on the way back
        assert big["pad"] == "x" * 50_000
        with pytest.raises(ControlClientError, match="not in this test: stop_all"):
            await rig.ask("stop_all")


async def test_concurrent_clients_each_get_their_own_answer(rig: Rig) -> None:
    answers: dict[str, Any] = {}

    async def one(name: str) -> None:
        answers[name] = await rig.ask("status", name)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(one, f"svc{i}")
    assert answers == {f"svc{i}": {"name": f"svc{i}", "pad": ""} for i in range(20)}


async def test_a_follower_that_hangs_up_ends_the_stream_in_the_guest(rig: Rig) -> None:
    def follow_three() -> list[Any]:
        seen = []
        for result in control.stream_request(
            rig.client_path, Request(op="logs", name="a", follow=True), timeout=20
        ):
            seen.append(result)
            if len(seen) == 3:
                break  # closes the connection
        return seen

    with trio.fail_after(20):
        assert await trio.to_thread.run_sync(follow_three) == [
            {"line": 0},
            {"line": 1},
            {"line": 2},
        ]
        await rig.handler.follow_cancelled.wait()


async def test_clients_that_vanish_mid_reply_leave_the_relay_serving(rig: Rig) -> None:
    def vanish() -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(20)
        sock.connect(rig.client_path)
        sock.sendall(control.encode(Request(op="logs", name="a", follow=True).to_json()))
        assert sock.recv(100)  # the stream has begun
        # Abort (RST, not FIN): the relay's next write to this client fails.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    with trio.fail_after(30):
        for _ in range(5):
            await trio.to_thread.run_sync(vanish)
        await rig.handler.follow_cancelled.wait()
        assert await rig.ask("status", "after") == {"name": "after", "pad": ""}


async def test_a_guest_reboot_fails_requests_in_flight_then_serves_the_new_boot(rig: Rig) -> None:
    result: dict[str, Any] = {}

    async def restart() -> None:
        try:
            await rig.ask("restart", "a")
        except ControlClientError as exc:
            result["error"] = str(exc)

    def ask_and_give_up() -> None:  # a client whose patience ends before the reboot does
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(rig.client_path)
            sock.sendall(control.encode(Request(op="restart", name="b").to_json()))

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(restart)
            await rig.handler.blocked.wait()
            await trio.to_thread.run_sync(ask_and_give_up)
            assert rig.bridge_scope is not None
            rig.bridge_scope.cancel()  # the old boot's bridge is gone ...
            await rig.start_bridge()  # ... and the next boot's says hello
        assert "rebooted" in result["error"]
        assert await rig.ask("status", "after") == {"name": "after", "pad": ""}


class RawPeer:
    """One end of the port spoken to frame by frame, as the other side would."""

    def __init__(self, sock: socket.socket) -> None:
        self.stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        self.reader = LineReader(limit=1 << 20)
        self.pending: list[dict[str, Any]] = []

    async def send(self, raw: bytes) -> None:
        await self.stream.send_all(raw)

    async def frame(self) -> dict[str, Any]:
        while not self.pending:
            data = await self.stream.receive_some(65536)
            assert data, "the other side closed the port"
            self.pending += [json.loads(line) for line in self.reader.feed(data)]
        return self.pending.pop(0)


JUNK = b"\x00\xffnot json\n[1,2]\n" + b"y" * (controlport.MAX_FRAME + 10) + b"\n"


async def test_the_guest_bridge_drops_garbage_and_other_boots_frames(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    await nursery.start(
        ControlServer(str(tmp_path / "c.sock"), Handler(), structlog.get_logger()).serve
    )
    host_end, guest_end = socket.socketpair()
    bridge = GuestBridge(
        lambda: os.dup(guest_end.fileno()), str(tmp_path / "c.sock"), structlog.get_logger()
    )
    nursery.start_soon(bridge.run)
    host = RawPeer(host_end)
    with trio.fail_after(20):
        assert await host.frame() == {"hello": bridge.boot}
        await host.send(JUNK + b'{"s": "x", "boot": "%s", "open": true}\n' % bridge.boot.encode())
        await host.send(b'{"boot": "an-earlier-boot", "s": 7, "open": true}\n')
        await host.send(b'{"ping": true}\n')
        assert await host.frame() == {"hello": bridge.boot}  # nothing for session 7 came first
        request = control.encode(Request(op="status", name="raw").to_json()).decode()
        for sent in ({"s": 8, "open": True}, {"s": 8, "data": request}, {"s": 8, "close": True}):
            await host.send(controlport.encode({"boot": bridge.boot, **sent}))
        data = b""
        while "close" not in (frame := await host.frame()):
            assert frame["s"] == 8
            data += controlport.to_bytes(frame["data"])
        assert frame == {"s": 8, "close": True}
        assert json.loads(data) == {"ok": True, "result": {"name": "raw", "pad": ""}}
    await host.stream.aclose()
    guest_end.close()


async def test_the_host_relay_drops_garbage_and_answers_from_unknown_sessions(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "port.sock"))
    listener.listen(1)
    client_path = str(tmp_path / "host.sock")
    nursery.start_soon(HostRelay(str(tmp_path / "port.sock"), client_path).run)
    sock, _ = await trio.to_thread.run_sync(listener.accept)
    listener.close()
    guest = RawPeer(sock)
    answer: dict[str, Any] = {}
    answered = trio.Event()

    async def ask() -> None:
        answer["result"] = await trio.to_thread.run_sync(
            lambda: control.request(client_path, Request(op="status"), timeout=20)
        )
        answered.set()

    with trio.fail_after(20):
        assert await guest.frame() == {"ping": True}
        await guest.send(JUNK + b'{"s": 12345, "data": "from nowhere"}\n{"hello": "boot-1"}\n')
        nursery.start_soon(ask)
        opened = await guest.frame()
        assert opened == {"boot": "boot-1", "s": opened["s"], "open": True}
        session = opened["s"]
        request = await guest.frame()
        assert request["s"] == session and json.loads(request["data"]) == {"op": "status"}
        reply = control.encode(ok({"from": "raw guest"})).decode()
        await guest.send(controlport.encode({"s": session, "data": reply[:5]}))
        await guest.send(controlport.encode({"s": session, "data": reply[5:]}))
        await guest.send(controlport.encode({"s": session, "close": True}))
        await answered.wait()
    assert answer["result"] == {"from": "raw guest"}
    await guest.stream.aclose()


def test_line_reader_drops_only_over_long_lines() -> None:
    reader = LineReader(limit=10)
    assert reader.feed(b"short\npart") == [b"short"]
    assert reader.feed(b"ial\n") == [b"partial"]
    assert reader.feed(b"x" * 25) == []
    assert reader.feed(b"still the long one\nnext\n") == [b"next"]
    assert reader.feed(b"y" * 8 + b"\n" + b"z" * 8 + b"zzzz\nlast\n") == [b"y" * 8, b"last"]
    assert reader.dropped == 2


def test_decode_names_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="not JSON"):
        controlport.decode(b"{")
    with pytest.raises(ValueError, match="JSON object, got list"):
        controlport.decode(b"[]")
    with pytest.raises(ValueError, match="'data' must be a string"):
        controlport.decode(b'{"s": 1, "data": 5}')
    frame = {"s": 1, "data": bytes(range(256)).decode("latin-1")}
    assert controlport.to_bytes(controlport.decode(controlport.encode(frame))["data"]) == bytes(
        range(256)
    )


def test_find_port_by_name(tmp_path: Path) -> None:
    for port, name in (("vport0p1", "org.qemu.guest_agent.0"), ("vport1p1", controlport.PORT_NAME)):
        (tmp_path / "sys/class/virtio-ports" / port).mkdir(parents=True)
        (tmp_path / "sys/class/virtio-ports" / port / "name").write_text(name + "\n")
    sysfs, dev = str(tmp_path / "sys"), str(tmp_path / "dev")
    assert controlport.find_port(sysfs=sysfs, dev=dev) == f"{dev}/vport1p1"
    assert controlport.find_port("missing", sysfs=sysfs, dev=dev) is None
    assert controlport.find_port(sysfs=str(tmp_path / "nothing")) is None


def test_encode_is_one_line() -> None:
    line = controlport.encode({"s": 1, "data": "a\nb"})
    assert line.count(b"\n") == 1 and json.loads(line)["data"] == "a\nb"
