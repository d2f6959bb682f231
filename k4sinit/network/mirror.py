"""The kernel's links, addresses and main-table routes, as netlink tells them.

A :class:`Mirror` is filled from a dump (:meth:`Mirror.load`) and kept by events
(:meth:`Mirror.apply`), both already parsed by :mod:`k4sinit.network.netlink`
into the plain values below. It runs in the trio thread and makes no netlink
call (no pyroute2 here: it is tested with plain values).

:attr:`Mirror.version` grows at each change that ``k4sinit status network``
shows: a link that comes or goes or whose name, MAC, kind, state, carrier,
MTU, master or addresses change; a route; the link chosen for ``*``. Events
that change none of these (a link's statistics, a route outside the main
table) leave it as it is, so the network wakes its waiters by comparing
versions instead of building its whole snapshot after every event.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from k4sinit.core.netspec import Interface, IPAddress, IPInterface, IPNetwork
from k4sinit.network.snapshot import InterfaceSnapshot

# Links that copy the MAC of another (so a MAC names the other) or are made, not found.
NOT_BY_MAC = frozenset({"bridge", "vlan", "bond", "team", "macvlan", "macvtap", "ipvlan"})
VIRTUAL = NOT_BY_MAC | {"dummy", "vxlan", "tun", "tuntap", "wireguard", "gre", "ipip", "sit"}


@dataclass(slots=True)
class Link:
    """One link, with what the status shows of it (equal links look the same)."""

    index: int
    name: str
    mac: str  # lower case; empty for a link without one
    kind: str | None
    admin_up: bool  # IFF_UP
    carrier: bool  # IFF_LOWER_UP
    loopback: bool  # IFF_LOOPBACK
    operstate: str
    mtu: int
    master: int | None
    addresses: set[IPInterface] = field(default_factory=set)

    @property
    def is_nic(self) -> bool:
        """A network card (not loopback, not a made link): a candidate for ``*``."""
        return not self.loopback and self.kind not in VIRTUAL


def by_mac(links: Iterable[Link], mac: str) -> Link | None:
    """The link a MAC names: the lowest index among those with it, not counting
    links that copy another's MAC (bridges, VLANs, bonds, ...)."""
    matches = [link for link in links if link.mac == mac and link.kind not in NOT_BY_MAC]
    return min(matches, key=lambda link: link.index) if matches else None


def describe_route(to: IPNetwork, via: IPAddress | None, metric: int | None) -> str:
    """A route as people write it: ``default via 10.0.0.1 metric 100``."""
    text = "default" if to.prefixlen == 0 else str(to)
    if via is not None:
        text += f" via {via}"
    if metric is not None:
        text += f" metric {metric}"
    return text


@dataclass(frozen=True, slots=True)
class KernelRoute:
    """A unicast route of the main table through one link."""

    to: IPNetwork
    via: IPAddress | None
    oif: int
    metric: int

    def __str__(self) -> str:
        return describe_route(self.to, self.via, self.metric)


# --- changes, as netlink.parse makes them from events ----------------------------------


@dataclass(frozen=True, slots=True)
class LinkChange:
    """A link's new state (RTM_NEWLINK), or ``link`` None when it is gone (RTM_DELLINK)."""

    index: int
    link: Link | None


@dataclass(frozen=True, slots=True)
class AddressChange:
    index: int
    address: IPInterface
    gone: bool


@dataclass(frozen=True, slots=True)
class RouteChange:
    """``replace``: it takes the place of the route to ``to`` at the same metric."""

    route: KernelRoute
    gone: bool
    replace: bool


Change = LinkChange | AddressChange | RouteChange


