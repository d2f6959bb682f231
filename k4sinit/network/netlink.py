"""Netlink through pyroute2: configure interfaces, dump the kernel's state, read its events.

The only module of k4sinit that imports pyroute2 at load time (DHCP imports its
part when a DHCP client starts). Everything here that talks to the kernel runs
in a worker thread (``trio.to_thread.run_sync``, serialised by the caller's
``CapacityLimiter(1)``) and touches no state of the network's: under load one
call can hold the kernel's RTNL lock for a second, and the trio thread must
never wait on it. Each batch opens one ``IPRoute`` and closes it (one shared
across threads leaks a socket and an asyncio loop per thread).

Messages become the plain values of :mod:`k4sinit.network.mirror` here
(:func:`parse`, :func:`dump`), so nothing past this module reads pyroute2's.

:meth:`Batch.configure` never raises for a bad interface: each problem is a line
naming the interface and the reason (``"eth1: no such interface (by name)"``),
kept per interface in :attr:`BatchResult.problems`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from ipaddress import ip_address, ip_interface, ip_network
from typing import Any

from pyroute2 import IPRoute, IPRSocket
from pyroute2.netlink import rtnl
from pyroute2.netlink.exceptions import NetlinkError

from k4sinit.core.netspec import Interface, InterfaceKind, IPInterface, IPNetwork
from k4sinit.network.mirror import (
    AddressChange,
    Change,
    KernelRoute,
    Link,
    LinkChange,
    RouteChange,
    by_mac,
    describe_route,
)

EVENT_GROUPS = (
    rtnl.RTMGRP_LINK
    | rtnl.RTMGRP_IPV4_IFADDR
    | rtnl.RTMGRP_IPV6_IFADDR
    | rtnl.RTMGRP_IPV4_ROUTE
    | rtnl.RTMGRP_IPV6_ROUTE
)

_IFF_UP = 0x1
_IFF_LOOPBACK = 0x8
_IFF_LOWER_UP = 0x10000
_MAIN_TABLE = 254
_RTN_UNICAST = 1
_NLM_F_REPLACE = 0x100
_AF_BRIDGE = 7


# --- messages -> plain values ------------------------------------------------------------


def link_from(msg: Any) -> Link:
    flags = msg["flags"]
    return Link(
        index=msg["index"],
        name=msg.get("ifname") or f"if{msg['index']}",
        mac=(msg.get("address") or "").lower(),
        kind=msg.get(("linkinfo", "kind")),
        admin_up=bool(flags & _IFF_UP),
        carrier=bool(flags & _IFF_LOWER_UP),
        loopback=bool(flags & _IFF_LOOPBACK),
        operstate=msg.get("operstate") or "UNKNOWN",
        mtu=msg.get("mtu") or 0,
        master=msg.get("master"),
    )


def address_from(msg: Any) -> tuple[int, IPInterface] | None:
    text = msg.get("local") or msg.get("address")
    if text is None:
        return None
    return msg["index"], ip_interface(f"{text}/{msg['prefixlen']}")


def route_from(msg: Any) -> KernelRoute | None:
    """The route in ``msg`` if it is a unicast route of the main table through one link."""
    table = msg.get("table")
    oif = msg.get("oif")
    if table != _MAIN_TABLE or msg["type"] != _RTN_UNICAST or oif is None:
        return None
    zero = "0.0.0.0" if msg["family"] == socket.AF_INET else "::"
    gateway = msg.get("gateway")
    default_metric = 0 if msg["family"] == socket.AF_INET else 1024
    return KernelRoute(
        to=ip_network(f"{msg.get('dst') or zero}/{msg['dst_len']}", strict=False),
        via=ip_address(gateway) if gateway else None,
        oif=oif,
        metric=msg.get("priority") or default_metric,
    )


def parse(msg: Any) -> Change | None:
    """The change an event tells, or None for one the mirror does not keep."""
    kind = msg["header"]["type"]
    if kind in (rtnl.RTM_NEWLINK, rtnl.RTM_DELLINK):
        if msg.get("family") == _AF_BRIDGE:  # bridge port details, not a link change
            return None
        gone = kind == rtnl.RTM_DELLINK
        return LinkChange(msg["index"], None if gone else link_from(msg))
    if kind in (rtnl.RTM_NEWADDR, rtnl.RTM_DELADDR):
        parsed = address_from(msg)
        if parsed is None:
            return None
        return AddressChange(*parsed, gone=kind == rtnl.RTM_DELADDR)
    if kind in (rtnl.RTM_NEWROUTE, rtnl.RTM_DELROUTE):
        route = route_from(msg)
        if route is None:
            return None
        replace = bool(msg["header"]["flags"] & _NLM_F_REPLACE)
        return RouteChange(route, gone=kind == rtnl.RTM_DELROUTE, replace=replace)
    return None


# --- the state and its events --------------------------------------------------------------


def dump() -> tuple[list[Link], list[tuple[int, IPInterface]], list[KernelRoute]]:
    """Worker thread: links, addresses and main-table routes (both families) as the
    kernel has them."""
    with IPRoute() as ipr:
        links = [link_from(m) for m in ipr.get_links()]
        addresses = [a for a in map(address_from, ipr.get_addr()) if a is not None]
        messages = list(ipr.get_routes(family=socket.AF_INET, table=_MAIN_TABLE))
        messages += ipr.get_routes(family=socket.AF_INET6, table=_MAIN_TABLE)
        routes = [r for r in map(route_from, messages) if r is not None]
        return links, addresses, routes


def open_events() -> Any:
    """Worker thread: a non-blocking ``IPRSocket`` subscribed to :data:`EVENT_GROUPS`."""
    sock = IPRSocket()
    try:
        sock.bind(groups=EVENT_GROUPS)
        sock.socket.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def drain(sock: Any) -> list[Change] | None:
    """Every change the event socket holds now (it never blocks), or None when the
    kernel dropped events (ENOBUFS): then only a new socket and a dump tell the
    state. Raises any other OSError."""
    changes: list[Change] = []
    while True:
        try:
            messages = sock.get()
        except BlockingIOError:
            return changes
        except OSError as e:
            if e.errno != errno.ENOBUFS:
                raise
            return None
        changes += filter(None, map(parse, messages))


def remove_addresses(removals: Sequence[tuple[str, IPInterface]]) -> None:
    """Worker thread: take addresses off links (by link name); gone ones are fine."""
    with IPRoute() as ipr:
        for name, address in removals:
            indexes = ipr.link_lookup(ifname=name)
            if indexes:
                with contextlib.suppress(NetlinkError):  # already gone
                    ipr.addr(
                        "del",
                        index=indexes[0],
                        address=str(address.ip),
                        prefixlen=address.network.prefixlen,
                    )


# --- configuring ---------------------------------------------------------------------------


def reason(e: BaseException) -> str:
    """A person's words for a netlink or OS error."""
    code = error_code(e)
    if code:
        return os.strerror(code).lower()
    return str(e) or type(e).__name__


