"""The log writer never blocks the daemon; boot failures are shown readably."""

from __future__ import annotations

import io
import json
import os
import re
import threading
from collections.abc import Iterator, MutableMapping
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from k4sinit.config import ConfigError, ConfigErrors
from k4sinit.core import log
from k4sinit.core.log import NonBlockingWriter
from k4sinit.pid1 import boot


@pytest.fixture
def writers() -> Iterator[list[NonBlockingWriter]]:
    """Writers made by a test; closed afterwards so no thread outlives it."""
    made: list[NonBlockingWriter] = []
    yield made
    for writer in made:
        writer.close(timeout=10)


def test_writes_arrive_in_order(writers: list[NonBlockingWriter]) -> None:
    target = io.StringIO()
    writer = NonBlockingWriter(target)
    writers.append(writer)
    lines = [f"line {i}\n" for i in range(2000)]
    for line in lines:
        assert writer.write(line) == len(line)
    assert writer.wait_idle(timeout=30)
    assert target.getvalue() == "".join(lines)
    assert writer.dropped == 0


def test_wait_idle_with_nothing_written_is_true(writers: list[NonBlockingWriter]) -> None:
    writer = NonBlockingWriter(io.StringIO())
    writers.append(writer)
    assert writer.wait_idle(timeout=10)


def test_close_writes_out_what_is_queued_and_joins() -> None:
    target = io.StringIO()
    writer = NonBlockingWriter(target)
    for i in range(100):
        writer.write(f"{i}\n")
    writer.close(timeout=30)
    assert target.getvalue() == "".join(f"{i}\n" for i in range(100))
    assert not writer._thread.is_alive()  # the only handle on the writer thread


def test_a_blocked_target_never_blocks_write_and_drops_are_reported() -> None:
    read_fd, write_fd = os.pipe()
    target = os.fdopen(write_fd, "w")
    writer = NonBlockingWriter(target, max_bytes=1000)
    received = bytearray()

    def drain() -> None:
        while chunk := os.read(read_fd, 65536):
            received.extend(chunk)

    reader = threading.Thread(target=drain, name="test-pipe-reader")
    lines = 20_000
    try:
        # Nobody reads yet: the pipe takes 64 KiB, the writer thread blocks in
        # write(), the queue holds 1000 bytes, so most of the 2 MB must be
        # dropped. The writes run in a thread with a (generous) bound, so a
        # write() that blocked fails the test instead of hanging it.
        line = "x" * 99 + "\n"
        returned: list[int] = []

        def write_all() -> None:
            returned.extend(writer.write(line) for _ in range(lines))

        writing = threading.Thread(target=write_all, name="test-log-writes")
        writing.start()
        writing.join(timeout=120)
        assert not writing.is_alive(), "write() blocked on a stalled target"
        assert returned == [len(line)] * lines
        reader.start()
        assert writer.wait_idle(timeout=30)
        writer.write("after the stall\n")
        assert writer.wait_idle(timeout=30)
        assert writer.dropped == 0  # every drop has been reported in the stream
    finally:
        writer.close(timeout=30)
        target.close()
        if reader.is_alive():
            reader.join(timeout=30)
        os.close(read_fd)
    text = received.decode()
    notices = re.findall(r"^k4sinit: (\d+) log lines dropped \(output too slow\)$", text, re.M)
    dropped = sum(map(int, notices))
    delivered = text.splitlines().count("x" * 99)
    assert dropped > 0
    assert delivered + dropped == lines  # each line arrived whole or was counted
    assert text.endswith("after the stall\n")
    assert len(text.splitlines()) == delivered + len(notices) + 1  # nothing else, none torn


def test_a_target_that_fails_does_not_kill_the_writer(writers: list[NonBlockingWriter]) -> None:
    target = io.StringIO()
    target.close()  # every write raises ValueError
    writer = NonBlockingWriter(target)
    writers.append(writer)
    writer.write("lost\n")
    assert writer.wait_idle(timeout=10)
    writer.write("lost too\n")
    assert writer.wait_idle(timeout=10)
    assert writer._thread.is_alive()


