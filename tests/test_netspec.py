"""Tests for k4sinit.core.netspec: the dataclasses and the kernel's ``ip=`` option."""

from __future__ import annotations

from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, IPv6Address, IPv6Network

import pytest

from k4sinit.core.netspec import (
    DEFAULT_V4,
    DNS,
    Interface,
    InterfaceKind,
    NetworkSource,
    NetworkSpec,
    Route,
    choose_network,
    interface_name_problem,
    normalize_mac,
    parse_ip_option,
)

KERNEL = NetworkSource.KERNEL


def only_interface(value: str) -> Interface:
    spec = parse_ip_option(value)
    assert spec.source is KERNEL
    assert len(spec.interfaces) == 1
    return spec.interfaces[0]


# --- the dataclasses -------------------------------------------------------------


def test_defaults_mean_not_configured() -> None:
    spec = NetworkSpec()
    assert spec.interfaces == ()
    assert spec.dns == DNS()
    assert spec.wait_for_carrier is True
    assert spec.hostname is None
    assert spec.source is NetworkSource.NONE
    assert not spec.configured
    assert NetworkSpec(source=NetworkSource.CONFIG).configured


def test_interface_defaults_and_labels() -> None:
    eth0 = Interface(name="eth0")
    assert (eth0.up, eth0.mtu, eth0.dhcp) == (True, None, False)
    assert eth0.kind is InterfaceKind.PHYSICAL
    assert (eth0.addresses, eth0.routes, eth0.bridge_ports) == ((), (), ())
    assert (eth0.vlan_id, eth0.vlan_link) == (None, None)
    assert eth0.label == "eth0"
    assert not eth0.is_any
    assert Interface(mac="52:54:00:12:34:56").label == "52:54:00:12:34:56"
    assert Interface().is_any
    assert Interface().label == "*"
    assert f"a {InterfaceKind.BRIDGE}" == "a bridge"  # a StrEnum: reads as its value


def test_route_defaults_to_the_ipv4_default_route() -> None:
    route = Route()
    assert route.to == IPv4Network("0.0.0.0/0")
    assert (route.via, route.metric) == (None, None)
    assert route.is_default
    assert not Route(to=IPv4Network("10.0.0.0/8")).is_default


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Interface(name="eth0", mac="52:54:00:12:34:56"), "not both"),
        (lambda: Interface(kind=InterfaceKind.BRIDGE), "a bridge needs a name"),
        (lambda: Interface(name="v", kind=InterfaceKind.VLAN), "vlan_id goes with kind vlan"),
        (lambda: Interface(name="eth0", vlan_id=5), "vlan_id goes with kind vlan"),
        (lambda: Route(to=DEFAULT_V4, via=IPv6Address("fe80::1")), "the families differ"),
    ],
)
def test_impossible_descriptions_are_refused(make: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize(
    ("text", "mac"),
    [
        ("52:54:00:12:34:56", "52:54:00:12:34:56"),
        ("52:54:00:AB:cd:EF", "52:54:00:ab:cd:ef"),
        ("52-54-00-ab-cd-ef", "52:54:00:ab:cd:ef"),
        ("52:54:00:ab:cd", None),
        ("52:54-00:ab:cd:ef", None),
        ("5254.00ab.cdef", None),
        ("52:54:00:ab:cd:eg", None),
    ],
)
def test_normalize_mac(text: str, mac: str | None) -> None:
    assert normalize_mac(text) == mac


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("eth0", None),
        ("enp0s31f6", None),
        ("eth0.100", None),
        ("", "is empty"),
        ("a" * 16, "is longer than 15 bytes"),
        ("..", "cannot be '.' or '..'"),
        ("a/b", "cannot contain '/', ':' or white space"),
        ("a b", "cannot contain '/', ':' or white space"),
    ],
)
def test_interface_name_problem(name: str, problem: str | None) -> None:
    assert interface_name_problem(name) == problem


# --- ip= ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["dhcp", "on", "any", "both", "bootp", "rarp"])
def test_dynamic_words_mean_dhcp_on_the_first_interface_with_carrier(value: str) -> None:
    assert parse_ip_option(value) == NetworkSpec(interfaces=(Interface(dhcp=True),), source=KERNEL)
    assert only_interface(value).is_any


