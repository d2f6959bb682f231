"""Restart policy and backoff: what happens after a service's process ends.

Pure logic, no trio: the runner feeds it each exit and whether the run before
it was stable, and sleeps for the delay it returns.

The backoff sequence for quick deaths in a row is ``0, initial, initial*m,
initial*m**2, ... max`` (each spread by the jitter): the first restart is
immediate so a service that dies after hours of good service (an apiserver's
first crash) is back at once; only repeated quick deaths wait longer and
longer. A stable run (ready for ``reset_after`` seconds) starts the count over.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from k4sinit.core.spec import Backoff, RestartPolicy
from k4sinit.core.state import ExitStatus, State


@dataclass(frozen=True, slots=True)
class Decision:
    """Restart after ``delay`` seconds, or (``final_state`` set) stop for good in that state."""

    delay: float = 0.0
    final_state: State | None = None  # State.COMPLETED or State.FAILED: no more restarts
    reason: str = ""

    @property
    def restart(self) -> bool:
        return self.final_state is None


def backoff_delay(backoff: Backoff, quick_deaths: int, rand: float) -> float:
    """Delay before restart number ``quick_deaths`` (>= 1) of a run of quick deaths.

    ``rand`` is uniform in [0, 1); it spreads the delay by +/- ``jitter``.
    Defined for any count: past the step that reaches ``max`` the delay stays
    there (the power is never taken of a count that could overflow a float).
    """
    if quick_deaths <= 1:
        return 0.0
    initial, multiplier = backoff.initial, backoff.multiplier
    if initial <= 0 or multiplier <= 1 or initial >= backoff.max:
        base = min(backoff.max, initial)
    else:
        # No step past the first one that reaches max: the power stays finite.
        top = math.ceil(math.log(backoff.max / initial, multiplier))
        base = min(backoff.max, initial * multiplier ** min(quick_deaths - 2, top))
    spread = 1.0 + backoff.jitter * (2.0 * rand - 1.0)
    return max(0.0, min(backoff.max, base * spread))


class RestartTracker:
    """Counts quick deaths in a row and decides each restart."""

    def __init__(
        self, policy: RestartPolicy, backoff: Backoff, rng: random.Random | None = None
    ) -> None:
        self.policy = policy
        self.backoff = backoff
        self.quick_deaths = 0
        self._rng = rng or random.Random()

    def on_exit(self, status: ExitStatus | None, stable: bool, why: str) -> Decision:
        """Decide what follows an exit.

        ``status`` is None when the process could not be started at all.
        ``stable`` says the run before it counted as stable. ``why`` describes
        the exit for the reasons given ("exit code 1", "liveness probe failed").
        """
        succeeded = status is not None and status.success
        if self.policy is RestartPolicy.NEVER or (
            self.policy is RestartPolicy.ON_FAILURE and succeeded
        ):
            if succeeded:
                return Decision(final_state=State.COMPLETED, reason=why)
            return Decision(
                final_state=State.FAILED, reason=f"{why}; restartPolicy {self.policy.value}"
            )
        self.quick_deaths = 1 if stable else self.quick_deaths + 1
        limit = self.backoff.crash_loop_limit
        if limit is not None and self.quick_deaths >= limit:
            return Decision(
                final_state=State.FAILED,
                reason=f"crash loop: {self.quick_deaths} quick exits in a row, last {why}",
            )
        delay = backoff_delay(self.backoff, self.quick_deaths, self._rng.random())
        return Decision(delay=delay, reason=why)

    def reset(self) -> None:
        """Forget past deaths (an operator's explicit start or restart)."""
        self.quick_deaths = 0
