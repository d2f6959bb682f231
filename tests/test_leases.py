"""k4sinit.network.leases: what a DHCP lease adds to its interface, and what it leaves behind."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Interface, ip_address, ip_interface, ip_network
from typing import Any

from k4sinit.core.netspec import DEFAULT_V4, DNS, Interface, Route
from k4sinit.network.dhcp import Lease
from k4sinit.network.leases import DHCP_ROUTE_METRIC, Leases


def lease(address: str = "10.77.0.100/24", **fields: Any) -> Lease:
    values: dict[str, Any] = {
        "interface": "eth0",
        "address": IPv4Interface(address),
        "router": IPv4Address("10.77.0.1"),
        "dns": (),
        "domain": None,
        "search": (),
        "hostname": None,
        "mtu": None,
        "server": None,
        "lease_seconds": 600,
        "renew_at": None,
        "expires_at": None,
    }
    return Lease(**(values | fields))


def test_a_lease_adds_its_address_default_route_and_mtu() -> None:
    leases = Leases()
    iface = Interface(name="eth0", dhcp=True, addresses=(ip_interface("10.0.0.5/24"),))
    assert leases.effective(0, iface) == iface  # no lease yet: as configured
    leases.granted(0, lease(mtu=1400))
    effective = leases.effective(0, iface)
    assert effective.addresses == (ip_interface("10.0.0.5/24"), ip_interface("10.77.0.100/24"))
    assert effective.routes == (Route(DEFAULT_V4, ip_address("10.77.0.1"), DHCP_ROUTE_METRIC),)
    assert effective.mtu == 1400


def test_what_is_configured_wins_over_the_lease() -> None:
    leases = Leases()
    default = Route(DEFAULT_V4, ip_address("10.0.0.1"), 100)
    iface = Interface(name="eth0", dhcp=True, mtu=9000, routes=(default,))
    leases.granted(0, lease(mtu=1400))
    effective = leases.effective(0, iface)
    assert effective.routes == (default,) and effective.mtu == 9000
    other = Route(ip_network("10.50.0.0/16"), ip_address("10.0.0.254"), 7)
    # Only a configured *default* route keeps the lease's out.
    assert len(leases.effective(0, Interface(name="eth0", routes=(other,))).routes) == 2


def test_a_lost_or_changed_lease_leaves_its_address_to_remove_once() -> None:
    leases = Leases()
    leases.granted(0, lease("10.77.0.100/24"))
    leases.granted(0, lease("10.77.0.100/24"))  # renewed: nothing to remove
    assert leases.take_removals() == []
    leases.granted(0, lease("10.77.0.101/24"))
    assert leases.take_removals() == [("eth0", ip_interface("10.77.0.100/24"))]
    assert leases.lost(0, "eth0: lease expired") == lease("10.77.0.101/24")
    assert leases.take_removals() == [("eth0", ip_interface("10.77.0.101/24"))]
    assert leases.take_removals() == []
    assert not leases.has(0) and leases.reason(0) == "eth0: lease expired"
    assert leases.lost(0, "again") is None and leases.take_removals() == []


def test_the_reason_for_no_lease_until_one_comes() -> None:
    leases = Leases()
    assert leases.reason(3) == "not asked yet"
    leases.waiting(3, "asking")
    assert leases.reason(3) == "asking"
    leases.granted(3, lease())
    assert leases.has(3) and leases.reason(3) == "not asked yet"


def test_dns_of_all_leases_each_once_domain_before_search() -> None:
    leases = Leases()
    assert leases.dns() == DNS()
    ns1, ns2 = IPv4Address("10.77.0.53"), IPv4Address("10.88.0.53")
    leases.granted(0, lease(dns=(ns1,), domain="k4s.test", search=("k4s.test", "example.org")))
    leases.granted(1, lease(interface="eth1", dns=(ns2, ns1), search=("b.test",)))
    assert leases.dns() == DNS((ns1, ns2), ("k4s.test", "example.org", "b.test"))
