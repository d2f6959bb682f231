"""k4sinit.network.mirror: the kernel's state kept from parsed events, with plain values.

The network wakes its waiters when :attr:`Mirror.version` moves instead of
building a snapshot after every event; the property test below holds the
version to that: it moves exactly when what the status shows of the links
(and the link chosen for ``*``) changes.
"""

from __future__ import annotations

from ipaddress import ip_address, ip_interface, ip_network
from typing import Any

import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from k4sinit.core.netspec import Interface
from k4sinit.network.mirror import (
    AddressChange,
    Change,
    KernelRoute,
    Link,
    LinkChange,
    Mirror,
    RouteChange,
)


def link(index: int, name: str = "", **fields: Any) -> Link:
    values: dict[str, Any] = {
        "index": index,
        "name": name or f"eth{index}",
        "mac": f"52:54:00:00:00:{index:02x}",
        "kind": None,
        "admin_up": True,
        "carrier": True,
        "loopback": False,
        "operstate": "UP",
        "mtu": 1500,
        "master": None,
    }
    return Link(**(values | fields))


def route(to: str, oif: int, metric: int = 0, via: str | None = None) -> KernelRoute:
    return KernelRoute(ip_network(to), ip_address(via) if via else None, oif, metric)


def loaded(*links: Link) -> Mirror:
    mirror = Mirror(structlog.get_logger())
    mirror.load(links, [], [])
    return mirror


def test_load_counts_as_a_change_only_when_the_dump_differs() -> None:
    mirror = Mirror(structlog.get_logger())
    assert not mirror.known
    mirror.load([link(1)], [(1, ip_interface("10.0.0.5/24")), (9, ip_interface("10.9.0.5/24"))], [])
    assert mirror.known and mirror.version == 1
    assert mirror.links[1].addresses == {ip_interface("10.0.0.5/24")}  # if9 is unknown
    mirror.load([link(1)], [(1, ip_interface("10.0.0.5/24"))], [])
    assert mirror.version == 1


def test_a_link_set_down_or_gone_asks_for_the_routes_again() -> None:
    mirror = loaded(link(1))
    assert mirror.apply(LinkChange(1, link(1, carrier=False))) is False  # carrier only
    assert mirror.apply(LinkChange(1, link(1, admin_up=False))) is True
    assert mirror.apply(LinkChange(1, None)) is True
    v4, v6 = ip_interface("10.0.0.5/24"), ip_interface("fd00::5/64")
    assert mirror.apply(AddressChange(1, v4, gone=True)) is True
    assert mirror.apply(AddressChange(1, v6, gone=True)) is False


def test_a_gone_link_takes_its_routes_and_the_choice_of_star() -> None:
    mirror = loaded(link(1), link(2))
    for r in (route("0.0.0.0/0", 1, 100, "10.0.0.1"), route("10.2.0.0/16", 2)):
        mirror.apply(RouteChange(r, gone=False, replace=False))
    assert mirror.choose_any(1) and not mirror.choose_any(1)
    assert mirror.find(Interface()) == mirror.links[1]  # no name nor MAC: the one chosen
    mirror.apply(LinkChange(1, None))
    assert mirror.routes == {route("10.2.0.0/16", 2)}
    assert mirror.any_index is None and mirror.find(Interface()) is None


def test_a_replacing_route_takes_the_place_of_the_one_at_the_same_metric() -> None:
    mirror = loaded(link(1))
    old, new = route("0.0.0.0/0", 1, 100, "10.0.0.1"), route("0.0.0.0/0", 1, 100, "10.0.0.2")
    other = route("0.0.0.0/0", 1, 200, "10.0.0.3")
    for r in (old, other):
        mirror.apply(RouteChange(r, gone=False, replace=False))
    before = mirror.version
    mirror.apply(RouteChange(new, gone=False, replace=True))
    assert mirror.routes == {new, other} and mirror.version == before + 1
    mirror.apply(RouteChange(new, gone=False, replace=True))
    assert mirror.version == before + 1


def test_find_by_mac_skips_links_that_copy_a_mac() -> None:
    mac = "52:54:00:aa:bb:07"
    mirror = loaded(link(5, "br0", mac=mac, kind="bridge"), link(7, "nic7", mac=mac))
    assert mirror.find(Interface(mac=mac)) == mirror.links[7]
    assert mirror.find(Interface(name="br0")) == mirror.links[5]


def test_interfaces_shows_each_link_with_its_routes_and_master() -> None:
    mirror = loaded(link(1, "eth0", master=3, operstate="UP"), link(3, "br0", kind="bridge"))
    mirror.apply(AddressChange(3, ip_interface("fd00::5/64"), gone=False))
    mirror.apply(AddressChange(3, ip_interface("10.0.0.5/24"), gone=False))
    mirror.apply(RouteChange(route("0.0.0.0/0", 3, 100, "10.0.0.1"), gone=False, replace=False))
    shown = mirror.interfaces({3: "br0"})
    assert list(shown) == ["eth0", "br0"]
    assert shown["eth0"]["master"] == "br0" and shown["eth0"]["configured"] is None
    assert shown["eth0"]["state"] == "up"
    assert shown["br0"]["addresses"] == ["10.0.0.5/24", "fd00::5/64"]
    assert shown["br0"]["routes"] == ["default via 10.0.0.1 metric 100"]


# --- the version moves exactly when what is shown changes -----------------------------------

_indexes = st.integers(1, 3)


@st.composite
def _links(draw: st.DrawFn) -> Link:
    index = draw(_indexes)
    return link(
        index,
        draw(st.sampled_from([f"eth{index}", f"nic{index}"])),  # names are unique
        admin_up=draw(st.booleans()),
        carrier=draw(st.booleans()),
        operstate=draw(st.sampled_from(["UP", "DOWN"])),
        mtu=draw(st.sampled_from([1500, 9000])),
        master=draw(st.none() | _indexes),
    )


_addresses = st.sampled_from([ip_interface("10.0.0.5/24"), ip_interface("fd00::5/64")])
_routes = st.builds(
    route,
    st.sampled_from(["0.0.0.0/0", "10.2.0.0/16"]),
    _indexes,
    st.sampled_from([0, 100]),
    st.sampled_from([None, "10.0.0.1"]),
)
_changes: st.SearchStrategy[Change | int] = st.one_of(
    st.builds(LinkChange, _indexes, st.none() | _links()),
    st.builds(AddressChange, _indexes, _addresses, st.booleans()),
    st.builds(RouteChange, _routes, st.booleans(), st.booleans()),
    _indexes,  # the link chosen for "*"
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_changes, max_size=30))
def test_the_version_moves_exactly_when_what_is_shown_changes(changes: list[Change | int]) -> None:
    mirror = loaded(link(1))
    for change in changes:
        if isinstance(change, LinkChange) and change.link is not None:
            change = LinkChange(change.link.index, change.link)  # an event names its own link
        if isinstance(change, RouteChange) and change.route.oif not in mirror.links:
            continue  # the kernel has no route through a link it does not have
        before = (mirror.interfaces({}), mirror.any_index, mirror.version)
        if isinstance(change, int):
            mirror.choose_any(change)
        else:
            mirror.apply(change)
        shown_changed = (mirror.interfaces({}), mirror.any_index) != before[:2]
        assert (mirror.version != before[2]) == shown_changed, change
