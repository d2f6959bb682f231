"""One service's life with real processes, timed on trio's virtual clock.

The clock is a MockClock that jumps only after the loop has been idle for
0.2 s of real time: real children start and exit in milliseconds, so virtual
time stands still while they do, and every sleep, backoff and grace period is
skipped in one jump. Times asserted are therefore exact.
"""

from __future__ import annotations

import os
import random
import resource
import signal
import socket
import sys
import textwrap
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import structlog
import structlog.testing
import trio
import trio.testing

from k4sinit.config import load_config_text
from k4sinit.core.state import State
from k4sinit.daemon import default_env
from k4sinit.supervision.output import LINE_BURST
from k4sinit.supervision.reaper import ExitStatus, Reaper
from k4sinit.supervision.runner import LINES_PER_EVENT, RunnerContext, ServiceRunner
from k4sinit.supervision.supervisor import Supervisor

from .conftest import child_cmd, pid_alive


@pytest.fixture
def clock() -> trio.testing.MockClock:
    return trio.testing.MockClock(autojump_threshold=0.2)


@pytest.fixture
async def supervise(nursery: trio.Nursery) -> AsyncIterator[Callable[[str], Any]]:
    """``await supervise(yaml) -> Supervisor``, started; everything stopped after the test."""
    reaper = Reaper()
    await nursery.start(reaper.run)
    started: list[Supervisor] = []

    async def start(text: str) -> Supervisor:
        config = load_config_text(textwrap.dedent(text), "test.yaml")
        ctx = RunnerContext(reaper, default_env(), None, structlog.get_logger(), random.Random(0))
        sup = Supervisor(config, ctx)
        await nursery.start(sup.run)
        started.append(sup)
        return sup

    yield start
    with trio.CancelScope(shield=True), trio.move_on_after(60):
        for sup in started:
            await sup.stop_all()


def print_lines(n: int) -> list[str]:
    """``line 0`` .. ``line n-1`` on stdout, from sh's builtin echo: it starts in a
    millisecond even on a loaded machine (a Python child may take longer than the
    clock's 0.2 s idle threshold to start, and the clock would jump past the wait)."""
    return ["sh", "-c", f"i=0; while [ $i -lt {n} ]; do echo line $i; i=$((i+1)); done"]


async def until(runner: ServiceRunner, predicate: Callable[[ServiceRunner], bool]) -> None:
    with trio.fail_after(300):
        while not predicate(runner):
            await runner.changed()


async def eventually(predicate: Callable[[], bool]) -> None:
    """Poll a condition that no state change announces (output lines, files)."""
    with trio.fail_after(300):
        while not predicate():  # noqa: ASYNC110 (nothing announces these)
            await trio.sleep(0.05)


def times(runner: ServiceRunner, state: State) -> list[float]:
    return [e.clock for e in runner.events if e.state is state]


def cmd(argv: list[str]) -> str:
    return "[" + ", ".join(f'"{a}"' for a in argv) + "]"


async def test_crash_loop_backs_off_exactly_then_fails(
    clock: trio.testing.MockClock, supervise: Any
) -> None:
    sup = await supervise(
        """
        services:
          crasher:
            command: ["sh", "-c", "exit 3"]
            restartBackoff: {initialSeconds: 1, multiplier: 2, jitter: 0, crashLoopLimit: 5}
        """
    )
    crasher = sup["crasher"]
    await until(crasher, lambda r: r.state is State.FAILED)
    t0 = times(crasher, State.RUNNING)[0]
    assert [t - t0 for t in times(crasher, State.RUNNING)] == [0, 0, 1, 3, 7]
    assert crasher.restarts == 4
    assert crasher.last_exit == ExitStatus(code=3)
    assert crasher.reason == "crash loop: 5 quick exits in a row, last exit code 3"
    await trio.sleep(100)
    assert crasher.state is State.FAILED and crasher.restarts == 4


