"""Tests for k4sinit.supervision.probes: thresholds, loop timing (virtual clock), real checks."""

from __future__ import annotations

import contextlib
import functools
import os
import resource
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import h11
import pytest
import trio

from k4sinit.core.spec import (
    ExecAction,
    FileAction,
    HTTPGetAction,
    Probe,
    ProbeAction,
    TCPSocketAction,
    TLSConfig,
    UnixSocketAction,
)
from k4sinit.supervision.probes import (
    ExecRunner,
    ProbeInconclusive,
    Prober,
    ProbeResult,
    ProbeTracker,
    run_probe,
)
from k4sinit.supervision.timeouts import DaemonLate
from tests.certs import CA, CertFiles

OK = ProbeResult(True, "ok")
BAD = ProbeResult(False, "bad")


async def no_exec(argv: Sequence[str], timeout: float) -> tuple[int | None, str]:  # noqa: ASYNC109
    raise AssertionError("exec runner must not be called")


# --- ProbeTracker --------------------------------------------------------------


async def check(action: ProbeAction, timeout: float, run_exec: ExecRunner) -> ProbeResult:  # noqa: ASYNC109
    """One check by a fresh :class:`Prober` (the runner keeps one per service)."""
    return await Prober(run_exec).check(action, timeout)


def verdicts(probe: Probe, results: str) -> list[bool | None]:
    """Feed 's'/'f' results; return what record() said for each."""
    tracker = ProbeTracker(probe)
    return [tracker.record(OK if r == "s" else BAD) for r in results]


def test_tracker_starts_unknown() -> None:
    tracker = ProbeTracker(Probe(FileAction("/x")))
    assert (tracker.healthy, tracker.last, tracker.successes, tracker.failures) == (
        None,
        None,
        0,
        0,
    )


def test_tracker_success_threshold_two() -> None:
    probe = Probe(FileAction("/x"), success_threshold=2, failure_threshold=3)
    assert verdicts(probe, "ss") == [None, True]
    assert verdicts(probe, "sfs") == [None, None, None]  # a failure resets the count
    assert verdicts(probe, "sfss") == [None, None, None, True]


def test_tracker_failure_threshold_three() -> None:
    probe = Probe(FileAction("/x"), success_threshold=2, failure_threshold=3)
    assert verdicts(probe, "ssfff") == [None, True, None, None, False]
    # alternating results never reach either threshold after the first verdict
    assert verdicts(probe, "ssffsffsff") == [None, True] + [None] * 8
    # from unknown, three failures are a verdict too (liveness/startup need it)
    assert verdicts(probe, "fff") == [None, None, False]


def test_tracker_reports_only_changes() -> None:
    probe = Probe(FileAction("/x"), success_threshold=1, failure_threshold=1)
    assert verdicts(probe, "ssffs") == [True, None, False, None, True]


def test_tracker_counts_and_last() -> None:
    tracker = ProbeTracker(Probe(FileAction("/x"), success_threshold=2, failure_threshold=3))
    for r in (OK, BAD, BAD):
        tracker.record(r)
    assert (tracker.successes, tracker.failures, tracker.last) == (0, 2, BAD)
    assert tracker.healthy is None
    tracker.record(OK)
    assert (tracker.successes, tracker.failures, tracker.last) == (1, 0, OK)


# --- run_probe on the virtual clock ----------------------------------------------


class FakeCheck:
    """Returns scripted results (then repeats the last), recording start times."""

    def __init__(self, results: str, duration: float = 0.0) -> None:
        self.results = results
        self.duration = duration
        self.times: list[float] = []
        self.running = False

    async def __call__(self, action: ProbeAction, timeout: float) -> ProbeResult:  # noqa: ASYNC109
        assert not self.running, "two checks of one probe at once"
        self.running = True
        self.times.append(trio.current_time())
        await trio.sleep(self.duration)
        self.running = False
        r = self.results[min(len(self.times), len(self.results)) - 1]
        return OK if r == "s" else BAD