@pytest.mark.parametrize("value", ["off", "none", ""])
def test_off_none_and_empty_configure_nothing(value: str) -> None:
    assert parse_ip_option(value) == NetworkSpec()


def test_full_static_form() -> None:
    spec = parse_ip_option(
        "10.0.0.5:10.0.0.2:10.0.0.1:255.255.255.0:node-1:eth0:off:10.0.0.53:1.1.1.1:10.0.0.123"
    )
    assert spec == NetworkSpec(
        interfaces=(
            Interface(
                name="eth0",
                addresses=(IPv4Interface("10.0.0.5/24"),),
                routes=(Route(to=DEFAULT_V4, via=IPv4Address("10.0.0.1")),),
            ),
        ),
        dns=DNS(nameservers=(IPv4Address("10.0.0.53"), IPv4Address("1.1.1.1"))),
        hostname="node-1",
        source=KERNEL,
    )


def test_trailing_fields_may_be_left_out_and_device_empty_means_any() -> None:
    interface = only_interface("192.168.1.7::192.168.1.1:255.255.0.0")
    assert interface.is_any
    assert interface.addresses == (IPv4Interface("192.168.1.7/16"),)
    assert interface.routes == (Route(via=IPv4Address("192.168.1.1")),)
    assert not interface.dhcp


def test_empty_fields_in_the_middle() -> None:
    spec = parse_ip_option("10.1.2.3:::::eth1::::")
    assert spec.interfaces == (Interface(name="eth1", addresses=(IPv4Interface("10.1.2.3/8"),)),)
    assert spec.dns == DNS()
    assert spec.hostname is None


def test_only_dns1_given() -> None:
    spec = parse_ip_option("10.0.0.5:::255.255.255.0::eth0:none::9.9.9.9")
    assert spec.dns.nameservers == (IPv4Address("9.9.9.9"),)


@pytest.mark.parametrize(
    ("client", "prefix"),
    [
        ("10.20.30.40", 8),
        ("100.64.1.1", 8),  # class A, as the kernel does
        ("172.16.5.4", 16),
        ("172.31.5.4", 16),
        ("169.254.1.1", 16),
        ("192.168.7.8", 24),
        ("203.0.113.9", 24),
    ],
)
def test_a_missing_netmask_is_the_address_class(client: str, prefix: int) -> None:
    (address,) = only_interface(f"{client}:::::eth0:off").addresses
    assert address.network.prefixlen == prefix


@pytest.mark.parametrize(
    ("mask", "prefix"),
    [("255.0.0.0", 8), ("255.255.255.252", 30), ("255.255.255.255", 32), ("128.0.0.0", 1)],
)
def test_netmasks(mask: str, prefix: int) -> None:
    (address,) = only_interface(f"10.0.0.1:::{mask}::eth0:off").addresses
    assert address.network.prefixlen == prefix


@pytest.mark.parametrize("autoconf", ["dhcp", "on", "any", "both", "bootp", "rarp"])
def test_dynamic_autoconf_on_a_device(autoconf: str) -> None:
    assert only_interface(f":::::eth0:{autoconf}") == Interface(name="eth0", dhcp=True)


def test_dhcp_with_a_static_address_applies_both() -> None:
    interface = only_interface("10.0.0.5::10.0.0.1:255.255.255.0::eth0:dhcp")
    assert interface.dhcp
    assert interface.addresses == (IPv4Interface("10.0.0.5/24"),)
    assert interface.routes == (Route(via=IPv4Address("10.0.0.1")),)


@pytest.mark.parametrize(
    ("value", "dhcp"),
    [
        ("10.0.0.5:::::eth0", False),  # empty autoconf with a client-ip: static
        ("10.0.0.5:::::eth0:", False),
        (":::::eth0", True),  # no client-ip: the kernel's default, any
        ("::::node-1:eth0:", True),
    ],
)
def test_empty_autoconf(value: str, dhcp: bool) -> None:
    assert only_interface(value).dhcp is dhcp


def test_off_without_a_client_ip_keeps_only_the_hostname() -> None:
    assert parse_ip_option("::::node-1:eth0:off") == NetworkSpec(hostname="node-1", source=KERNEL)
    assert parse_ip_option(":::::eth0:off") == NetworkSpec()