def error_code(e: BaseException) -> int | None:
    if isinstance(e, NetlinkError):
        return int(e.code)
    return getattr(e, "errno", None)


@dataclass(frozen=True, slots=True)
class Job:
    """One interface to configure in a batch (``key`` is its position in the spec)."""

    key: int
    iface: Interface
    any_index: int | None  # the link already chosen for an ``is_any`` interface


@dataclass(slots=True)
class BatchResult:
    """Problems per interface key (or ``"lo"``); the link chosen for ``*``, if one was."""

    problems: dict[int | str, list[str]] = field(default_factory=dict)
    any_index: int | None = None


def apply_batch(jobs: Sequence[Job], loopback: bool) -> BatchResult:
    """Worker thread: one ``IPRoute`` for loopback (first) and ``jobs``."""
    with IPRoute() as ipr:
        batch = Batch(ipr)
        if loopback:
            batch.loopback()
        return batch.configure(jobs)


class Batch:
    """The configuration of some interfaces through one ``IPRoute``."""

    def __init__(self, ipr: Any) -> None:
        self.ipr = ipr
        self.result = BatchResult()

    def problem(self, key: int | str, text: str) -> None:
        self.result.problems.setdefault(key, []).append(text)

    def attempt(
        self, key: int | str, what: str, call: Callable[[], Any], *, ok: Iterable[int] = ()
    ) -> bool:
        """Run one netlink call; a failure becomes a problem ``"<what>: <reason>"``."""
        try:
            call()
        except (NetlinkError, OSError) as e:
            if error_code(e) in set(ok):
                return True
            self.problem(key, f"{what}: {reason(e)}")
            return False
        return True

    def links(self) -> list[Link]:
        return [link_from(m) for m in self.ipr.get_links()]

    def link(self, index: int) -> Link:
        (msg,) = self.ipr.get_links(index)
        return link_from(msg)

    def index_of(self, name: str) -> int | None:
        found = self.ipr.link_lookup(ifname=name)
        return int(found[0]) if found else None

    def loopback(self) -> None:
        index = self.index_of("lo")
        if index is None:
            self.problem("lo", "lo: no loopback interface")
            return
        self.attempt("lo", "lo: up", lambda: self.ipr.link("set", index=index, state="up"))

    def configure(self, jobs: Sequence[Job]) -> BatchResult:
        """Links and addresses of ``jobs`` (physical, then bridges, then VLANs), then routes."""
        order = {InterfaceKind.PHYSICAL: 0, InterfaceKind.BRIDGE: 1, InterfaceKind.VLAN: 2}
        placed: list[tuple[Job, int]] = []
        for job in sorted(jobs, key=lambda j: order[j.iface.kind]):
            try:
                index = self._link(job)
            except (NetlinkError, OSError) as e:  # e.g. the link vanished mid-way
                self.problem(job.key, f"{job.iface.label}: {reason(e)}")
                continue
            if index is not None:
                placed.append((job, index))
        for job, index in placed:
            try:
                self._routes(job, index)
            except (NetlinkError, OSError) as e:
                self.problem(job.key, f"{job.iface.label}: {reason(e)}")
        return self.result

    def _resolve(self, job: Job) -> int | None:
        """The index of a physical interface, by name, MAC or "first with carrier"."""
        iface = job.iface
        if iface.name is not None:
            index = self.index_of(iface.name)
            if index is None:
                self.problem(job.key, f"{iface.name}: no such interface (by name)")
            return index
        links = self.links()
        if iface.mac is not None:
            found = by_mac(links, iface.mac)
            if found is None:
                self.problem(job.key, f"{iface.mac}: no interface with this MAC")
                return None
            return found.index
        return self._first_with_carrier(job, links)

    def _first_with_carrier(self, job: Job, links: list[Link]) -> int | None:
        """Like the kernel's ``ip=`` without a device: bring every NIC up, take the first
        with carrier; the choice sticks while that link exists."""
        if job.any_index in {link.index for link in links}:
            return job.any_index
        candidates = sorted((link for link in links if link.is_nic), key=lambda link: link.index)
        for link in candidates:
            if not link.admin_up:
                self.attempt(
                    job.key,
                    f"*: {link.name}: up",
                    partial(self.ipr.link, "set", index=link.index, state="up"),
                )
        if any(not link.admin_up for link in candidates):
            wanted = {link.index for link in candidates}
            candidates = [link for link in self.links() if link.index in wanted]
        for link in candidates:
            if link.carrier:
                self.result.any_index = link.index
                return link.index
        self.problem(job.key, "*: no interface has carrier yet")
        return None

    def _create(self, job: Job) -> int | None:
        """Find or create a bridge or a VLAN; its index."""
        iface = job.iface
        assert iface.name is not None  # netspec: bridges and VLANs have names
        name = iface.name
        index = self.index_of(name)
        if index is not None:
            return index
        if iface.kind is InterfaceKind.BRIDGE:
            created = self.attempt(
                job.key,
                f"{name}: cannot create bridge",
                lambda: self.ipr.link("add", ifname=name, kind="bridge"),
                ok=(errno.EEXIST,),
            )
        else:
            created = self._create_vlan(job, name)
        return self.index_of(name) if created else None

    def _create_vlan(self, job: Job, name: str) -> bool:
        iface = job.iface
        parent_name = iface.vlan_link or ""
        parent = self.index_of(parent_name)
        if parent is None:
            self.problem(job.key, f"{name}: VLAN link {parent_name}: no such interface")
            return False
        try:
            self.ipr.link("add", ifname=name, kind="vlan", link=parent, vlan_id=iface.vlan_id)
        except (NetlinkError, OSError) as e:
            if error_code(e) == errno.EEXIST:
                return True
            cannot = f"{name}: cannot create VLAN {iface.vlan_id} on {parent_name}"
            if error_code(e) == errno.EOPNOTSUPP:
                self.problem(
                    job.key,
                    f"{cannot}: this kernel has no 802.1Q VLAN support (the 8021q module is missing)",
                )
            else:
                self.problem(job.key, f"{cannot}: {reason(e)}")
            return False
        return True

    def _link(self, job: Job) -> int | None:
        """Resolve or create the link and set MTU, ports, addresses and up/down."""
        iface = job.iface
        physical = iface.kind is InterfaceKind.PHYSICAL
        index = self._resolve(job) if physical else self._create(job)
        if index is None:
            return None
        ipr, key = self.ipr, job.key
        link = self.link(index)
        label = iface.label if iface.label == link.name else f"{iface.label} ({link.name})"
        if iface.mtu is not None and link.mtu != iface.mtu:
            self.attempt(
                key,
                f"{label}: mtu {iface.mtu}",
                lambda: ipr.link("set", index=index, mtu=iface.mtu),
            )
        self._ports(job, index, label)
        present = {a for _, a in filter(None, map(address_from, ipr.get_addr(index=index)))}
        for address in iface.addresses:
            if address in present:
                continue
            self.attempt(
                key,
                f"{label}: cannot add address {address}",
                partial(
                    ipr.addr,
                    "add",
                    index=index,
                    address=str(address.ip),
                    prefixlen=address.network.prefixlen,
                ),
                ok=(errno.EEXIST,),
            )
        want_up = iface.up or iface.is_any
        if link.admin_up != want_up:
            state = "up" if want_up else "down"
            self.attempt(
                key, f"{label}: {state}", lambda: ipr.link("set", index=index, state=state)
            )
        return index

    def _ports(self, job: Job, index: int, label: str) -> None:
        """A bridge's ports: each put under the bridge and up."""
        for port in job.iface.bridge_ports:
            port_index = self.index_of(port)
            if port_index is None:
                self.problem(job.key, f"{label}: port {port}: no such interface")
                continue
            port_link = self.link(port_index)
            if port_link.master != index:
                self.attempt(
                    job.key,
                    f"{label}: cannot add port {port}",
                    partial(self.ipr.link, "set", index=port_index, master=index),
                )
            if not port_link.admin_up:
                self.attempt(
                    job.key,
                    f"{label}: port {port}: up",
                    partial(self.ipr.link, "set", index=port_index, state="up"),
                )

    def _routes(self, job: Job, index: int) -> None:
        for route in job.iface.routes:
            what = f"{job.iface.label}: cannot add route {describe_route(route.to, route.via, route.metric)}"
            kwargs: dict[str, Any] = {"dst": str(route.to), "oif": index}
            if route.via is not None:
                kwargs["gateway"] = str(route.via)
            if route.metric is not None:
                kwargs["priority"] = route.metric
            self.attempt(
                job.key,
                what,
                partial(self.ipr.route, "replace", family=_family(route.to), **kwargs),
            )


def _family(network: IPNetwork) -> int:
    return socket.AF_INET if network.version == 4 else socket.AF_INET6