async def run_for(
    seconds: float,
    probe: Probe,
    fake: FakeCheck,
    on_verdict: Callable[[bool, ProbeResult], Awaitable[None] | None] | None = None,
) -> list[tuple[float, bool]]:
    """Run the probe loop for ``seconds`` of virtual time; return timed verdicts."""
    seen: list[tuple[float, bool]] = []

    def record(healthy: bool, result: ProbeResult) -> None:
        seen.append((trio.current_time(), healthy))

    async with trio.open_nursery() as nursery:
        tracker = await nursery.start(run_probe, probe, fake, on_verdict or record)
        assert isinstance(tracker, ProbeTracker)
        await trio.sleep(seconds)
        nursery.cancel_scope.cancel()
    return seen


async def test_run_probe_schedule(autojump_clock: trio.abc.Clock) -> None:
    fake = FakeCheck("s")
    probe = Probe(FileAction("/x"), initial_delay=2.5, period=1.5)
    seen = await run_for(6.0, probe, fake)
    assert fake.times == [2.5, 4.0, 5.5]
    assert seen == [(2.5, True)]


async def test_run_probe_slow_checks_do_not_drift(autojump_clock: trio.abc.Clock) -> None:
    fake = FakeCheck("s", duration=0.4)
    probe = Probe(FileAction("/x"), initial_delay=1.0, period=1.0)
    await run_for(4.5, probe, fake)
    assert fake.times == [1.0, 2.0, 3.0, 4.0]


async def test_run_probe_overrun_starts_next_at_once(autojump_clock: trio.abc.Clock) -> None:
    fake = FakeCheck("s", duration=2.5)  # FakeCheck asserts checks never overlap
    probe = Probe(FileAction("/x"), period=1.0)
    await run_for(8.0, probe, fake)
    assert fake.times == [0.0, 2.5, 5.0, 7.5]


async def test_run_probe_verdict_times(autojump_clock: trio.abc.Clock) -> None:
    fake = FakeCheck("sssfffffs")
    probe = Probe(FileAction("/x"), initial_delay=1.0, period=2.0, failure_threshold=3)
    seen = await run_for(18.0, probe, fake)
    # checks at 1, 3, 5 (ok), 7, 9, 11 (third failure), 13, 15, 17 (ok again)
    assert seen == [(1.0, True), (11.0, False), (17.0, True)]


async def test_run_probe_async_callback_delays_next_check(
    autojump_clock: trio.abc.Clock,
) -> None:
    fake = FakeCheck("ssf", duration=0.0)
    calls: list[tuple[float, bool, str]] = []

    async def on_verdict(healthy: bool, result: ProbeResult) -> None:
        calls.append((trio.current_time(), healthy, result.message))
        await trio.sleep(1.5)

    probe = Probe(FileAction("/x"), period=1.0, failure_threshold=1)
    await run_for(3.9, probe, fake, on_verdict)
    assert calls == [(0.0, True, "ok"), (2.5, False, "bad")]
    assert fake.times == [0.0, 1.5, 2.5]


async def test_fast_first_checks_double_until_the_first_success(
    autojump_clock: trio.abc.Clock,
) -> None:
    fake = FakeCheck("ffffs")  # ready at the fifth check, then checked every period
    probe = Probe(FileAction("/x"), initial_delay=1.0, period=1.0)
    seen: list[tuple[float, bool]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            functools.partial(
                run_probe,
                probe,
                fake,
                lambda ok, _: seen.append((trio.current_time(), ok)),
                fast_first=True,
            )
        )
        await trio.sleep(4.0)
        nursery.cancel_scope.cancel()
    # 50 ms, 100 ms, 200 ms, 400 ms apart; after the success, the period again
    assert fake.times == pytest.approx([1.0, 1.05, 1.15, 1.35, 1.75, 2.75, 3.75])
    assert [ok for _, ok in seen] == [True]
    assert [t for t, _ in seen] == pytest.approx([1.75])


