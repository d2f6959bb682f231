"""The control socket against a real daemon, spoken to with raw sockets."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DaemonProcess, child_cmd, services_config, wait_until

CONFIG = services_config({"a": {"command": child_cmd()}})
STATUS = b'{"op": "status"}\n'


def connect(path: Path, timeout: float = 10) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(str(path))
    return sock


def read_replies(sock: socket.socket) -> list[dict[str, Any]]:
    """Every JSON line until the server closes (a reset after the replies counts as close)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    return [json.loads(line) for line in data.splitlines()]


def exchange(path: Path, payload: bytes, timeout: float = 10) -> list[dict[str, Any]]:
    """Send ``payload`` on a new connection; return every reply line until close."""
    with connect(path, timeout) as sock:
        # The server may stop reading early; its answer is still queued for us.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(payload)
        return read_replies(sock)


class Served:
    """A daemon with one running service ``a``, and that service's first pid."""

    def __init__(self, daemon: DaemonProcess) -> None:
        self.daemon = daemon
        self.socket = daemon.socket
        self.pid = daemon.wait_for(lambda s: s["a"]["state"] == "running")["a"]["pid"]

    def assert_undisturbed(self) -> None:
        """The daemon still answers ``status`` and ``a`` never restarted."""
        [reply] = exchange(self.socket, STATUS)
        assert reply["ok"] is True, reply
        [a] = reply["result"]["services"]
        assert (a["state"], a["pid"], a["restarts"]) == ("running", self.pid, 0)


@pytest.fixture
def daemon(start_daemon: Any) -> Served:
    return Served(start_daemon(CONFIG))


def test_socket_is_owner_only(daemon: Served) -> None:
    mode = os.stat(daemon.socket).st_mode
    assert stat.S_ISSOCK(mode)
    assert stat.S_IMODE(mode) == 0o600
    assert daemon.socket.parent.is_dir()


def test_status_request_gets_one_ok_line(daemon: Served) -> None:
    [reply] = exchange(daemon.socket, STATUS)
    assert reply["ok"] is True
    assert [s["name"] for s in reply["result"]["services"]] == ["a"]


def test_random_bytes_get_one_error_line_and_close(daemon: Served) -> None:
    rng = random.Random(1)
    garbage = bytes(rng.choice(range(256)) for _ in range(2048)).replace(b"\n", b"")
    replies = exchange(daemon.socket, b"\xff" + garbage + b"\n")
    assert len(replies) == 1
    assert replies[0]["ok"] is False
    assert replies[0]["error"].startswith("malformed request")
    daemon.assert_undisturbed()


def test_oversized_request_is_refused_and_daemon_survives(daemon: Served) -> None:
    replies = exchange(daemon.socket, b"x" * (1024 * 1024))
    assert replies == [{"ok": False, "error": "request too large (over 65536 bytes)"}]
    daemon.assert_undisturbed()


@pytest.mark.slow
def test_silent_client_is_timed_out_while_others_are_served(daemon: Served) -> None:
    with connect(daemon.socket, timeout=30) as silent:
        for _ in range(3):
            [reply] = exchange(daemon.socket, STATUS, timeout=5)
            assert reply["ok"] is True
        replies = read_replies(silent)  # the server's own timeout closes it
    assert replies == [{"ok": False, "error": "no request within 10s"}]
    daemon.assert_undisturbed()


