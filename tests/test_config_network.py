"""Tests for k4sinit.config.network: interfaces, addresses, routes and DNS."""

from __future__ import annotations

import textwrap
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Interface

import pytest

from k4sinit.config import ConfigError
from k4sinit.core.netspec import (
    DEFAULT_V4,
    DEFAULT_V6,
    DNS,
    Interface,
    InterfaceKind,
    NetworkSource,
    NetworkSpec,
    Route,
)
from tests.config_helpers import errors_of, load, only_error


def network(body: str) -> NetworkSpec:
    """The network of a config whose ``network`` section is ``body``."""
    return load("services: {a: {command: [x]}}\nnetwork:\n" + textwrap.indent(body, "  ")).network


def network_errors(body: str) -> list[ConfigError]:
    return errors_of("services: {a: {command: [x]}}\nnetwork:\n" + textwrap.indent(body, "  "))


def test_no_network_section_means_not_configured() -> None:
    assert load("services: {a: {command: [x]}}").network == NetworkSpec()


def test_an_empty_network_section_is_configured_with_only_loopback() -> None:
    spec = load("services: {a: {command: [x]}}\nnetwork: {}").network
    assert spec == NetworkSpec(source=NetworkSource.CONFIG)
    assert spec.configured


def test_the_documented_network_example() -> None:
    spec = network(
        """\
interfaces:
  - mac: 52:54:00:12:34:56   # unquoted: YAML 1.1 reads it as a base-60 number
    dhcp: true
  - name: eth1
    mtu: 9000
    addresses: [10.0.0.5/24, "fd00::5/64"]
    routes:
      - {to: default, via: 10.0.0.1, metric: 100}
      - {to: 192.168.50.0/24, via: 10.0.0.254}
      - {to: default, via: "fd00::1"}
  - name: br0
    kind: bridge
    ports: [eth2]
    addresses: [10.1.0.1/24]
  - name: eth0.100
    kind: vlan
    link: eth0
    id: 100
dns:
  nameservers: [10.0.0.1, "2001:4860:4860::8888"]
  search: [cluster.local, example.com]
"""
    )
    assert spec == NetworkSpec(
        interfaces=(
            Interface(mac="52:54:00:12:34:56", dhcp=True),
            Interface(
                name="eth1",
                mtu=9000,
                addresses=(IPv4Interface("10.0.0.5/24"), IPv6Interface("fd00::5/64")),
                routes=(
                    Route(to=DEFAULT_V4, via=IPv4Address("10.0.0.1"), metric=100),
                    Route(to=IPv4Network("192.168.50.0/24"), via=IPv4Address("10.0.0.254")),
                    Route(to=DEFAULT_V6, via=IPv6Address("fd00::1")),
                ),
            ),
            Interface(
                name="br0",
                kind=InterfaceKind.BRIDGE,
                bridge_ports=("eth2",),
                addresses=(IPv4Interface("10.1.0.1/24"),),
            ),
            Interface(name="eth0.100", kind=InterfaceKind.VLAN, vlan_link="eth0", vlan_id=100),
        ),
        dns=DNS(
            nameservers=(IPv4Address("10.0.0.1"), IPv6Address("2001:4860:4860::8888")),
            search=("cluster.local", "example.com"),
        ),
        source=NetworkSource.CONFIG,
    )


def test_interface_fields_and_network_options() -> None:
    spec = network(
        """\
waitForCarrier: false
interfaces:
  - {mac: "52-54-00-AB-CD-EF", up: false, addresses: [192.168.1.2/24], dhcp: true}
  - name: eth3
    addresses: [10.9.0.2/255.255.255.0]
    routes:
      - {to: 10.9.8.0/24}
      - {via: 10.9.8.1, metric: 0}
"""
    )
    assert spec.wait_for_carrier is False
    first, second = spec.interfaces
    assert (first.mac, first.up, first.dhcp) == ("52:54:00:ab:cd:ef", False, True)
    assert second.addresses == (IPv4Interface("10.9.0.2/24"),)
    assert second.routes == (
        Route(to=IPv4Network("10.9.8.0/24")),  # on-link: the gateway below is reached by it
        Route(to=DEFAULT_V4, via=IPv4Address("10.9.8.1"), metric=0),
    )
    assert spec.dns == DNS()


