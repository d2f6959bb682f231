"""Restart policy and backoff: pure decisions, exact sequences."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from k4sinit.core.restart import RestartTracker, backoff_delay
from k4sinit.core.spec import Backoff, RestartPolicy
from k4sinit.core.state import ExitStatus, State

FAIL = ExitStatus(code=1)
OK = ExitStatus(code=0)
KILLED = ExitStatus(signal=9)


def test_backoff_sequence_without_jitter_is_zero_then_exponential_then_capped() -> None:
    backoff = Backoff(initial=1.0, max=10.0, multiplier=2.0, jitter=0.0)
    assert [backoff_delay(backoff, n, 0.5) for n in range(1, 8)] == [
        0.0,
        1.0,
        2.0,
        4.0,
        8.0,
        10.0,
        10.0,
    ]


def test_jitter_spreads_within_bounds_and_never_past_max() -> None:
    backoff = Backoff(initial=1.0, max=4.0, multiplier=2.0, jitter=0.2)
    assert backoff_delay(backoff, 2, 0.0) == pytest.approx(0.8)
    assert backoff_delay(backoff, 2, 0.999999) == pytest.approx(1.2, abs=1e-5)
    assert backoff_delay(backoff, 4, 0.999999) == 4.0  # 4 * 1.2 capped at max


def test_always_restarts_and_counts_quick_deaths() -> None:
    tracker = RestartTracker(RestartPolicy.ALWAYS, Backoff(initial=1, jitter=0), random.Random(1))
    delays = [tracker.on_exit(FAIL, stable=False, why="exit code 1").delay for _ in range(4)]
    assert delays == [0.0, 1.0, 2.0, 4.0]
    assert tracker.on_exit(OK, stable=False, why="exit code 0").restart  # Always: even after 0


def test_stable_run_restarts_at_once_and_starts_the_count_over() -> None:
    tracker = RestartTracker(RestartPolicy.ALWAYS, Backoff(initial=1, jitter=0))
    for _ in range(5):
        tracker.on_exit(FAIL, stable=False, why="x")
    decision = tracker.on_exit(KILLED, stable=True, why="killed by SIGKILL")
    assert (decision.restart, decision.delay, tracker.quick_deaths) == (True, 0.0, 1)
    assert tracker.on_exit(FAIL, stable=False, why="x").delay == 1.0


def test_crash_loop_limit_fails_the_service_with_the_reason() -> None:
    tracker = RestartTracker(RestartPolicy.ALWAYS, Backoff(initial=1, jitter=0, crash_loop_limit=3))
    assert tracker.on_exit(FAIL, stable=False, why="exit code 1").restart
    assert tracker.on_exit(FAIL, stable=False, why="exit code 1").restart
    final = tracker.on_exit(FAIL, stable=False, why="exit code 1")
    assert (final.restart, final.final_state) == (False, State.FAILED)
    assert final.reason == "crash loop: 3 quick exits in a row, last exit code 1"


@pytest.mark.parametrize(
    ("policy", "status", "restart", "final_state"),
    [
        (RestartPolicy.ON_FAILURE, OK, False, State.COMPLETED),
        (RestartPolicy.ON_FAILURE, FAIL, True, None),
        (RestartPolicy.ON_FAILURE, KILLED, True, None),
        (RestartPolicy.ON_FAILURE, None, True, None),  # fork failed
        (RestartPolicy.NEVER, OK, False, State.COMPLETED),
        (RestartPolicy.NEVER, FAIL, False, State.FAILED),
        (RestartPolicy.ALWAYS, OK, True, None),
    ],
)
def test_policies(
    policy: RestartPolicy, status: ExitStatus | None, restart: bool, final_state: State | None
) -> None:
    decision = RestartTracker(policy, Backoff()).on_exit(status, stable=False, why="why")
    assert (decision.restart, decision.final_state) == (restart, final_state)


def test_reset_forgets_quick_deaths() -> None:
    tracker = RestartTracker(RestartPolicy.ALWAYS, Backoff(initial=1, jitter=0))
    for _ in range(3):
        tracker.on_exit(FAIL, stable=False, why="x")
    tracker.reset()
    assert tracker.on_exit(FAIL, stable=False, why="x").delay == 0.0


@pytest.mark.parametrize("quick_deaths", [1025, 1026, 5000, 10**9])
def test_backoff_stays_at_max_after_any_number_of_quick_deaths(quick_deaths: int) -> None:
    # initial * 2**(n-2) overflows a float at n = 1026: ~17 hours of crash looping
    assert backoff_delay(Backoff(jitter=0), quick_deaths, 0.5) == 60.0
    assert backoff_delay(Backoff(), quick_deaths, 0.999999) == 60.0  # jitter, still capped


def test_backoff_edges_zero_initial_and_multiplier_one() -> None:
    assert backoff_delay(Backoff(initial=0, jitter=0), 10**6, 0.5) == 0.0
    assert backoff_delay(Backoff(initial=3, multiplier=1, jitter=0), 10**6, 0.5) == 3.0
    huge = Backoff(initial=1, max=1e300, multiplier=10, jitter=0)
    assert backoff_delay(huge, 10**6, 0.5) == 1e300


def test_a_crash_loop_without_limit_keeps_restarting_at_max() -> None:
    tracker = RestartTracker(RestartPolicy.ALWAYS, Backoff(jitter=0), random.Random(1))
    decisions = [tracker.on_exit(FAIL, stable=False, why="exit code 1") for _ in range(3000)]
    assert all(d.restart for d in decisions)
    assert {d.delay for d in decisions[10:]} == {60.0}
    assert tracker.quick_deaths == 3000


def test_the_policy_is_pure_it_imports_no_trio() -> None:
    """Issue 12: restart.py took ExitStatus from reaper, and with it trio."""
    code = "import sys, k4sinit.core.restart; print(sorted(m for m in sys.modules if m == 'trio'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "[]\n"