def test_fifty_simultaneous_clients_all_get_answers(daemon: Served) -> None:
    clients = [connect(daemon.socket) for _ in range(50)]
    try:
        for sock in clients:
            sock.sendall(STATUS)
        replies = [read_replies(sock) for sock in clients]
    finally:
        for sock in clients:
            sock.close()
    assert all(len(r) == 1 and r[0]["ok"] is True for r in replies), replies
    daemon.assert_undisturbed()


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ([1, 2], "request must be a JSON object, got list"),
        (
            {"op": "frobnicate"},
            "unknown op 'frobnicate'; expected one of status, logs, start, stop, restart, kill, stop_all, reboot, poweroff, halt, kubeconfig, token_create, token_list, token_revoke, timeline, reload",
        ),
        ({"op": "stop"}, "op 'stop' needs a service 'name'"),
        ({"op": "stop", "name": 7}, "'name' must be a string"),
        ({"op": "logs", "name": "a", "lines": -1}, "'lines' must be an integer from 0 to 100000"),
        ({"op": "logs", "name": "a", "follow": "yes"}, "'follow' must be true or false"),
        ({"op": "restart", "name": "nope"}, "unknown service 'nope'"),
        (
            {"op": "kill", "name": "a", "signal": 9},
            "'signal' must be a signal name such as \"KILL\"",
        ),
        (
            {"op": "kill", "name": "a", "signal": "SIGNOPE"},
            "unknown signal 'SIGNOPE'; e.g. TERM, KILL, HUP",
        ),
        (
            {"op": "token_create", "ttl": -1},
            "'ttl' must be seconds from 0 (never expires) to 316224000",
        ),
        (
            {"op": "token_create", "server": "http://c:6443"},
            "'server': expected an https:// URL, like https://10.0.0.1:6443",
        ),
        ({"op": "token_revoke"}, "'name' of token_revoke must be a token id ([a-z0-9]{6})"),
        (
            {"op": "token_revoke", "name": "../x"},
            "'name' of token_revoke must be a token id ([a-z0-9]{6})",
        ),
        (
            {"op": "token_list"},
            "token: this node runs no Kubernetes roles (no node: section)",
        ),
    ],
    ids=[
        "not-object",
        "unknown-op",
        "stop-no-name",
        "name-not-str",
        "lines-neg",
        "follow-str",
        "unknown-name",
        "signal-not-str",
        "signal-unknown",
        "ttl-negative",
        "server-http",
        "revoke-no-id",
        "revoke-bad-id",
        "token-no-node",
    ],
)
def test_invalid_request_gets_a_precise_error(daemon: Served, request_: Any, message: str) -> None:
    replies = exchange(daemon.socket, json.dumps(request_).encode() + b"\n")
    assert replies == [{"ok": False, "error": message}]
    daemon.assert_undisturbed()


def test_dead_followers_of_a_silent_service_do_not_exhaust_connections(
    daemon: Served,
) -> None:
    follow = b'{"op": "logs", "name": "a", "lines": 0, "follow": true}\n'
    for _ in range(70):
        with connect(daemon.socket) as sock:
            sock.sendall(follow)
            with sock.makefile("rb") as lines:
                assert json.loads(lines.readline()) == {"ok": True, "result": []}
    replies = exchange(daemon.socket, STATUS)
    assert len(replies) == 1 and replies[0]["ok"] is True, replies
    daemon.assert_undisturbed()


# --- peer credentials -------------------------------------------------------------

K4SINIT = (sys.executable, "-m", "k4sinit")
AS_NOBODY = ("--reuid=65534", "--regid=65534", "--clear-groups")
CLIENT = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(sys.argv[1])
try:
    s.sendall(b'{"op": "status"}\\n')
except BrokenPipeError:
    pass  # refused before our request was read; the answer is queued all the same
data = b""
try:
    while chunk := s.recv(65536):
        data += chunk
except ConnectionResetError:
    pass  # the server closed without reading our request: what it sent came first
print(data.decode(), end="")
"""


# The real client, whose request is sent only once the daemon's answer has arrived:
# what happens whenever the daemon refuses the peer before the client got to send.
LATE_CLIENT = """
import socket, sys
from k4sinit import control

real_connect = socket.socket.connect

def connect_and_wait_for_the_answer(self, address):
    real_connect(self, address)
    self.recv(1, socket.MSG_PEEK)

socket.socket.connect = connect_and_wait_for_the_answer
try:
    control.request(sys.argv[1], control.Request("status"))
except control.ControlClientError as exc:
    print(exc)
"""


@pytest.fixture
def open_daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    """A daemon whose socket uid 65534 may connect to, so that SO_PEERCRED is what refuses."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to run a client as another uid")
    # A socket directory that uid 65534 may traverse (pytest's tmp dirs are 0700).
    socket_dir = Path(tempfile.mkdtemp(prefix="k4sinit-peer-"))
    config = tmp_path / "k4sinit.yaml"
    config.write_text(CONFIG)
    daemon = None
    try:
        socket_dir.chmod(0o711)
        daemon = DaemonProcess(config, socket_dir / "control.sock", tmp_path / "k4sinit.log")
        daemon.wait_socket()
        daemon.status()  # answered: the server's own chmod to 0600 after bind is done
        daemon.socket.chmod(0o666)
        yield daemon
    finally:
        if daemon is not None:
            daemon.stop()
        shutil.rmtree(socket_dir, ignore_errors=True)


