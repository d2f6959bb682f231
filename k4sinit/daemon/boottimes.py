"""The boot's timeline as the daemon serves it (the ``timeline`` request).

The stages come from PID 1 and the composition root (a :class:`Timeline`), the
services' first milestones from their runners (``ServiceRunner.milestones``),
and the built-in dependencies' from :class:`BuiltinTimes`, which watches them:
``network`` starts with the daemon and is ready when its readiness says so;
``pki`` starts its work once the network is ready (a node's PKI, or a worker's
join) and is ready when it says so.

The runners' and watchers' times are on trio's clock; :func:`timeline_reply`
moves them onto CLOCK_MONOTONIC, the stages' clock. On trio's real clock the
two differ by a fixed offset, taken once (:attr:`BuiltinTimes.shift`) so that
every reply gives the same time for the same event.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import trio

from k4sinit.core.spec import NETWORK, PKI, Condition, Dependency
from k4sinit.core.state import State
from k4sinit.core.timeline import Milestones, Timeline, TimelineJSON, UnitJSON
from k4sinit.supervision.runner import ServiceRunner


class BuiltinTimes:
    """The first milestones of ``network`` and ``pki``; :meth:`watch` records them.

    ``pki_works``: False when the pki is always ready (no node profile): it has
    no work of its own to wait for. Make it inside trio (it reads trio's clock).
    """

    def __init__(self, network: Dependency, pki: Dependency, *, pki_works: bool) -> None:
        self.shift = time.monotonic() - trio.current_time()  # trio's clock to CLOCK_MONOTONIC
        self._network = network
        self._pki = pki
        self._pki_works = pki_works
        self.milestones = {NETWORK: Milestones(), PKI: Milestones()}

    def depends_on(self, name: str) -> dict[str, str]:
        """What a built-in waits for itself (the pki: the network)."""
        return {NETWORK: Condition.READY.value} if name == PKI and self._pki_works else {}

    async def watch(self) -> None:
        """Record each built-in's start and first readiness, then return.

        Start it before the network starts: its first step is the network's start.
        """
        network, pki = self.milestones[NETWORK], self.milestones[PKI]
        network.note(State.RUNNING, False, trio.current_time())
        if not self._pki_works:  # ready from the start
            pki.note(State.RUNNING, True, trio.current_time())
        await _until_ready(self._network)
        network.note(State.RUNNING, True, trio.current_time())
        pki.note(State.RUNNING, False, trio.current_time())
        await _until_ready(self._pki)
        pki.note(State.RUNNING, True, trio.current_time())


async def _until_ready(dependency: Dependency) -> None:
    while not dependency.satisfies(Condition.READY):
        await dependency.changed()


def timeline_reply(
    timeline: Timeline, runners: Iterable[ServiceRunner], builtins: BuiltinTimes
) -> TimelineJSON:
    """The ``timeline`` reply: the stages, every service in ``runners``' order, then
    the built-ins that some service depends on; every time in CLOCK_MONOTONIC seconds."""
    shift = builtins.shift
    units: list[UnitJSON] = []
    used: set[str] = set()
    for runner in runners:
        depends_on = {d.name: c.value for d, c in runner.dependencies}
        used.update(depends_on)
        units.append(runner.milestones.to_json(runner.name, "service", depends_on, shift))
    if PKI in used and builtins.depends_on(PKI):
        used.add(NETWORK)
    for name, milestones in builtins.milestones.items():
        if name in used:
            units.append(milestones.to_json(name, "builtin", builtins.depends_on(name), shift))
    return {
        "origin": timeline.origin,
        "now": time.monotonic(),
        "stages": timeline.to_json(),
        "units": units,
    }
