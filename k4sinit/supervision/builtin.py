"""A built-in dependency with nothing to wait for (:class:`AlwaysReady`).

The daemon's ``pki`` condition where a node makes no PKI (no ``node:``
section), kept here, apart from node/pkicondition.py, so that a ``run`` of
plain services does not load the PKI's cryptography to say so.
"""

from __future__ import annotations

import trio

from k4sinit.core.spec import Condition


class AlwaysReady:
    """A built-in condition with nothing to wait for."""

    ready = True

    def __init__(self, name: str, reason: str) -> None:
        self.name = name
        self.reason = reason

    def satisfies(self, condition: Condition) -> bool:
        return condition is not Condition.COMPLETED

    def unmet_reason(self, condition: Condition) -> str:
        return f"{self.name} never completes"

    async def changed(self) -> None:
        await trio.sleep_forever()
