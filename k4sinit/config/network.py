"""The ``network`` section: interfaces by name or MAC, their addresses and
routes, and DNS (:class:`~k4sinit.core.netspec.NetworkSpec`).

Each interface is read on its own, then checked against the others (a name,
MAC or VLAN configured twice, a port in two bridges) and each IPv4 gateway
against the interface's networks, as the kernel would.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import TypeGuard

from k4sinit.config.document import Document, KeyPath
from k4sinit.config.reader import Reader, given, is_bool, is_int, is_list, is_str, kind_of
from k4sinit.core.names import is_domain
from k4sinit.core.netspec import (
    DEFAULT_V4,
    DEFAULT_V6,
    DNS,
    Interface,
    InterfaceKind,
    IPAddress,
    IPInterface,
    IPNetwork,
    NetworkSource,
    NetworkSpec,
    Route,
    interface_name_problem,
    normalize_mac,
)

__all__ = ["network_hint", "read_network"]

_MAX_NAMESERVERS = 3  # glibc's and musl's MAXNS: the resolver never asks a fourth
_TO_HINT = "a network like 192.168.50.0/24, or default"


def read_network(top: Reader) -> NetworkSpec:
    """``network``: interfaces by name or MAC, their addresses and routes, and DNS.

    A ``network`` section, even an empty one, takes the place of the kernel's
    ``ip=``. :mod:`k4sinit.core.netspec` says what each field means.
    """
    r = top.mapping("network", hint="write it as network: {interfaces: [...], dns: {...}}")
    if r is None:
        return NetworkSpec()
    entries = []
    for item in r.items("interfaces", "an interface (a mapping with name or mac)"):
        interface = _read_interface(item)
        if interface is not None:
            entries.append((interface, item))
    _check_interfaces(entries)
    dns = _read_dns(r)
    wait = r.take("waitForCarrier", "a boolean", is_bool)
    r.finish()
    return NetworkSpec(
        interfaces=tuple(interface for interface, _ in entries),
        **given(dns=dns, wait_for_carrier=wait),
        source=NetworkSource.CONFIG,
    )


def _read_interface(r: Reader) -> Interface | None:
    """One ``interfaces`` item; None (after recording why) if it is not valid."""
    name = _interface_name(r, "name")
    mac = _read_mac(r)
    kind_name = r.choice("kind", [k.value for k in InterfaceKind])
    kind = InterfaceKind.PHYSICAL if kind_name is None else InterfaceKind(kind_name)
    up = r.take("up", "a boolean", is_bool)
    mtu = r.integer("mtu", 68, maximum=65535)
    dhcp = r.take("dhcp", "a boolean", is_bool)
    addresses, addresses_ok = _read_addresses(r)
    routes = _read_routes(r)
    ports = _read_names(r, "ports")
    vlan_id = r.integer("id", 1, maximum=4094)
    link = _interface_name(r, "link")
    r.finish()
    read: dict[str, object] = {
        "name": name,
        "mac": mac,
        "kind": kind_name,
        "up": up,
        "mtu": mtu,
        "dhcp": dhcp,
        "addresses": addresses if addresses_ok else None,
        "routes": routes,
        "ports": ports,
        "id": vlan_id,
        "link": link,
    }
    ok = all(value is not None for key, value in read.items() if key in r.data)  # None: wrong
    problems = _interface_problems(r, kind, name, mtu, addresses, ports, link)
    for message, hint, key in problems:
        r.error(message, hint, key=key)
    if routes and addresses_ok and dhcp is not True:
        _check_gateways(addresses, routes)
    if problems or not ok:
        return None
    return Interface(
        name=name,
        mac=mac,
        kind=kind,
        addresses=addresses,
        routes=tuple(route for route, _ in routes or ()),
        bridge_ports=ports or (),
        vlan_id=vlan_id,
        vlan_link=link,
        **given(up=up, mtu=mtu, dhcp=dhcp),
    )


def _interface_problems(
    r: Reader,
    kind: InterfaceKind,
    name: str | None,
    mtu: int | None,
    addresses: Sequence[IPInterface],
    ports: Sequence[str] | None,
    link: str | None,
) -> list[tuple[str, str | None, str | None]]:
    """What does not fit together in one interface: (message, hint, key) each."""
    problems: list[tuple[str, str | None, str | None]] = []
    if "name" in r.data and "mac" in r.data:
        why = "mac selects a physical interface whose name is not stable"
        problems.append(("give name or mac, not both", why, None))
    elif kind is not InterfaceKind.PHYSICAL and "name" not in r.data:
        problems.append((f"a {kind} needs a name", f"k4sinit creates the {kind} by name", None))
    elif "name" not in r.data and "mac" not in r.data:
        fix = "add name: eth0, or mac: 52:54:00:12:34:56"
        problems.append(("an interface needs a name or a mac", fix, None))
    if "ports" in r.data and kind is not InterfaceKind.BRIDGE:
        problems.append(("ports are for a bridge", "add kind: bridge", "ports"))
    for vlan_key in ("id", "link"):
        if vlan_key in r.data and kind is not InterfaceKind.VLAN:
            problems.append((f"{vlan_key!r} is for a vlan", "add kind: vlan", vlan_key))
        elif vlan_key not in r.data and kind is InterfaceKind.VLAN:
            problems.append((f"a vlan needs {vlan_key!r}", "like link: eth0 and id: 100", None))
    if link is not None and link == name:
        problems.append(("a vlan cannot be its own link", None, "link"))
    if name is not None and name in (ports or ()):
        problems.append((f"the bridge {name!r} cannot be its own port", None, "ports"))
    if mtu is not None and mtu < 1280 and any(a.version == 6 for a in addresses):
        problems.append((f"IPv6 needs an MTU of at least 1280, got {mtu}", None, "mtu"))
    return problems


def _interface_name(r: Reader, key: str) -> str | None:
    name = r.string(key)
    problem = None if name is None else interface_name_problem(name)
    if problem is not None:
        r.error(f"invalid interface name {name!r}: it {problem}", key=key)
        return None
    return name


def _read_mac(r: Reader) -> str | None:
    value = r.take("mac", "a MAC address like 52:54:00:12:34:56", _is_mac_like)
    if value is None:
        return None
    text = value if isinstance(value, str) else _sexagesimal(value)
    mac = None if text is None else normalize_mac(text)
    if mac is None and isinstance(value, int):
        message = f"invalid MAC address (YAML read it as the number {value})"
        r.error(message, 'quote it, like mac: "52:54:00:12:34:56"', key="mac")
    elif mac is None:
        r.error(f"invalid MAC address {value!r}", "like 52:54:00:12:34:56", key="mac")
    return mac


def _is_mac_like(value: object) -> TypeGuard[str | int]:
    return isinstance(value, str) or is_int(value)


def _sexagesimal(value: int) -> str | None:
    """The text of an unquoted MAC that YAML 1.1 read as a base-60 integer.

    ``52:54:00:12:34:56`` has only digits and every group after the first is
    below 60, so YAML 1.1 reads it as a number; its six two-digit groups come
    back from that number exactly. Anything else gives None.
    """
    groups = []
    for _ in range(5):
        value, group = divmod(value, 60)
        groups.append(group)
    if not 10 <= value <= 99:  # the first group: two digits, YAML allows no leading 0
        return None
    return ":".join(f"{g:02d}" for g in (value, *reversed(groups)))


def _read_addresses(r: Reader) -> tuple[tuple[IPInterface, ...], bool]:
    """``addresses``: the valid ones, and whether all were (after errors about the rest)."""
    items = r.take("addresses", "a list of addresses like 10.0.0.5/24", is_list)
    addresses: dict[IPInterface, None] = {}  # an ordered set: long lists stay linear
    for i, item in enumerate(items or ()):
        path = (*r.path, "addresses", i)
        address = _address_with_prefix(r.doc, path, item)
        if address is not None and address in addresses:
            r.doc.error(path, f"{address} is listed twice")
        elif address is not None:
            addresses[address] = None
    ok = "addresses" not in r.data or (items is not None and len(addresses) == len(items))
    return tuple(addresses), ok


def _address_with_prefix(doc: Document, path: KeyPath, item: object) -> IPInterface | None:
    if not isinstance(item, str):
        doc.error(path, f"expected an address like 10.0.0.5/24, got {kind_of(item)}")
        return None
    try:
        address = ipaddress.ip_interface(item)
    except ValueError:
        hint = "write it as address/prefix, like 10.0.0.5/24 or fd00::5/64"
        doc.error(path, f"invalid address {item!r}", hint)
        return None
    if "/" not in item:
        hint = f"like {item}/{24 if address.version == 4 else 64}"
        doc.error(path, f"{item!r} has no prefix length", hint)
        return None
    if address.ip.is_unspecified or address.ip.is_multicast:
        doc.error(path, f"{item!r} is not a host address")
        return None
    return address


def _read_routes(r: Reader) -> list[tuple[Route, Reader]] | None:
    """``routes``, each with its reader (for errors found later); None if any is wrong."""
    raw = r.data.get("routes")
    readers = r.items("routes", "a route (a mapping with to, via and metric)")
    routes = [(route, item) for item in readers if (route := _read_route(item)) is not None]
    ok = raw is None or (isinstance(raw, list) and len(routes) == len(raw))
    first: dict[tuple[IPNetwork, int | None], int | None] = {}
    for route, item in routes:
        key = (route.to, route.metric)
        if key in first:
            metric = "" if route.metric is None else f" with metric {route.metric}"
            message = (
                f"the route to {route.to}{metric} is listed twice (first at line {first[key]})"
            )
            item.error(message, "give one of them another metric")
            ok = False
        else:
            first[key] = r.doc.line(item.path)
    return routes if ok else None


def _read_route(r: Reader) -> Route | None:
    to_text = r.take("to", _TO_HINT, is_str)
    via_text = r.string("via")
    metric = r.integer("metric", 0, maximum=2**32 - 1)
    r.finish()
    read = {"to": to_text, "via": via_text, "metric": metric}
    if any(key in r.data and value is None for key, value in read.items()):
        return None  # already reported
    via = None
    if via_text is not None:
        try:
            via = ipaddress.ip_address(via_text)
        except ValueError:
            hint = "a gateway is one address, without /prefix" if "/" in via_text else None
            r.error(f"invalid gateway address {via_text!r}", hint, key="via")
            return None
    to: IPNetwork = DEFAULT_V4 if via is None or via.version == 4 else DEFAULT_V6
    if to_text is not None and to_text != "default":
        try:
            to = ipaddress.ip_network(to_text)
        except ValueError:
            r.error(f"invalid network {to_text!r}", network_hint(to_text), key="to")
            return None
    if via is not None and via.version != to.version:
        message = f"gateway {via} is IPv{via.version} but {to} is IPv{to.version}"
        r.error(message, "a route's to and via are of one family", key="via")
        return None
    return Route(to=to, via=via, metric=metric)


def network_hint(text: str) -> str:
    try:
        network = ipaddress.ip_network(text, strict=False)
    except ValueError:
        return f"write {_TO_HINT}"
    return f"it has host bits set, did you mean {str(network)!r}?"


def _check_gateways(
    addresses: Sequence[IPInterface], routes: Sequence[tuple[Route, Reader]]
) -> None:
    """Report each IPv4 gateway the kernel would refuse on this interface.

    Without ``onlink`` the kernel takes a gateway only inside a network of the
    same interface: an address's, or an on-link route's. Not checked with DHCP
    (the lease brings a network) nor for IPv6 (gateways are mostly link-local,
    and router advertisements bring prefixes).
    """
    on_link = [a.network for a in addresses if a.version == 4]
    on_link += [route.to for route, _ in routes if route.via is None and route.to.version == 4]
    for route, item in routes:
        via = route.via
        if isinstance(via, ipaddress.IPv4Address) and not any(via in n for n in on_link):
            message = f"gateway {via} is not in a network of this interface"
            hint = (
                "add an address in its network (like 10.0.0.5/24), an on-link route, or dhcp: true"
            )
            item.error(message, hint, key="via")


def _read_names(r: Reader, key: str) -> tuple[str, ...] | None:
    """A list of interface names (None if any is wrong, after errors)."""
    items = r.take(key, "a list of interface names", is_list)
    names: dict[str, None] = {}  # an ordered set
    for i, item in enumerate(items or ()):
        path = (*r.path, key, i)
        problem = interface_name_problem(item) if isinstance(item, str) else None
        if not isinstance(item, str):
            r.doc.error(path, f"expected an interface name, got {kind_of(item)}")
        elif problem is not None:
            r.doc.error(path, f"invalid interface name {item!r}: it {problem}")
        elif item in names:
            r.doc.error(path, f"{item!r} is listed twice")
        else:
            names[item] = None
    return tuple(names) if items is not None and len(names) == len(items) else None


def _check_interfaces(entries: Sequence[tuple[Interface, Reader]]) -> None:
    """Checks across interfaces: names and MACs once each, a port in one bridge,
    no bridge as a port, one vlan per id and link."""
    first: dict[tuple[str, object], int | None] = {}
    port_of: dict[str, str] = {}
    bridges = {i.name for i, _ in entries if i.kind is InterfaceKind.BRIDGE}
    for interface, r in entries:
        vlan = (interface.vlan_link, interface.vlan_id)
        for key, value in (("name", interface.name), ("mac", interface.mac), ("id", vlan)):
            if value is None or value == (None, None):
                continue
            if (key, value) in first:
                what = f"vlan {vlan[1]} on {vlan[0]!r}" if key == "id" else repr(value)
                message = f"{what} is configured twice (first at line {first[key, value]})"
                r.error(message, key=key)
            else:
                first[key, value] = r.doc.line((*r.path, key))
        for i, port in enumerate(interface.bridge_ports):
            path = (*r.path, "ports", i)
            if port in bridges:
                r.doc.error(path, f"the bridge {port!r} cannot be a port of another bridge")
            elif port in port_of:
                r.doc.error(path, f"{port!r} is already a port of {port_of[port]!r}")
            else:
                port_of[port] = interface.label


def _read_dns(parent: Reader) -> DNS | None:
    r = parent.mapping("dns", hint="write it as dns: {nameservers: [...], search: [...]}")
    if r is None:
        return None
    items = r.take("nameservers", "a list of IP addresses", is_list) or []
    nameservers: dict[IPAddress, None] = {}  # an ordered set
    for i, item in enumerate(items):
        path = (*r.path, "nameservers", i)
        if not isinstance(item, str):
            r.doc.error(path, f"expected an IP address, got {kind_of(item)}")
            continue
        try:
            address = ipaddress.ip_address(item)
        except ValueError:
            hint = "a nameserver is one address, without /prefix" if "/" in item else None
            r.doc.error(path, f"invalid nameserver address {item!r}", hint)
            continue
        if address in nameservers:
            r.doc.error(path, f"{address} is listed twice")
        else:
            nameservers[address] = None
    if len(items) > _MAX_NAMESERVERS:
        message = f"at most {_MAX_NAMESERVERS} nameservers, got {len(items)}"
        r.error(message, "the resolver asks only the first 3", key="nameservers")
    search = r.take("search", "a list of domains", is_list) or []
    seen: set[str] = set()
    for i, domain in enumerate(search):
        path = (*r.path, "search", i)
        if not isinstance(domain, str):
            r.doc.error(path, f"expected a domain, got {kind_of(domain)}")
        elif not is_domain(domain):
            r.doc.error(path, f"invalid search domain {domain!r}", "like cluster.local")
        elif domain in seen:
            r.doc.error(path, f"{domain!r} is listed twice")
        else:
            seen.add(domain)
    r.finish()
    return DNS(
        nameservers=tuple(nameservers), search=tuple(d for d in search if isinstance(d, str))
    )
