"""Timeouts that give back the time the daemon was late, on trio's virtual clock.

A stall of the loop is simulated exactly: a task jumps the MockClock forward
without yielding, which is what a blocked loop looks like to every other task.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing

from k4sinit.supervision.timeouts import TOLERANCE, DaemonLate, call_with_timeout


async def answer_at(t: float) -> str:
    """A service that answers at time ``t``."""
    await trio.sleep_until(t)
    return "answer"


async def hang() -> str:
    await trio.sleep_forever()
    return "never"


async def stall(clock: trio.testing.MockClock, at: float, seconds: float) -> None:
    """Block the loop at ``at`` for ``seconds``: nobody runs meanwhile."""
    await trio.sleep_until(at)
    clock.jump(seconds)


async def test_an_answer_in_time_is_returned_at_once(autojump_clock: trio.abc.Clock) -> None:
    assert await call_with_timeout(1.0, lambda: answer_at(0.7)) == "answer"
    assert trio.current_time() == 0.7


async def test_no_answer_on_a_daemon_that_kept_up_times_out_exactly(
    autojump_clock: trio.abc.Clock,
) -> None:
    with pytest.raises(trio.TooSlowError):
        await call_with_timeout(1.5, hang)
    assert trio.current_time() == pytest.approx(1.5)


async def test_an_answer_that_came_while_the_daemon_stalled_past_the_deadline_counts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The service answers at 0.9; the daemon is stuck from 0.55 to 3.55, past the
    # 1 s deadline. A plain deadline would call it a timeout.
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stall, autojump_clock, 0.55, 3.0)
        assert await call_with_timeout(1.0, lambda: answer_at(0.9)) == "answer"
    assert trio.current_time() == pytest.approx(3.55)


async def test_a_hung_service_on_a_daemon_late_beyond_the_allowance_is_daemon_late(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stall, autojump_clock, 0.55, 3.0)
        with pytest.raises(DaemonLate) as caught:
            await call_with_timeout(1.0, hang)
    # The watcher meant to wake at 0.6 and woke at 3.55; then a last grace.
    assert caught.value.late == pytest.approx(2.95)
    assert str(caught.value) == "k4sinit itself was 2.9s late"
    assert trio.current_time() == pytest.approx(3.55 + TOLERANCE)


async def test_a_short_stall_moves_the_deadline_by_the_time_lost(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stall, autojump_clock, 0.25, 0.5)
        with pytest.raises(trio.TooSlowError):
            await call_with_timeout(1.0, hang)
    # The wake-up due at 0.3 came at 0.75: 0.45 s lost, the deadline moves to 1.45.
    assert trio.current_time() == pytest.approx(1.45)


async def test_errors_of_the_work_propagate_as_themselves(
    autojump_clock: trio.abc.Clock,
) -> None:
    async def broken() -> str:
        await trio.sleep(0.1)
        raise ValueError("broken")

    with pytest.raises(ValueError, match="broken"):
        await call_with_timeout(1.0, broken)


async def test_outer_cancellation_propagates(autojump_clock: trio.abc.Clock) -> None:
    with trio.move_on_after(0.5) as scope:
        await call_with_timeout(10.0, hang)
    assert scope.cancelled_caught
    assert trio.current_time() == 0.5