async def test_fast_first_intervals_stop_growing_at_the_period(
    autojump_clock: trio.abc.Clock,
) -> None:
    fake = FakeCheck("f")  # never ready: 0.05, 0.1, 0.2, 0.4, then 0.5 s apart
    probe = Probe(FileAction("/x"), period=0.5, failure_threshold=1000)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            functools.partial(run_probe, probe, fake, lambda ok, _: None, fast_first=True)
        )
        await trio.sleep(2.0)
        nursery.cancel_scope.cancel()
    assert fake.times == pytest.approx([0.0, 0.05, 0.15, 0.35, 0.75, 1.25, 1.75])


async def test_fast_first_failures_count_once_a_period(autojump_clock: trio.abc.Clock) -> None:
    # failureThreshold periods keep their meaning: the extra checks' failures
    # are not counted, so the third failure counts at 2.55 s, not at 0.15 s.
    fake = FakeCheck("f")
    probe = Probe(FileAction("/x"), period=1.0, failure_threshold=3)
    seen: list[tuple[float, bool]] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            functools.partial(
                run_probe,
                probe,
                fake,
                lambda ok, _: seen.append((trio.current_time(), ok)),
                fast_first=True,
            )
        )
        await trio.sleep(3.0)
        nursery.cancel_scope.cancel()
    # checks at 0, .05, .15, .35, .75, 1.55, 2.55: counted at 0, 1.55 and 2.55
    assert [ok for _, ok in seen] == [False]
    assert [t for t, _ in seen] == pytest.approx([2.55])


# --- real I/O: HTTP -------------------------------------------------------------


Handler = Callable[[h11.Request], tuple[int, list[tuple[str, str]]]]


async def serve_http(
    nursery: trio.Nursery, handler: Handler, ssl_context: ssl.SSLContext | None = None
) -> int:
    """Serve HTTP/1.1 (or HTTPS) on 127.0.0.1; return the port."""

    async def connection(stream: trio.abc.Stream) -> None:
        if ssl_context is not None:
            stream = trio.SSLStream(stream, ssl_context, server_side=True)
        conn = h11.Connection(h11.SERVER)
        try:
            while (event := conn.next_event()) is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(4096)))
            assert isinstance(event, h11.Request)
            status, headers = handler(event)
            body = b"x" * 100_000  # more than the probe reads
            headers = [*headers, ("Content-Length", str(len(body)))]
            await stream.send_all(conn.send(h11.Response(status_code=status, headers=headers)))
            await stream.send_all(conn.send(h11.Data(data=body)))
            await stream.send_all(conn.send(h11.EndOfMessage()))
        except (trio.BrokenResourceError, h11.RemoteProtocolError):
            pass  # a client the test expects to fail, or one that stopped reading

    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, connection, 0, host="127.0.0.1")
    )
    port: int = listeners[0].socket.getsockname()[1]
    return port


def reply(status: int) -> Handler:
    return lambda request: (status, [("Location", "/elsewhere")] if status == 302 else [])


@pytest.mark.parametrize(
    ("status", "ok", "message"),
    [
        (200, True, "HTTP 200"),
        (302, True, "HTTP 302"),
        (503, False, "HTTP 503 from http://127.0.0.1:{port}/readyz"),
    ],
)
async def test_http_status(status: int, ok: bool, message: str) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await serve_http(nursery, reply(status))
            result = await check(HTTPGetAction(port=port, path="/readyz"), 2.0, no_exec)
            assert result == ProbeResult(ok, message.format(port=port))
            nursery.cancel_scope.cancel()


async def test_http_sends_headers() -> None:
    seen: list[h11.Request] = []

    def handler(request: h11.Request) -> tuple[int, list[tuple[str, str]]]:
        seen.append(request)
        return 200, []

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await serve_http(nursery, handler)
            action = HTTPGetAction(port=port, path="/healthz?verbose", headers=(("X-Probe", "k"),))
            assert (await check(action, 2.0, no_exec)).ok
            nursery.cancel_scope.cancel()
    [request] = seen
    assert request.target == b"/healthz?verbose"
    headers = dict(request.headers)
    assert headers[b"x-probe"] == b"k"
    assert headers[b"host"] == f"127.0.0.1:{port}".encode()
    assert headers[b"user-agent"] == b"k4sinit-probe"
    assert headers[b"connection"] == b"close"


