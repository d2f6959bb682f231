"""The node's network: apply a :class:`~k4sinit.core.netspec.NetworkSpec` and watch it hold.

One :class:`Network` per daemon. Its life::

    await nursery.start(network.watch)   # first netlink dump done: state known
    problems = await network.apply()     # loopback, links, addresses, routes, files
        ... netlink events keep the state; a late NIC or a carrier that returns
            gets its interface's config applied again, without a restart ...

Every netlink change runs in a worker thread (``trio.to_thread.run_sync``), one
``with IPRoute()`` per batch, batches serialised by a ``CapacityLimiter(1)``:
under load one call can hold the kernel's RTNL lock for a second, and the trio
thread must never wait on it. Events come from an ``IPRSocket`` bound to the
link, address and route groups, read without blocking after
``trio.lowlevel.wait_readable``; when the kernel drops events (ENOBUFS) the
socket is reopened and the state dumped afresh.

:class:`Network` is also the built-in ``network`` dependency of the supervisor
(the :class:`k4sinit.supervision.runner.Dependency` protocol): ``Ready`` and ``Started``
both mean :attr:`Network.ready`: every configured interface that should be up
exists, is up, has carrier (physical and VLAN interfaces, and bridges with
ports, when ``wait_for_carrier``), has its static addresses, and its configured
default routes are in the main table.

Nothing here raises for a bad interface: each problem is a line naming the
interface and the reason (``"eth1: no such interface (by name)"``), returned by
:meth:`Network.apply`, logged, shown in :meth:`Network.snapshot` and retried
when a link appears.

DHCP: :meth:`Network.run` (the daemon's entry: watch, apply, DHCP) runs one
:class:`~k4sinit.network.dhcp.DHCPClient` per DHCP interface once its link exists. A
lease becomes part of that interface's effective config (its address, a
default route via the router at metric 1024 unless one is configured, its DNS
after the configured DNS, its MTU unless one is configured), applied like the
rest; a DHCP interface is ready only with a lease. A lost lease removes its
address; the client keeps asking. Cancelling :meth:`Network.run` releases
the leases.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from ipaddress import ip_address, ip_interface, ip_network
from pathlib import Path
from typing import Any, TypedDict

import trio
from pyroute2 import IPRoute, IPRSocket
from pyroute2.netlink import rtnl
from pyroute2.netlink.exceptions import NetlinkError

from k4sinit.core.netspec import (
    DEFAULT_V4,
    DNS,
    Interface,
    InterfaceKind,
    IPAddress,
    IPInterface,
    IPNetwork,
    NetworkSpec,
    Route,
)
from k4sinit.core.spec import NETWORK, Condition
from k4sinit.network.dhcp import DHCPClient, Lease

__all__ = ["EVENT_GROUPS", "Network", "render_hosts", "render_resolv_conf"]

EVENT_GROUPS = (
    rtnl.RTMGRP_LINK
    | rtnl.RTMGRP_IPV4_IFADDR
    | rtnl.RTMGRP_IPV6_IFADDR
    | rtnl.RTMGRP_IPV4_ROUTE
    | rtnl.RTMGRP_IPV6_ROUTE
)
EVENT_HISTORY = 64
DHCP_ROUTE_METRIC = 1024  # a lease's default route yields to any configured one

_IFF_UP = 0x1
_IFF_LOOPBACK = 0x8
_IFF_LOWER_UP = 0x10000
_MAIN_TABLE = 254
_RTN_UNICAST = 1
_NLM_F_REPLACE = 0x100
_AF_BRIDGE = 7
# Links that copy the MAC of another (so a MAC names the other) or are made, not found.
_NOT_BY_MAC = frozenset({"bridge", "vlan", "bond", "team", "macvlan", "macvtap", "ipvlan"})
_VIRTUAL = _NOT_BY_MAC | {"dummy", "vxlan", "tun", "tuntap", "wireguard", "gre", "ipip", "sit"}


# --- status: the wire form (control.py's NetworkReply and StatusReply hold it) ------


class InterfaceSnapshot(TypedDict):
    """One link the kernel has; ``configured``: the config's label for it, if any."""

    index: int
    configured: str | None
    state: str  # operstate, lower case: up, down, unknown, ...
    up: bool
    carrier: bool
    mtu: int
    mac: str  # empty for a link without one
    kind: str | None
    master: str | None
    addresses: list[str]
    routes: list[str]


class NetworkSnapshot(TypedDict):
    ready: bool
    reason: str
    source: str  # netspec.Source value: where the network config came from
    problems: list[str]
    applying: list[str]  # interfaces being applied again, or about to be
    interfaces: dict[str, InterfaceSnapshot]


# --- the kernel's state, as the events tell it ---------------------------------------


