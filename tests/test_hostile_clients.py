"""Clients that do not play along: idle, slow, non-reading, flooding, racing.

No client may keep another out: the operator's power and stop commands always get
through. In-process tests run the real ControlServer on trio's virtual clock; the
last test floods the PID 1 of a ``k4sinit dev`` container.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import psutil
import pytest
import trio

from k4sinit.config import load_config_text
from k4sinit.control.server import ACCEPT_BACKOFF, ControlServer
from k4sinit.control.wire import (
    MAX_CONNECTIONS,
    MAX_FOLLOWERS,
    REPLY_CHUNK,
    REQUEST_TIMEOUT,
    SEND_TIMEOUT,
    Request,
    encode,
    ok,
)
from k4sinit.core.config import Config
from k4sinit.core.log import get_logger
from k4sinit.core.state import LogLine
from k4sinit.daemon import Daemon
from k4sinit.pid1.container import host_cgroup2_mount
from k4sinit.supervision.output import MAX_LINE
from tests.conftest import services_config, wait_until


async def test_every_stop_all_gets_its_answer_before_the_daemon_ends(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    """Item 9: a second ``stop --all``, answered more slowly, is not cut off."""
    daemon = Daemon(Config("t", {}), str(tmp_path / "sock"), get_logger())
    events: list[Any] = []

    def client(name: str, reads_after: float) -> Any:
        async def send(reply: dict[str, Any]) -> None:
            await trio.sleep(reads_after)
            events.append((name, reply["ok"], trio.current_time()))

        return send

    async def run(task_status: trio.TaskStatus[None]) -> None:
        await daemon.run(task_status=task_status)
        events.append(("daemon ended", trio.current_time()))

    async with trio.open_nursery() as nursery:
        await nursery.start(run)
        nursery.start_soon(daemon.handle, Request("stop_all"), client("first", 0))
        nursery.start_soon(daemon.handle, Request("stop_all"), client("second", 1))
    assert events == [("first", True, 0), ("second", True, 1), ("daemon ended", 1)]


# --- the real daemon, unprivileged, out of file descriptors (item 8) -----------------

K4SINIT = (sys.executable, "-m", "k4sinit")
AS_NOBODY = ("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups")


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A directory of uid 65534 (pytest's tmp dirs are root's and 0700)."""
    if shutil.which("setpriv") is None or shutil.which("prlimit") is None:
        pytest.skip("setpriv and prlimit (util-linux) are needed")
    path = Path(tempfile.mkdtemp(prefix="k4sinit-nobody-"))
    try:
        os.chown(path, 65534, 65534)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_a_flood_of_idle_clients_cannot_take_the_daemons_descriptors(nobody_dir: Path) -> None:
    """Item 8: unprivileged under a hard RLIMIT_NOFILE of 100, 120 idle connections
    (it crashed on EMFILE): the oldest idle ones make room, the daemon serves on."""
    config = nobody_dir / "k4sinit.yaml"
    config.write_text(services_config({"a": {"command": ["sleep", "1000"]}}))
    sock = nobody_dir / "control.sock"
    log_path = nobody_dir / "k4sinit.log"
    with open(log_path, "wb") as log:
        daemon = subprocess.Popen(
            [
                *("prlimit", "--nofile=100:100", *AS_NOBODY, *K4SINIT, "run"),
                *("--config", str(config), "--socket", str(sock), "--log-format", "json"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path(__file__).resolve().parent.parent,  # k4sinit from this checkout
            start_new_session=True,
        )
    idle: list[socket.socket] = []
    try:
        wait_until(lambda: sock.exists() or daemon.poll() is not None, what="the socket")
        assert daemon.poll() is None, log_path.read_text()

        for _ in range(120):  # more than the daemon has descriptors for
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            idle.append(s)
            s.connect(str(sock))  # blocking: waits (as the CLI does) while the queue is full
            s.settimeout(30)
        out = subprocess.run(
            [*AS_NOBODY, *K4SINIT, "status", "--json", "--socket", str(sock)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=Path(__file__).resolve().parent.parent,
        )
        assert out.returncode == 0, (out.stderr, log_path.read_text()[-3000:])
        assert [s["name"] for s in json.loads(out.stdout)["services"]] == ["a"]
        assert daemon.poll() is None
        # The oldest idle connections were dropped to make room, with the reason.
        first = idle[0].recv(65536)
        assert json.loads(first) == {
            "ok": False,
            "error": "no request yet; dropped to make room for other clients",
        }
    finally:
        for s in idle:
            s.close()
        stop_by_pid(daemon)


def stop_by_pid(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM ``proc`` (it stops its services), then SIGKILL it and what it left."""
    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for p in descendants:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


# --- logs -f leaves nothing behind (item 6) --------------------------------------------


async def test_a_gone_follower_of_a_quiet_service_leaves_no_listener(tmp_path: Path) -> None:
    config = load_config_text(services_config({"quiet": {"command": ["sleep", "1000"]}}), "t")
    daemon = Daemon(config, str(tmp_path / "sock"), get_logger())
    runner = daemon.supervisor["quiet"]
    replies: list[dict[str, Any]] = []

    async def send(reply: dict[str, Any]) -> None:
        replies.append(reply)

    for _ in range(3):
        with trio.move_on_after(1):  # the client hangs up: the server cancels the reply
            await daemon.handle(Request("logs", name="quiet", lines=0, follow=True), send)
        assert runner._log_listeners == set()
    assert replies == [{"ok": True, "result": []}] * 3


async def test_a_long_logs_answer_goes_out_in_bounded_lines(tmp_path: Path) -> None:
    """``logs -n 200`` of 8 KiB lines (6x as JSON) is not one 10 MB line held per client."""
    config = load_config_text(services_config({"loud": {"command": ["sleep", "1000"]}}), "t")
    daemon = Daemon(config, str(tmp_path / "sock"), get_logger())
    runner = daemon.supervisor["loud"]
    for i in range(200):
        runner.logs.append(LogLine(0.0, "stdout", 7, f"{i:03d}" + "\x01" * MAX_LINE))
    sent: list[bytes] = []

    async def send(reply: dict[str, Any]) -> None:
        sent.append(encode(reply))

    await daemon.handle(Request("logs", name="loud", lines=200), send)
    largest_entry = len(encode(ok([LogLine(0.0, "stdout", 7, "\x01" * MAX_LINE).to_json()])))
    assert len(sent) > 1
    assert all(len(line) <= REPLY_CHUNK + largest_entry for line in sent)
    entries = [entry for line in sent for entry in json.loads(line)["result"]]
    assert [entry["line"][:3] for entry in entries] == [f"{i:03d}" for i in range(200)]


# --- the control server on the virtual clock (item 5) --------------------------------


class Handler:
    """``status`` answers ``size`` bytes; ``logs -f`` waits forever; ``stop`` answers."""

    def __init__(self, size: int = 16) -> None:
        self.size = size
        self.stopped = 0

    async def __call__(self, request: Request, send: Any) -> None:
        if request.op == "status":
            await send(ok("x" * self.size))
        elif request.op == "logs":
            await send(ok([]))
            await trio.sleep_forever()
        elif request.op == "stop":
            self.stopped += 1
            await send(ok({"name": request.name, "state": "stopped"}))


async def serve(nursery: trio.Nursery, tmp_path: Path, handler: Handler) -> str:
    path = str(tmp_path / "control.sock")
    await nursery.start(ControlServer(path, handler, get_logger()).serve)
    return path


async def ask(path: str, line: bytes) -> list[dict[str, Any]]:
    """One request, every reply line until the server closes."""
    async with await trio.open_unix_socket(path) as stream:
        await stream.send_all(line)
        data = b""
        while chunk := await stream.receive_some(1 << 20):
            data += chunk
    return [json.loads(reply) for reply in data.splitlines()]


STATUS = b'{"op": "status"}\n'
STOP = b'{"op": "stop", "name": "a"}\n'
FOLLOW = b'{"op": "logs", "name": "a", "lines": 0, "follow": true}\n'


async def test_non_reading_clients_are_dropped_and_never_keep_out_the_operator(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    handler = Handler(size=4 << 20)  # far more than a socket buffer holds
    async with trio.open_nursery() as nursery:
        path = await serve(nursery, tmp_path, handler)
        hogs = []
        for _ in range(MAX_CONNECTIONS):  # ask for the large answer, never read it
            hog = await trio.open_unix_socket(path)
            await hog.send_all(STATUS)
            hogs.append(hog)
        await trio.sleep(1)
        assert await ask(path, STATUS) == [
            {"ok": False, "error": f"busy: {MAX_CONNECTIONS} readers are being served; try again"}
        ]
        assert await ask(path, STOP) == [{"ok": True, "result": {"name": "a", "state": "stopped"}}]
        # The hogs are dropped when their send timeout runs out; readers are served again.
        await trio.sleep(SEND_TIMEOUT)
        handler.size = 16
        assert await ask(path, STATUS) == [{"ok": True, "result": "x" * 16}]
        for hog in hogs:
            await hog.aclose()
        nursery.cancel_scope.cancel()


async def test_idle_and_slow_clients_time_out_and_never_keep_out_the_operator(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    handler = Handler()
    async with trio.open_nursery() as nursery:
        path = await serve(nursery, tmp_path, handler)
        idle = [await trio.open_unix_socket(path) for _ in range(200)]
        slow = [await trio.open_unix_socket(path) for _ in range(200)]
        for stream in slow:
            await stream.send_all(STATUS[:5])  # and never the rest of the line
        assert await ask(path, STOP) == [{"ok": True, "result": {"name": "a", "state": "stopped"}}]
        assert await ask(path, STATUS) == [{"ok": True, "result": "x" * 16}]
        start = trio.current_time()
        for stream in idle + slow:
            assert json.loads(await stream.receive_some(4096)) == {
                "ok": False,
                "error": f"no request within {REQUEST_TIMEOUT:g}s",
            }
            await stream.aclose()
        assert trio.current_time() - start <= REQUEST_TIMEOUT
        nursery.cancel_scope.cancel()


async def test_idle_followers_fill_only_the_followers_pool(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    handler = Handler()
    async with trio.open_nursery() as nursery:
        path = await serve(nursery, tmp_path, handler)
        followers = []
        for _ in range(MAX_FOLLOWERS):
            stream = await trio.open_unix_socket(path)
            await stream.send_all(FOLLOW)
            assert json.loads(await stream.receive_some(4096)) == {"ok": True, "result": []}
            followers.append(stream)
        await trio.sleep(3600)  # idle followers of a quiet service stay
        assert await ask(path, FOLLOW) == [
            {"ok": False, "error": f"busy: {MAX_FOLLOWERS} followers are being served; try again"}
        ]
        assert await ask(path, STATUS) == [{"ok": True, "result": "x" * 16}]
        assert await ask(path, STOP) == [{"ok": True, "result": {"name": "a", "state": "stopped"}}]
        await followers.pop().aclose()  # a follower that leaves frees its place at once
        await trio.sleep(0.1)
        async with await trio.open_unix_socket(path) as stream:
            await stream.send_all(FOLLOW)
            assert json.loads(await stream.receive_some(4096)) == {"ok": True, "result": []}
        for stream in followers:
            await stream.aclose()
        nursery.cancel_scope.cancel()


class FailingListener:
    """A listener whose accept() fails with EMFILE ``failures`` times, then waits."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[float] = []

    async def accept(self) -> trio.SocketStream:
        self.calls.append(trio.current_time())
        if len(self.calls) <= self.failures:
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        await trio.sleep_forever()
        raise AssertionError("unreachable")


async def test_accept_errors_are_backed_off_and_logged_not_fatal(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    logged: list[tuple[str, dict[str, Any]]] = []

    class Log:
        def error(self, event: str, **fields: Any) -> None:
            logged.append((event, fields))

    server = ControlServer(str(tmp_path / "s"), Handler(), Log())
    waiting = trio.CancelScope()
    server._waiting[object()] = waiting  # a client that has not sent its request yet
    listener = FailingListener(failures=250)
    async with trio.open_nursery() as nursery:
        # a duck: _accept_forever calls nothing but accept()
        nursery.start_soon(server._accept_forever, cast("trio.SocketListener", listener), nursery)
        await trio.sleep(60)
        nursery.cancel_scope.cancel()
    assert len(listener.calls) == 251
    assert listener.calls[:3] == pytest.approx([0, ACCEPT_BACKOFF, 2 * ACCEPT_BACKOFF])
    assert waiting.cancel_called  # dropped to free a descriptor
    # Logged at most every 10 s: 250 failures over 25 s are three lines, the first at
    # once. (0.1 s steps add up to a hair under 10 s: the 100th or the 101st logs.)
    assert [event for event, _ in logged] == ["control: accept failed; backing off"] * 3
    assert {f["error"] for _, f in logged} == {"Too many open files"}
    assert logged[0][1]["failures"] == 1
    assert all(f["failures"] in (100, 101) for _, f in logged[1:]), logged


# --- PID 1 of a container: the operator's poweroff through 1,000 hostile clients --------

HOSTILE = 1000
CHATTY = "l=$(head -c 8000 /dev/zero | tr '\\0' x); while :; do echo $l; sleep 0.01; done"


@pytest.mark.skipif(
    os.geteuid() != 0 or host_cgroup2_mount() is None,
    reason="a container needs root and a cgroup2 hierarchy on the host",
)
def test_poweroff_gets_through_a_thousand_hostile_connections(boot: Any) -> None:
    """Idle, slow (half a request line), non-reading (``logs -n 200`` of 8000-byte
    lines) and non-reading followers, 250 of each, all open while root's poweroff
    is asked for: it is answered, and PID 1 powers off cleanly."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * HOSTILE)), hard))
    node = boot(
        services_config(
            {"chatty": {"command": ["sh", "-c", CHATTY]}, "quiet": {"command": ["sleep", "1000"]}}
        )
    )
    hostile: list[socket.socket] = []
    try:
        node.wait_ready()
        requests = [
            b"",  # idle: connects and says nothing
            STATUS[:5],  # slow: half a request line, never the rest
            b'{"op": "logs", "name": "chatty", "lines": 200}\n',  # never reads the answer
            b'{"op": "logs", "name": "chatty", "lines": 0, "follow": true}\n',  # nor the lines
        ]
        for i in range(HOSTILE):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            hostile.append(sock)
            sock.connect(str(node.socket))  # blocking: waits for the daemon's accept
            sock.settimeout(30)
            if requests[i % 4]:
                sock.sendall(requests[i % 4])
        out = node.cli("poweroff")
        assert out.returncode == 0, (out.stderr, node.log_text()[-3000:])
        assert out.stdout == "poweroff: 2 services stopped\n"
        assert node.wait_exit() == 0
    finally:
        for sock in hostile:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_a_follower_that_does_not_read_is_dropped(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    logged: list[str] = []

    class Log:
        def warning(self, event: str, **fields: Any) -> None:
            logged.append(event)

        def exception(self, event: str, **fields: Any) -> None:
            logged.append(event)

    async def chatty(request: Request, send: Any) -> None:
        while True:  # a service that prints all the time
            await send(ok([{"line": "x" * 8192}]))

    path = str(tmp_path / "control.sock")
    async with trio.open_nursery() as nursery:
        await nursery.start(ControlServer(path, chatty, Log()).serve)
        followers = []
        for _ in range(MAX_FOLLOWERS):
            stream = await trio.open_unix_socket(path)
            await stream.send_all(FOLLOW)
            followers.append(stream)
        await trio.sleep(SEND_TIMEOUT + 1)
        assert logged == ["control: client did not read its reply; dropped"] * MAX_FOLLOWERS
        async with await trio.open_unix_socket(path) as stream:  # their places are free
            await stream.send_all(FOLLOW)
            assert json.loads((await stream.receive_some(65536)).split(b"\n")[0])["ok"] is True
        for stream in followers:
            await stream.aclose()
        nursery.cancel_scope.cancel()
