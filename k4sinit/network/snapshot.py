"""The network as ``k4sinit status network`` shows it: the wire form, plain JSON.

Types only, no trio and no pyroute2: the control protocol's replies
(``NetworkReply``, ``StatusReply``) hold a :class:`NetworkSnapshot`, and the CLI
reads those replies without loading the daemon's libraries.
"""

from __future__ import annotations

from typing import TypedDict


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
