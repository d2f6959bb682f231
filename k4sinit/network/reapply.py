"""When an interface's config is applied again, without a restart: the triggers and the queue.

After each batch of netlink events the watcher compares a :class:`View` from
before with one from after (:func:`to_reapply`). An interface is applied again
when it is on a new link (a late NIC, a link that came back) or its carrier
returned (a link set down loses its IPv4 routes); when its last application
failed and any link appeared (a bridge port, a VLAN's parent, a MAC may have
come); or, for ``*``, when it has no link yet and some NIC got carrier. A DHCP
lease granted or lost asks for its interface too.

The keys wait in a :class:`ReapplyQueue` that one task drains.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import trio

from k4sinit.core.netspec import Interface
from k4sinit.network.mirror import Mirror


@dataclass(frozen=True, slots=True)
class View:
    """What the triggers compare: per interface (spec position) its link's index
    (None: not there) and carrier; the links there are; the NICs with carrier."""

    placed: tuple[tuple[int | None, bool], ...]
    links: frozenset[int]
    nics_with_carrier: frozenset[int]


def view(mirror: Mirror, interfaces: Sequence[Interface]) -> View:
    placed = []
    for iface in interfaces:
        link = mirror.find(iface)
        placed.append((None, False) if link is None else (link.index, link.carrier))
    return View(
        placed=tuple(placed),
        links=frozenset(mirror.links),
        nics_with_carrier=frozenset(
            link.index for link in mirror.links.values() if link.carrier and link.is_nic
        ),
    )


def to_reapply(
    before: View, after: View, interfaces: Sequence[Interface], failed: Collection[int]
) -> set[int]:
    """The interfaces to apply again after the events between ``before`` and
    ``after``; ``failed``: those whose last application had problems."""
    appeared = bool(after.links - before.links)
    carrier_came = bool(after.nics_with_carrier - before.nics_with_carrier)
    again: set[int] = set()
    for key, ((index, carrier), (old_index, old_carrier)) in enumerate(
        zip(after.placed, before.placed, strict=True)
    ):
        if index is not None and (index != old_index or (carrier and not old_carrier)):
            again.add(key)  # a late interface, or its carrier is back
        elif key in failed and appeared:
            again.add(key)  # a port, a VLAN's parent or a MAC may have come
        elif interfaces[key].is_any and index is None and carrier_came:
            again.add(key)  # a NIC has carrier now: choose it
    return again


class ReapplyQueue:
    """Interfaces (spec positions) to apply again, and those being applied now."""

    def __init__(self) -> None:
        self.pending: set[int] = set()
        self.applying: set[int] = set()
        self._added = trio.Event()

    @property
    def waiting(self) -> set[int]:
        """Pending or being applied: what the status lists as ``applying``."""
        return self.pending | self.applying

    def request(self, keys: set[int]) -> None:
        """Ask for ``keys`` to be applied (again, if being applied now)."""
        if keys - self.pending:
            self.pending |= keys
            self._added.set()

    async def take(self) -> set[int]:
        """Wait for requests; the pending keys, now being applied until :meth:`done`."""
        await self._added.wait()
        self._added = trio.Event()
        self.applying, self.pending = self.pending, set()
        return set(self.applying)

    def done(self) -> None:
        self.applying = set()
