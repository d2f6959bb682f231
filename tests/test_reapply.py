"""k4sinit.network.reapply: which interfaces the watcher applies again, and its queue."""

from __future__ import annotations

import structlog
import trio
import trio.testing

from k4sinit.core.netspec import Interface, InterfaceKind
from k4sinit.network.mirror import Link, Mirror
from k4sinit.network.reapply import ReapplyQueue, View, to_reapply, view

ETH0, BY_MAC, ANY = Interface(name="eth0"), Interface(mac="52:54:00:00:00:07"), Interface()


def mirror_of(*links: Link) -> Mirror:
    mirror = Mirror(structlog.get_logger())
    mirror.load(links, [], [])
    return mirror


def nic(index: int, name: str, *, carrier: bool = True, kind: str | None = None) -> Link:
    mac = "52:54:00:00:00:07" if name == "nic7" else f"52:54:00:00:01:{index:02x}"
    return Link(index, name, mac, kind, True, carrier, False, "UP", 1500, None)


def test_a_view_places_each_interface_and_lists_the_nics_with_carrier() -> None:
    mirror = mirror_of(nic(1, "eth0"), nic(2, "br0", kind="bridge"), nic(3, "nic3", carrier=False))
    assert view(mirror, [ETH0, BY_MAC, ANY]) == View(
        placed=((1, True), (None, False), (None, False)),
        links=frozenset({1, 2, 3}),
        nics_with_carrier=frozenset({1}),  # a bridge is no NIC
    )


def test_a_late_interface_or_a_carrier_back_is_applied_again() -> None:
    interfaces = [ETH0, BY_MAC]
    before = view(mirror_of(nic(1, "eth0", carrier=False)), interfaces)
    late = view(mirror_of(nic(1, "eth0", carrier=False), nic(7, "nic7")), interfaces)
    assert to_reapply(before, late, interfaces, failed=()) == {1}
    back = view(mirror_of(nic(1, "eth0")), interfaces)
    assert to_reapply(before, back, interfaces, failed=()) == {0}
    assert to_reapply(back, before, interfaces, failed=()) == set()  # carrier gone: nothing to do


def test_a_failed_interface_is_tried_again_when_any_link_appears() -> None:
    bridge = Interface(name="br0", kind=InterfaceKind.BRIDGE, bridge_ports=("eth5",))
    before = view(mirror_of(nic(2, "br0", kind="bridge")), [bridge])
    after = view(mirror_of(nic(2, "br0", kind="bridge"), nic(5, "eth5")), [bridge])
    assert to_reapply(before, after, [bridge], failed={0}) == {0}
    assert to_reapply(before, after, [bridge], failed=()) == set()


def test_star_without_a_link_chooses_when_a_nic_gets_carrier() -> None:
    before = view(mirror_of(nic(3, "nic3", carrier=False)), [ANY])
    after = view(mirror_of(nic(3, "nic3")), [ANY])
    assert to_reapply(before, after, [ANY], failed=()) == {0}


async def test_the_queue_hands_out_what_was_asked_and_shows_it_until_done(
    autojump_clock: trio.testing.MockClock,
) -> None:
    queue = ReapplyQueue()
    queue.request({2})
    queue.request({0, 2})
    assert await queue.take() == {0, 2}
    assert queue.waiting == {0, 2}
    queue.request({2})  # asked again while being applied: once more afterwards
    queue.done()
    assert queue.waiting == {2}
    assert await queue.take() == {2}
    queue.done()
    with trio.move_on_after(1) as waited:
        await queue.take()
    assert waited.cancelled_caught  # nothing asked: take() waits