def test_a_drop_with_nothing_queued_is_still_reported_on_close() -> None:
    target = io.StringIO()
    writer = NonBlockingWriter(target, max_bytes=10)
    writer.write("a line far longer than ten bytes\n")
    assert writer.dropped == 1
    writer.close(timeout=10)
    assert "1 log lines dropped" in target.getvalue()


# --- boot.report_failure ---------------------------------------------------------------


def report(exc: BaseException) -> list[MutableMapping[str, Any]]:
    with capture_logs() as logs:
        boot.report_failure(exc, structlog.get_logger("test"))
    return logs


def test_report_failure_shows_each_config_error_not_a_traceback() -> None:
    errors = [
        ConfigError("/etc/k4sinit/config.yaml", 3, "kubelet", "command", "must not be empty"),
        ConfigError(
            "/etc/k4sinit/config.yaml",
            9,
            "etcd",
            "dependsOn",
            "unknown service 'containrd'",
            "did you mean 'containerd'?",
        ),
    ]
    try:
        raise ConfigErrors("/etc/k4sinit/config.yaml", errors)
    except ConfigErrors as exc:
        logs = report(exc)
    assert [(e["log_level"], e["event"]) for e in logs] == [
        ("error", "boot failed: the config is invalid"),
        ("error", "  2 errors in /etc/k4sinit/config.yaml"),
        (
            "error",
            "  /etc/k4sinit/config.yaml:3: service 'kubelet', field command: must not be empty",
        ),
        (
            "error",
            "  /etc/k4sinit/config.yaml:9: service 'etcd', field dependsOn: "
            "unknown service 'containrd', did you mean 'containerd'?",
        ),
    ]
    assert logs[0]["errors"] == 2
    assert not [e for e in logs if "Traceback" in e["event"]]


def test_report_failure_of_an_os_error_is_one_line() -> None:
    logs = report(OSError(2, "No such file or directory"))
    assert [(e["event"], e["error"]) for e in logs] == [
        ("boot failed", "[Errno 2] No such file or directory")
    ]


def test_report_failure_of_an_unexpected_exception_logs_its_traceback() -> None:
    def stage() -> None:
        raise KeyError("surprise")

    try:
        stage()
    except KeyError as exc:
        logs = report(exc)
    events = [e["event"] for e in logs]
    assert logs[0]["error"] == "KeyError('surprise')"
    assert events[0] == "boot failed: unexpected error"
    assert events[1] == "  Traceback (most recent call last):"
    assert any("in stage" in event for event in events)
    assert events[-1] == "  KeyError: 'surprise'"
    assert all(e["log_level"] == "error" and "\n" not in e["event"] for e in logs)


# --- log.exception: the traceback reaches the log, once ------------------------------


def _log_an_exception(fmt: str) -> str:
    """Configure the daemon's logging into a buffer, log.exception once; the text written."""
    target = io.StringIO()
    writer = log.configure(fmt, stream=target, colors=False)
    try:

        def failing_stage() -> None:
            raise ZeroDivisionError("the divisor was zero")

        try:
            failing_stage()
        except ZeroDivisionError:
            log.get_logger(service="etcd").exception("service life failed")
        assert writer.wait_idle(timeout=10)
    finally:
        writer.close(timeout=10)
        structlog.reset_defaults()
    return target.getvalue()


def test_log_exception_writes_its_traceback_into_the_json_line_once() -> None:
    text = _log_an_exception("json")
    lines = text.splitlines()
    assert len(lines) == 1, text
    event = json.loads(lines[0])
    assert event["event"] == "service life failed"
    assert event["service"] == "etcd"
    assert "exc_info" not in event
    trace = event["exception"]
    assert trace.startswith("Traceback (most recent call last):")
    assert "in failing_stage" in trace
    assert trace.rstrip().endswith("ZeroDivisionError: the divisor was zero")
    assert text.count("ZeroDivisionError: the divisor was zero") == 1


def test_log_exception_on_the_console_shows_the_traceback_once() -> None:
    text = _log_an_exception("console")
    assert "service life failed" in text
    assert "exc_info" not in text
    assert "failing_stage" in text
    assert text.count("ZeroDivisionError: the divisor was zero") == 1