def test_network_errors_name_the_line_and_field() -> None:
    errors = network_errors(
        """\
interfaces:
  - name: eth0
    addresses: [10.0.0.300/24, 10.0.0.5, "fd00::1/64"]
    mtu: 1000
  - {name: eth1, mac: "52:54:00:00:00:01"}
  - {dhcp: true}
  - {name: eth2, adresses: [10.0.0.7/24]}
  - {name: eth3, kind: brigde}
dns: {nameservers: [10.0.0.1/24, 1.1.1.1, 8.8.8.8, 9.9.9.9], search: [-bad-.com]}
"""
    )
    assert [(e.line, e.field, e.message, e.hint) for e in errors] == [
        (
            5,
            "network.interfaces[0].addresses[0]",
            "invalid address '10.0.0.300/24'",
            "write it as address/prefix, like 10.0.0.5/24 or fd00::5/64",
        ),
        (
            5,
            "network.interfaces[0].addresses[1]",
            "'10.0.0.5' has no prefix length",
            "like 10.0.0.5/24",
        ),
        (
            6,
            "network.interfaces[0].mtu",
            "IPv6 needs an MTU of at least 1280, got 1000",
            None,
        ),
        (
            7,
            "network.interfaces[1]",
            "give name or mac, not both",
            "mac selects a physical interface whose name is not stable",
        ),
        (
            8,
            "network.interfaces[2]",
            "an interface needs a name or a mac",
            "add name: eth0, or mac: 52:54:00:12:34:56",
        ),
        (
            9,
            "network.interfaces[3].adresses",
            "unknown key 'adresses'",
            "did you mean 'addresses'?",
        ),
        (
            10,
            "network.interfaces[4].kind",
            "expected one of physical, bridge, vlan, got 'brigde'",
            "did you mean 'bridge'?",
        ),
        (
            11,
            "network.dns.nameservers[0]",
            "invalid nameserver address '10.0.0.1/24'",
            "a nameserver is one address, without /prefix",
        ),
        (
            11,
            "network.dns.nameservers",
            "at most 3 nameservers, got 4",
            "the resolver asks only the first 3",
        ),
        (11, "network.dns.search[0]", "invalid search domain '-bad-.com'", "like cluster.local"),
    ]
    assert all(e.service is None for e in errors)


def test_duplicate_interfaces_point_at_the_first() -> None:
    errors = network_errors(
        """\
interfaces:
  - name: eth0
  - mac: 52:54:00:12:34:56
  - name: eth0
  - mac: "52:54:00:12:34:56"
  - {name: eth0.7, kind: vlan, link: eth0, id: 7}
  - {name: vl7, kind: vlan, link: eth0, id: 7}
"""
    )
    assert [(e.line, e.field, e.message) for e in errors] == [
        (6, "network.interfaces[2].name", "'eth0' is configured twice (first at line 4)"),
        (
            7,
            "network.interfaces[3].mac",
            "'52:54:00:12:34:56' is configured twice (first at line 5)",
        ),
        (9, "network.interfaces[5].id", "vlan 7 on 'eth0' is configured twice (first at line 8)"),
    ]