def test_dhcp_hostname_and_dns_without_an_address() -> None:
    spec = parse_ip_option("::::Node-1::dhcp:10.0.0.53")
    assert spec.hostname == "Node-1"
    assert spec.interfaces == (Interface(dhcp=True),)
    assert spec.dns.nameservers == (IPv4Address("10.0.0.53"),)


def test_a_lone_client_ip_is_static_on_any_interface() -> None:
    assert only_interface("192.168.0.9") == Interface(addresses=(IPv4Interface("192.168.0.9/24"),))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("1.2.3.4::1.2.3", "ip=: gateway '1.2.3' is not an IPv4 address"),
        ("1.2.3", "ip=: client-ip '1.2.3' is not an IPv4 address"),
        (
            "eth0:dhcp",
            "ip=: client-ip 'eth0' is not an IPv4 address"
            " (for DHCP on one device write ip=:::::eth0:dhcp)",
        ),
        ("dhcp6", "ip=: client-ip 'dhcp6' is not an IPv4 address"),
        ("fd00::5", "ip=: client-ip 'fd00' is not an IPv4 address"),  # ip= is IPv4 only
        ("10.0.0.5:nfs", "ip=: server-ip 'nfs' is not an IPv4 address"),
        ("10.0.0.5:::255.0.255.0", "ip=: netmask '255.0.255.0' is not a netmask like"),
        ("10.0.0.5:::0.0.0.255", "ip=: netmask '0.0.0.255' is not a netmask like"),
        ("10.0.0.5:::0.0.0.0", "ip=: netmask '0.0.0.0' is not a netmask like"),
        ("10.0.0.5:::24", "ip=: netmask '24' is not a netmask like 255.255.255.0"),
        ("10.0.0.5::::bad_host", "ip=: hostname 'bad_host' is not a valid host name"),
        ("10.0.0.5::::" + "a" * 65, "ip=: hostname 'aaaa"),
        ("10.0.0.5:::::" + "e" * 16, "ip=: device 'eeeeeeeeeeeeeeee' is longer than 15 bytes"),
        ("10.0.0.5::::::static", "ip=: autoconf 'static' is not one of none, off, any,"),
        ("10.0.0.5:::::::8.8.8", "ip=: dns0 '8.8.8' is not an IPv4 address"),
        ("10.0.0.5::::::::x", "ip=: dns1 'x' is not an IPv4 address"),
        ("10.0.0.5:::::::::ntp", "ip=: ntp0 'ntp' is not an IPv4 address"),
        ("1:2:3:4:5:6:7:8:9:10:11", "ip=: 11 fields, at most 10"),
        (
            "10.0.0.5::10.1.0.1:255.255.255.0",
            "ip=: gateway '10.1.0.1' is not in the client's network 10.0.0.0/24",
        ),
        ("10.0.0.0:::255.255.255.0", "ip=: client-ip '10.0.0.0' is not a host of 10.0.0.0/24"),
        ("10.0.0.255:::255.255.255.0", "ip=: client-ip '10.0.0.255' is not a host of"),
        ("224.0.0.1", "ip=: client-ip '224.0.0.1' is not a host address"),
        ("0.0.0.0", "ip=: client-ip '0.0.0.0' is not a host address"),
        ("10.0.0.5::0.0.0.0", "ip=: gateway '0.0.0.0' is not a host address"),
    ],
)
def test_malformed_ip_options_name_the_field(value: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_ip_option(value)
    assert str(caught.value).startswith(message)


def test_a_point_to_point_netmask_allows_both_addresses() -> None:
    (address,) = only_interface("10.0.0.0:::255.255.255.254::eth0:off").addresses
    assert address == IPv4Interface("10.0.0.0/31")


# --- config or kernel --------------------------------------------------------------


def test_choose_network_prefers_a_configured_network() -> None:
    configured = NetworkSpec(source=NetworkSource.CONFIG)
    assert choose_network(configured, "dhcp") is configured
    assert choose_network(NetworkSpec(), None) == NetworkSpec()
    assert choose_network(NetworkSpec(), "dhcp").interfaces == (Interface(dhcp=True),)
    with pytest.raises(ValueError, match="client-ip"):
        choose_network(NetworkSpec(), "bogus")


def test_ipv6_types_are_accepted() -> None:
    route = Route(to=IPv6Network("::/0"), via=IPv6Address("fe80::1"))
    assert route.is_default
