"""The host's network as it is: the ``network`` condition of a ``run`` that manages none.

``k4sinit run`` on a machine whose config has no ``network:`` section, and
whose services do not wait for ``network``, has no network to apply or
watch: :class:`HostNetwork` is always ready, and ``status network`` says
that k4sinit manages no interface. It loads no pyroute2 (~100 ms and ~13 MB
to import, bench/peers.py); the composition root (daemon/root.py) chooses
between it and :class:`~k4sinit.network.network.Network`.
"""

from __future__ import annotations

import trio

from k4sinit.core.netspec import NetworkSpec
from k4sinit.core.spec import NETWORK, Condition
from k4sinit.network.snapshot import NetworkSnapshot


class HostNetwork:
    """Always ready; nothing applied, nothing watched (see the module docstring)."""

    name = NETWORK
    ready = True
    reason = ""

    def __init__(self, spec: NetworkSpec) -> None:
        self.spec = spec

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Nothing to apply: ``started()`` at once, and return."""
        task_status.started()

    def satisfies(self, condition: Condition) -> bool:
        """``Ready`` and ``Started`` hold; ``Completed`` never does (as for Network)."""
        return condition is not Condition.COMPLETED

    def unmet_reason(self, condition: Condition) -> str:
        return "the network is a condition that never completes (use Ready)"

    async def changed(self) -> None:
        await trio.sleep_forever()

    def snapshot(self) -> NetworkSnapshot:
        """Ready, from the spec's source, with no interface managed."""
        return {
            "ready": True,
            "reason": "",
            "source": self.spec.source.value,
            "problems": [],
            "applying": [],
            "interfaces": {},
        }