def run_as_nobody(script: str, socket_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", *AS_NOBODY, sys.executable, "-I", "-c", script, str(socket_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_peer_of_another_uid_is_refused(open_daemon: DaemonProcess) -> None:
    daemon = open_daemon
    out = run_as_nobody(CLIENT, daemon.socket)
    assert out.returncode == 0, out.stderr
    assert [json.loads(line) for line in out.stdout.splitlines()] == [
        {"ok": False, "error": "permission denied for uid 65534"}
    ]
    # root is still served
    [reply] = exchange(daemon.socket, STATUS)
    assert reply["ok"] is True
    refused = wait_until(
        lambda: [e for e in daemon.log_events() if e.get("event") == "control: refused peer"],
        what="the refusal in the log",
    )
    assert refused[0]["uid"] == 65534


def test_client_refused_before_sending_shows_the_daemons_reason(
    open_daemon: DaemonProcess,
) -> None:
    out = run_as_nobody(LATE_CLIENT, open_daemon.socket)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "permission denied for uid 65534\n"


def test_power_requests_are_refused_when_not_pid_1(start_daemon: Any) -> None:
    d = start_daemon(services_config({"a": {"command": ["sleep", "1000"]}}))
    for op in ("reboot", "poweroff", "halt"):
        out = d.cli(op)
        assert out.returncode == 1
        assert f"{op}: k4sinit is not PID 1 here; use 'stop --all'" in out.stderr
    assert d.status()["a"]["state"] == "running"


@pytest.mark.parametrize(
    ("op", "action"), [("stop_all", None), ("reboot", "REBOOT"), ("poweroff", "POWEROFF")]
)
async def test_a_stop_request_leaves_the_daemon_its_power_action(
    tmp_path: Path, op: str, action: str | None
) -> None:
    """What PID 1 does after the daemon ends is a power.Action (None: a plain stop)."""
    import trio

    from k4sinit.control import Request
    from k4sinit.core.config import Config
    from k4sinit.core.log import get_logger
    from k4sinit.daemon import Daemon
    from k4sinit.pid1 import power

    daemon = Daemon(Config("t", {}), str(tmp_path / "sock"), get_logger(), power=True)
    replies: list[dict[str, Any]] = []

    async def send(reply: dict[str, Any]) -> None:
        replies.append(reply)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(daemon.run)
            nursery.start_soon(daemon.handle, Request(op), send)
    assert replies == [{"ok": True, "result": {"services": []}}]
    assert daemon.action is (None if action is None else power.Action[action])


# --- kubeconfig: the node's admin kubeconfig, for kubectl on the host ----------------


async def ask_daemon(tmp_path: Path, config_text: str | None, request: Any) -> dict[str, Any]:
    """One request to a Daemon (not running) built from ``config_text`` (no node: None)."""
    from k4sinit.config import load_config_text
    from k4sinit.control import RequestError
    from k4sinit.core.config import Config
    from k4sinit.core.log import get_logger
    from k4sinit.daemon import Daemon
    from k4sinit.node import roles

    config = load_config_text(config_text, "test.yaml") if config_text else Config("t", {})
    settings = roles.settings(config) if config.node else None
    daemon = Daemon(config, str(tmp_path / "sock"), get_logger(), node=settings)
    replies: list[dict[str, Any]] = []

    async def send(reply: dict[str, Any]) -> None:
        replies.append(reply)

    try:
        await daemon.handle(request, send)
    except RequestError as exc:  # the server sends it as an error line
        return {"ok": False, "error": str(exc)}
    return replies[-1]


async def ask_kubeconfig(tmp_path: Path, config_text: str | None) -> dict[str, Any]:
    """One ``kubeconfig`` request to a Daemon built from ``config_text`` (no node: None)."""
    from k4sinit.control import Request

    return await ask_daemon(tmp_path, config_text, Request("kubeconfig"))


async def test_kubeconfig_returns_the_admin_kubeconfig(tmp_path: Path) -> None:
    config = f"node: {{profile: controller, name: n1, dataDir: {tmp_path}}}\n"
    reply = await ask_kubeconfig(tmp_path, config)
    assert reply["ok"] is False
    assert reply["error"].startswith(
        f"kubeconfig: {tmp_path}/kubeconfigs/admin.conf does not exist yet"
    )
    (tmp_path / "kubeconfigs").mkdir()
    (tmp_path / "kubeconfigs/admin.conf").write_text("apiVersion: v1\nkind: Config\n")
    reply = await ask_kubeconfig(tmp_path, config)
    assert reply == {
        "ok": True,
        "result": {
            "path": f"{tmp_path}/kubeconfigs/admin.conf",
            "kubeconfig": "apiVersion: v1\nkind: Config\n",
        },
    }


async def test_kubeconfig_without_a_node_is_refused(tmp_path: Path) -> None:
    reply = await ask_kubeconfig(tmp_path, None)
    assert reply == {
        "ok": False,
        "error": "kubeconfig: this node runs no Kubernetes roles (no node: section)",
    }


def test_the_cli_points_the_kubeconfig_at_another_server() -> None:
    from k4sinit import cli

    text = "clusters:\n- name: a\n  cluster: {server: 'https://10.0.2.15:6443'}\nusers: []\n"
    moved = cli.with_server(text, "https://127.0.0.1:6443")
    assert "https://127.0.0.1:6443" in moved and "10.0.2.15" not in moved
    assert cli.with_server(text, None) == text


# --- hostile but well-formed JSON (issue 11, item 7) ----------------------------------


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"[" * 5000 + b"]" * 5000, "malformed request: JSON nested too deeply"),
        (
            b'{"op": "logs", "name": "a", "lines": ' + b"7" * 5000 + b"}",
            "malformed request: a number with more than 4300 digits",
        ),
        (
            b'{"op": ' + b"[" * 900 + b"]" * 900 + b"}",
            "unknown op (a JSON array); expected one of status, logs, start, stop, restart, "
            "kill, stop_all, reboot, poweroff, halt, kubeconfig, token_create, token_list, "
            "token_revoke, timeline, reload",
        ),
    ],
    ids=["deep-array", "long-int", "deep-op"],
)
def test_hostile_json_gets_a_protocol_error(daemon: Served, payload: bytes, message: str) -> None:
    replies = exchange(daemon.socket, payload + b"\n")
    assert replies == [{"ok": False, "error": message}]
    daemon.assert_undisturbed()