async def test_a_death_after_a_stable_run_restarts_at_once(
    clock: trio.testing.MockClock, supervise: Any
) -> None:
    sup = await supervise(
        """
        services:
          api:
            command: ["sleep", "1000"]
            restartBackoff: {initialSeconds: 2, jitter: 0, resetAfterSeconds: 30}
        """
    )
    api = sup["api"]
    await until(api, lambda r: r.ready)
    # Two quick deaths: the first restart is immediate, the second waits 2 s.
    for expected_delay in (0, 2):
        pid, killed_at = api.pid, trio.current_time()
        assert pid is not None
        signal_pid(pid, signal.SIGKILL)

        def replaced(r: ServiceRunner, pid: int = pid) -> bool:
            return r.pid != pid and r.state is State.RUNNING

        await until(api, replaced)
        assert trio.current_time() - killed_at == expected_delay
    # Hours of good service, then a crash: back at once, and the count starts over.
    await trio.sleep(3600)
    pid, killed_at = api.pid, trio.current_time()
    assert pid is not None
    signal_pid(pid, signal.SIGKILL)
    await until(api, lambda r: r.pid != pid and r.state is State.RUNNING)
    assert trio.current_time() == killed_at
    assert api.last_exit == ExitStatus(signal=signal.SIGKILL)
    assert api.restarts == 3


async def test_stop_escalates_to_sigkill_after_exactly_the_grace_period(
    clock: trio.testing.MockClock, supervise: Any, tmp_path: Path
) -> None:
    ready = tmp_path / "ready"
    sup = await supervise(
        f"""
        services:
          stubborn:
            command: {cmd(child_cmd("--ignore-term", "--ready-file", str(ready)))}
            terminationGracePeriodSeconds: 7.5
            readinessProbe: {{file: {{path: {ready}}}, periodSeconds: 0.5}}
        """
    )
    stubborn = sup["stubborn"]
    await until(stubborn, lambda r: r.ready)
    start = trio.current_time()
    await stubborn.stop()
    assert trio.current_time() - start == 7.5
    assert stubborn.last_exit == ExitStatus(signal=signal.SIGKILL)
    assert [e.state for e in stubborn.events][-2:] == [State.STOPPING, State.STOPPED]


async def test_the_configured_stop_signal_is_sent(
    clock: trio.testing.MockClock, supervise: Any
) -> None:
    sup = await supervise(
        """
        services:
          trapper:
            command: ["sh", "-c", "trap 'exit 42' INT; echo trapped; while :; do sleep 0.05; done"]
            stopSignal: SIGINT
        """
    )
    trapper = sup["trapper"]
    await eventually(lambda: any(line.line == "trapped" for line in trapper.logs))
    await trapper.stop()
    assert trapper.last_exit == ExitStatus(code=42)
    assert trapper.state is State.STOPPED


async def test_liveness_failure_kills_and_restarts_at_the_exact_threshold(
    clock: trio.testing.MockClock, supervise: Any, tmp_path: Path
) -> None:
    alive = tmp_path / "alive"
    alive.write_text("")
    sup = await supervise(
        f"""
        services:
          svc:
            command: ["sleep", "1000"]
            livenessProbe: {{file: {{path: {alive}}}, periodSeconds: 2, failureThreshold: 3}}
        """
    )
    svc = sup["svc"]
    await until(svc, lambda r: r.state is State.RUNNING)
    started = times(svc, State.RUNNING)[0]
    await trio.sleep(5)  # checks at 0, 2, 4 pass
    alive.unlink()
    first_pid = svc.pid
    await until(svc, lambda r: r.state is State.STOPPING)
    # Failures at 6, 8, 10: the third one kills.
    assert trio.current_time() - started == 10
    assert svc.reason == f"liveness probe failed: file {alive} does not exist"
    await until(svc, lambda r: r.state is State.RUNNING and r.pid != first_pid)
    assert svc.restarts == 1
    assert svc.last_exit == ExitStatus(signal=signal.SIGTERM)


async def test_startup_probe_holds_starting_then_hands_over(
    clock: trio.testing.MockClock, supervise: Any, tmp_path: Path
) -> None:
    started = tmp_path / "started"
    sup = await supervise(
        f"""
        services:
          slow:
            command: ["sleep", "1000"]
            startupProbe: {{file: {{path: {started}}}, periodSeconds: 1, failureThreshold: 30}}
        """
    )
    slow = sup["slow"]
    await until(slow, lambda r: r.state is State.STARTING)
    await trio.sleep(4.5)
    assert slow.state is State.STARTING and not slow.ready
    started.write_text("")
    await until(slow, lambda r: r.state is State.RUNNING)
    assert slow.ready  # no readiness probe: ready once started
    assert slow.reason == "startup probe passed"


async def test_a_failing_startup_probe_restarts_the_service(
    clock: trio.testing.MockClock, supervise: Any
) -> None:
    sup = await supervise(
        """
        services:
          never:
            command: ["sleep", "1000"]
            startupProbe: {file: {path: /nonexistent/k4s}, periodSeconds: 1, failureThreshold: 3}
            restartBackoff: {crashLoopLimit: 2, jitter: 0}
        """
    )
    never = sup["never"]
    await until(never, lambda r: r.state is State.FAILED)
    assert never.restarts == 1
    assert "startup probe failed: file /nonexistent/k4s does not exist" in never.reason