@dataclass(slots=True)
class _Link:
    index: int
    name: str
    mac: str
    kind: str | None
    flags: int
    operstate: str
    mtu: int
    master: int | None
    addresses: set[IPInterface] = field(default_factory=set)

    @property
    def admin_up(self) -> bool:
        return bool(self.flags & _IFF_UP)

    @property
    def carrier(self) -> bool:
        return bool(self.flags & _IFF_LOWER_UP)


@dataclass(frozen=True, slots=True)
class _KernelRoute:
    """A route of the main table, as far as the network condition cares."""

    to: IPNetwork
    via: IPAddress | None
    oif: int
    metric: int

    def __str__(self) -> str:
        to = "default" if self.to.prefixlen == 0 else str(self.to)
        via = f" via {self.via}" if self.via is not None else ""
        return f"{to}{via} metric {self.metric}"


def _link_from(msg: Any) -> _Link:
    return _Link(
        index=msg["index"],
        name=msg.get("ifname") or f"if{msg['index']}",
        mac=(msg.get("address") or "").lower(),
        kind=msg.get(("linkinfo", "kind")),
        flags=msg["flags"],
        operstate=msg.get("operstate") or "UNKNOWN",
        mtu=msg.get("mtu") or 0,
        master=msg.get("master"),
    )


def _address_from(msg: Any) -> tuple[int, IPInterface] | None:
    text = msg.get("local") or msg.get("address")
    if text is None:
        return None
    return msg["index"], ip_interface(f"{text}/{msg['prefixlen']}")


def _route_from(msg: Any) -> _KernelRoute | None:
    """The route in ``msg`` if it is a unicast route of the main table through one link."""
    table = msg.get("table")
    oif = msg.get("oif")
    if table != _MAIN_TABLE or msg["type"] != _RTN_UNICAST or oif is None:
        return None
    zero = "0.0.0.0" if msg["family"] == socket.AF_INET else "::"
    gateway = msg.get("gateway")
    default_metric = 0 if msg["family"] == socket.AF_INET else 1024
    return _KernelRoute(
        to=ip_network(f"{msg.get('dst') or zero}/{msg['dst_len']}", strict=False),
        via=ip_address(gateway) if gateway else None,
        oif=oif,
        metric=msg.get("priority") or default_metric,
    )


# --- netlink batches (worker threads only; they touch no Network state) -----------------


def _reason(e: BaseException) -> str:
    """A person's words for a netlink or OS error."""
    code = e.code if isinstance(e, NetlinkError) else getattr(e, "errno", None)
    if code:
        return os.strerror(code).lower()
    return str(e) or type(e).__name__


def _error_code(e: BaseException) -> int | None:
    if isinstance(e, NetlinkError):
        return int(e.code)
    return getattr(e, "errno", None)


@dataclass(frozen=True, slots=True)
class _Job:
    """One interface to configure in a batch (``key`` is its position in the spec)."""

    key: int
    iface: Interface
    any_index: int | None  # the link already chosen for an ``is_any`` interface


@dataclass(slots=True)
class _BatchResult:
    problems: dict[int | str, list[str]] = field(default_factory=dict)
    any_index: int | None = None