async def test_http_host_header_can_be_overridden() -> None:
    seen: list[h11.Request] = []

    def handler(request: h11.Request) -> tuple[int, list[tuple[str, str]]]:
        seen.append(request)
        return 200, []

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await serve_http(nursery, handler)
            action = HTTPGetAction(port=port, headers=(("Host", "api.local"),))
            assert (await check(action, 2.0, no_exec)).ok
            nursery.cancel_scope.cancel()
    assert [v for k, v in seen[0].headers if k == b"host"] == [b"api.local"]


async def test_http_refused() -> None:
    port = free_port()
    with trio.fail_after(10):
        result = await check(HTTPGetAction(port=port), 2.0, no_exec)
    assert result == ProbeResult(False, f"connection refused to 127.0.0.1:{port}")


async def test_http_timeout_when_server_never_answers() -> None:
    async def silent(stream: trio.abc.Stream) -> None:
        await trio.sleep_forever()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, silent, 0, host="127.0.0.1")
            )
            port = listeners[0].socket.getsockname()[1]
            result = await check(HTTPGetAction(port=port), 0.5, no_exec)
            assert result == ProbeResult(False, "timed out after 0.5s")
            nursery.cancel_scope.cancel()


async def test_http_server_hangs_up() -> None:
    async def rude(stream: trio.abc.Stream) -> None:
        await stream.receive_some(4096)
        await stream.aclose()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, rude, 0, host="127.0.0.1")
            )
            port = listeners[0].socket.getsockname()[1]
            result = await check(HTTPGetAction(port=port), 2.0, no_exec)
            assert not result.ok
            assert result.message in (
                f"no response from http://127.0.0.1:{port}/",
                f"connection reset by 127.0.0.1:{port}",
            )
            nursery.cancel_scope.cancel()


# --- real I/O: HTTPS with client certificates --------------------------------------


class PKI:
    def __init__(self, directory: Path) -> None:
        self.ca = CA.create(directory, "ca")
        self.server = self.ca.issue("server", server=True)
        self.client = self.ca.issue("client", server=False)
        self.other_ca = CA.create(directory, "other-ca")
        self.stranger = self.other_ca.issue("stranger", server=False)

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=self.ca.cert_file)
        context.load_cert_chain(self.server.cert, self.server.key)
        context.verify_mode = ssl.CERT_REQUIRED
        return context


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return PKI(tmp_path)


@asynccontextmanager
async def https_server(pki: PKI) -> AsyncIterator[int]:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            yield await serve_http(nursery, reply(200), pki.server_context())
            nursery.cancel_scope.cancel()


def https(port: int, client: CertFiles | None = None, **tls: str) -> HTTPGetAction:
    if client is not None:
        tls = {"cert_file": client.cert, "key_file": client.key, **tls}
    return HTTPGetAction(port=port, scheme="HTTPS", path="/readyz", tls=TLSConfig(**tls))


async def test_https_with_client_cert(pki: PKI) -> None:
    prober = Prober(no_exec)
    async with https_server(pki) as port:
        assert await prober.check(https(port, pki.client), 2.0) == ProbeResult(True, "HTTP 200")
        # verifying the server against the right CA, by IP and by name
        verified = https(port, pki.client, ca_file=pki.ca.cert_file)
        assert await prober.check(verified, 2.0) == ProbeResult(True, "HTTP 200")
        by_name = https(port, pki.client, ca_file=pki.ca.cert_file, server_name="localhost")
        assert await prober.check(by_name, 2.0) == ProbeResult(True, "HTTP 200")


async def test_https_without_client_cert(pki: PKI) -> None:
    async with https_server(pki) as port:
        result = await check(https(port), 2.0, no_exec)
    assert result == ProbeResult(
        False, "TLS: server rejected our client certificate (or none was sent)"
    )


