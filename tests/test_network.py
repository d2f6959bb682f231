"""k4sinit.network in real network namespaces.

Each test makes two namespaces (``k4s-test-<random>`` for the node and
``<that>-p`` for the far ends of its veth pairs), runs :class:`Network` INSIDE
the node's namespace as a child (``ip netns exec NS python -m tests.test_network
drive CONFIG``: this module is also that small steerable driver), and reads the
result back with ``ip -j``. The namespaces, and anything still running in them,
are removed even when a test fails.

The driver prints one JSON object per line on stdout: ``{"applied": [...]}``
after each apply, and with ``"watch": true`` ``{"snapshot": {...}}`` at every
change until its stdin closes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from ipaddress import ip_address, ip_interface, ip_network
from pathlib import Path
from typing import Any

import pytest
import trio

from k4sinit.core.netspec import DNS, Interface, InterfaceKind, NetworkSource, NetworkSpec, Route
from k4sinit.core.spec import Condition
from k4sinit.network import Network

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 30  # seconds for any one step; generous for a loaded machine

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or (not Path("/usr/sbin/ip").exists() and not Path("/sbin/ip").exists()),
    reason="needs root and iproute2 to make network namespaces",
)


# --- the driver (runs inside the namespace) ----------------------------------------------


def spec_from_json(data: dict[str, Any]) -> NetworkSpec:
    """A NetworkSpec from the plain JSON the tests write."""
    interfaces = []
    for i in data.get("interfaces", []):
        routes = tuple(
            Route(
                to=ip_network(r.get("to", "0.0.0.0/0")),
                via=ip_address(r["via"]) if r.get("via") else None,
                metric=r.get("metric"),
            )
            for r in i.get("routes", [])
        )
        interfaces.append(
            Interface(
                name=i.get("name"),
                mac=i.get("mac"),
                up=i.get("up", True),
                mtu=i.get("mtu"),
                addresses=tuple(ip_interface(a) for a in i.get("addresses", [])),
                routes=routes,
                dhcp=i.get("dhcp", False),
                kind=InterfaceKind(i.get("kind", "physical")),
                bridge_ports=tuple(i.get("bridge_ports", [])),
                vlan_id=i.get("vlan_id"),
                vlan_link=i.get("vlan_link"),
            )
        )
    dns = data.get("dns", {})
    return NetworkSpec(
        interfaces=tuple(interfaces),
        dns=DNS(
            nameservers=tuple(ip_address(a) for a in dns.get("nameservers", [])),
            search=tuple(dns.get("search", [])),
        ),
        wait_for_carrier=data.get("wait_for_carrier", True),
        source=NetworkSource.CONFIG,
    )


def _emit(obj: Any) -> None:
    print(json.dumps(obj), flush=True)


def _lose_events_once() -> None:
    """Make the first read of the first event socket fail with ENOBUFS, as when the
    kernel drops events."""
    from k4sinit.network import netlink

    real_open = netlink.open_events
    state = {"failed": False}

    def open_events() -> Any:
        sock = real_open()
        if not state["failed"]:
            real_get = sock.get

            def get(*args: Any, **kwargs: Any) -> Any:
                if not state["failed"]:
                    state["failed"] = True
                    real_get(*args, **kwargs)
                    raise OSError(errno.ENOBUFS, os.strerror(errno.ENOBUFS))
                return real_get(*args, **kwargs)

            sock.get = get
        return sock

    netlink.open_events = open_events


async def drive(data: dict[str, Any]) -> None:
    """Apply the config (``applies`` times); with ``watch``, watch first and then
    report every change until stdin closes."""
    import structlog

    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    if data.get("lose_events_once"):
        _lose_events_once()
    net = Network(
        spec_from_json(data),
        structlog.get_logger(),
        hostname=data.get("hostname"),
        resolv_conf=Path(data["resolv_conf"]) if data.get("resolv_conf") else None,
        hosts=Path(data["hosts"]) if data.get("hosts") else None,
    )
    async with trio.open_nursery() as nursery:
        if data.get("watch"):
            await nursery.start(net.watch)
        for _ in range(data.get("applies", 1)):
            _emit({"applied": await net.apply()})
        if not data.get("watch"):
            nursery.cancel_scope.cancel()
            return

        async def report() -> None:
            while True:
                _emit({"snapshot": net.snapshot()})
                await net.changed()

        nursery.start_soon(report)
        stdin = trio.lowlevel.FdStream(os.dup(0))
        while await stdin.receive_some():
            pass
        nursery.cancel_scope.cancel()


# --- namespaces -----------------------------------------------------------------------


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


@dataclass
class Namespaces:
    node: str  # where Network runs
    peer: str  # the far ends of the veth pairs

    def ip(self, ns: str, *args: str) -> str:
        done = _run("ip", "-n", ns, *args)
        if done.returncode != 0:
            raise AssertionError(f"ip -n {ns} {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def ipj(self, *args: str) -> Any:
        """``ip -j ARGS`` in the node namespace, parsed."""
        return json.loads(self.ip(self.node, "-j", *args) or "[]")

    def veth(self, name: str, peer: str, *, peer_up: bool = True, mac: str | None = None) -> None:
        """A veth pair: ``name`` in the node namespace, ``peer`` in the peer one."""
        address = ["address", mac] if mac else []
        self.ip(
            self.node, "link", "add", name, *address, "type", "veth",
            "peer", "name", peer, "netns", self.peer,
        )  # fmt: skip
        if peer_up:
            self.ip(self.peer, "link", "set", peer, "up")


def _kill_processes_in(ns: str) -> None:
    for pid in _run("ip", "netns", "pids", ns).stdout.split():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)


@pytest.fixture
def netns() -> Iterator[Namespaces]:
    name = f"k4s-test-{secrets.token_hex(4)}"
    spaces = Namespaces(name, f"{name}-p")
    try:
        for ns in (spaces.node, spaces.peer):
            done = _run("ip", "netns", "add", ns)
            assert done.returncode == 0, done.stderr
        yield spaces
    finally:
        for ns in (spaces.node, spaces.peer):
            _kill_processes_in(ns)
            _run("ip", "netns", "del", ns)


# --- running the driver ---------------------------------------------------------------


class Driver:
    """The driver running in the node namespace; lines read as they come."""

    def __init__(self, proc: trio.Process, stderr: Path) -> None:
        self.proc = proc
        self._stderr = stderr
        self._buffer = b""
        self.seen: list[dict[str, Any]] = []

    async def line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        while b"\n" not in self._buffer:
            chunk = await self.proc.stdout.receive_some()
            if not chunk:
                raise AssertionError(f"driver ended:\n{self._stderr.read_text()}")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\n", 1)
        obj: dict[str, Any] = json.loads(raw)
        self.seen.append(obj)
        return obj

    async def expect(
        self, predicate: Callable[[dict[str, Any]], bool], what: str
    ) -> dict[str, Any]:
        """The next snapshot for which ``predicate`` holds (within TIMEOUT)."""
        try:
            with trio.fail_after(TIMEOUT):
                while True:
                    obj = await self.line()
                    if "snapshot" in obj and predicate(obj["snapshot"]):
                        return dict(obj["snapshot"])
        except trio.TooSlowError:
            last = next((o for o in reversed(self.seen) if "snapshot" in o), None)
            raise AssertionError(
                f"timed out waiting for {what}; last: {json.dumps(last, indent=1)}\n"
                f"{self._stderr.read_text()}"
            ) from None

    async def applied(self) -> list[str]:
        with trio.fail_after(TIMEOUT):
            while True:
                obj = await self.line()
                if "applied" in obj:
                    return list(obj["applied"])


@contextlib.asynccontextmanager
async def driver(ns: Namespaces, config: dict[str, Any], tmp: Path) -> AsyncIterator[Driver]:
    """Start the driver with ``config`` in the node namespace; killed on the way out."""
    stderr = tmp / f"driver-{secrets.token_hex(2)}.log"
    cmd = ["ip", "netns", "exec", ns.node, sys.executable, "-m", "tests.test_network"]
    with stderr.open("wb") as err:
        proc = await trio.lowlevel.open_process(
            [*cmd, "drive", json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=REPO,
        )
    try:
        yield Driver(proc, stderr)
    finally:
        with trio.CancelScope(shield=True):
            if proc.stdin is not None:
                await proc.stdin.aclose()
            with trio.move_on_after(TIMEOUT):
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def apply_once(ns: Namespaces, config: dict[str, Any], tmp: Path) -> list[list[str]]:
    """Run the driver without watching; the problems of each apply."""
    results = []
    async with driver(ns, config, tmp) as d:
        for _ in range(config.get("applies", 1)):
            results.append(await d.applied())
        with trio.fail_after(TIMEOUT):
            await d.proc.wait()
        assert d.proc.returncode == 0, "the driver failed"
    return results


def addresses_of(ns: Namespaces, dev: str) -> set[str]:
    (link,) = ns.ipj("addr", "show", "dev", dev)
    return {f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"]}


# --- before watching ---------------------------------------------------------------------


def test_pyroute2_is_loaded_with_network_only() -> None:
    """``k4sinit apply-manifests`` (node/applier.py) and readers of the wire types
    import this package without paying for pyroute2; ``Network`` brings it."""
    check = (
        "import sys; import k4sinit.node.applier, k4sinit.network.dhcp; "
        "from k4sinit.network import NetworkSnapshot, render_hosts; "
        "before = 'pyroute2' in sys.modules; from k4sinit.network import Network; "
        "print(before, 'pyroute2' in sys.modules, Network.__module__)"
    )
    done = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert done.stdout.split() == ["False", "True", "k4sinit.network.network"]


async def test_not_ready_before_watching() -> None:
    import structlog

    net = Network(NetworkSpec(), structlog.get_logger(), resolv_conf=None, hosts=None)
    assert not net.ready and not net.satisfies(Condition.READY)
    assert "not known" in net.unmet_reason(Condition.READY)
    assert net.snapshot()["ready"] is False
    assert "never completes" in net.unmet_reason(Condition.COMPLETED)


# --- applying ---------------------------------------------------------------------------


ETH0 = {
    "name": "eth0",
    "mtu": 1400,
    "addresses": ["10.0.0.5/24", "fd00::5/64"],
    "routes": [
        {"to": "0.0.0.0/0", "via": "10.0.0.1", "metric": 100},
        {"to": "10.50.0.0/16", "via": "10.0.0.254", "metric": 7},
        {"to": "::/0", "via": "fd00::1", "metric": 300},
    ],
}


@needs_root
async def test_static_config_applied_and_read_back(netns: Namespaces, tmp_path: Path) -> None:
    netns.veth("eth0", "peer0")
    problems = await apply_once(netns, {"interfaces": [ETH0], "applies": 2}, tmp_path)
    assert problems == [[], []]  # the second apply is a no-op, not an error

    (link,) = netns.ipj("addr", "show", "dev", "eth0")
    assert link["mtu"] == 1400 and "UP" in link["flags"]
    assert {"10.0.0.5/24", "fd00::5/64"} <= addresses_of(netns, "eth0")
    assert len([a for a in link["addr_info"] if a["local"] == "10.0.0.5"]) == 1
    routes = netns.ipj("route", "show", "table", "main")
    assert {"dst": "default", "gateway": "10.0.0.1", "dev": "eth0", "metric": 100}.items() <= next(
        r for r in routes if r["dst"] == "default"
    ).items()
    extra = [r for r in routes if r["dst"] == "10.50.0.0/16"]
    assert len(extra) == 1 and extra[0]["gateway"] == "10.0.0.254" and extra[0]["metric"] == 7
    v6 = [r for r in netns.ipj("-6", "route", "show", "default")]
    assert [(r["gateway"], r["metric"]) for r in v6] == [("fd00::1", 300)]
    (lo,) = netns.ipj("link", "show", "dev", "lo")
    assert "UP" in lo["flags"]


@needs_root
async def test_loopback_up_even_with_nothing_configured(netns: Namespaces, tmp_path: Path) -> None:
    assert await apply_once(netns, {}, tmp_path) == [[]]
    (lo,) = netns.ipj("addr", "show", "dev", "lo")
    assert "UP" in lo["flags"]
    assert "127.0.0.1/8" in addresses_of(netns, "lo")


@needs_root
async def test_missing_interfaces_are_reported_and_others_applied(
    netns: Namespaces, tmp_path: Path
) -> None:
    netns.veth("eth0", "peer0")
    config = {
        "interfaces": [
            {"name": "eth1", "addresses": ["10.1.0.5/24"]},
            {"mac": "52:54:00:de:ad:01", "addresses": ["10.2.0.5/24"]},
            {"name": "eth0", "addresses": ["10.0.0.5/24"]},
        ]
    }
    (problems,) = await apply_once(netns, config, tmp_path)
    assert problems == [
        "eth1: no such interface (by name)",
        "52:54:00:de:ad:01: no interface with this MAC",
    ]
    assert "10.0.0.5/24" in addresses_of(netns, "eth0")


@needs_root
async def test_interface_by_mac(netns: Namespaces, tmp_path: Path) -> None:
    netns.veth("nic7", "peer7", mac="52:54:00:aa:bb:07")
    config = {"interfaces": [{"mac": "52:54:00:aa:bb:07", "addresses": ["10.7.0.5/24"]}]}
    assert await apply_once(netns, config, tmp_path) == [[]]
    assert "10.7.0.5/24" in addresses_of(netns, "nic7")


@needs_root
async def test_no_name_nor_mac_takes_the_first_interface_with_carrier(
    netns: Namespaces, tmp_path: Path
) -> None:
    """``ip=`` without a device: every NIC is brought up, the first with carrier wins."""
    netns.veth("nica", "peera", peer_up=False)
    netns.veth("nicb", "peerb")
    config = {"interfaces": [{"addresses": ["10.9.0.5/24"]}]}
    assert await apply_once(netns, config, tmp_path) == [[]]
    assert "10.9.0.5/24" in addresses_of(netns, "nicb")
    assert "10.9.0.5/24" not in addresses_of(netns, "nica")


@needs_root
async def test_bridge_with_a_veth_port(netns: Namespaces, tmp_path: Path) -> None:
    netns.veth("eth0", "peer0")
    config = {
        "interfaces": [
            {
                "name": "br0",
                "kind": "bridge",
                "bridge_ports": ["eth0"],
                "addresses": ["10.3.0.5/24"],
            },
        ],
        "applies": 2,
    }
    assert await apply_once(netns, config, tmp_path) == [[], []]
    (port,) = netns.ipj("link", "show", "dev", "eth0")
    assert port["master"] == "br0" and "UP" in port["flags"]
    (bridge,) = netns.ipj("-d", "link", "show", "dev", "br0")
    assert bridge["linkinfo"]["info_kind"] == "bridge" and "UP" in bridge["flags"]
    assert "10.3.0.5/24" in addresses_of(netns, "br0")


@needs_root
async def test_bridge_port_missing_is_reported(netns: Namespaces, tmp_path: Path) -> None:
    config = {"interfaces": [{"name": "br0", "kind": "bridge", "bridge_ports": ["eth5"]}]}
    assert await apply_once(netns, config, tmp_path) == [["br0: port eth5: no such interface"]]


@needs_root
async def test_vlan_reported_where_the_kernel_has_no_8021q(
    netns: Namespaces, tmp_path: Path
) -> None:
    netns.veth("eth0", "peer0")
    supported = _run(
        "ip", "-n", netns.node, "link", "add", "probe", "link", "eth0", "type", "vlan", "id", "9"
    )
    config = {
        "interfaces": [
            {"name": "eth0"},
            {"name": "vlan10", "kind": "vlan", "vlan_id": 10, "vlan_link": "eth0"},
        ]
    }
    (problems,) = await apply_once(netns, config, tmp_path)
    if supported.returncode == 0:  # a kernel with 8021q: the VLAN is made
        assert problems == []
        (vlan,) = netns.ipj("-d", "link", "show", "dev", "vlan10")
        assert vlan["linkinfo"]["info_data"]["id"] == 10
    else:
        assert problems == [
            "vlan10: cannot create VLAN 10 on eth0: this kernel has no 802.1Q VLAN"
            " support (the 8021q module is missing)"
        ]


@needs_root
async def test_resolv_conf_and_hosts_written(netns: Namespaces, tmp_path: Path) -> None:
    netns.veth("eth0", "peer0")
    resolv, hosts = tmp_path / "resolv.conf", tmp_path / "hosts"
    config = {
        "interfaces": [{"name": "eth0", "addresses": ["10.0.0.5/24"]}],
        "dns": {"nameservers": ["10.0.0.53", "10.0.0.54"], "search": ["cluster.test"]},
        "hostname": "node1",
        "resolv_conf": str(resolv),
        "hosts": str(hosts),
    }
    assert await apply_once(netns, config, tmp_path) == [[]]
    assert resolv.read_text().splitlines()[1:] == [
        "nameserver 10.0.0.53",
        "nameserver 10.0.0.54",
        "search cluster.test",
    ]
    assert "10.0.0.5\tnode1" in hosts.read_text().splitlines()


@needs_root
async def test_no_resolv_conf_without_dns(netns: Namespaces, tmp_path: Path) -> None:
    resolv = tmp_path / "resolv.conf"
    config = {"resolv_conf": str(resolv), "hosts": str(tmp_path / "hosts"), "hostname": "n"}
    assert await apply_once(netns, config, tmp_path) == [[]]
    assert not resolv.exists() and (tmp_path / "hosts").exists()


# --- watching ---------------------------------------------------------------------------


def _ready(s: dict[str, Any]) -> bool:
    return bool(s["ready"])


def _settled(s: dict[str, Any]) -> bool:
    """Ready, and the watcher applies nothing again (else it may undo what a test does)."""
    return bool(s["ready"]) and not s["applying"]


@needs_root
async def test_watch_sees_carrier_go_and_come_back(netns: Namespaces, tmp_path: Path) -> None:
    netns.veth("eth0", "peer0")
    config = {"interfaces": [ETH0], "watch": True}
    async with driver(netns, config, tmp_path) as d:
        assert await d.applied() == []
        ready = await d.expect(_settled, "ready")
        assert ready["reason"] == ""
        eth0 = ready["interfaces"]["eth0"]
        assert eth0["carrier"] and eth0["mtu"] == 1400 and eth0["configured"] == "eth0"
        assert "default via 10.0.0.1 metric 100" in eth0["routes"]

        netns.ip(netns.peer, "link", "set", "peer0", "down")
        down = await d.expect(lambda s: s["reason"] == "eth0: no carrier", "no carrier")
        assert down["ready"] is False
        assert down["interfaces"]["eth0"]["carrier"] is False

        netns.ip(netns.peer, "link", "set", "peer0", "up")
        back = await d.expect(_ready, "ready again")
        assert "default via 10.0.0.1 metric 100" in back["interfaces"]["eth0"]["routes"]
        assert "10.0.0.5/24" in back["interfaces"]["eth0"]["addresses"]


@needs_root
async def test_config_restored_after_the_link_was_set_down(
    netns: Namespaces, tmp_path: Path
) -> None:
    """Down flushes the IPv4 routes (and IPv6 addresses) silently; up brings carrier
    back, and the watcher applies the interface again."""
    netns.veth("eth0", "peer0")
    async with driver(netns, {"interfaces": [ETH0], "watch": True}, tmp_path) as d:
        await d.expect(_settled, "ready")
        netns.ip(netns.node, "link", "set", "eth0", "down")
        # Routes and IPv6 addresses may go first (each a reason of its own): wait for
        # the link's own news.
        down = await d.expect(lambda s: s["reason"] == "eth0: down", "eth0 down")
        assert down["ready"] is False
        netns.ip(netns.node, "link", "set", "eth0", "up")
        back = await d.expect(_ready, "ready again")
        assert "fd00::5/64" in back["interfaces"]["eth0"]["addresses"]
    routes = netns.ipj("route", "show", "default")
    assert [(r["gateway"], r["metric"]) for r in routes] == [("10.0.0.1", 100)]


@needs_root
async def test_late_interface_gets_its_config(netns: Namespaces, tmp_path: Path) -> None:
    netns.veth("eth0", "peer0")
    mac = "52:54:00:12:34:56"
    config = {
        "interfaces": [
            {"name": "eth0", "addresses": ["10.0.0.5/24"]},
            {"mac": mac, "addresses": ["10.77.0.2/24"], "routes": [{"via": "10.77.0.1"}]},
        ],
        "watch": True,
    }
    async with driver(netns, config, tmp_path) as d:
        assert await d.applied() == [f"{mac}: no interface with this MAC"]
        await d.expect(
            lambda s: s["reason"] == f"{mac}: no interface with this MAC", "waiting for the MAC"
        )

        # A NIC that shows up late: made in the peer namespace, moved in.
        netns.ip(
            netns.peer,
            "link",
            "add",
            "late0",
            "address",
            mac,
            "type",
            "veth",
            "peer",
            "name",
            "late0p",
        )
        netns.ip(netns.peer, "link", "set", "late0p", "up")
        netns.ip(netns.peer, "link", "set", "late0", "netns", netns.node)
        ready = await d.expect(_ready, "ready with the late interface")
        assert "10.77.0.2/24" in ready["interfaces"]["late0"]["addresses"]
        assert ready["interfaces"]["late0"]["configured"] == mac
        assert "default via 10.77.0.1 metric 0" in ready["interfaces"]["late0"]["routes"]
    assert "10.77.0.2/24" in addresses_of(netns, "late0")


@needs_root
async def test_lost_events_reopen_and_dump_again(netns: Namespaces, tmp_path: Path) -> None:
    netns.veth("eth0", "peer0")
    config = {
        "interfaces": [{"name": "eth0", "addresses": ["10.0.0.5/24"]}],
        "watch": True,
        "lose_events_once": True,
    }
    async with driver(netns, config, tmp_path) as d:
        await d.expect(_settled, "ready")
        netns.ip(netns.peer, "link", "set", "peer0", "down")
        await d.expect(lambda s: s["reason"] == "eth0: no carrier", "no carrier")
        netns.ip(netns.peer, "link", "set", "peer0", "up")
        await d.expect(_ready, "ready again")
    log = await trio.Path(d._stderr).read_text()
    assert "ENOBUFS" in log


if __name__ == "__main__":
    if sys.argv[1:2] == ["drive"]:
        trio.run(drive, json.loads(sys.argv[2]))
