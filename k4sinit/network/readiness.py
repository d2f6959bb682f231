"""When the network is ready, and in whose words it is not.

Ready: the kernel's state is known, and every configured interface that should
be up exists, is up, has carrier (physical and VLAN interfaces, and bridges with
ports, when ``wait_for_carrier``), has its addresses (static and leased), has
its default routes (configured, or its lease's) in the main table, and, for a
DHCP interface, a lease. Otherwise the reason names the first interface that
falls short, and how (``"eth0: no carrier"``).
"""

from __future__ import annotations

from dataclasses import dataclass

from k4sinit.core.netspec import InterfaceKind, NetworkSpec
from k4sinit.network.leases import Leases
from k4sinit.network.mirror import Mirror, describe_route

EVENT_HISTORY = 64  # readiness changes kept
NOT_KNOWN = "network state not known yet (not watching)"


@dataclass(frozen=True, slots=True)
class NetworkEvent:
    """One change of readiness, kept in :attr:`Network.events`."""

    time: float  # wall clock, for people
    ready: bool
    reason: str


def evaluate(spec: NetworkSpec, mirror: Mirror, leases: Leases) -> tuple[bool, str]:
    """(ready, why not): see the module docstring; the reason is empty when ready."""
    if not mirror.known:
        return False, NOT_KNOWN
    for key, configured in enumerate(spec.interfaces):
        iface = leases.effective(key, configured)
        if not iface.up:
            continue
        link = mirror.find(iface)
        if link is None:
            if iface.mac is not None:
                return False, f"{iface.mac}: no interface with this MAC"
            if iface.is_any:
                return False, "*: no interface with carrier chosen yet"
            return False, f"{iface.label}: no such interface"
        label = iface.label if iface.label == link.name else f"{iface.label} ({link.name})"
        if not link.admin_up:
            return False, f"{label}: down"
        needs_carrier = spec.wait_for_carrier and (
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
                for r in mirror.routes
            ):
                return (
                    False,
                    f"{label}: route {describe_route(route.to, route.via, route.metric)} missing",
                )
        if iface.dhcp and not leases.has(key):
            return False, f"{label}: no DHCP lease ({leases.reason(key)})"
    return True, ""
