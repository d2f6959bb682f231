"""Timeouts that do not count the daemon's own lateness against a service.

A probe's timeout is the time a service has to answer. If the daemon's trio
loop is busy when that time runs out (a flood of output, a slow call in the
trio thread, a host that does not schedule PID 1), the answer may be sitting
unread: a plain deadline would blame the service for the daemon's delay, and a
liveness probe would kill a healthy service.

:func:`call_with_timeout` runs the work next to a watcher that sleeps towards
the deadline in steps of ``CHECK_EVERY`` and notes how late each wake-up is.
The loop being late by ``L`` seconds moves the deadline ``L`` seconds on (the
service gets back the time the daemon was away), and after a late wake-up the
work always gets ``TOLERANCE`` more seconds to pick up an answer that arrived
meanwhile. Once the daemon has been late for more than ``allowance`` in all,
a run that still has no answer ends in :class:`DaemonLate` rather than a
timeout: the outcome says nothing about the service.

Stalls are measured to within ``CHECK_EVERY``; a watcher costs nothing while
the work finishes quickly (it is cancelled at its first sleep).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import trio

T = TypeVar("T")

TOLERANCE = 0.05  # a wake-up this late is ordinary scheduling, not the daemon falling behind
CHECK_EVERY = 0.1  # while work runs, how often the watcher looks at the clock


class DaemonLate(Exception):
    """The time ran out, but the daemon itself was late for ``late`` seconds of it."""

    def __init__(self, late: float) -> None:
        super().__init__(f"k4sinit itself was {late:.1f}s late")
        self.late = late


async def call_with_timeout(
    seconds: float, fn: Callable[[], Awaitable[T]], *, allowance: float | None = None
) -> T:
    """Return ``await fn()``, given ``seconds`` of the daemon's attention.

    Raises :class:`trio.TooSlowError` when the time ran out on a daemon that
    kept up, :class:`DaemonLate` when it did not (late for more than
    ``allowance`` seconds, default ``seconds``, in all); ``fn`` is cancelled
    first. An exception of ``fn`` propagates as itself. Cancellation from
    outside propagates.
    """
    limit = seconds if allowance is None else allowance
    done: list[T] = []
    failed: list[Exception] = []
    verdict: list[Exception] = []

    async with trio.open_nursery() as nursery:

        async def work() -> None:
            try:
                done.append(await fn())
            except Exception as exc:  # re-raised below as itself, not in an ExceptionGroup
                failed.append(exc)
            nursery.cancel_scope.cancel()

        nursery.start_soon(work)
        due = trio.current_time() + seconds
        late = 0.0
        while True:
            wake = min(due, trio.current_time() + CHECK_EVERY)
            await trio.sleep_until(wake)
            now = trio.current_time()
            lag = now - wake
            if lag > TOLERANCE:
                if late > limit:  # late again after the last grace: give up
                    verdict.append(DaemonLate(late + lag))
                    break
                late += lag
                # Give back the time lost; at least a moment to read what came meanwhile.
                due = max(due + lag, now + TOLERANCE) if late <= limit else now + TOLERANCE
            elif now >= due:
                verdict.append(DaemonLate(late) if late > limit else trio.TooSlowError())
                break
        nursery.cancel_scope.cancel()
    if failed:
        raise failed[0]
    if done:
        return done[0]
    raise verdict[0]
