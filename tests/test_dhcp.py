"""k4sinit.network.dhcp against a real DHCP server: busybox udhcpd across a veth pair.

Two network namespaces built here: the server's, with udhcpd on one end of a veth
pair, and the client's, where a small trio program (``CLIENT`` below) runs
``DHCPClient`` and prints its events as JSON lines. Needs root; installs busybox
with apt-get if it is missing.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path
from typing import Any

import pytest

from k4sinit.network.dhcp import DHCPClient, decode_domain_search

# The client under test: argv is IFNAME LEASE_DIR OFFER_TIMEOUT. One JSON line per
# event on stdout; SIGTERM cancels the client, which must release and return.
CLIENT = r"""
import json, signal, sys
from pathlib import Path
import structlog, trio
from k4sinit.network.dhcp import DHCPClient

structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))

def emit(event, **fields):
    print(json.dumps({"event": event, **fields}), flush=True)

def lease(lease):
    emit("lease", address=str(lease.address), router=str(lease.router),
         dns=[str(a) for a in lease.dns], domain=lease.domain, search=list(lease.search),
         hostname=lease.hostname, lease_seconds=lease.lease_seconds,
         renew_in=lease.renew_at - trio.current_time())

async def main(ifname, lease_dir, offer_timeout):
    client = DHCPClient(ifname, on_lease=lease,
                        on_lost=lambda r: emit("lost", reason=r),
                        on_error=lambda r: emit("error", reason=r),
                        lease_dir=Path(lease_dir), offer_timeout=float(offer_timeout),
                        backoff_initial=0.2, backoff_max=1.0)
    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(client.run)
            emit("started")
            async for _ in signals:
                emit("stopping")
                nursery.cancel_scope.cancel()
                break
    emit("stopped")

trio.run(main, *sys.argv[1:])
"""

SERVER_IP = "10.77.0.1"
POOL = (IPv4Address("10.77.0.100"), IPv4Address("10.77.0.150"))
_names = itertools.count()

# --- pure parts -----------------------------------------------------------------


def test_domain_search_decodes_names_and_compression_pointers() -> None:
    # "k4s.test", then "example.org", then "a.example.org" as "a" + pointer to offset 10.
    raw = b"\x03k4s\x04test\x00\x07example\x03org\x00\x01a\xc0\x0a"
    assert decode_domain_search(raw) == ("k4s.test", "example.org", "a.example.org")
    assert decode_domain_search(list(raw)) == ("k4s.test", "example.org", "a.example.org")


def test_domain_search_keeps_what_precedes_a_fault() -> None:
    assert decode_domain_search(b"\x03k4s\x00\x05ab") == ("k4s",)
    assert decode_domain_search(b"\xc0\x00") == ()  # a pointer loop ends, not hangs


class Half(random.Random):
    """A random source whose every draw is 0.5: the jitter's midpoint."""

    def random(self) -> float:
        return 0.5


def test_backoff_doubles_up_to_the_maximum_with_jitter() -> None:
    client = DHCPClient("eth0", on_lease=lambda lease: None, rng=Half())
    assert [client.retry_delay(n) for n in range(1, 8)] == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert client.retry_delay(1, rand=0.0) == pytest.approx(0.8)
    assert client.retry_delay(9, rand=0.999) <= 30.0


def test_backoff_stays_at_the_maximum_however_long_the_server_is_away() -> None:
    # 2.0 ** 1024 overflows a float: after 1025 failed attempts in a row (some
    # eight hours at 30 s each) the delay used to raise OverflowError.
    client = DHCPClient("eth0", on_lease=lambda lease: None, rng=Half())
    assert client.retry_delay(1025) == 30.0
    assert client.retry_delay(10**9) == 30.0


# --- against udhcpd -------------------------------------------------------------