class _Batch:
    """The configuration of some interfaces through one ``IPRoute``."""

    def __init__(self, ipr: Any) -> None:
        self.ipr = ipr
        self.result = _BatchResult()

    def problem(self, key: int | str, text: str) -> None:
        self.result.problems.setdefault(key, []).append(text)

    def attempt(
        self, key: int | str, what: str, call: Callable[[], Any], *, ok: Iterable[int] = ()
    ) -> bool:
        """Run one netlink call; a failure becomes a problem ``"<what>: <reason>"``."""
        try:
            call()
        except (NetlinkError, OSError) as e:
            if _error_code(e) in set(ok):
                return True
            self.problem(key, f"{what}: {_reason(e)}")
            return False
        return True

    def links(self) -> list[Any]:
        return list(self.ipr.get_links())

    def index_of(self, name: str) -> int | None:
        found = self.ipr.link_lookup(ifname=name)
        return int(found[0]) if found else None

    def loopback(self) -> None:
        index = self.index_of("lo")
        if index is None:
            self.problem("lo", "lo: no loopback interface")
            return
        self.attempt("lo", "lo: up", lambda: self.ipr.link("set", index=index, state="up"))

    def configure(self, jobs: Sequence[_Job]) -> _BatchResult:
        """Links and addresses of ``jobs`` (physical, then bridges, then VLANs), then routes."""
        order = {InterfaceKind.PHYSICAL: 0, InterfaceKind.BRIDGE: 1, InterfaceKind.VLAN: 2}
        placed: list[tuple[_Job, int]] = []
        for job in sorted(jobs, key=lambda j: order[j.iface.kind]):
            try:
                index = self._link(job)
            except (NetlinkError, OSError) as e:  # e.g. the link vanished mid-way
                self.problem(job.key, f"{job.iface.label}: {_reason(e)}")
                continue
            if index is not None:
                placed.append((job, index))
        for job, index in placed:
            try:
                self._routes(job, index)
            except (NetlinkError, OSError) as e:
                self.problem(job.key, f"{job.iface.label}: {_reason(e)}")
        return self.result

    def _resolve(self, job: _Job) -> int | None:
        """The index of a physical interface, by name, MAC or "first with carrier"."""
        iface = job.iface
        if iface.name is not None:
            index = self.index_of(iface.name)
            if index is None:
                self.problem(job.key, f"{iface.name}: no such interface (by name)")
            return index
        links = self.links()
        if iface.mac is not None:
            matches = [
                m["index"]
                for m in links
                if (m.get("address") or "").lower() == iface.mac
                and m.get(("linkinfo", "kind")) not in _NOT_BY_MAC
            ]
            if not matches:
                self.problem(job.key, f"{iface.mac}: no interface with this MAC")
                return None
            return int(min(matches))
        return self._first_with_carrier(job, links)

    def _first_with_carrier(self, job: _Job, links: list[Any]) -> int | None:
        """Like the kernel's ``ip=`` without a device: bring every NIC up, take the first
        with carrier; the choice sticks while that link exists."""
        present = {m["index"] for m in links}
        if job.any_index in present:
            return job.any_index
        candidates = [
            m
            for m in sorted(links, key=lambda m: m["index"])
            if not m["flags"] & _IFF_LOOPBACK and m.get(("linkinfo", "kind")) not in _VIRTUAL
        ]
        for m in candidates:
            if not m["flags"] & _IFF_UP:
                name = m.get("ifname")
                self.attempt(
                    job.key,
                    f"*: {name}: up",
                    partial(self.ipr.link, "set", index=m["index"], state="up"),
                )
        if any(not m["flags"] & _IFF_UP for m in candidates):
            candidates = [m for m in self.links() if m["index"] in {c["index"] for c in candidates}]
        for m in candidates:
            if m["flags"] & _IFF_LOWER_UP:
                self.result.any_index = int(m["index"])
                return self.result.any_index
        self.problem(job.key, "*: no interface has carrier yet")
        return None

    def _create(self, job: _Job) -> int | None:
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
            parent_name = iface.vlan_link or ""
            parent = self.index_of(parent_name)
            if parent is None:
                self.problem(job.key, f"{name}: VLAN link {parent_name}: no such interface")
                return None
            try:
                self.ipr.link("add", ifname=name, kind="vlan", link=parent, vlan_id=iface.vlan_id)
                created = True
            except (NetlinkError, OSError) as e:
                created = _error_code(e) == errno.EEXIST
                if _error_code(e) == errno.EOPNOTSUPP:
                    self.problem(
                        job.key,
                        f"{name}: cannot create VLAN {iface.vlan_id} on {parent_name}: this "
                        "kernel has no 802.1Q VLAN support (the 8021q module is missing)",
                    )
                elif not created:
                    self.problem(
                        job.key,
                        f"{name}: cannot create VLAN {iface.vlan_id} on {parent_name}: {_reason(e)}",
                    )
        return self.index_of(name) if created else None

    def _link(self, job: _Job) -> int | None:
        """Resolve or create the link and set MTU, ports, addresses and up/down."""
        iface = job.iface
        physical = iface.kind is InterfaceKind.PHYSICAL
        index = self._resolve(job) if physical else self._create(job)
        if index is None:
            return None
        ipr, key = self.ipr, job.key
        (msg,) = ipr.get_links(index)
        label = (
            iface.label
            if iface.label == msg.get("ifname")
            else f"{iface.label} ({msg.get('ifname')})"
        )
        if iface.mtu is not None and msg.get("mtu") != iface.mtu:
            self.attempt(
                key,
                f"{label}: mtu {iface.mtu}",
                lambda: ipr.link("set", index=index, mtu=iface.mtu),
            )
        for port in iface.bridge_ports:
            port_index = self.index_of(port)
            if port_index is None:
                self.problem(key, f"{label}: port {port}: no such interface")
                continue
            (port_msg,) = ipr.get_links(port_index)
            if port_msg.get("master") != index:
                self.attempt(
                    key,
                    f"{label}: cannot add port {port}",
                    partial(ipr.link, "set", index=port_index, master=index),
                )
            if not port_msg["flags"] & _IFF_UP:
                self.attempt(
                    key,
                    f"{label}: port {port}: up",
                    partial(ipr.link, "set", index=port_index, state="up"),
                )
        present = {a for _, a in filter(None, map(_address_from, ipr.get_addr(index=index)))}
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
        if bool(msg["flags"] & _IFF_UP) != want_up:
            state = "up" if want_up else "down"
            self.attempt(
                key, f"{label}: {state}", lambda: ipr.link("set", index=index, state=state)
            )
        return index

    def _routes(self, job: _Job, index: int) -> None:
        for route in job.iface.routes:
            what = f"{job.iface.label}: cannot add route {_describe(route.to, route.via, route.metric)}"
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


