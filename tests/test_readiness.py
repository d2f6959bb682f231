"""k4sinit.network.readiness: when the network is ready, and the reason when it is not."""

from __future__ import annotations

from ipaddress import IPv4Address, ip_address, ip_interface, ip_network

import structlog

from k4sinit.core.netspec import DEFAULT_V4, Interface, InterfaceKind, NetworkSpec, Route
from k4sinit.network.leases import DHCP_ROUTE_METRIC, Leases
from k4sinit.network.mirror import KernelRoute, Link, Mirror
from k4sinit.network.readiness import NOT_KNOWN, evaluate
from tests.test_leases import lease

MAC = "52:54:00:00:00:07"
ADDRESS = ip_interface("10.0.0.5/24")
DEFAULT = Route(DEFAULT_V4, ip_address("10.0.0.1"))


def mirror_of(*links: Link, routes: tuple[KernelRoute, ...] = ()) -> Mirror:
    mirror = Mirror(structlog.get_logger())
    mirror.load(links, [], routes)
    return mirror


def link(
    name: str = "eth0", *, up: bool = True, carrier: bool = True, kind: str | None = None
) -> Link:
    return Link(1, name, MAC, kind, up, carrier, False, "UP", 1500, None, {ADDRESS})


def check(*interfaces: Interface, mirror: Mirror, leases: Leases | None = None) -> str:
    ready, reason = evaluate(NetworkSpec(interfaces=interfaces), mirror, leases or Leases())
    assert ready == (reason == "")
    return reason


def test_nothing_is_ready_before_the_state_is_known() -> None:
    assert evaluate(NetworkSpec(), Mirror(structlog.get_logger()), Leases()) == (False, NOT_KNOWN)
    assert evaluate(NetworkSpec(), mirror_of(), Leases()) == (True, "")


def test_a_missing_interface_is_named_as_configured() -> None:
    empty = mirror_of()
    assert check(Interface(name="eth1"), mirror=empty) == "eth1: no such interface"
    assert check(Interface(mac=MAC), mirror=empty) == f"{MAC}: no interface with this MAC"
    assert check(Interface(), mirror=empty) == "*: no interface with carrier chosen yet"
    assert check(Interface(name="eth1", up=False), mirror=empty) == ""  # down: not waited for


def test_down_no_carrier_and_missing_addresses_and_default_routes() -> None:
    eth0 = Interface(name="eth0", addresses=(ADDRESS,), routes=(DEFAULT,))
    assert check(eth0, mirror=mirror_of(link(up=False))) == "eth0: down"
    assert check(Interface(mac=MAC), mirror=mirror_of(link(up=False))) == f"{MAC} (eth0): down"
    assert check(eth0, mirror=mirror_of(link(carrier=False))) == "eth0: no carrier"
    other = Interface(name="eth0", addresses=(ip_interface("10.0.0.6/24"),))
    assert check(other, mirror=mirror_of(link())) == "eth0: address 10.0.0.6/24 missing"
    assert check(eth0, mirror=mirror_of(link())) == "eth0: route default via 10.0.0.1 missing"
    route = KernelRoute(DEFAULT_V4, ip_address("10.0.0.1"), 1, 100)  # any metric will do
    assert check(eth0, mirror=mirror_of(link(), routes=(route,))) == ""
    extra = Route(ip_network("10.50.0.0/16"), ip_address("10.0.0.254"))  # not waited for
    assert check(Interface(name="eth0", routes=(extra,)), mirror=mirror_of(link())) == ""


def test_carrier_is_not_waited_for_on_a_bridge_without_ports_or_when_told() -> None:
    bridge = Interface(name="br0", kind=InterfaceKind.BRIDGE)
    assert check(bridge, mirror=mirror_of(link("br0", carrier=False, kind="bridge"))) == ""
    spec = NetworkSpec(interfaces=(Interface(name="eth0"),), wait_for_carrier=False)
    assert evaluate(spec, mirror_of(link(carrier=False)), Leases()) == (True, "")


def test_a_dhcp_interface_waits_for_its_lease_and_what_it_brings() -> None:
    eth0 = Interface(name="eth0", dhcp=True)
    leases = Leases()
    assert check(eth0, mirror=mirror_of(link()), leases=leases) == (
        "eth0: no DHCP lease (not asked yet)"
    )
    leases.waiting(0, "eth0: no DHCP offer after 10s; retrying in 2s")
    assert check(eth0, mirror=mirror_of(link()), leases=leases).endswith(
        "(eth0: no DHCP offer after 10s; retrying in 2s)"
    )
    leases.granted(0, lease())
    assert check(eth0, mirror=mirror_of(link()), leases=leases) == (
        "eth0: address 10.77.0.100/24 missing"
    )
    leased = Link(1, "eth0", MAC, None, True, True, False, "UP", 1500, None)
    leased.addresses.add(ip_interface("10.77.0.100/24"))
    route = KernelRoute(DEFAULT_V4, IPv4Address("10.77.0.1"), 1, DHCP_ROUTE_METRIC)
    assert check(eth0, mirror=mirror_of(leased), leases=leases) == (
        f"eth0: route default via 10.77.0.1 metric {DHCP_ROUTE_METRIC} missing"
    )
    assert check(eth0, mirror=mirror_of(leased, routes=(route,)), leases=leases) == ""