# --- the socket's directory and path (items 10, 11, 22) --------------------------------


def nobody(*cmd: str) -> None:
    subprocess.run(["setpriv", *AS_NOBODY, *cmd], check=True, capture_output=True, timeout=30)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A fresh sticky, world-writable directory like /tmp (pytest's tmp dirs are 0700)."""
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to act as another uid")
    path = Path(tempfile.mkdtemp(prefix="k4sinit-sticky-"))
    path.chmod(0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run_daemon_briefly(tmp_path: Path, sock: Path) -> subprocess.CompletedProcess[str]:
    """``k4sinit run`` with ``sock`` that is expected to refuse to start."""
    config = tmp_path / "k4sinit.yaml"
    config.write_text(CONFIG)
    log = tmp_path / "refused.log"
    daemon = DaemonProcess(config, sock, log)
    try:
        code = daemon.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        code = None  # it started after all: stopped below, and the test fails
    finally:
        daemon.stop()
    text = log.read_text(errors="replace")
    if code is None:
        pytest.fail(f"k4sinit started after all with the socket {sock}:\n{text}")
    return subprocess.CompletedProcess(daemon.proc.args, code, text, "")


def test_socket_directory_of_another_uid_is_refused(shared_tmp: Path, tmp_path: Path) -> None:
    planted = shared_tmp / "k4s"
    nobody("mkdir", "-m", "0700", str(planted))
    out = run_daemon_briefly(tmp_path, planted / "control.sock")
    assert out.returncode == 1, out
    assert (
        f"control socket directory {planted} is owned by uid 65534, not by k4sinit's uid 0"
        in out.stdout + out.stderr
    )
    assert "Traceback" not in out.stdout + out.stderr
    assert os.listdir(planted) == []


@pytest.mark.parametrize("mode", [0o770, 0o1777, 0o702])
def test_group_or_world_writable_socket_directory_is_refused(tmp_path: Path, mode: int) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)
    out = run_daemon_briefly(tmp_path, shared / "control.sock")
    assert out.returncode == 1, out
    assert (
        f"control socket directory {shared} is writable by others (mode {mode:04o})"
        in out.stdout + out.stderr
    )
    assert os.listdir(shared) == []


def test_a_dangling_symlink_at_the_socket_path_is_replaced(
    start_daemon: Any, tmp_path: Path
) -> None:
    (tmp_path / "k4sinit.sock").symlink_to(tmp_path / "nowhere")
    d = start_daemon(CONFIG)
    assert stat.S_ISSOCK(os.lstat(d.socket).st_mode)
    assert not (tmp_path / "nowhere").exists()
    assert d.cli("status").returncode == 0


def test_a_symlink_planted_in_a_sticky_directory_gets_a_clear_refusal(
    shared_tmp: Path, tmp_path: Path
) -> None:
    """Item 11: in a shared sticky directory (like /tmp) anyone can plant at the socket
    path, and squat it again after we remove it; the daemon says so and where to go."""
    sock = shared_tmp / "control.sock"
    nobody("ln", "-s", "/nonexistent", str(sock))
    out = run_daemon_briefly(tmp_path, sock)
    assert out.returncode == 1, out
    text = out.stdout + out.stderr
    assert (
        f"control socket directory {shared_tmp} is writable by others (mode 1777); use a "
        f"directory of its own (e.g. {shared_tmp}/k4sinit/) or chmod go-w it"
    ) in text
    assert "Traceback" not in text
    assert os.readlink(sock) == "/nonexistent"


def test_a_regular_file_at_the_socket_path_is_left_alone(tmp_path: Path) -> None:
    sock = tmp_path / "control.sock"
    sock.write_text("not a socket")
    out = run_daemon_briefly(tmp_path, sock)
    assert out.returncode == 1, out
    assert f"{sock} exists and is not a socket; remove it" in out.stdout + out.stderr
    assert sock.read_text() == "not a socket"


def test_an_unbindable_socket_path_is_a_clear_error(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 120)
    out = run_daemon_briefly(tmp_path, deep / "control.sock")
    assert out.returncode == 1, out
    text = out.stdout + out.stderr
    assert f"cannot bind the control socket {deep}/control.sock" in text, text
    assert "Traceback" not in text and "ExceptionGroup" not in text


FAKE_SERVER = """
import json, os, socket, sys
path = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)
os.chmod(path, 0o777)
s.listen(8)
print("listening", flush=True)
while True:
    conn, _ = s.accept()
    try:
        conn.recv(65536)
        fake = {"services": [], "network": {"ready": True}}
        conn.sendall(json.dumps({"ok": True, "result": fake}).encode() + b"\\n")
    except OSError:
        pass  # the client hung up: it did not believe us
    conn.close()
"""


def test_the_client_refuses_a_server_of_another_uid(shared_tmp: Path) -> None:
    """The hijack: another uid's socket at the path; root's client must not believe it."""
    sock = shared_tmp / "control.sock"
    server = subprocess.Popen(
        ["setpriv", *AS_NOBODY, sys.executable, "-I", "-c", FAKE_SERVER, str(sock)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline() == "listening\n"
        for args in (("status",), ("stop", "--all")):
            out = subprocess.run(
                [*K4SINIT, args[0], "--socket", str(sock), *args[1:]],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert out.returncode == 1, out
            assert out.stdout == ""
            assert (
                f"refusing to talk to {sock}: it is served by uid 65534, not by root or you"
                in out.stderr
            )
    finally:
        server.kill()
        server.wait()
        assert server.stdout is not None
        server.stdout.close()


def test_a_client_waits_in_a_full_accept_queue_instead_of_failing(tmp_path: Path) -> None:
    """A busy daemon's full listen queue makes a client wait (up to its timeout),
    as a blocking connect does; it must not fail with EAGAIN at once."""
    from k4sinit import control

    path = str(tmp_path / "busy.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    fillers: list[socket.socket] = []
    try:
        listener.bind(path)
        listener.listen(0)
        while True:  # fill the queue: the next connect would block
            filler = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            filler.setblocking(False)
            try:
                filler.connect(path)
            except BlockingIOError:
                filler.close()
                break
            fillers.append(filler)
        assert fillers, "the listen queue took no connection"
        results: list[Any] = []

        def ask() -> None:
            try:
                results.append(control.request(path, control.Request("status"), timeout=20))
            except control.ControlClientError as exc:
                results.append(exc)

        thread = threading.Thread(target=ask)
        thread.start()
        try:
            # The server gets to its queue late, and answers whoever sent a request.
            thread.join(0.5)
            listener.settimeout(20)
            while thread.is_alive():
                conn, _ = listener.accept()
                with conn:
                    conn.settimeout(0.5)
                    with contextlib.suppress(TimeoutError):
                        if conn.recv(1024):
                            conn.sendall(b'{"ok": true, "result": "served"}\n')
                thread.join(0.05)
        finally:
            thread.join(30)
        assert results == ["served"]
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


# --- status NAME of what is not a service: network, pki, preflight ---------------------


async def test_status_of_each_reserved_name_answers_for_itself(tmp_path: Path) -> None:
    """Issue 12: ``status pki`` was "unknown service"; no service can take these names."""
    from k4sinit.control import Request
    from k4sinit.core.spec import STATUS_NAMES

    config = "services: {a: {command: [sleep, '1000']}}\n"
    replies = {n: await ask_daemon(tmp_path, config, Request("status", n)) for n in STATUS_NAMES}
    assert {n: (r["ok"], list(r["result"])) for n, r in replies.items()} == {
        "network": (True, ["network"]),
        "pki": (True, ["pki"]),
        "preflight": (True, ["preflight"]),
    }
    assert replies["pki"]["result"]["pki"] == {
        "ready": True,
        "reason": "no node profile: no PKI to make",
    }
    assert replies["preflight"]["result"]["preflight"] == []


async def test_status_pki_of_a_node_that_has_not_made_it_yet(tmp_path: Path) -> None:
    from k4sinit.control import Request

    config = f"node: {{profile: controller, name: n1, dataDir: {tmp_path}}}\n"
    reply = await ask_daemon(tmp_path, config, Request("status", "pki"))
    assert reply == {
        "ok": True,
        "result": {"pki": {"ready": False, "reason": "waiting for the network"}},
    }


# --- the wire types describe what the daemon sends -------------------------------------


async def test_status_replies_have_exactly_the_keys_of_their_wire_types(tmp_path: Path) -> None:
    """control/wire.py's reply types are what the CLI reads: no key missing, none unknown."""
    from k4sinit import control
    from k4sinit.control import Request

    config = "services: {a: {command: [sleep, '1000']}}\n"
    status = (await ask_daemon(tmp_path, config, Request("status")))["result"]
    assert set(status) == control.StatusReply.__required_keys__
    assert set(status["daemon"]) == control.DaemonInfo.__required_keys__
    assert set(status["memory"]) == control.MemoryInfo.__required_keys__
    assert set(status["pki"]) == control.PKIStatus.__required_keys__
    assert [set(s) for s in status["services"]] == [control.ServiceSnapshot.__required_keys__]
    detail = (await ask_daemon(tmp_path, config, Request("status", "a")))["result"]
    assert set(detail) == control.ServiceDetail.__required_keys__


def test_network_and_preflight_wire_forms_have_exactly_the_keys_of_their_types() -> None:
    from k4sinit import network
    from k4sinit.core.log import get_logger
    from k4sinit.core.netspec import NetworkSpec
    from k4sinit.node import preflight

    net = network.Network(NetworkSpec(), get_logger(), resolv_conf=None, hosts=None)
    assert set(net.snapshot()) == network.NetworkSnapshot.__required_keys__
    checks = [preflight.Check("kernel", preflight.Status.FAIL, "too old", fatal=True)]
    assert [set(row) for row in preflight.to_json(checks)] == [
        preflight.CheckJSON.__required_keys__
    ]
    assert set(preflight.summary_json(checks) or {}) == preflight.SummaryJSON.__required_keys__