async def test_https_client_cert_from_other_ca(pki: PKI) -> None:
    async with https_server(pki) as port:
        result = await check(https(port, pki.stranger), 2.0, no_exec)
    assert not result.ok
    assert result.message.startswith("TLS: server rejected our client certificate")


async def test_https_rejection_alerts(pki: PKI) -> None:
    """Servers that send a TLS alert (Go's, OpenSSL's) get the same clear reason."""
    context = pki.server_context()

    async def alerting(stream: trio.abc.Stream) -> None:
        # trio's SSLStream drops the alert when its handshake fails; send it by hand.
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = context.wrap_bio(incoming, outgoing, server_side=True)
        with contextlib.suppress(trio.BrokenResourceError):
            while True:
                try:
                    tls.do_handshake()
                    raise AssertionError("the server accepted the client")
                except ssl.SSLWantReadError:
                    await stream.send_all(outgoing.read())
                    incoming.write(await stream.receive_some(4096))
                except ssl.SSLError:
                    await stream.send_all(outgoing.read())  # the alert
                    return

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            serve = functools.partial(trio.serve_tcp, alerting, 0, host="127.0.0.1")
            port = (await nursery.start(serve))[0].socket.getsockname()[1]
            assert await check(https(port), 2.0, no_exec) == ProbeResult(
                False, "TLS: server rejected our client certificate (or none was sent)"
            )
            assert await check(https(port, pki.stranger), 2.0, no_exec) == ProbeResult(
                False, "TLS: server rejected our client certificate (tlsv1 alert unknown ca)"
            )
            nursery.cancel_scope.cancel()


async def test_https_server_not_trusted(pki: PKI) -> None:
    async with https_server(pki) as port:
        wrong_ca = https(port, pki.client, ca_file=pki.other_ca.cert_file)
        result = await check(wrong_ca, 2.0, no_exec)
        assert not result.ok
        prefix = "TLS: server certificate not trusted: "
        assert result.message.startswith(prefix)
        assert "certificate" in result.message.removeprefix(prefix)  # OpenSSL's reason
        wrong_name = https(port, pki.client, ca_file=pki.ca.cert_file, server_name="etcd")
        result = await check(wrong_name, 2.0, no_exec)
        assert result == ProbeResult(
            False,
            "TLS: server certificate not trusted: "
            "Hostname mismatch, certificate is not valid for 'etcd'.",
        )


async def test_https_against_plain_http() -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await serve_http(nursery, reply(200))
            result = await check(https(port), 2.0, no_exec)
            nursery.cancel_scope.cancel()
    assert not result.ok
    assert result.message.startswith("TLS: ")


async def test_https_bad_tls_files(pki: PKI, tmp_path: Path) -> None:
    missing = https(1, ca_file=str(tmp_path / "nope.crt"))
    result = await check(missing, 2.0, no_exec)
    assert result == ProbeResult(False, "TLS config: No such file or directory")
    mismatched = https(1, cert_file=pki.client.cert, key_file=pki.server.key)
    result = await check(mismatched, 2.0, no_exec)
    assert not result.ok
    assert result.message.startswith("TLS config: ")


async def test_prober_reloads_rotated_certs(pki: PKI, tmp_path: Path) -> None:
    prober = Prober(no_exec)
    cert, key = tmp_path / "rotating.crt", tmp_path / "rotating.key"

    def install(files: CertFiles) -> None:  # as cert managers do: write aside, rename
        for source, target in ((files.cert, cert), (files.key, key)):
            Path(f"{target}.new").write_bytes(Path(source).read_bytes())
            os.replace(f"{target}.new", target)

    install(pki.stranger)
    async with https_server(pki) as port:
        action = https(port, CertFiles(str(cert), str(key)))
        assert not (await prober.check(action, 2.0)).ok
        install(pki.client)
        assert (await prober.check(action, 2.0)).ok


# --- real I/O: TCP, unix sockets, files --------------------------------------------