@pytest.mark.parametrize(
    ("entry", "field", "message", "hint"),
    [
        (
            "{name: v, kind: vlan, link: eth0, id: 0}",
            "id",
            "must be between 1 and 4094, got 0",
            None,
        ),
        (
            "{name: v, kind: vlan, link: eth0, id: 4095}",
            "id",
            "must be between 1 and 4094, got 4095",
            None,
        ),
        (
            "{name: v, kind: vlan, id: 5}",
            None,
            "a vlan needs 'link'",
            "like link: eth0 and id: 100",
        ),
        (
            "{name: v, kind: vlan, link: eth0}",
            None,
            "a vlan needs 'id'",
            "like link: eth0 and id: 100",
        ),
        ("{name: v, kind: vlan, link: v, id: 5}", "link", "a vlan cannot be its own link", None),
        ("{name: eth0, id: 5}", "id", "'id' is for a vlan", "add kind: vlan"),
        ("{name: eth0, link: eth1}", "link", "'link' is for a vlan", "add kind: vlan"),
        (
            "{kind: bridge, ports: [eth0]}",
            None,
            "a bridge needs a name",
            "k4sinit creates the bridge by name",
        ),
        (
            "{mac: '52:54:00:00:00:01', kind: vlan, link: eth0, id: 3}",
            None,
            "a vlan needs a name",
            "k4sinit creates the vlan by name",
        ),
        ("{name: eth0, ports: [eth1]}", "ports", "ports are for a bridge", "add kind: bridge"),
        (
            "{name: br0, kind: bridge, ports: [br0]}",
            "ports",
            "the bridge 'br0' cannot be its own port",
            None,
        ),
        (
            "{name: br0, kind: bridge, ports: [eth1, eth1]}",
            "ports[1]",
            "'eth1' is listed twice",
            None,
        ),
        (
            "{name: br0, kind: bridge, ports: [eth1, 7]}",
            "ports[1]",
            "expected an interface name, got an integer (7)",
            None,
        ),
        ("{name: eth0, mtu: 67}", "mtu", "must be between 68 and 65535, got 67", None),
        ("{name: eth0, mtu: 65536}", "mtu", "must be between 68 and 65535, got 65536", None),
        (
            "{name: eth0, dhcp: yes please}",
            "dhcp",
            "expected a boolean, got a string ('yes please')",
            None,
        ),
        ("{name: eth0, up: 1}", "up", "expected a boolean, got an integer (1)", None),
        (
            "{name: eth0/1}",
            "name",
            "invalid interface name 'eth0/1': it cannot contain '/', ':' or white space",
            None,
        ),
        (
            "{name: averyveryverylongname}",
            "name",
            "invalid interface name 'averyveryverylongname': it is longer than 15 bytes",
            None,
        ),
        (
            "{mac: '52:54:00:12:34'}",
            "mac",
            "invalid MAC address '52:54:00:12:34'",
            "like 52:54:00:12:34:56",
        ),
        (
            "{mac: 12345}",
            "mac",
            "invalid MAC address (YAML read it as the number 12345)",
            'quote it, like mac: "52:54:00:12:34:56"',
        ),
        (
            "{mac: '52:54:00:12:34:5g'}",
            "mac",
            "invalid MAC address '52:54:00:12:34:5g'",
            "like 52:54:00:12:34:56",
        ),
        (
            "{name: eth0, addresses: 10.0.0.5/24}",
            "addresses",
            "expected a list of addresses like 10.0.0.5/24, got a string ('10.0.0.5/24')",
            None,
        ),
        (
            "{name: eth0, addresses: [10.0.0.5/24, 10.0.0.5/24]}",
            "addresses[1]",
            "10.0.0.5/24 is listed twice",
            None,
        ),
        (
            "{name: eth0, addresses: [224.0.0.1/4]}",
            "addresses[0]",
            "'224.0.0.1/4' is not a host address",
            None,
        ),
        (
            "{name: eth0, addresses: ['fd00::5']}",
            "addresses[0]",
            "'fd00::5' has no prefix length",
            "like fd00::5/64",
        ),
    ],
)
def test_interface_errors(entry: str, field: str | None, message: str, hint: str | None) -> None:
    error = only_error(
        f"services: {{a: {{command: [x]}}}}\nnetwork:\n  interfaces:\n    - {entry}\n"
    )
    expected_field = "network.interfaces[0]" + ("" if field is None else f".{field}")
    assert (error.line, error.field, error.message, error.hint) == (
        4,
        expected_field,
        message,
        hint,
    )