def _describe(to: IPNetwork, via: IPAddress | None, metric: int | None) -> str:
    text = "default" if to.prefixlen == 0 else str(to)
    if via is not None:
        text += f" via {via}"
    if metric is not None:
        text += f" metric {metric}"
    return text


def _apply_batch(jobs: Sequence[_Job], loopback: bool) -> _BatchResult:
    """Worker thread: one ``IPRoute`` for loopback (first) and ``jobs``."""
    with IPRoute() as ipr:
        batch = _Batch(ipr)
        if loopback:
            batch.loopback()
        return batch.configure(jobs)


def _remove_addresses(removals: Sequence[tuple[str, IPInterface]]) -> None:
    """Worker thread: take lease addresses that are no longer ours off their links."""
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


def _dump() -> tuple[list[Any], list[Any], list[Any]]:
    """Worker thread: links, addresses and routes (both families) as the kernel has them."""
    with IPRoute() as ipr:
        links = list(ipr.get_links())
        addresses = list(ipr.get_addr())
        routes = list(ipr.get_routes(family=socket.AF_INET, table=_MAIN_TABLE))
        routes += list(ipr.get_routes(family=socket.AF_INET6, table=_MAIN_TABLE))
        return links, addresses, routes


def _open_events() -> Any:
    """Worker thread: a non-blocking ``IPRSocket`` subscribed to :data:`EVENT_GROUPS`."""
    sock = IPRSocket()
    try:
        sock.bind(groups=EVENT_GROUPS)
        sock.socket.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


# --- files -------------------------------------------------------------------------


def render_resolv_conf(nameservers: Sequence[IPAddress], search: Sequence[str]) -> str:
    """The text of /etc/resolv.conf for these servers and search domains."""
    lines = ["# written by k4sinit"]
    lines += [f"nameserver {server}" for server in nameservers]
    if search:
        lines.append("search " + " ".join(search))
    return "\n".join(lines) + "\n"


def render_hosts(hostname: str, address: IPAddress | None) -> str:
    """The text of /etc/hosts: localhost, and the node's name on ``address``
    (127.0.1.1, as Debian does, when the node has no static address)."""
    names = hostname if "." not in hostname else f"{hostname} {hostname.split('.', 1)[0]}"
    return (
        "# written by k4sinit\n"
        "127.0.0.1\tlocalhost\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
        f"{address if address is not None else '127.0.1.1'}\t{names}\n"
    )


def _write_if_changed(path: Path, text: str) -> bool:
    """Worker thread: replace ``path`` atomically unless it already holds ``text``."""
    try:
        if path.read_text() == text:
            return False
    except OSError:
        pass
    temporary = path.with_name(f".{path.name}.k4sinit")
    temporary.write_text(text)
    os.replace(temporary, path)
    return True


_View = tuple[dict[int, tuple[int | None, bool]], set[int], set[int]]


# --- the Network ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NetworkEvent:
    """One change of readiness, kept in :attr:`Network.events`."""

    time: float  # wall clock, for people
    ready: bool
    reason: str