def free_port() -> int:
    """A port nothing listens on (bound then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_tcp_socket() -> None:
    with trio.fail_after(10), socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert await check(TCPSocketAction(port=port), 2.0, no_exec) == ProbeResult(
            True, f"TCP connect to 127.0.0.1:{port}"
        )
        closed = free_port()
        assert await check(TCPSocketAction(port=closed), 2.0, no_exec) == ProbeResult(
            False, f"connection refused to 127.0.0.1:{closed}"
        )


async def test_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "live.sock")
    with trio.fail_after(10), socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen()
        result = await check(UnixSocketAction(path), 2.0, no_exec)
    assert result == ProbeResult(True, f"connected to {path}")


async def test_unix_socket_missing_and_stale(tmp_path: Path) -> None:
    missing, stale = str(tmp_path / "missing.sock"), str(tmp_path / "stale.sock")
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(stale)  # the file stays behind, nobody listens
    with trio.fail_after(10):
        assert await check(UnixSocketAction(missing), 2.0, no_exec) == ProbeResult(
            False, f"no socket at {missing}"
        )
        assert await check(UnixSocketAction(stale), 2.0, no_exec) == ProbeResult(
            False, f"connection refused on {stale}"
        )


@contextlib.contextmanager
def no_free_fds() -> Iterator[None]:
    """Lower RLIMIT_NOFILE so that the next fd the process opens fails with EMFILE."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.open("/dev/null", os.O_RDONLY)  # the kernel hands out the lowest free fd
    os.close(lowest_free)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_sockets_the_daemon_cannot_open_are_inconclusive(tmp_path: Path) -> None:
    path = str(tmp_path / "live.sock")
    with trio.fail_after(10), socket.socket(socket.AF_UNIX) as unix, socket.socket() as tcp:
        unix.bind(path)
        unix.listen()
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        port = tcp.getsockname()[1]
        actions: list[ProbeAction] = [
            UnixSocketAction(path),
            TCPSocketAction(port=port),
            HTTPGetAction(port=port),
        ]
        with no_free_fds():
            results = [await check(action, 2.0, no_exec) for action in actions]
    for result in results:
        assert result.inconclusive and not result.ok, result
    assert results[0].message == "not counted: k4sinit cannot open a socket: Too many open files"


# --- the daemon's own trouble is no verdict -------------------------------------------


@dataclass
class SlowServer:
    port: int
    requested: threading.Event  # set once the probe's request has arrived


