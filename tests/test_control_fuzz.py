"""Property-based fuzzing of the control protocol (hypothesis, bounded examples).

Invariants: parsing a request line never raises anything but RequestError, whose
message names what is wrong; over the wire every hostile line gets exactly that
message as one error line, never an internal error or a traceback; and afterwards
the daemon answers ``status`` with the same pids, nothing restarted.
"""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from k4sinit.control import OPERATOR_OPS, OPS, Request, RequestError, decode_request
from tests.conftest import DaemonProcess, child_cmd, services_config

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = {
    "op": st.sampled_from(OPS) | JSON,
    "name": st.sampled_from(["a", "nope", ""]) | JSON,
    "lines": st.integers(-5, 200_000) | JSON,
    "follow": st.booleans() | JSON,
    "signal": st.sampled_from(["TERM", "KILL", "SIGNOPE", "sigkill"]) | JSON,
}
REQUESTS = st.fixed_dictionaries({}, optional=FIELDS) | JSON
LINES = (
    REQUESTS.map(lambda value: json.dumps(value).encode())
    | st.binary(max_size=300).map(lambda data: data.replace(b"\n", b""))
    | st.integers(2000, 6000).map(lambda depth: b"[" * depth + b"]" * depth)
    | st.integers(4301, 6000).map(lambda digits: b'{"op": "logs", "lines": ' + b"9" * digits + b"}")
)


def parse(line: bytes) -> Request | str:
    """The request, or the error message that the daemon must send for ``line``."""
    try:
        return decode_request(line)
    except RequestError as exc:
        return str(exc)


@settings(max_examples=400, deadline=None)
@given(LINES)
def test_parsing_any_line_gives_a_request_or_a_named_error(line: bytes) -> None:
    result = parse(line)
    if isinstance(result, str):
        assert result and not result.startswith("internal error")
        assert result.startswith(("malformed request", "request must", "unknown ", "op ", "'"))


# --- over the wire, against a real daemon ----------------------------------------------


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DaemonProcess, int]]:
    tmp = tmp_path_factory.mktemp("fuzz")
    config = tmp / "k4sinit.yaml"
    config.write_text(services_config({"a": {"command": child_cmd()}}))
    d = DaemonProcess(config, tmp / "k4sinit.sock", tmp / "k4sinit.log")
    try:
        d.wait_socket()
        pid = d.wait_for(lambda s: s["a"]["state"] == "running")["a"]["pid"]
        yield d, pid
    finally:
        d.stop()


def exchange(path: Path, line: bytes) -> list[dict[str, Any]]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(20)
        sock.connect(str(path))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(line + b"\n")
        data = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                data += chunk
    return [json.loads(reply) for reply in data.splitlines()]


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(line=LINES)
def test_any_line_over_the_wire_gets_a_protocol_answer(
    daemon: tuple[DaemonProcess, int], line: bytes
) -> None:
    d, pid = daemon
    expected = parse(line)
    if isinstance(expected, Request):
        # Only what leaves the daemon as it is: no operator commands, no followers.
        assume(expected.op not in OPERATOR_OPS and not expected.follow)
    replies = exchange(d.socket, line)
    if isinstance(expected, str):
        assert replies == [{"ok": False, "error": expected}]
    else:
        assert replies, f"no answer to {line!r}"
        for reply in replies:
            assert reply["ok"] or not reply["error"].startswith("internal error"), reply
    [status] = exchange(d.socket, b'{"op": "status"}')
    [a] = status["result"]["services"]
    assert (a["state"], a["pid"], a["restarts"]) == ("running", pid, 0)