async def test_a_missing_binary_is_a_clear_failed_state_not_a_crash_loop(
    clock: trio.testing.MockClock, supervise: Any
) -> None:
    sup = await supervise(
        """
        services:
          apiserver:
            command: ["kube-apiserver-k4s-missing"]
            env: {PATH: "/bbin:/usr/bin"}
        """
    )
    api = sup["apiserver"]
    await until(api, lambda r: r.state is State.FAILED)
    assert (
        api.reason == "cannot start: kube-apiserver-k4s-missing: binary not found in /bbin:/usr/bin"
    )
    await trio.sleep(600)
    assert api.restarts == 0 and api.state is State.FAILED


async def test_dependent_waits_visibly_and_starts_when_dependency_is_ready(
    clock: trio.testing.MockClock, supervise: Any, tmp_path: Path
) -> None:
    ready = tmp_path / "db-ready"
    sup = await supervise(
        f"""
        services:
          app:
            command: ["sleep", "1000"]
            dependsOn: {{db: Ready}}
          db:
            command: ["sleep", "1000"]
            readinessProbe: {{file: {{path: {ready}}}, periodSeconds: 1}}
        """
    )
    app, db = sup["app"], sup["db"]
    assert list(sup.runners) == ["db", "app"]  # dependency order
    await until(db, lambda r: r.state is State.RUNNING)
    await until(app, lambda r: r.reason == "waiting for db: not ready")
    assert app.state is State.WAITING
    await trio.sleep(10)
    assert app.state is State.WAITING
    ready.write_text("")
    await until(app, lambda r: r.state is State.RUNNING)
    db_ready = next(e.clock for e in db.events if e.ready)
    assert times(app, State.RUNNING)[0] == db_ready


async def test_a_restarting_dependency_leaves_its_dependents_alone(
    clock: trio.testing.MockClock, supervise: Any
) -> None:
    sup = await supervise(
        """
        services:
          etcd: {command: ["sleep", "1000"]}
          apiserver: {command: ["sleep", "1000"], dependsOn: {etcd: Ready}}
        """
    )
    etcd, api = sup["etcd"], sup["apiserver"]
    await until(api, lambda r: r.state is State.RUNNING)
    api_pid, etcd_pid = api.pid, etcd.pid
    assert etcd_pid is not None
    signal_pid(etcd_pid, signal.SIGKILL)
    await until(etcd, lambda r: r.pid != etcd_pid and r.state is State.RUNNING)
    assert (api.pid, api.restarts, api.state) == (api_pid, 0, State.RUNNING)


async def test_completed_condition_waits_for_a_oneshot(
    clock: trio.testing.MockClock, supervise: Any
) -> None:
    sup = await supervise(
        """
        services:
          prepare: {command: ["sh", "-c", "echo prepared"], restartPolicy: Never}
          main: {command: ["sleep", "1000"], dependsOn: {prepare: Completed}}
        """
    )
    await until(sup["main"], lambda r: r.state is State.RUNNING)
    assert sup["prepare"].state is State.COMPLETED
    assert [line.line for line in sup["prepare"].logs] == ["prepared"]
    assert times(sup["main"], State.RUNNING)[0] >= times(sup["prepare"], State.COMPLETED)[0]


async def test_stop_all_goes_in_reverse_dependency_order(
    clock: trio.testing.MockClock, supervise: Any
) -> None:
    sup = await supervise(
        """
        services:
          a: {command: ["sleep", "1000"]}
          b: {command: ["sleep", "1000"], dependsOn: {a: Started}, terminationGracePeriodSeconds: 1}
          c: {command: ["sh", "-c", "trap '' TERM; echo trapped; while :; do sleep 0.05; done"], dependsOn: {b: Started}, terminationGracePeriodSeconds: 2}
          lone: {command: ["sleep", "1000"]}
        """
    )
    for name in "abc":
        await until(sup[name], lambda r: r.state is State.RUNNING)
    await eventually(lambda: any(line.line == "trapped" for line in sup["c"].logs))
    start = trio.current_time()
    await sup.stop_all()
    stopped = {
        name: round(times(sup[name], State.STOPPED)[-1] - start, 9)
        for name in ("a", "b", "c", "lone")
    }
    # c ignores SIGTERM: killed at 2 s; only then b, then a. lone does not wait for anyone.
    assert stopped == {"c": 2, "b": 2, "a": 2, "lone": 0}
    order = sorted(
        ("a", "b", "c"),
        key=lambda n: next(i for i, e in enumerate(_all_events(sup)) if e == (n, "stopped")),
    )
    assert order == ["c", "b", "a"]


