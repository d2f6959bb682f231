"""The supervisor's operator commands on the real trio loop, with real processes."""

from __future__ import annotations

import random
import textwrap
from collections.abc import AsyncIterator, Callable

import pytest
import structlog
import trio

from k4sinit.config import load_config_text
from k4sinit.core.state import State
from k4sinit.daemon import default_env
from k4sinit.supervision.reaper import Reaper
from k4sinit.supervision.runner import RunnerContext, ServiceRunner
from k4sinit.supervision.supervisor import Supervisor

from .conftest import child_cmd, pid_alive


@pytest.fixture
async def sleeper(nursery: trio.Nursery) -> AsyncIterator[Supervisor]:
    """A started supervisor of one service ``a`` that sleeps; stopped after the test."""
    reaper = Reaper()
    await nursery.start(reaper.run)
    argv = ", ".join(f'"{part}"' for part in child_cmd())
    config = load_config_text(
        textwrap.dedent(f"""
            services:
              a:
                command: [{argv}]
                terminationGracePeriodSeconds: 5
        """),
        "test.yaml",
    )
    ctx = RunnerContext(reaper, default_env(), None, structlog.get_logger(), random.Random(0))
    sup = Supervisor(config, ctx)
    await nursery.start(sup.run)
    yield sup
    with trio.CancelScope(shield=True), trio.move_on_after(60):
        await sup.stop_all()


async def until(runner: ServiceRunner, predicate: Callable[[ServiceRunner], bool]) -> None:
    with trio.fail_after(60):
        while not predicate(runner):
            await runner.changed()


def running(runner: ServiceRunner) -> bool:
    return runner.state is State.RUNNING


async def test_a_stop_and_a_start_handled_in_one_batch_leave_a_truthful_status(
    sleeper: Supervisor,
) -> None:
    # The start runs in the same scheduling batch as the stop's wake-up (both wait
    # for the old life to end); trio orders a batch at random, so try it often.
    runner = sleeper["a"]
    for _ in range(12):
        await until(runner, running)
        old_pid = runner.pid
        old_life = runner._life_done
        answers: list[bool] = []

        async def start_once_down(old_life: trio.Event, answers: list[bool]) -> None:
            await old_life.wait()
            answers.append(sleeper.start("a"))

        with trio.fail_after(60):
            async with trio.open_nursery() as batch:
                batch.start_soon(start_once_down, old_life, answers)
                batch.start_soon(sleeper.stop, "a")
        # The later request (start) won: the service is active, so it must say so.
        assert answers == [True]
        assert runner.active
        assert runner.state is not State.STOPPED, runner.snapshot()
        await until(runner, running)
        snapshot = runner.snapshot()
        assert snapshot["pid"] is not None and snapshot["pid"] != old_pid
        assert pid_alive(snapshot["pid"])
        assert not pid_alive(old_pid or 0)
        assert sleeper.start("a") is False  # already running: truthfully so
    # And the next stop / start behave.
    pid = runner.pid
    with trio.fail_after(60):
        await sleeper.stop("a")
    assert runner.snapshot()["state"] == "stopped" and runner.snapshot()["pid"] is None
    assert not pid_alive(pid or 0)
    assert sleeper.start("a") is True
    await until(runner, running)
    assert pid_alive(runner.pid or 0)


async def test_a_second_stop_during_a_stop_waits_for_the_same_end(sleeper: Supervisor) -> None:
    runner = sleeper["a"]
    await until(runner, running)
    pid = runner.pid
    with trio.fail_after(60):
        async with trio.open_nursery() as both:
            both.start_soon(sleeper.stop, "a")
            both.start_soon(sleeper.stop, "a")
    assert runner.state is State.STOPPED
    assert not runner.active
    assert not pid_alive(pid or 0)
