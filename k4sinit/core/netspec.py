"""The network description: what the node's interfaces, routes and DNS should be.

Pure data, like :mod:`k4sinit.core.spec`: no I/O, no trio, no pyroute2. It comes from
the config's ``network`` section (:mod:`k4sinit.config`) or, when the config has
none, from the kernel's ``ip=`` option (:func:`parse_ip_option`);
:func:`choose_network` picks between them. :mod:`k4sinit.network` applies it.

:class:`NetworkSpec` ``()`` (the default) means "not configured": only loopback
is brought up.

An :class:`Interface` names a physical interface by ``name`` or by ``mac``
(for hardware whose names are not stable), never both. With neither it means
*the first non-loopback interface that has carrier* (:attr:`Interface.is_any`);
only ``ip=`` without a device produces that, as the kernel tries every device.
Bridges and VLANs are created by k4sinit and always have a ``name``.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from ipaddress import (
    IPv4Address,
    IPv4Interface,
    IPv4Network,
    IPv6Address,
    IPv6Interface,
    IPv6Network,
    ip_address,
)

from k4sinit.core.names import HOST_NAME_MAX, is_dns_subdomain

__all__ = [
    "DEFAULT_V4",
    "DEFAULT_V6",
    "DNS",
    "IPAddress",
    "IPInterface",
    "IPNetwork",
    "Interface",
    "InterfaceKind",
    "NetworkSource",
    "NetworkSpec",
    "Route",
    "choose_network",
    "interface_name_problem",
    "normalize_mac",
    "parse_ip_option",
]

IPAddress = IPv4Address | IPv6Address
IPInterface = IPv4Interface | IPv6Interface  # an address with its prefix: 10.0.0.5/24
IPNetwork = IPv4Network | IPv6Network

DEFAULT_V4 = IPv4Network("0.0.0.0/0")
DEFAULT_V6 = IPv6Network("::/0")


class InterfaceKind(enum.StrEnum):
    """What an interface is; k4sinit creates bridges and VLANs, and finds physical ones."""

    PHYSICAL = "physical"
    BRIDGE = "bridge"
    VLAN = "vlan"


class NetworkSource(enum.StrEnum):
    """Where a :class:`NetworkSpec` came from (shown in status)."""

    NONE = "none"  # not configured: loopback only
    CONFIG = "config"  # the config's ``network`` section
    KERNEL = "kernel"  # the kernel's ``ip=`` option


@dataclass(frozen=True, slots=True)
class Route:
    """A route through its interface: to ``to``, via gateway ``via`` (None: on-link).

    ``to`` and ``via`` are of one family. ``metric`` None leaves the kernel's default.
    """

    to: IPNetwork = DEFAULT_V4
    via: IPAddress | None = None
    metric: int | None = None

    def __post_init__(self) -> None:
        if self.via is not None and self.via.version != self.to.version:
            raise ValueError(f"route to {self.to} via {self.via}: the families differ")

    @property
    def is_default(self) -> bool:
        return self.to.prefixlen == 0


@dataclass(frozen=True, slots=True)
class Interface:
    """One interface and what it should have.

    ``mac`` is lowercase ``aa:bb:cc:dd:ee:ff``. ``addresses`` and ``dhcp`` combine:
    with both, the static addresses are added alongside the lease. ``bridge_ports``
    only for a bridge; ``vlan_id`` (1..4094) and ``vlan_link`` (the parent's
    name) only for, and required by, a VLAN.
    """

    name: str | None = None
    mac: str | None = None
    up: bool = True
    mtu: int | None = None
    addresses: tuple[IPInterface, ...] = ()
    routes: tuple[Route, ...] = ()
    dhcp: bool = False
    kind: InterfaceKind = InterfaceKind.PHYSICAL
    bridge_ports: tuple[str, ...] = ()
    vlan_id: int | None = None
    vlan_link: str | None = None

    def __post_init__(self) -> None:
        if self.name is not None and self.mac is not None:
            raise ValueError(f"interface {self.name}: give a name or a mac, not both")
        if self.kind is not InterfaceKind.PHYSICAL and self.name is None:
            raise ValueError(f"a {self.kind} needs a name")
        if (self.kind is InterfaceKind.VLAN) != (self.vlan_id is not None):
            raise ValueError(f"{self.label}: vlan_id goes with kind vlan, and only with it")

    @property
    def is_any(self) -> bool:
        """True for "the first non-loopback interface with carrier" (neither name nor mac)."""
        return self.name is None and self.mac is None

    @property
    def label(self) -> str:
        """How the interface is named to a person: its name, its MAC, or ``*``."""
        return self.name or self.mac or "*"


@dataclass(frozen=True, slots=True)
class DNS:
    """What goes into /etc/resolv.conf (with any DHCP-given servers after these)."""

    nameservers: tuple[IPAddress, ...] = ()
    search: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NetworkSpec:
    """The whole network of the node; ``NetworkSpec()`` is "not configured".

    ``wait_for_carrier``: the ``network`` condition waits for carrier on every
    configured interface that is up (for ``is_any``: on one). ``hostname`` is
    the one ``ip=`` gave (the config's hostname lives in ``SystemSpec``).
    """

    interfaces: tuple[Interface, ...] = ()
    dns: DNS = field(default_factory=DNS)
    wait_for_carrier: bool = True
    hostname: str | None = None
    source: NetworkSource = NetworkSource.NONE

    @property
    def configured(self) -> bool:
        return self.source is not NetworkSource.NONE


def choose_network(config: NetworkSpec, ip: str | None) -> NetworkSpec:
    """The config's network if it has a ``network`` section, else the kernel's ``ip=``.

    Raises ValueError (from :func:`parse_ip_option`) if ``ip`` is used and malformed.
    """
    if config.configured or ip is None:
        return config
    return parse_ip_option(ip)


# --- names and MACs -------------------------------------------------------------

_MAC = re.compile(r"[0-9a-f]{2}([:-])[0-9a-f]{2}(\1[0-9a-f]{2}){4}")


def normalize_mac(text: str) -> str | None:
    """``text`` as lowercase ``aa:bb:cc:dd:ee:ff`` (``-`` separators allowed), or None."""
    lowered = text.strip().lower()
    return lowered.replace("-", ":") if _MAC.fullmatch(lowered) else None


def interface_name_problem(name: str) -> str | None:
    """Why the kernel would refuse ``name`` for an interface (None: it would not)."""
    if not name:
        return "is empty"
    if len(name.encode()) > 15:
        return "is longer than 15 bytes"
    if name in (".", ".."):
        return "cannot be '.' or '..'"
    if any(c in "/:" or c.isspace() for c in name):
        return "cannot contain '/', ':' or white space"
    return None


# --- the kernel's ip= option ---------------------------------------------------------

_IP_FIELDS = (
    "client-ip",
    "server-ip",
    "gateway",
    "netmask",
    "hostname",
    "device",
    "autoconf",
    "dns0",
    "dns1",
    "ntp0",
)
_STATIC = frozenset({"off", "none"})
_DYNAMIC = frozenset({"on", "any", "dhcp", "bootp", "rarp", "both"})


def parse_ip_option(value: str) -> NetworkSpec:
    """The network the kernel's ``ip=`` option asks for (the nfsroot format).

    ``value`` is what follows ``ip=``. The forms:

    * ``off``, ``none`` or empty: not configured (``NetworkSpec()``).
    * ``dhcp``, ``on``, ``any``, ``both``, ``bootp``, ``rarp``: DHCP on the first
      interface with carrier. k4sinit speaks only DHCP, so every dynamic
      protocol means DHCP.
    * ``client-ip:server-ip:gateway:netmask:hostname:device:autoconf:dns0:dns1:ntp0``,
      any field empty and trailing ones left out:

      - ``client-ip`` with ``netmask`` is a static address on ``device``. Without a
        netmask it is the address's class, as the kernel does (10.x /8, 172.16.x
        /16, 192.168.x /24; generally 0-127 /8, 128-191 /16, 192-223 /24).
      - ``gateway`` is a default route (metric unset); with a static address it
        must be inside its network, as the kernel requires.
      - ``device`` empty: the first interface with carrier (``Interface.is_any``).
      - ``autoconf`` ``off``/``none``: static; a dynamic name (above): DHCP, with
        the static address and gateway, if given, added too; empty: static if a
        client-ip is given, else DHCP (the kernel's default, ``any``).
        ``off`` without a client-ip configures no interface (the hostname still counts).
      - ``dns0``, ``dns1``: nameservers. ``hostname``: :attr:`NetworkSpec.hostname`.
      - ``server-ip`` (the NFS server) and ``ntp0`` are checked and not used.

    Raises ValueError naming the field, e.g. ``ip=: gateway '1.2.3' is not an
    IPv4 address``.
    """
    fields = value.split(":")
    if len(fields) > len(_IP_FIELDS):
        raise ValueError(
            f"ip=: {len(fields)} fields, at most {len(_IP_FIELDS)}"
            f" ({':'.join(_IP_FIELDS)}) are known"
        )
    if len(fields) == 1:
        word = fields[0]
        if word in _STATIC or word == "":
            return NetworkSpec()
        if word in _DYNAMIC:
            return NetworkSpec(interfaces=(Interface(dhcp=True),), source=NetworkSource.KERNEL)
    given = dict(zip(_IP_FIELDS, fields, strict=False))
    client = _ipv4(given, "client-ip", host=True)
    _ipv4(given, "server-ip")
    gateway = _ipv4(given, "gateway", host=True)
    netmask = _netmask(given)
    hostname = _ip_hostname(given)
    device = _device(given)
    autoconf = given.get("autoconf", "")
    if autoconf and autoconf not in _STATIC | _DYNAMIC:
        known = ", ".join(sorted(_STATIC)) + ", " + ", ".join(sorted(_DYNAMIC))
        raise ValueError(f"ip=: autoconf {autoconf!r} is not one of {known}")
    nameservers = tuple(a for a in (_ipv4(given, "dns0"), _ipv4(given, "dns1")) if a)
    _ipv4(given, "ntp0")
    dhcp = autoconf in _DYNAMIC or (autoconf == "" and client is None)
    if client is None and not dhcp:  # nothing to configure, but the kernel keeps the name
        return (
            NetworkSpec(hostname=hostname, source=NetworkSource.KERNEL)
            if hostname
            else NetworkSpec()
        )
    addresses: tuple[IPInterface, ...] = ()
    if client is not None:
        prefix = netmask if netmask is not None else _class_prefix(client)
        address = IPv4Interface((client, prefix))
        if gateway is not None and gateway not in address.network:
            raise ValueError(
                f"ip=: gateway '{gateway}' is not in the client's network {address.network}"
            )
        network = address.network
        edges = (network.network_address, network.broadcast_address)
        if network.prefixlen < 31 and address.ip in edges:
            raise ValueError(f"ip=: client-ip '{client}' is not a host of {network}")
        addresses = (address,)
    routes = () if gateway is None else (Route(to=DEFAULT_V4, via=gateway),)
    interface = Interface(name=device, addresses=addresses, routes=routes, dhcp=dhcp)
    return NetworkSpec(
        interfaces=(interface,),
        dns=DNS(nameservers=nameservers),
        hostname=hostname,
        source=NetworkSource.KERNEL,
    )


def _ipv4(given: dict[str, str], name: str, *, host: bool = False) -> IPv4Address | None:
    text = given.get(name, "")
    if not text:
        return None
    try:
        address = ip_address(text)
    except ValueError:
        address = None
    if not isinstance(address, IPv4Address) or text.count(".") != 3:
        hint = " (for DHCP on one device write ip=:::::eth0:dhcp)" if name == "client-ip" else ""
        raise ValueError(f"ip=: {name} {text!r} is not an IPv4 address{hint}")
    if host and (address.is_unspecified or address.is_multicast or address.is_reserved):
        raise ValueError(f"ip=: {name} {text!r} is not a host address")
    return address


def _netmask(given: dict[str, str]) -> int | None:
    """The prefix length of the dotted ``netmask`` field (None if empty)."""
    text = given.get("netmask", "")
    if not text:
        return None
    try:
        mask = int(IPv4Address(text)) if text.count(".") == 3 else -1
    except ValueError:
        mask = -1
    inverted = ~mask & 0xFFFFFFFF
    if mask <= 0 or inverted & (inverted + 1):  # the ones must come first, then the zeros
        raise ValueError(f"ip=: netmask {text!r} is not a netmask like 255.255.255.0")
    return 32 - inverted.bit_length()


def _class_prefix(address: IPv4Address) -> int:
    """The classful prefix the kernel gives an address without a netmask."""
    first = address.packed[0]
    return 8 if first < 128 else 16 if first < 192 else 24


def _ip_hostname(given: dict[str, str]) -> str | None:
    text = given.get("hostname", "")
    if not text:
        return None
    # Any case, as the kernel takes it; ASCII first: lower() makes a k of the Kelvin sign.
    if not (text.isascii() and is_dns_subdomain(text.lower(), HOST_NAME_MAX)):
        raise ValueError(
            f"ip=: hostname {text!r} is not a valid host name"
            " (letters, digits, '-' and '.', at most 64)"
        )
    return text


def _device(given: dict[str, str]) -> str | None:
    text = given.get("device", "")
    if not text:
        return None
    problem = interface_name_problem(text)
    if problem is not None:
        raise ValueError(f"ip=: device {text!r} {problem}")
    return text
