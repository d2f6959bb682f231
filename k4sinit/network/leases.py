"""DHCP leases as part of the configuration: what each lease adds to its interface.

A lease becomes part of its interface's effective config (:meth:`Leases.effective`):
its address, a default route via the router at :data:`DHCP_ROUTE_METRIC` unless
one is configured, its MTU unless one is configured. Its DNS servers and domains
go into /etc/resolv.conf after the configured ones (:meth:`Leases.dns`). A lease
that is lost or replaced by one with another address leaves its old address to
be taken off the link (:meth:`Leases.take_removals`).

Interfaces are keyed by their position in the spec, as everywhere in the network.
Bookkeeping only, no I/O: the network calls these from its DHCP clients' callbacks.
"""

from __future__ import annotations

from dataclasses import replace

from k4sinit.core.netspec import DEFAULT_V4, DNS, Interface, IPInterface, Route
from k4sinit.network.dhcp import Lease

DHCP_ROUTE_METRIC = 1024  # a lease's default route yields to any configured one


class Leases:
    """The lease of each DHCP interface, or why it has none."""

    def __init__(self) -> None:
        self._leases: dict[int, Lease] = {}
        self._reasons: dict[int, str] = {}
        self._removals: list[tuple[str, IPInterface]] = []  # (link name, address)

    def granted(self, key: int, lease: Lease) -> None:
        """Interface ``key`` holds ``lease`` now (new, renewed or rebound)."""
        old = self._leases.get(key)
        self._leases[key] = lease
        self._reasons.pop(key, None)
        if old is not None and old.address != lease.address:
            self._removals.append((lease.interface, old.address))

    def lost(self, key: int, reason: str) -> Lease | None:
        """Interface ``key`` has no lease any more (``reason`` why); the lease it had."""
        lease = self._leases.pop(key, None)
        self._reasons[key] = reason
        if lease is not None:
            self._removals.append((lease.interface, lease.address))
        return lease

    def waiting(self, key: int, reason: str) -> None:
        """Why interface ``key`` has no lease yet (``"asking"``, a failed attempt, ...)."""
        self._reasons[key] = reason

    def has(self, key: int) -> bool:
        return key in self._leases

    def reason(self, key: int) -> str:
        return self._reasons.get(key, "not asked yet")

    def take_removals(self) -> list[tuple[str, IPInterface]]:
        """The (link name, address) pairs no lease holds any more, once each."""
        removals, self._removals = self._removals, []
        return removals

    def effective(self, key: int, iface: Interface) -> Interface:
        """``iface`` (at ``key``) as configured, plus what its lease gives."""
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

    def dns(self) -> DNS:
        """The servers and domains of all leases (in the order they were granted),
        each once; a lease's domain (option 15) before its search list (119)."""
        leases = list(self._leases.values())
        nameservers = tuple(dict.fromkeys(s for lease in leases for s in lease.dns))
        search = tuple(
            dict.fromkeys(
                d
                for lease in leases
                for d in ((lease.domain,) if lease.domain else ()) + lease.search
            )
        )
        return DNS(nameservers, search)