async def test_a_double_forked_grandchild_does_not_survive_stop(
    clock: trio.testing.MockClock, supervise: Any, tmp_path: Path
) -> None:
    pid_file = tmp_path / "grandchild"
    sup = await supervise(
        f"""
        services:
          forker:
            command: {cmd(child_cmd("--grandchild", str(pid_file), "--ready-file", str(tmp_path / "r")))}
            readinessProbe: {{file: {{path: {tmp_path / "r"}}}, periodSeconds: 0.5}}
        """
    )
    await until(sup["forker"], lambda r: r.ready)
    grandchild = int(pid_file.read_text())
    assert pid_alive(grandchild)
    await sup.stop("forker")
    await eventually(lambda: not pid_alive(grandchild))


async def test_output_lines_carry_stream_and_pid(
    clock: trio.testing.MockClock, supervise: Any
) -> None:
    sup = await supervise(
        """
        services:
          talker:
            command: ["sh", "-c", "echo out; echo err >&2"]
            restartPolicy: OnFailure
        """
    )
    talker = sup["talker"]
    await until(talker, lambda r: r.state is State.COMPLETED)
    got = sorted((line.stream, line.line, line.pid) for line in talker.logs)
    pid = talker.events[-2].reason.removeprefix("started, pid ")
    assert got == [("stderr", "err", int(pid)), ("stdout", "out", int(pid))]


def signal_pid(pid: int, sig: int) -> None:
    os.kill(pid, sig)


def _all_events(sup: Supervisor) -> list[tuple[str, str]]:
    """Every service's events in the order they happened (wall time breaks clock ties)."""
    merged = sorted(
        (e.clock, e.time, name, e.state.value) for name, r in sup.runners.items() for e in r.events
    )
    return [(name, state) for _, _, name, state in merged]


async def test_a_service_that_cannot_be_spawned_fails_alone(
    clock: trio.testing.MockClock, supervise: Any, tmp_path: Path
) -> None:
    sup = await supervise(
        f"""
        services:
          bad:
            command: ["sleep", "1000"]
            workingDir: {tmp_path}/missing
          good:
            command: ["sleep", "1000"]
        """
    )
    await until(sup["bad"], lambda r: r.state is State.FAILED)
    assert sup["bad"].reason.startswith("cannot start: sleep:")
    assert f"{tmp_path}/missing" in sup["bad"].reason
    await until(sup["good"], lambda r: r.state is State.RUNNING)


async def test_a_chatty_exec_probe_is_cut_off_at_its_output_limit(
    clock: trio.testing.MockClock, supervise: Any
) -> None:
    # `yes` never exits: the daemon used to read and discard its output until the timeout.
    sup = await supervise(
        """
        services:
          svc:
            command: ["sleep", "1000"]
            readinessProbe: {exec: {command: ["yes"]}, timeoutSeconds: 5, failureThreshold: 1}
        """
    )
    svc = sup["svc"]
    await until(svc, lambda r: r.reason.startswith("readiness probe failed"))
    # The pipe is closed once max_output is read: yes dies of SIGPIPE, no timeout.
    assert svc.reason == "readiness probe failed: exec killed by signal 13: y"
    assert trio.current_time() - times(svc, State.RUNNING)[0] < 5