class Network:
    """The node's network; see the module docstring.

    ``hostname`` is the node's name for /etc/hosts (default: the spec's ``ip=``
    hostname, else the kernel's). ``resolv_conf`` / ``hosts``: where those files
    go; None writes none.
    """

    name = NETWORK

    def __init__(
        self,
        spec: NetworkSpec,
        log: Any,
        *,
        hostname: str | None = None,
        resolv_conf: Path | None = Path("/etc/resolv.conf"),
        hosts: Path | None = Path("/etc/hosts"),
        lease_dir: Path = Path("/run/k4sinit/dhcp"),
        on_dhcp_hostname: Callable[[str], None] | None = None,
    ) -> None:
        """``on_dhcp_hostname`` is called with a lease's host name (PID 1 passes it
        when neither the config nor the kernel names the node)."""
        self.spec = spec
        self._lease_dir = lease_dir
        self._on_dhcp_hostname = on_dhcp_hostname
        self._leases: dict[int, Lease] = {}  # interface (spec position) -> its lease
        self._dhcp_reason: dict[int, str] = {}
        self._log = log.bind(service=NETWORK)
        self._hostname = hostname or spec.hostname or os.uname().nodename
        self._resolv_conf = resolv_conf
        self._hosts = hosts
        self._netlink = trio.CapacityLimiter(1)
        # What the kernel has, kept by watch() from its dump and events.
        self._known = False
        self._links: dict[int, _Link] = {}
        self._routes: set[_KernelRoute] = set()
        self._any_index: int | None = None  # the link an ``is_any`` interface runs on
        # Problems from the last application, per interface (spec position) or "lo"/"files".
        self._problems: dict[int | str, list[str]] = {}
        self._dhcp_dns = DNS()
        self._removals: list[tuple[str, IPInterface]] = []  # lease addresses to take away
        self._pending: set[int] = set()  # interfaces the watcher applies again
        self._applying: set[int] = set()  # ... and those it is applying now
        self._pending_added = trio.Event()
        # The one record of readiness, changed only through _publish.
        self.ready = False
        self.reason = "network state not known yet (not watching)"
        self.events: deque[NetworkEvent] = deque(maxlen=EVENT_HISTORY)
        self._last_snapshot: NetworkSnapshot | None = None
        self._changed = trio.Event()

    # --- applying -----------------------------------------------------------------

    async def apply(self) -> list[str]:
        """Loopback up, then every configured interface, routes, /etc/resolv.conf and
        /etc/hosts. Returns the problems (also logged); raises nothing for a bad
        interface. Interfaces that could not be found are applied again by
        :meth:`watch` when they appear. Cancellation waits for the running
        netlink batch to end (a batch is short)."""
        jobs = [self._job(key) for key in range(len(self.spec.interfaces))]
        problems = await self._apply(jobs, loopback=True)
        problems += await self._write_files()
        return problems

    def _job(self, key: int) -> _Job:
        return _Job(key, self._effective(key), self._any_index)

    def _effective(self, key: int) -> Interface:
        """Interface ``key`` as configured, plus what its DHCP lease gives."""
        iface = self.spec.interfaces[key]
        lease = self._leases.get(key)
        if lease is None:
            return iface
        routes = iface.routes
        if lease.router is not None and not any(r.to == DEFAULT_V4 for r in routes):
            routes += (Route(DEFAULT_V4, lease.router, DHCP_ROUTE_METRIC),)
        return replace(
            iface,
            addresses=(*iface.addresses, lease.address),
            routes=routes,
            mtu=iface.mtu or lease.mtu,
        )

    # --- the daemon's entry: watch, apply, DHCP ---------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch, apply, then keep a DHCP client per DHCP interface. ``started()``
        once the configuration has been applied (not once it is ready: services
        that need it say so with ``dependsOn: {network: Ready}``). Until cancelled."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.watch)
            await self.apply()
            for key, iface in enumerate(self.spec.interfaces):
                if iface.dhcp:
                    nursery.start_soon(self._run_dhcp, key, name=f"dhcp {iface.label}")
            task_status.started()

    async def _run_dhcp(self, key: int) -> None:
        iface = self.spec.interfaces[key]
        self._dhcp_reason[key] = "waiting for the link"
        while (link := self._find(iface)) is None:
            await self.changed()
        client = DHCPClient(
            link.name,
            on_lease=lambda lease: self._lease_granted(key, lease),
            on_lost=lambda reason: self._lease_lost(key, reason),
            on_error=lambda reason: self._dhcp_problem(key, reason),
            lease_dir=self._lease_dir,
        )
        self._dhcp_reason[key] = "asking"
        self._publish()
        await client.run()

    def _lease_granted(self, key: int, lease: Lease) -> None:
        old = self._leases.get(key)
        self._leases[key] = lease
        self._dhcp_reason.pop(key, None)
        self._log.info(
            "lease",
            interface=lease.interface,
            address=str(lease.address),
            router=str(lease.router),
            seconds=lease.lease_seconds,
        )
        if old is not None and old.address != lease.address:
            self._removals.append((lease.interface, old.address))
        self._dns_from_leases()
        if lease.hostname and self._on_dhcp_hostname is not None:
            self._on_dhcp_hostname(lease.hostname)
        self._request({key})

    def _lease_lost(self, key: int, reason: str) -> None:
        lease = self._leases.pop(key, None)
        self._dhcp_reason[key] = reason
        self._log.warning("lease lost", reason=reason)
        if lease is not None:
            self._removals.append((lease.interface, lease.address))
            self._dns_from_leases()
            self._request({key})

    def _dhcp_problem(self, key: int, reason: str) -> None:
        self._dhcp_reason[key] = reason
        self._log.warning("dhcp", reason=reason)
        self._publish()

    def _dns_from_leases(self) -> None:
        leases = list(self._leases.values())
        nameservers = tuple(dict.fromkeys(s for lease in leases for s in lease.dns))
        search = tuple(
            dict.fromkeys(
                d
                for lease in leases
                for d in ((lease.domain,) if lease.domain else ()) + lease.search
            )
        )
        self._dhcp_dns = DNS(nameservers, search)

    async def _apply(self, jobs: Sequence[_Job], *, loopback: bool) -> list[str]:
        result = await trio.to_thread.run_sync(_apply_batch, jobs, loopback, limiter=self._netlink)
        if result.any_index is not None and self._any_index != result.any_index:
            self._any_index = result.any_index
            self._log.info(
                "interface chosen", interface="*", link=self._link_name(result.any_index)
            )
        keys: list[int | str] = [job.key for job in jobs] + (["lo"] if loopback else [])
        problems: list[str] = []
        for key in keys:
            found = result.problems.get(key, [])
            if found:
                self._problems[key] = found
            else:
                self._problems.pop(key, None)
            problems += found
        for text in problems:
            self._log.warning("network problem", problem=text)
        self._publish()
        return problems

    async def _write_files(self) -> list[str]:
        dns = self.spec.dns
        nameservers = dns.nameservers + tuple(
            s for s in self._dhcp_dns.nameservers if s not in dns.nameservers
        )
        search = dns.search + tuple(s for s in self._dhcp_dns.search if s not in dns.search)
        writes: list[tuple[Path, str]] = []
        if self._resolv_conf is not None and (nameservers or search):
            writes.append((self._resolv_conf, render_resolv_conf(nameservers, search)))
        if self._hosts is not None:
            writes.append((self._hosts, render_hosts(self._hostname, self._node_address())))
        problems: list[str] = []
        for path, text in writes:
            try:
                if await trio.to_thread.run_sync(_write_if_changed, path, text):
                    self._log.info("written", path=str(path))
            except OSError as e:
                problems.append(f"{path}: cannot write: {e.strerror or e}")
        if problems:
            self._problems["files"] = problems
            for text in problems:
                self._log.warning("network problem", problem=text)
        else:
            self._problems.pop("files", None)
        self._publish()
        return problems

    def node_addresses(self) -> tuple[IPAddress, ...]:
        """The node's addresses now: on its configured interfaces, IPv4 first, no link-local.

        What the apiserver certificate names and advertises (empty: loopback only).
        """
        found: list[IPAddress] = []
        for key in range(len(self.spec.interfaces)):
            link = self._find(self.spec.interfaces[key])
            if link is None:
                continue
            found += [
                a.ip for a in link.addresses if not a.ip.is_link_local and not a.ip.is_loopback
            ]
        return tuple(sorted(dict.fromkeys(found), key=lambda a: a.version))

    def _node_address(self) -> IPAddress | None:
        """The node's first address (static, then leased; IPv4 first) for /etc/hosts."""
        effective = [self._effective(k) for k in range(len(self.spec.interfaces))]
        addresses = [a.ip for iface in effective if iface.up for a in iface.addresses]
        addresses.sort(key=lambda a: a.version)
        return addresses[0] if addresses else None

    # --- watching -----------------------------------------------------------------

    async def watch(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the kernel's state from netlink events; apply an interface's config
        again when it appears or its carrier returns. ``started()`` after the
        first dump. Runs until cancelled; on ENOBUFS it reopens and dumps again."""
        async with trio.open_nursery() as nursery:
            first = True
            while True:
                sock = await trio.to_thread.run_sync(_open_events)
                try:
                    await self._load_dump()
                    # Interfaces whose last application failed may have appeared
                    # before this dump, unseen by any event; after lost events,
                    # anything may have changed.
                    again = (
                        {k for k in self._problems if isinstance(k, int)}
                        if first
                        else set(range(len(self.spec.interfaces)))
                    )
                    self._request(again)
                    if first:
                        nursery.start_soon(self._reapply_loop)
                        task_status.started()
                        first = False
                    await self._read_events(sock)
                finally:
                    sock.close()

    async def _read_events(self, sock: Any) -> None:
        """Process events until the kernel drops some (ENOBUFS): then return."""
        while True:
            await trio.lowlevel.wait_readable(sock.fileno())
            before = self._view()
            resync = False
            while True:
                try:
                    messages = sock.get()
                except BlockingIOError:
                    break
                except OSError as e:
                    if e.errno != errno.ENOBUFS:
                        raise
                    self._log.warning("netlink events lost (ENOBUFS): reopening and dumping")
                    return
                for msg in messages:
                    resync |= self._on_message(msg)
            if resync:
                # The kernel flushes IPv4 routes without telling (a link set down,
                # an address removed): ask it what is left.
                await self._load_dump()
            self._after_events(before)

    async def _load_dump(self) -> None:
        links, addresses, routes = await trio.to_thread.run_sync(_dump, limiter=self._netlink)
        self._links = {}
        self._routes = set()
        for msg in links:
            self._on_link(msg, deleted=False)
        for msg in addresses:
            self._on_address(msg, deleted=False)
        for msg in routes:
            self._on_route(msg, deleted=False)
        self._known = True
        if self._any_index not in self._links:
            self._any_index = None
        self._publish()

    def _on_message(self, msg: Any) -> bool:
        """Update the state from one event; True if the routes must be dumped again."""
        kind = msg["header"]["type"]
        if kind in (rtnl.RTM_NEWLINK, rtnl.RTM_DELLINK):
            if msg.get("family") == _AF_BRIDGE:  # bridge port details, not a link change
                return False
            deleted = kind == rtnl.RTM_DELLINK
            old = self._links.get(msg["index"])
            self._on_link(msg, deleted=deleted)
            new = self._links.get(msg["index"])
            return deleted or (old is not None and new is not None and old.admin_up != new.admin_up)
        if kind in (rtnl.RTM_NEWADDR, rtnl.RTM_DELADDR):
            self._on_address(msg, deleted=kind == rtnl.RTM_DELADDR)
            return bool(kind == rtnl.RTM_DELADDR and msg.get("family") == socket.AF_INET)
        if kind in (rtnl.RTM_NEWROUTE, rtnl.RTM_DELROUTE):
            self._on_route(msg, deleted=kind == rtnl.RTM_DELROUTE)
        return False

    def _on_link(self, msg: Any, *, deleted: bool) -> None:
        index = msg["index"]
        if deleted:
            self._links.pop(index, None)
            self._routes = {r for r in self._routes if r.oif != index}
            if self._any_index == index:
                self._any_index = None
            return
        link = _link_from(msg)
        old = self._links.get(index)
        if old is not None:
            link.addresses = old.addresses
            if (old.carrier, old.admin_up) != (link.carrier, link.admin_up):
                self._log.info("link", interface=link.name, up=link.admin_up, carrier=link.carrier)
        self._links[index] = link

    def _on_address(self, msg: Any, *, deleted: bool) -> None:
        parsed = _address_from(msg)
        if parsed is None or parsed[0] not in self._links:
            return
        index, address = parsed
        if deleted:
            self._links[index].addresses.discard(address)
        else:
            self._links[index].addresses.add(address)

    def _on_route(self, msg: Any, *, deleted: bool) -> None:
        route = _route_from(msg)
        if route is None:
            return
        if deleted:
            self._routes.discard(route)
            return
        if msg["header"]["flags"] & _NLM_F_REPLACE:
            self._routes = {r for r in self._routes if (r.to, r.metric) != (route.to, route.metric)}
        self._routes.add(route)

    def _view(self) -> _View:
        """What the triggers compare: each interface's link and carrier, the links
        there are, and the NICs with carrier (the candidates for ``is_any``)."""
        per_interface: dict[int, tuple[int | None, bool]] = {}
        for key, iface in enumerate(self.spec.interfaces):
            link = self._find(iface)
            per_interface[key] = (None, False) if link is None else (link.index, link.carrier)
        with_carrier = {
            link.index
            for link in self._links.values()
            if link.carrier and not link.flags & _IFF_LOOPBACK and link.kind not in _VIRTUAL
        }
        return per_interface, set(self._links), with_carrier

    def _after_events(self, before: _View) -> None:
        old, old_links, old_with_carrier = before
        new, new_links, new_with_carrier = self._view()
        appeared = bool(new_links - old_links)
        carrier_came = bool(new_with_carrier - old_with_carrier)
        again: set[int] = set()
        for key, (index, carrier) in new.items():
            old_index, old_carrier = old[key]
            if index is not None and (index != old_index or (carrier and not old_carrier)):
                again.add(key)  # a late interface, or its carrier is back
            elif key in self._problems and appeared:
                again.add(key)  # a port, a VLAN's parent or a MAC may have come
            elif self.spec.interfaces[key].is_any and index is None and carrier_came:
                again.add(key)  # a NIC has carrier now: choose it
        self._request(again)
        self._publish()

    def _request(self, keys: set[int]) -> None:
        if keys - self._pending:
            self._pending |= keys
            self._pending_added.set()

    async def _reapply_loop(self) -> None:
        while True:
            await self._pending_added.wait()
            self._pending_added = trio.Event()
            self._applying, self._pending = self._pending, set()
            labels = [self.spec.interfaces[k].label for k in sorted(self._applying)]
            self._log.info("applying again", interfaces=labels)
            try:
                removals, self._removals = self._removals, []
                if removals:
                    await trio.to_thread.run_sync(
                        _remove_addresses, removals, limiter=self._netlink
                    )
                await self._apply([self._job(k) for k in sorted(self._applying)], loopback=False)
                if any(self.spec.interfaces[k].dhcp for k in self._applying):
                    await self._write_files()
            finally:
                self._applying = set()
            self._publish()

    # --- readiness: the supervisor's Dependency -----------------------------------------

    def satisfies(self, condition: Condition) -> bool:
        """``Ready`` and ``Started`` both mean :attr:`ready`; ``Completed`` never holds."""
        return condition is not Condition.COMPLETED and self.ready

    def unmet_reason(self, condition: Condition) -> str:
        if condition is Condition.COMPLETED:
            return "the network is a condition that never completes (use Ready)"
        return self.reason

    async def changed(self) -> None:
        """Return at the next change of readiness or of the network's state."""
        await self._changed.wait()

    def _find(self, iface: Interface) -> _Link | None:
        """The link ``iface`` is on now, from the watched state."""
        if iface.name is not None:
            return next((link for link in self._links.values() if link.name == iface.name), None)
        if iface.mac is not None:
            matches = [
                link
                for link in self._links.values()
                if link.mac == iface.mac and link.kind not in _NOT_BY_MAC
            ]
            return min(matches, key=lambda link: link.index) if matches else None
        return self._links.get(self._any_index) if self._any_index is not None else None

    def _link_name(self, index: int) -> str:
        link = self._links.get(index)
        return link.name if link is not None else f"if{index}"

    def _evaluate(self) -> tuple[bool, str]:
        if not self._known:
            return False, "network state not known yet (not watching)"
        for key in range(len(self.spec.interfaces)):
            iface = self._effective(key)
            if not iface.up:
                continue
            link = self._find(iface)
            if link is None:
                if iface.mac is not None:
                    return False, f"{iface.mac}: no interface with this MAC"
                if iface.is_any:
                    return False, "*: no interface with carrier chosen yet"
                return False, f"{iface.label}: no such interface"
            label = iface.label if iface.label == link.name else f"{iface.label} ({link.name})"
            if not link.admin_up:
                return False, f"{label}: down"
            needs_carrier = self.spec.wait_for_carrier and (
                iface.kind is not InterfaceKind.BRIDGE or bool(iface.bridge_ports)
            )
            if needs_carrier and not link.carrier:
                return False, f"{label}: no carrier"
            for address in iface.addresses:
                if address not in link.addresses:
                    return False, f"{label}: address {address} missing"
            for route in iface.routes:
                if route.is_default and not any(
                    r.to == route.to
                    and r.via == route.via
                    and r.oif == link.index
                    and (route.metric is None or r.metric == route.metric)
                    for r in self._routes
                ):
                    return (
                        False,
                        f"{label}: route {_describe(route.to, route.via, route.metric)} missing",
                    )
            if iface.dhcp and key not in self._leases:
                return (
                    False,
                    f"{label}: no DHCP lease ({self._dhcp_reason.get(key, 'not asked yet')})",
                )
        return True, ""

    def _publish(self) -> None:
        """The one path for changes: recompute readiness, record and log it, and wake
        :meth:`changed` waiters if readiness or the state shown changed."""
        ready, reason = self._evaluate()
        if (ready, reason) != (self.ready, self.reason):
            self.ready, self.reason = ready, reason
            self.events.append(NetworkEvent(time.time(), ready, reason))
            self._log.info("network readiness", ready=ready, reason=reason)
        snapshot = self._build_snapshot()
        if snapshot != self._last_snapshot:
            self._last_snapshot = snapshot
            self._changed.set()
            self._changed = trio.Event()

    # --- status ---------------------------------------------------------------------

    def snapshot(self) -> NetworkSnapshot:
        """For ``k4sinit status network``: readiness, problems, and each link the
        kernel has (state, carrier, MTU, MAC, addresses, main-table routes). A
        fresh copy: changing it changes nothing here."""
        return self._build_snapshot()

    def _build_snapshot(self) -> NetworkSnapshot:
        configured: dict[int, str] = {}
        for iface in self.spec.interfaces:
            link = self._find(iface)
            if link is not None:
                configured[link.index] = iface.label
        interfaces: dict[str, InterfaceSnapshot] = {}
        for link in sorted(self._links.values(), key=lambda link: link.index):
            routes = sorted(
                (r for r in self._routes if r.oif == link.index),
                key=lambda r: (r.to.version, r.to.prefixlen, str(r.to), r.metric),
            )
            interfaces[link.name] = {
                "index": link.index,
                "configured": configured.get(link.index),
                "state": link.operstate.lower(),
                "up": link.admin_up,
                "carrier": link.carrier,
                "mtu": link.mtu,
                "mac": link.mac,
                "kind": link.kind,
                "master": self._link_name(link.master) if link.master else None,
                "addresses": [str(a) for a in sorted(link.addresses, key=lambda a: (a.version, a))],
                "routes": [str(r) for r in routes],
            }
        return {
            "ready": self.ready,
            "reason": self.reason,
            "source": self.spec.source.value,
            "problems": [text for texts in self._problems.values() for text in texts],
            # Interfaces the watcher is applying again, or is about to.
            "applying": [
                self.spec.interfaces[k].label for k in sorted(self._pending | self._applying)
            ],
            "interfaces": interfaces,
        }
