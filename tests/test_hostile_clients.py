"""Clients that do not play along: idle, slow, non-reading, flooding, racing.

No client may keep another out: the operator's power and stop commands always get
through. In-process tests run the real ControlServer on trio's virtual clock; the
last test floods the PID 1 of a ``k4sinit dev`` container.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import trio

from k4sinit.control import Request
from k4sinit.daemon import Daemon
from k4sinit.log import get_logger
from k4sinit.spec import Config
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
            s.settimeout(30)
            s.connect(str(sock))
            idle.append(s)
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