class Client:
    """A running client program; ``expect`` reads its JSON events."""

    def __init__(self, proc: subprocess.Popen[str], stderr: Path) -> None:
        self.proc = proc
        self.stderr = stderr
        self.events: list[dict[str, Any]] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def expect(
        self, event: str, timeout: float, where: Callable[[dict[str, Any]], bool] = lambda e: True
    ) -> dict[str, Any]:
        """The next event named ``event`` that satisfies ``where``, within ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"client exited ({self.proc.wait()}): {self.output()}")
            message: dict[str, Any] = json.loads(line)
            self.events.append(message)
            if message["event"] == event and where(message):
                return message
        raise AssertionError(f"no {event!r} event in {timeout}s: {self.output()}")

    def output(self) -> str:
        return f"events {self.events}\nstderr:\n{self.stderr.read_text()[-4000:]}"

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)


class Net:
    """Two namespaces joined by a veth pair; start udhcpd and clients in them."""

    def __init__(self, tmp: Path) -> None:
        n = f"{os.getpid()}-{next(_names)}"
        self.tmp = tmp
        self.server_ns = f"k4sdhcp-s-{n}"
        self.client_ns = f"k4sdhcp-c-{n}"
        self.ifname = "eth1"
        self.procs: list[subprocess.Popen[str]] = []
        self.server: subprocess.Popen[str] | None = None
        self.server_leases = tmp / "udhcpd.leases"
        self.lease_dir = tmp / "leases"
        self.cwd = tmp / "cwd"
        self.cwd.mkdir()

    def create(self) -> None:
        veth_s, veth_c = f"k4s{os.getpid() % 100000}s", f"k4s{os.getpid() % 100000}c"
        for cmd in (
            ["ip", "netns", "add", self.server_ns],
            ["ip", "netns", "add", self.client_ns],
            [
                *("ip", "link", "add", veth_s, "netns", self.server_ns),
                *("type", "veth", "peer", "name", veth_c, "netns", self.client_ns),
            ],
            ["ip", "-n", self.server_ns, "link", "set", veth_s, "name", "eth0"],
            ["ip", "-n", self.client_ns, "link", "set", veth_c, "name", self.ifname],
            ["ip", "-n", self.server_ns, "addr", "add", f"{SERVER_IP}/24", "dev", "eth0"],
            ["ip", "-n", self.server_ns, "link", "set", "eth0", "up"],
            ["ip", "-n", self.client_ns, "link", "set", self.ifname, "up"],
        ):
            subprocess.run(cmd, check=True, capture_output=True)

    def start_server(self, lease_seconds: int) -> None:
        conf = self.tmp / "udhcpd.conf"
        conf.write_text(
            f"start {POOL[0]}\nend {POOL[1]}\ninterface eth0\n"
            f"lease_file {self.server_leases}\npidfile {self.tmp / 'udhcpd.pid'}\n"
            "auto_time 0\n"
            "option subnet 255.255.255.0\n"
            f"option router {SERVER_IP}\n"
            "option dns 10.77.0.53 10.77.0.54\n"
            "option domain k4s.test\n"
            "option search k4s.test example.org\n"
            "option hostname node1\n"
            # udhcpd's min_lease (60 s) only limits what a client asks for; it
            # grants this to a client that asks for no particular time.
            f"option lease {lease_seconds}\n"
        )
        self.server_leases.touch()
        # -a 100: udhcpd ARP-pings an address before offering it (2 s by default).
        self.server = self._spawn(
            self.server_ns, ["busybox", "udhcpd", "-f", "-a", "100", str(conf)], "udhcpd.log"
        )

    def start_client(self, ifname: str | None = None, offer_timeout: float = 10.0) -> Client:
        stderr = self.tmp / f"client-{len(self.procs)}.log"
        argv = [sys.executable, "-c", CLIENT, ifname or self.ifname, str(self.lease_dir)]
        proc = self._spawn(self.client_ns, [*argv, str(offer_timeout)], stderr.name)
        return Client(proc, stderr)

    def _spawn(self, ns: str, argv: list[str], log: str) -> subprocess.Popen[str]:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        with (self.tmp / log).open("w") as stderr:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, *argv],  # ip execs argv: proc.pid is its pid
                stdout=subprocess.PIPE,
                stderr=stderr,
                stdin=subprocess.DEVNULL,
                text=True,
                cwd=self.cwd,
                env=env,
            )
        self.procs.append(proc)
        return proc

    def server_lease_table(self) -> list[list[str]]:
        """udhcpd's leases (mac, ip, host..., expires) after asking it to write them."""
        assert self.server is not None
        self.server.send_signal(signal.SIGUSR1)
        # Read while udhcpd may be rewriting it: a failed read is an empty table.
        out = subprocess.run(
            ["busybox", "dumpleases", "-f", str(self.server_leases)],
            capture_output=True,
            text=True,
        ).stdout
        return [line.split() for line in out.splitlines()[1:] if line.strip()]

    def wait_server_lease(
        self, ip: str, pred: Callable[[str], bool], timeout: float = 10.0
    ) -> list[str]:
        """Poll udhcpd's table until ``ip``'s expiry column satisfies ``pred``."""
        deadline = time.monotonic() + timeout
        rows: list[list[str]] = []
        while time.monotonic() < deadline:
            rows = self.server_lease_table()
            for row in rows:
                if row[1] == ip and pred(row[-1]):
                    return row
            time.sleep(0.1)
        raise AssertionError(f"udhcpd's lease table never matched for {ip}: {rows}")

    def destroy(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()
        for ns in (self.server_ns, self.client_ns):
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
            for pid in pids.stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture(scope="module")
def busybox() -> None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 (network namespaces)")
    if shutil.which("busybox") is None:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-qq", "busybox-static"], check=True, env=env)


@pytest.fixture
def net(busybox: None, tmp_path: Path) -> Iterator[Net]:
    net = Net(tmp_path)
    try:
        net.create()
        yield net
    finally:
        net.destroy()


def in_pool(address: str) -> bool:
    ip = IPv4Interface(address).ip
    return POOL[0] <= ip <= POOL[1]


def test_lease_carries_the_servers_address_router_dns_and_names(net: Net) -> None:
    net.start_server(lease_seconds=600)
    client = net.start_client()
    lease = client.expect("lease", timeout=30)
    assert in_pool(lease["address"])
    assert IPv4Interface(lease["address"]).network.prefixlen == 24
    assert lease["router"] == SERVER_IP
    assert lease["dns"] == ["10.77.0.53", "10.77.0.54"]
    assert lease["domain"] == "k4s.test"
    assert lease["search"] == ["k4s.test", "example.org"]
    assert lease["hostname"] == "node1"
    assert lease["lease_seconds"] == 600
    assert 0 < lease["renew_in"] < 600
    # The lease is kept where we said, not in the working directory.
    assert (net.lease_dir / f"{net.ifname}.lease.json").is_file()
    assert list(net.cwd.iterdir()) == []
    # The client applies nothing itself: that is the network module's job.
    addrs = subprocess.run(
        ["ip", "-n", net.client_ns, "-4", "-o", "addr", "show", "dev", net.ifname],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert addrs.strip() == ""


def test_lease_is_renewed_before_it_expires(net: Net) -> None:
    net.start_server(lease_seconds=8)  # T1 at ~4 s
    client = net.start_client()
    first = client.expect("lease", timeout=30)
    assert first["lease_seconds"] == 8
    second = client.expect("lease", timeout=20)
    assert second["address"] == first["address"]
    third = client.expect("lease", timeout=20)
    assert third["address"] == first["address"]
    assert not [e for e in client.events if e["event"] in ("lost", "error")]


def test_cancellation_releases_the_lease_at_the_server(net: Net) -> None:
    net.start_server(lease_seconds=600)
    client = net.start_client()
    lease = client.expect("lease", timeout=30)
    ip = str(IPv4Interface(lease["address"]).ip)
    net.wait_server_lease(ip, lambda expires: expires != "expired")
    client.stop()
    client.expect("stopped", timeout=15)
    assert client.proc.wait(timeout=15) == 0
    # udhcpd marks a released lease expired at once (it was granted for 600 s).
    net.wait_server_lease(ip, lambda expires: expires == "expired")
    assert not (net.lease_dir / f"{net.ifname}.lease.json").exists()


def test_no_server_is_reported_clearly_and_retried(net: Net) -> None:
    client = net.start_client(offer_timeout=1)
    first = client.expect("error", timeout=20)
    assert first["reason"].startswith(f"{net.ifname}: no DHCP offer after 1s; retrying in ")
    client.expect("error", timeout=20)  # a second attempt, and it failed the same way
    client.stop()
    client.expect("stopped", timeout=15)
    assert client.proc.wait(timeout=15) == 0


def test_missing_interface_is_reported_and_retried(net: Net) -> None:
    client = net.start_client(ifname="nosuch0")
    error = client.expect("error", timeout=20)
    assert error["reason"].startswith("nosuch0: no such interface; retrying in ")
    client.expect("error", timeout=20)
    client.stop()
    client.expect("stopped", timeout=15)


def test_a_server_that_comes_late_is_found_on_a_retry(net: Net) -> None:
    client = net.start_client(offer_timeout=1)
    client.expect("error", timeout=20)
    net.start_server(lease_seconds=600)
    lease = client.expect("lease", timeout=30)
    assert in_pool(lease["address"])