@contextlib.contextmanager
def slow_http_server(delay: float | None) -> Iterator[SlowServer]:
    """An HTTP server in a thread (so a blocked trio loop does not block it): it
    answers 200 ``delay`` seconds after the request, or never if ``delay`` is None."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(30)
    stop = threading.Event()
    requested = threading.Event()

    def serve() -> None:
        with contextlib.suppress(OSError):
            conn, _ = listener.accept()
            with conn:
                conn.recv(4096)
                requested.set()
                if delay is None:
                    stop.wait(30)
                    return
                stop.wait(delay)
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield SlowServer(listener.getsockname()[1], requested)
    finally:
        stop.set()
        listener.close()
        thread.join(30)


async def probe_through_a_stall(server: SlowServer) -> ProbeResult:
    """One 1 s HTTP probe while the loop is blocked for 1.5 s from the request on."""

    async def stall() -> None:
        assert await trio.to_thread.run_sync(server.requested.wait, 20)
        time.sleep(1.5)  # noqa: ASYNC251 (on purpose: the loop is stuck, as in a flood)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stall)
            return await check(HTTPGetAction(port=server.port), 1.0, no_exec)


async def test_an_answer_the_daemon_was_too_busy_to_read_in_time_counts() -> None:
    with slow_http_server(0.5) as server:
        result = await probe_through_a_stall(server)
    assert result == ProbeResult(True, "HTTP 200")


async def test_no_answer_while_the_daemon_was_stuck_is_inconclusive() -> None:
    with slow_http_server(None) as server:
        result = await probe_through_a_stall(server)
    assert result.inconclusive and not result.ok
    assert result.message.startswith("not counted: no answer, but k4sinit itself was 1.")


def test_tracker_does_not_count_inconclusive_results() -> None:
    tracker = ProbeTracker(Probe(FileAction("/x"), failure_threshold=2))
    late = ProbeResult(False, "not counted: late", inconclusive=True)
    assert [tracker.record(r) for r in (BAD, late, late, OK)] == [None, None, None, True]
    assert [tracker.record(r) for r in (BAD, late, BAD)] == [None, None, False]
    assert tracker.last == BAD and tracker.failures == 2
    tracker.record(late)
    assert (tracker.last, tracker.failures, tracker.healthy) == (late, 2, False)


async def test_an_exec_runner_that_was_too_late_gives_an_inconclusive_result() -> None:
    async def late(argv: Sequence[str], timeout: float) -> tuple[int | None, str]:  # noqa: ASYNC109
        raise DaemonLate(2.25)

    result = await check(ExecAction(("true",)), 1.0, late)
    assert result == ProbeResult(
        False, "not counted: no answer, but k4sinit itself was 2.2s late", inconclusive=True
    )


async def test_an_exec_runner_short_of_fds_gives_an_inconclusive_result() -> None:
    async def short(argv: Sequence[str], timeout: float) -> tuple[int | None, str]:  # noqa: ASYNC109
        raise ProbeInconclusive("k4sinit cannot run true: Too many open files")

    result = await check(ExecAction(("true",)), 1.0, short)
    assert result == ProbeResult(
        False, "not counted: k4sinit cannot run true: Too many open files", inconclusive=True
    )


async def test_file(tmp_path: Path) -> None:
    present = tmp_path / "ready"
    present.touch()
    absent = str(tmp_path / "absent")
    with trio.fail_after(10):
        assert await check(FileAction(str(present)), 1.0, no_exec) == ProbeResult(
            True, f"file {present} exists"
        )
        assert await check(FileAction(absent), 1.0, no_exec) == ProbeResult(
            False, f"file {absent} does not exist"
        )


# --- exec (through an injected runner) -------------------------------------------


def fake_exec(
    code: int | None, output: str, calls: list[tuple[Sequence[str], float]]
) -> ExecRunner:
    async def run_exec(argv: Sequence[str], timeout: float) -> tuple[int | None, str]:  # noqa: ASYNC109
        calls.append((argv, timeout))
        return code, output

    return run_exec


@pytest.mark.parametrize(
    ("code", "output", "expected"),
    [
        (0, "", ProbeResult(True, "exec exited 0")),
        (1, "boom\n", ProbeResult(False, "exec exited 1: boom")),
        (2, "first\nlast line  \n\n", ProbeResult(False, "exec exited 2: last line")),
        (1, "y" * 500, ProbeResult(False, "exec exited 1: " + "y" * 200)),
        (-9, "", ProbeResult(False, "exec killed by signal 9")),
        (None, "", ProbeResult(False, "timed out after 1.5s")),
    ],
)
async def test_exec(code: int | None, output: str, expected: ProbeResult) -> None:
    calls: list[tuple[Sequence[str], float]] = []
    action = ExecAction(("etcdctl", "endpoint", "health"))
    assert await check(action, 1.5, fake_exec(code, output, calls)) == expected
    assert calls == [(("etcdctl", "endpoint", "health"), 1.5)]


async def test_exec_runner_that_ignores_timeout_is_cut_off(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def stuck(argv: Sequence[str], timeout: float) -> tuple[int | None, str]:  # noqa: ASYNC109
        await trio.sleep_forever()

    result = await check(ExecAction(("true",)), 2.0, stuck)
    assert result == ProbeResult(False, "timed out after 2s")
    assert trio.current_time() == 3.0  # timeout + EXEC_GRACE


async def test_check_propagates_outer_cancellation(autojump_clock: trio.abc.Clock) -> None:
    async def slow(argv: Sequence[str], timeout: float) -> tuple[int | None, str]:  # noqa: ASYNC109
        await trio.sleep(10)
        return 0, ""

    with trio.move_on_after(1) as scope:
        await check(ExecAction(("true",)), 5.0, slow)
    assert scope.cancelled_caught