async def test_an_exec_probe_the_daemon_cannot_start_is_not_a_failure(
    clock: trio.testing.MockClock, supervise: Any
) -> None:
    sup = await supervise(
        """
        services:
          svc:
            command: ["sleep", "1000"]
            livenessProbe: {exec: {command: ["true"]}, failureThreshold: 1}
            readinessProbe: {exec: {command: ["true"]}, failureThreshold: 1}
        """
    )
    svc = sup["svc"]
    await until(svc, lambda r: r.ready)
    pid = svc.pid
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.open("/dev/null", os.O_RDONLY)  # the kernel hands out the lowest free fd
    os.close(lowest_free)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard))  # no fd more: EMFILE
    try:
        await trio.sleep(10)  # ten periods of each probe, every exec fails with EMFILE
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    # The daemon's own shortage says nothing about the service: not killed, still ready.
    assert (svc.state, svc.ready, svc.pid, svc.restarts) == (State.RUNNING, True, pid, 0)
    assert svc.probes_not_counted >= 18  # each probe, about once a second
    last = svc.detail()["probe_results"]["liveness"]
    assert last["inconclusive"] and "Too many open files" in last["message"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.slow
async def test_a_flooding_neighbour_does_not_get_a_healthy_service_killed(supervise: Any) -> None:
    """Real time: `yes` floods its stdout next to an HTTP service with a tight liveness probe."""
    port = free_port()
    web = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)]
    get = f"httpGet: {{port: {port}, path: /}}"
    sup = await supervise(
        f"""
        services:
          web:
            command: {cmd(web)}
            startupProbe: {{{get}, periodSeconds: 0.2, failureThreshold: 300}}
            livenessProbe: {{{get}, periodSeconds: 1, timeoutSeconds: 1, failureThreshold: 3}}
          flood:
            command: ["yes"]
            dependsOn: {{web: Ready}}
        """
    )
    with trio.fail_after(120):
        await until(sup["flood"], lambda r: r.state is State.RUNNING)
        await trio.sleep(10)  # what is asserted is that nothing happens meanwhile
    web_events = [e.reason for e in sup["web"].events]
    assert not [reason for reason in web_events if "liveness" in reason], web_events
    assert (sup["web"].state, sup["web"].restarts) == (State.RUNNING, 0)
    assert sup["flood"].dropped_lines > 0
    assert sup["flood"].snapshot()["dropped_lines"] == sup["flood"].dropped_lines


async def test_a_service_that_stops_itself_shows_paused_and_stops_without_the_grace(
    clock: trio.testing.MockClock, supervise: Any
) -> None:
    sup = await supervise(
        """
        services:
          napper:
            command: ["sh", "-c", "kill -STOP $$; sleep 1000"]
            terminationGracePeriodSeconds: 30
        """
    )
    napper = sup["napper"]
    await until(napper, lambda r: r.state is State.RUNNING)
    with trio.fail_after(5):  # a second of the virtual clock is 0.2 s of real time here
        await eventually(lambda: napper.snapshot()["state"] == "paused")
    snapshot = napper.snapshot()
    assert snapshot["reason"] == (
        f"pid {napper.pid} is stopped by a signal (k4sinit kill napper -s CONT resumes it)"
    )
    assert napper.state is State.RUNNING  # a view: the life goes on as it was
    start = trio.current_time()
    await napper.stop()
    # SIGTERM waits while a process is stopped; the SIGCONT after it lets it land.
    assert trio.current_time() == start
    assert napper.last_exit == ExitStatus(signal=signal.SIGTERM)


async def test_output_is_logged_line_by_line_but_a_flood_in_batches(
    clock: trio.testing.MockClock, supervise: Any
) -> None:
    with structlog.testing.capture_logs() as logged:
        sup = await supervise(
            f"""
            services:
              few: {{command: ["sh", "-c", "echo one; echo two"], restartPolicy: Never}}
              many: {{command: {cmd(print_lines(1000))}, restartPolicy: Never}}
            """
        )
        for name in ("few", "many"):
            await until(sup[name], lambda r: r.state is State.COMPLETED)
    events = [e for e in logged if e.get("stream") == "stdout"]
    assert [e["event"] for e in events if e["service"] == "few"] == ["one", "two"]
    many = [e for e in events if e["service"] == "many"]
    assert len(many) < 1000 and max(e.get("lines", 1) for e in many) > LINES_PER_EVENT
    text = "\n".join(e["event"] for e in many)
    assert text.splitlines() == [f"line {i}" for i in range(1000)]
    assert [line.line for line in sup["many"].logs] == [f"line {i}" for i in range(800, 1000)]


async def test_lines_past_the_budget_are_counted_and_noted_in_the_ring(
    clock: trio.testing.MockClock, supervise: Any
) -> None:
    # 20,000 lines at once, on a clock that stands still meanwhile: the burst is kept.
    sup = await supervise(
        f"""
        services:
          chatty: {{command: {cmd(print_lines(20000))}, restartPolicy: Never}}
        """
    )
    chatty = sup["chatty"]
    await until(chatty, lambda r: r.state is State.COMPLETED)
    assert chatty.dropped_lines == 20000 - LINE_BURST
    assert chatty.snapshot()["dropped_lines"] == 20000 - LINE_BURST
    *kept, note = [line.line for line in chatty.logs]
    assert kept[-1] == f"line {LINE_BURST - 1}"
    assert note == f"k4sinit: {20000 - LINE_BURST} lines dropped (more than 1000 lines/s)"