@pytest.mark.parametrize(
    ("route", "field", "message", "hint"),
    [
        (
            "{to: 10.0.0.0/8, via: 'fd00::1'}",
            "via",
            "gateway fd00::1 is IPv6 but 10.0.0.0/8 is IPv4",
            "a route's to and via are of one family",
        ),
        (
            "{to: 'fd00::/8', via: 10.0.0.1}",
            "via",
            "gateway 10.0.0.1 is IPv4 but fd00::/8 is IPv6",
            "a route's to and via are of one family",
        ),
        (
            "{to: 192.168.50.1/24, via: 10.0.0.1}",
            "to",
            "invalid network '192.168.50.1/24'",
            "it has host bits set, did you mean '192.168.50.0/24'?",
        ),
        (
            "{to: everywhere, via: 10.0.0.1}",
            "to",
            "invalid network 'everywhere'",
            "write a network like 192.168.50.0/24, or default",
        ),
        (
            "{via: 10.0.0.1/24}",
            "via",
            "invalid gateway address '10.0.0.1/24'",
            "a gateway is one address, without /prefix",
        ),
        ("{via: 10.0.0.1, metric: -1}", "metric", "must be between 0 and 4294967295, got -1", None),
        (
            "{via: 10.0.0.1, gateway: 10.0.0.2}",
            "gateway",
            "unknown key 'gateway'",
            "known keys: to, via, metric",
        ),
        (
            "{via: 10.9.9.9}",
            "via",
            "gateway 10.9.9.9 is not in a network of this interface",
            "add an address in its network (like 10.0.0.5/24), an on-link route, or dhcp: true",
        ),
        (
            "{to: 10.0.0.0/8, via: 10.0.0.254, metric: 5}\n      - {to: 10.0.0.0/8, via: 10.0.0.253, metric: 5}",
            None,
            "the route to 10.0.0.0/8 with metric 5 is listed twice (first at line 7)",
            "give one of them another metric",
        ),
    ],
)
def test_route_errors(route: str, field: str | None, message: str, hint: str | None) -> None:
    errors = network_errors(
        f"interfaces:\n  - name: eth0\n    addresses: [10.0.0.5/24]\n    routes:\n      - {route}\n"
    )
    error = errors[-1]
    assert len(errors) == 1, errors
    line = 8 if "listed twice" in message else 7
    index = 1 if "listed twice" in message else 0
    expected = f"network.interfaces[0].routes[{index}]" + ("" if field is None else f".{field}")
    assert (error.line, error.field, error.message, error.hint) == (line, expected, message, hint)


def test_gateways_reachable_by_dhcp_or_ipv6_are_accepted() -> None:
    spec = network(
        """\
interfaces:
  - {name: eth0, dhcp: true, routes: [{to: 10.50.0.0/16, via: 10.9.9.9}]}
  - {name: eth1, routes: [{via: "fe80::1"}, {to: "2001:db8::/32", via: "2001:db8:ffff::1"}]}
"""
    )
    assert spec.interfaces[0].routes == (
        Route(to=IPv4Network("10.50.0.0/16"), via=IPv4Address("10.9.9.9")),
    )
    assert spec.interfaces[1].routes[0] == Route(to=DEFAULT_V6, via=IPv6Address("fe80::1"))


def test_bridge_ports_cross_checks() -> None:
    errors = network_errors(
        """\
interfaces:
  - {name: br0, kind: bridge, ports: [eth0, eth1]}
  - {name: br1, kind: bridge, ports: [eth1, br0, eth9]}
  - {name: eth0, dhcp: true}
"""
    )
    assert [(e.line, e.field, e.message) for e in errors] == [
        (5, "network.interfaces[1].ports[0]", "'eth1' is already a port of 'br0'"),
        (
            5,
            "network.interfaces[1].ports[1]",
            "the bridge 'br0' cannot be a port of another bridge",
        ),
    ]


def test_dns_errors() -> None:
    errors = network_errors(
        """\
dns:
  nameservers: [8.8.8.8, 8.8.8.8, 7, nonsense]
  search: [example.com, example.com, 5]
  domain: x
"""
    )
    assert [(e.line, e.field, e.message) for e in errors] == [
        (4, "network.dns.nameservers[1]", "8.8.8.8 is listed twice"),
        (4, "network.dns.nameservers[2]", "expected an IP address, got an integer (7)"),
        (4, "network.dns.nameservers[3]", "invalid nameserver address 'nonsense'"),
        (4, "network.dns.nameservers", "at most 3 nameservers, got 4"),
        (5, "network.dns.search[1]", "'example.com' is listed twice"),
        (5, "network.dns.search[2]", "expected a domain, got an integer (5)"),
        (6, "network.dns.domain", "unknown key 'domain'"),
    ]


def test_network_section_type_errors() -> None:
    error = only_error("services: {a: {command: [x]}}\nnetwork: [eth0]\n")
    assert (error.line, error.field) == (2, "network")
    assert error.message == "expected a mapping, got a list"
    errors = network_errors("interfaces: [eth0]\nwaitForCarrier: maybe\n")
    assert [(e.line, e.field, e.message) for e in errors] == [
        (
            3,
            "network.interfaces[0]",
            "expected an interface (a mapping with name or mac), got a string ('eth0')",
        ),
        (4, "network.waitForCarrier", "expected a boolean, got a string ('maybe')"),
    ]