class Mirror:
    """What the kernel has; see the module docstring. ``log`` tells of carrier and
    up/down changes of known links."""

    def __init__(self, log: Any) -> None:
        self.known = False  # a dump was loaded
        self.links: dict[int, Link] = {}
        self.routes: set[KernelRoute] = set()
        self.any_index: int | None = None  # the link an ``is_any`` interface runs on
        self.version = 0
        self._log = log

    def load(
        self,
        links: Iterable[Link],
        addresses: Iterable[tuple[int, IPInterface]],
        routes: Iterable[KernelRoute],
    ) -> None:
        """Replace everything with a dump (addresses of unknown links are dropped)."""
        before = (self.known, self.links, self.routes, self.any_index)
        self.links = {link.index: link for link in links}
        for index, address in addresses:
            if index in self.links:
                self.links[index].addresses.add(address)
        self.routes = set(routes)
        self.known = True
        if self.any_index not in self.links:
            self.any_index = None
        if (self.known, self.links, self.routes, self.any_index) != before:
            self.version += 1

    def apply(self, change: Change) -> bool:
        """Update from one event; True if the routes must be dumped again: the kernel
        removes IPv4 routes without telling when a link goes (or is set down) or
        an IPv4 address goes."""
        if isinstance(change, LinkChange):
            old = self.links.get(change.index)
            self._changed(self._on_link(change))
            return change.link is None or (old is not None and old.admin_up != change.link.admin_up)
        if isinstance(change, AddressChange):
            self._changed(self._on_address(change))
            return change.gone and change.address.version == 4
        self._changed(self._on_route(change))
        return False

    def choose_any(self, index: int) -> bool:
        """Record the link chosen for an ``is_any`` interface; True if that is news."""
        if self.any_index == index:
            return False
        self.any_index = index
        self.version += 1
        return True

    def _changed(self, changed: bool) -> None:
        if changed:
            self.version += 1

    def _on_link(self, change: LinkChange) -> bool:
        index, link = change.index, change.link
        if link is None:
            gone = self.links.pop(index, None)
            routes = {r for r in self.routes if r.oif != index}
            changed = gone is not None or len(routes) != len(self.routes)
            self.routes = routes
            if self.any_index == index:
                self.any_index = None
                changed = True
            return changed
        old = self.links.get(index)
        if old is not None:
            link.addresses = old.addresses
            if (old.carrier, old.admin_up) != (link.carrier, link.admin_up):
                self._log.info("link", interface=link.name, up=link.admin_up, carrier=link.carrier)
        self.links[index] = link
        return link != old

    def _on_address(self, change: AddressChange) -> bool:
        link = self.links.get(change.index)
        if link is None or (change.address in link.addresses) != change.gone:
            return False
        if change.gone:
            link.addresses.discard(change.address)
        else:
            link.addresses.add(change.address)
        return True

    def _on_route(self, change: RouteChange) -> bool:
        route = change.route
        if change.gone:
            if route not in self.routes:
                return False
            self.routes.discard(route)
            return True
        if change.replace:
            kept = {r for r in self.routes if (r.to, r.metric) != (route.to, route.metric)}
            if kept | {route} == self.routes:
                return False
            self.routes = kept | {route}
            return True
        if route in self.routes:
            return False
        self.routes.add(route)
        return True

    # --- reading --------------------------------------------------------------------

    def find(self, iface: Interface) -> Link | None:
        """The link ``iface`` is on now: by name, by MAC, or the one chosen for ``*``."""
        if iface.name is not None:
            return next((link for link in self.links.values() if link.name == iface.name), None)
        if iface.mac is not None:
            return by_mac(self.links.values(), iface.mac)
        return self.links.get(self.any_index) if self.any_index is not None else None

    def link_name(self, index: int) -> str:
        link = self.links.get(index)
        return link.name if link is not None else f"if{index}"

    def interfaces(self, configured: Mapping[int, str]) -> dict[str, InterfaceSnapshot]:
        """Every link by name, as the status shows it; ``configured``: link index ->
        the config's label for it."""
        shown: dict[str, InterfaceSnapshot] = {}
        for link in sorted(self.links.values(), key=lambda link: link.index):
            routes = sorted(
                (r for r in self.routes if r.oif == link.index),
                key=lambda r: (r.to.version, r.to.prefixlen, str(r.to), r.metric),
            )
            shown[link.name] = {
                "index": link.index,
                "configured": configured.get(link.index),
                "state": link.operstate.lower(),
                "up": link.admin_up,
                "carrier": link.carrier,
                "mtu": link.mtu,
                "mac": link.mac,
                "kind": link.kind,
                "master": self.link_name(link.master) if link.master else None,
                "addresses": [str(a) for a in sorted(link.addresses, key=lambda a: (a.version, a))],
                "routes": [str(r) for r in routes],
            }
        return shown
