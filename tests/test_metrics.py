"""The metrics endpoint: the text format, the config, the HTTP server's bounds, a real daemon.

In-process tests run the real MetricsServer on trio's virtual clock with a fake
collection; the last ones scrape a real ``k4sinit run`` whose services crash
and compare with ``status --json``, and show that clients that do not read,
idle or flood do not keep ``status`` from its answer.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
import trio.testing

from k4sinit.config import ConfigErrors, load_config_text
from k4sinit.control.metrics import MIN_SCRAPE_INTERVAL, Coalesced, MetricsServer
from k4sinit.control.wire import MAX_CONNECTIONS, REQUEST_TIMEOUT, SEND_TIMEOUT
from k4sinit.core.log import get_logger
from k4sinit.core.monitoring import MetricsSpec, WatchdogSpec
from k4sinit.core.prometheus import CONTENT_TYPE, Family, format_value, render
from k4sinit.daemon.metrics import LAG_INTERVAL, LoopLag
from k4sinit.node import roles
from tests.conftest import DaemonProcess, child_cmd, services_config, wait_until

# --- the text format ---------------------------------------------------------------


def test_the_text_format_escapes_labels_and_help_and_skips_empty_families() -> None:
    state = Family("k4sinit_service_state", 'The state.\nOne "hot".')
    state.add(1, {"service": 'a"b\\c\nd', "state": "running"})
    empty = Family("k4sinit_unused", "Nothing.", "counter")
    total = Family("k4sinit_things_total", "Things.", "counter")
    total.add(3)
    assert render([state, empty, total]) == (
        '# HELP k4sinit_service_state The state.\\nOne "hot".\n'
        "# TYPE k4sinit_service_state gauge\n"
        'k4sinit_service_state{service="a\\"b\\\\c\\nd",state="running"} 1\n'
        "# HELP k4sinit_things_total Things.\n"
        "# TYPE k4sinit_things_total counter\n"
        "k4sinit_things_total 3\n"
    )


def test_values_are_written_as_the_format_reads_them() -> None:
    assert [format_value(v) for v in (0, 2.0, 0.25, float("inf"), float("-inf"))] == [
        "0",
        "2",
        "0.25",
        "+Inf",
        "-Inf",
    ]
    assert format_value(float("nan")) == "NaN"


def test_names_the_format_does_not_allow_are_refused() -> None:
    with pytest.raises(ValueError, match="metric name"):
        Family("k4sinit-bad", "x")
    with pytest.raises(ValueError, match="label name"):
        Family("k4sinit_ok", "x").add(1, {"__reserved": "x"})


# --- the config --------------------------------------------------------------------

SERVICE = "services: {a: {command: [sleep, '1']}}\n"


def test_metrics_and_watchdog_are_off_unless_given() -> None:
    config = load_config_text(SERVICE, "t")
    assert config.metrics is None and config.watchdog is None
    assert config.services["a"].critical is False


def test_the_sections_and_their_defaults() -> None:
    config = load_config_text(
        SERVICE + "metrics: {}\nwatchdog: {timeoutSeconds: 12, graceSeconds: 5}\n", "t"
    )
    assert config.metrics == MetricsSpec("/run/k4sinit/metrics.sock")
    assert config.metrics.unix_path == "/run/k4sinit/metrics.sock"
    assert config.watchdog == WatchdogSpec("/dev/watchdog", 12.0, 5.0)
    tcp = load_config_text(SERVICE + "metrics: {listen: '[::1]:9100'}\n", "t").metrics
    assert tcp is not None and tcp.unix_path is None and tcp.tcp == ("::1", 9100)
    every = load_config_text(SERVICE + "metrics: {listen: ':9100'}\n", "t").metrics
    assert every is not None and every.tcp == (None, 9100)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("metrics: {listen: metrics.sock}", "t:2: field metrics.listen: invalid listen address"),
        ("metrics: {listen: '::1:9100'}", "write an IPv6 address in brackets"),
        ("metrics: {listen: 'host:99999'}", "port '99999' is not a number from 1 to 65535"),
        ("metrics: {port: 9100}", "t:2: field metrics.port: unknown key 'port'"),
        ("metrics: /run/m.sock", "field metrics: expected a mapping"),
        ("watchdog: {timeoutSeconds: 1}", "field watchdog.timeoutSeconds: must be between 5"),
        ("watchdog: {device: watchdog0}", "field watchdog.device: must be an absolute path"),
        ("watchdog: {graceSeconds: -1}", "field watchdog.graceSeconds: must be between 0"),
    ],
)
def test_bad_sections_are_errors_naming_the_field(text: str, message: str) -> None:
    with pytest.raises(ConfigErrors) as caught:
        load_config_text(SERVICE + text + "\n", "t")
    assert message in str(caught.value)


def test_critical_is_a_boolean_shown_by_config_only_when_set() -> None:
    config = load_config_text(
        "services: {a: {command: [x], critical: true}, b: {command: [y]}}\n", "t"
    )
    assert config.services["a"].critical and not config.services["b"].critical
    described = roles.describe(config, None)["services"]
    assert described["a"]["critical"] is True
    assert "critical" not in described["b"]
    with pytest.raises(ConfigErrors, match="field critical: expected a boolean"):
        load_config_text("services: {a: {command: [x], critical: 'yes'}}\n", "t")


# --- the loop lag and the coalesced scrape (virtual time) ---------------------------


async def test_the_loop_lag_is_how_late_a_sleep_wakes() -> None:
    clock = trio.testing.MockClock()  # time moves only when the test says so
    lag = LoopLag()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lag.run)
            await trio.testing.wait_all_tasks_blocked()
            clock.jump(LAG_INTERVAL + 2.5)  # the loop "stalled" for 2.5 s past the deadline
            await trio.testing.wait_all_tasks_blocked()
            assert lag.last == 2.5
            clock.jump(LAG_INTERVAL)
            await trio.testing.wait_all_tasks_blocked()
            assert (lag.last, lag.max) == (0.0, 2.5)
            nursery.cancel_scope.cancel()

    await trio.to_thread.run_sync(lambda: trio.run(main, clock=clock))


async def test_concurrent_scrapes_share_one_collection(autojump_clock: trio.abc.Clock) -> None:
    calls: list[float] = []

    async def collect() -> bytes:
        calls.append(trio.current_time())
        await trio.sleep(1)
        return f"# {len(calls)}\n".encode()

    coalesced = Coalesced(collect)
    got: list[bytes] = []

    async def get() -> None:
        got.append(await coalesced.get())

    async with trio.open_nursery() as nursery:
        for _ in range(100):
            nursery.start_soon(get)
    assert got == [b"# 1\n"] * 100 and calls == [0.0]
    await trio.sleep(MIN_SCRAPE_INTERVAL)
    assert await coalesced.get() == b"# 2\n"  # older than MIN_SCRAPE_INTERVAL by now
    await trio.sleep(MIN_SCRAPE_INTERVAL / 2)
    assert await coalesced.get() == b"# 2\n"  # fresh enough: served again
    assert coalesced.collections == 2


async def test_a_failed_collection_reaches_its_waiters_and_the_next_one_tries_again(
    autojump_clock: trio.abc.Clock,
) -> None:
    fail = [True]

    async def collect() -> bytes:
        await trio.sleep(1)
        if fail[0]:
            raise OSError("boom")
        return b"ok"

    coalesced = Coalesced(collect)
    errors: list[str] = []

    async def get() -> None:
        try:
            await coalesced.get()
        except OSError as exc:
            errors.append(str(exc))

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(get)
    assert errors == ["boom"] * 3
    fail[0] = False
    assert await coalesced.get() == b"ok"


# --- the HTTP server (in process, virtual time) ---------------------------------------


@asynccontextmanager
async def metrics_server(tmp_path: Path, body: bytes = b"# metrics\n") -> AsyncIterator[Any]:
    async def scrape() -> bytes:
        return body

    server = MetricsServer(
        MetricsSpec(str(tmp_path / "run" / "metrics.sock")), scrape, get_logger()
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        yield server
        nursery.cancel_scope.cancel()


async def http(stream: trio.abc.Stream, target: str = "/metrics", method: str = "GET") -> Any:
    """One request on ``stream``; returns (status, headers, body)."""
    client = h11.Connection(h11.CLIENT)
    await stream.send_all(
        client.send(h11.Request(method=method, target=target, headers=[("Host", "k4sinit")]))
        + (client.send(h11.EndOfMessage()) or b"")
    )
    return await read_response(stream, client, head=method == "HEAD")


async def read_response(stream: trio.abc.Stream, client: h11.Connection, head: bool = False) -> Any:
    response, body = None, b""
    while True:
        event = client.next_event()
        if event is h11.NEED_DATA:
            client.receive_data(bytes(await stream.receive_some(65536)))
        elif isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            assert response is not None
            return response.status_code, dict(response.headers), body


async def test_get_head_and_the_wrong_paths_and_methods(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    async with metrics_server(tmp_path) as server:
        assert server.address is not None
        assert oct((await trio.Path(server.address).stat()).st_mode & 0o777) == "0o600"
        for target, method, status in (
            ("/metrics", "GET", 200),
            ("/metrics", "HEAD", 200),
            ("/", "GET", 200),
            ("/nope", "GET", 404),
            ("/metrics", "POST", 405),
        ):
            async with await trio.open_unix_socket(server.address) as stream:
                got, headers, body = await http(stream, target, method)
                assert got == status, (target, method)
            if (target, method) == ("/metrics", "GET"):
                assert headers[b"content-type"] == CONTENT_TYPE.encode()
                assert body == b"# metrics\n"
            if method == "HEAD":
                assert body == b"" and headers[b"content-length"] == b"10"
        # keep-alive: several requests on one connection
        async with await trio.open_unix_socket(server.address) as stream:
            for _ in range(3):
                client = h11.Connection(h11.CLIENT)
                request = h11.Request(method="GET", target="/metrics", headers=[("Host", "x")])
                await stream.send_all(
                    client.send(request) + (client.send(h11.EndOfMessage()) or b"")
                )
                assert (await read_response(stream, client))[0] == 200
    assert not await trio.Path(tmp_path / "run" / "metrics.sock").exists()


async def test_garbage_gets_a_400_and_the_connection_closed(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    async with metrics_server(tmp_path) as server, await trio.open_unix_socket(server.address) as s:
        await s.send_all(b"\x00\x01 not http\r\n\r\n")
        reply = b""
        while data := await s.receive_some(65536):
            reply += data
        assert reply.startswith(b"HTTP/1.1 400 ")


async def test_a_client_that_does_not_read_is_dropped_and_never_holds_up_another(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    big = b"# " + b"x" * (8 << 20) + b"\n"  # far more than a socket buffer holds
    async with metrics_server(tmp_path, big) as server:
        stalled = await trio.open_unix_socket(server.address)
        await stalled.send_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        await trio.sleep(1)
        async with await trio.open_unix_socket(server.address) as other:
            status, _, body = await http(other)
            assert status == 200 and len(body) == len(big)
        await trio.sleep(SEND_TIMEOUT + 1)
        assert server.connections == 0  # the non-reading client was dropped
        await stalled.aclose()


async def test_idle_connections_make_room_and_time_out(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    async with metrics_server(tmp_path) as server:
        idle = [await trio.open_unix_socket(server.address) for _ in range(MAX_CONNECTIONS)]
        await trio.testing.wait_all_tasks_blocked()
        assert server.connections == MAX_CONNECTIONS
        async with await trio.open_unix_socket(server.address) as late:
            assert (await http(late))[0] == 200  # the oldest idle one made room
        assert await idle[0].receive_some(10) == b""  # closed by the server
        await trio.sleep(REQUEST_TIMEOUT + 1)
        assert server.connections == 0
        for stream in idle:
            await stream.aclose()


async def test_a_flood_costs_one_collection_at_a_time(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    async with metrics_server(tmp_path) as server:
        statuses: list[int] = []

        async def one() -> None:
            async with await trio.open_unix_socket(server.address) as stream:
                statuses.append((await http(stream))[0])

        async with trio.open_nursery() as nursery:
            for _ in range(MAX_CONNECTIONS):
                nursery.start_soon(one)
        assert statuses == [200] * MAX_CONNECTIONS
        assert server.scraper.collections == 1  # all within MIN_SCRAPE_INTERVAL


async def test_an_address_that_cannot_be_bound_is_logged_not_fatal(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    (tmp_path / "file").write_text("")
    events: list[tuple[str, dict[str, Any]]] = []

    class Log:
        def error(self, event: str, **kw: Any) -> None:
            events.append((event, kw))

        def info(self, event: str, **kw: Any) -> None:
            events.append((event, kw))

    async def scrape() -> bytes:
        return b""

    server = MetricsServer(MetricsSpec(str(tmp_path / "file" / "m.sock")), scrape, Log())
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
    assert [e for e, _ in events] == ["metrics: cannot listen"]


# --- a real daemon -------------------------------------------------------------------------


@contextmanager
def unix_client(path: Path) -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(30)
        s.connect(str(path))
        yield s
    finally:
        s.close()


def scrape(path: Path) -> dict[str, float]:
    """``GET /metrics`` over the unix socket: ``name{labels}`` -> value."""
    with unix_client(path) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: k4sinit\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), head
    samples = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


@pytest.fixture
def daemon_with_metrics(start_daemon: Any, tmp_path: Path) -> Iterator[tuple[DaemonProcess, Path]]:
    sock = tmp_path / "run" / "metrics.sock"
    config = json.loads(
        services_config(
            {
                "steady": {"command": child_cmd("--print", "3")},
                "crashes": {
                    "command": child_cmd("--exit", "3", "--sleep", "0.05"),
                    "restartBackoff": {"initialSeconds": 0.05, "crashLoopLimit": 3},
                },
                "killed": {"command": child_cmd(), "restartPolicy": "Never"},
                "unready": {
                    "command": child_cmd(),
                    "readinessProbe": {
                        "exec": {"command": ["false"]},
                        "periodSeconds": 0.1,
                    },
                },
            }
        )
    )
    config["metrics"] = {"listen": str(sock)}
    daemon = start_daemon(json.dumps(config))
    wait_until(sock.exists, what="the metrics socket")
    yield daemon, sock


def test_a_scrape_agrees_with_status(daemon_with_metrics: tuple[DaemonProcess, Path]) -> None:
    daemon, sock = daemon_with_metrics
    steady = daemon.wait_for(lambda s: s["killed"]["state"] == "running", what="killed running")
    assert daemon.cli("kill", "killed", "-s", "KILL").returncode == 0
    services = daemon.wait_for(
        lambda s: (
            s["crashes"]["state"] == "failed"
            and s["killed"]["state"] == "failed"
            and s["steady"]["ready"]
        ),
        what="the crashes to settle",
    )
    assert steady["steady"]["pid"] == services["steady"]["pid"]
    got = scrape(sock)
    for name, service in services.items():
        label = f'service="{name}"'
        for state in ("running", "failed", "waiting", "backoff"):
            want = 1.0 if service["state"] == state else 0.0
            assert got[f'k4sinit_service_state{{{label},state="{state}"}}'] == want, name
        assert got[f"k4sinit_service_ready{{{label}}}"] == float(service["ready"])
        assert got[f"k4sinit_service_restarts_total{{{label}}}"] == service["restarts"]
        assert got[f"k4sinit_service_log_lines_dropped_total{{{label}}}"] == 0
        assert got[f"k4sinit_service_time_in_state_seconds{{{label}}}"] >= service["since"]
    assert services["crashes"]["restarts"] == 2
    assert services["crashes"]["last_exit"] == {"code": 3}
    assert got['k4sinit_service_last_exit_code{service="crashes"}'] == 3
    assert services["killed"]["last_exit"] == {"signal": "SIGKILL"}
    assert got['k4sinit_service_last_exit_signal{service="killed"}'] == 9
    assert 'k4sinit_service_last_exit_code{service="steady"}' not in got
    assert got['k4sinit_service_probe_failures_total{service="unready",probe="readiness"}'] >= 1
    later = scrape_when(
        sock, 'k4sinit_service_probe_failures_total{service="unready",probe="readiness"}', got
    )
    assert later > got['k4sinit_service_probe_failures_total{service="unready",probe="readiness"}']
    for name in (
        "process_resident_memory_bytes",
        "process_open_fds",
        "k4sinit_orphans_reaped_total",
    ):
        assert name in got
    assert got["k4sinit_event_loop_lag_seconds"] >= 0
    assert got['k4sinit_build_info{version="0.1.0"}'] == 1


def scrape_when(path: Path, key: str, before: dict[str, float]) -> float:
    """The value of ``key`` once a scrape shows it changed from ``before``."""
    return wait_until(
        lambda: (value := scrape(path).get(key)) != before.get(key) and value,
        what=f"{key} to change",
    )


def test_clients_that_idle_stall_or_flood_do_not_keep_status_from_its_answer(
    daemon_with_metrics: tuple[DaemonProcess, Path],
) -> None:
    daemon, sock = daemon_with_metrics
    daemon.wait_for(lambda s: s["steady"]["ready"], what="steady ready")
    held: list[socket.socket] = []
    try:
        for i in range(MAX_CONNECTIONS + 20):  # idle ones past the limit, and non-readers
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            held.append(s)
            s.connect(str(sock))
            if i % 2:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n" * 50)  # never read
        flood = subprocess.Popen(
            [sys.executable, "-c", FLOOD, str(sock)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            for _ in range(5):
                out = daemon.cli("status", "--json", timeout=30)
                assert out.returncode == 1, out.stderr  # answered: 'unready' is not ready
                assert {s["name"] for s in json.loads(out.stdout)["services"]} >= {"steady"}
            assert scrape(sock)['k4sinit_service_ready{service="steady"}'] == 1
        finally:
            flood.kill()
            flood.wait()
    finally:
        for s in held:
            s.close()
    assert daemon.proc.poll() is None
    assert not re.search(r'"level": "(error|critical)"', daemon.log_text())


# Requests as fast as one process can send them, over new and kept-alive connections.
FLOOD = """
import socket, sys
while True:
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(sys.argv[1])
        for _ in range(20):
            s.sendall(b"GET /metrics HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
            s.recv(65536)
        s.close()
    except OSError:
        pass
"""
