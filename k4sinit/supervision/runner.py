"""One service's life: wait for dependencies, spawn, probe, restart, stop.

A :class:`ServiceRunner` owns one service. Its life is one trio task (started
by the supervisor in its nursery) that loops::

    wait for dependencies -> spawn -> probe while it runs -> it exits
        -> restart policy: backoff and loop, or end completed / failed

Stopping is cancellation of that task; the process is then terminated in a
shielded scope with the service's grace period (stop signal to the process
group, SIGKILL after the grace period). Every change of state or readiness goes
through :meth:`ServiceRunner._set`, which records the event (bounded history)
and the boot's first milestones (core/timeline.py), logs it and wakes whoever
waits on this service.
"""

from __future__ import annotations

import contextlib
import functools
import os
import random
import signal
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psutil
import trio

from k4sinit.core.restart import RestartTracker
from k4sinit.core.spec import (
    Condition,
    Dependency,
    NotifyAction,
    Probe,
    ProbeAction,
    ServiceSpec,
)
from k4sinit.core.state import Event, LogLine, ServiceDetail, ServiceSnapshot, State
from k4sinit.core.timeline import Milestones
from k4sinit.supervision import escapees, probes, process
from k4sinit.supervision.cgroups import CgroupTree, ServiceCgroup
from k4sinit.supervision.notify import Notifications, NotifyListener
from k4sinit.supervision.output import LINE_RATE, LineBudget, LineSink, pump_lines
from k4sinit.supervision.reaper import Child, ExitStatus, Reaper

EVENT_HISTORY = 64
LOG_LINES = 200
LINES_PER_EVENT = 16  # output batches longer than this are logged as one event
NOTIFICATION_LIMIT = 4096  # bytes read from a notification fd while waiting for a newline


@dataclass(frozen=True, slots=True)
class RunnerContext:
    """What every runner shares, built once by the supervisor's owner."""

    reaper: Reaper
    base_env: Mapping[str, str]
    cgroups: CgroupTree | None  # None where there is no writable cgroup2
    log: Any  # a structlog BoundLogger
    rng: random.Random
    notify: NotifyListener | None = None  # NOTIFY_SOCKET; None: notify probes cannot work
    # Where a service without a cgroup finds what it left behind (escapees.py):
    # one search for all the runners (dataclasses.replace keeps it); None: none.
    escapee_search: escapees.Search | None = None


class ServiceRunner:
    """Runs one service; see the module docstring."""

    def __init__(self, spec: ServiceSpec, ctx: RunnerContext) -> None:
        self.spec = spec
        self.name = spec.name
        self._ctx = ctx
        self._log = ctx.log.bind(service=spec.name)
        self._prober = probes.Prober(self._run_exec)
        self._cgroup = ctx.cgroups.service(spec.name) if ctx.cgroups is not None else None
        self._restarts = RestartTracker(spec.restart_policy, spec.backoff, ctx.rng)
        self.dependencies: list[tuple[Dependency, Condition]] = []
        # The fixed record; changed only through _set (pid/exit also by the life task).
        self.state = State.STOPPED
        self.ready = False
        self.reason = "not started"
        self.since = trio.current_time()
        self.pid: int | None = None
        self.restarts = 0
        self.last_exit: ExitStatus | None = None
        self.next_restart: float | None = None
        self.events: deque[Event] = deque(maxlen=EVENT_HISTORY)
        # The boot's first wait, spawn, readiness: kept apart from the bounded events.
        self.milestones = Milestones()
        self.logs: deque[LogLine] = deque(maxlen=LOG_LINES)
        self._changed = trio.Event()
        self._log_listeners: set[trio.MemorySendChannel[LogLine]] = set()
        self._life_scope: trio.CancelScope | None = None
        self._life_done = trio.Event()
        self._life_done.set()
        self._ready_since: float | None = None
        self._stable_run = False  # this run was ready for backoff.reset_after seconds
        self._kill_reason: str | None = None
        self._child: Child | None = None  # the current run's process, for send_signal
        # The current run's probes (cancelled to restart them with a reloaded spec),
        # and whether its startup probe has passed (it is not run again then).
        self._probe_scope: trio.CancelScope | None = None
        self._started_up = False
        self._dependency_wait: trio.CancelScope | None = None
        # Probe results for views: the last one of each kind, and how many said nothing.
        self.probe_results: dict[str, probes.ProbeResult] = {}
        self.probes_not_counted = 0
        # Failed checks by probe kind (startup, readiness, liveness), for metrics.
        self.probe_failures: dict[str, int] = {}
        self.dropped_lines = 0  # output lines over the budget, since the daemon started
        # What the current (or last) run said over NOTIFY_SOCKET, if it may.
        self.notifications: Notifications | None = None

    # --- the one path for state changes ---------------------------------------

    def _set(
        self, state: State | None = None, reason: str | None = None, *, ready: bool | None = None
    ) -> None:
        """Change state, readiness and/or reason: record, log, and wake waiters."""
        new_state = self.state if state is None else state
        new_ready = self.ready if ready is None else ready
        new_reason = self.reason if reason is None else reason
        if (new_state, new_ready, new_reason) == (self.state, self.ready, self.reason):
            return
        now = trio.current_time()
        if new_state is not self.state:
            self.since = now
        if new_ready and not self.ready:
            self._ready_since = now
        elif not new_ready:
            self._note_stability()
            self._ready_since = None
        self.state, self.ready, self.reason = new_state, new_ready, new_reason
        self.events.append(Event(time.time(), now, new_state, new_ready, new_reason))
        self.milestones.note(new_state, new_ready, now)
        self._log.info("state", state=new_state.value, ready=new_ready, reason=new_reason)
        self._changed.set()
        self._changed = trio.Event()

    # --- Dependency -----------------------------------------------------------

    def satisfies(self, condition: Condition) -> bool:
        if condition is Condition.COMPLETED:
            return self.state is State.COMPLETED
        if condition is Condition.READY:
            return self.ready and self.state is State.RUNNING
        return self.state is State.RUNNING

    def unmet_reason(self, condition: Condition) -> str:
        if self.state in (State.FAILED, State.STOPPED):
            return f"{self.state.value} ({self.reason})"
        unmet = {
            Condition.COMPLETED: "not completed",
            Condition.READY: "not ready",
            Condition.STARTED: "not started",
        }[condition]
        return unmet if self.state is State.RUNNING else f"{unmet} ({self.state.value})"

    async def changed(self) -> None:
        await self._changed.wait()

    # --- control --------------------------------------------------------------

    @property
    def active(self) -> bool:
        """The life task is running (waiting, running or in backoff)."""
        return not self._life_done.is_set()

    def start(
        self, nursery: trio.Nursery, *, reset: bool = False, reason: str = "starting"
    ) -> bool:
        """Start the service's life in ``nursery``; False if it is already active.

        ``reset`` forgets past quick deaths (an operator's explicit start);
        ``reason`` is the first event's (a reload says so).
        """
        if self.active:
            return False
        if reset:
            self._restarts.reset()
        self._life_done = trio.Event()
        self._life_scope = trio.CancelScope()
        # Set now, not when the task first runs: dependents see "waiting", not "stopped".
        self._set(State.WAITING, reason, ready=False)
        nursery.start_soon(
            self._life, self._life_scope, self._life_done, name=f"service {self.name}"
        )
        return True

    async def stop(self, reason: str = "stopped by request") -> None:
        """Stop the service and wait until its processes are gone. Idempotent.

        Stops the life that is current when called. A :meth:`start` that comes in
        while it ends (the same scheduling batch as this wake-up) begins a new
        life: the later request wins, and this stop leaves that life's state alone.
        """
        scope, done = self._life_scope, self._life_done
        if scope is not None:
            scope.cancel()
        await done.wait()
        if self._life_done is done and not self.state.down:
            self._set(State.STOPPED, reason, ready=False)

    def replace_spec(self, spec: ServiceSpec, reason: str) -> None:
        """A reload's new spec for a service that is not active; it runs from the next start.

        ``reason`` is recorded as one event. RuntimeError while the life is active
        (stop it first: :meth:`stop`).
        """
        if self.active:
            raise RuntimeError(f"{self.name}: cannot replace the spec of an active service")
        self.spec = spec
        self._restarts = RestartTracker(spec.restart_policy, spec.backoff, self._ctx.rng)
        self._set(reason=reason)

    def update_spec(self, spec: ServiceSpec, reason: str) -> None:
        """A reload's change of the fields that apply live (core/reload.py: Apply.LIVE).

        The process keeps running. Probes of the current run restart with the new
        spec (a startup probe that has passed is not run again); readiness stays
        as it is until the new probe's first verdict, or becomes true when the
        readiness probe is gone. Restart policy and backoff decide from the next
        exit (the count of quick deaths is kept), stop signal and grace apply at
        the next stop, dependencies before the next start (a wait for them
        re-checks at once). ``reason`` is recorded as one event.
        """
        old, self.spec = self.spec, spec
        self._restarts.policy, self._restarts.backoff = spec.restart_policy, spec.backoff
        probes_changed = (old.startup_probe, old.readiness_probe, old.liveness_probe) != (
            spec.startup_probe,
            spec.readiness_probe,
            spec.liveness_probe,
        )
        # Not while a probe is killing the process: that stop must finish as it began.
        if probes_changed and self._probe_scope is not None and self._kill_reason is None:
            self._probe_scope.cancel()
        ready = None
        if self.state is State.RUNNING and self._started_up and spec.readiness_probe is None:
            ready = True
        if self._dependency_wait is not None:
            self._dependency_wait.cancel()
        self._set(reason=reason, ready=ready)

    # --- the life task ----------------------------------------------------------

    async def _life(self, scope: trio.CancelScope, done: trio.Event) -> None:
        try:
            with scope:
                while True:
                    await self._wait_for_dependencies()
                    try:
                        status, why, stable = await self._run_process()
                    except process.SpawnError as exc:
                        # Retrying cannot help a missing binary: a clear state, no crash loop.
                        self._set(State.FAILED, f"cannot start: {exc}", ready=False)
                        return
                    finally:
                        await self._kill_escapees()
                    decision = self._restarts.on_exit(status, stable, why)
                    if decision.final_state is not None:
                        self._set(decision.final_state, decision.reason, ready=False)
                        return
                    self.next_restart = trio.current_time() + decision.delay
                    self._set(
                        State.BACKOFF, f"{why}; restarting in {decision.delay:.1f}s", ready=False
                    )
                    await trio.sleep(decision.delay)
                    self.next_restart = None
                    self.restarts += 1
        except Exception as exc:
            # A bug in one service's life must not take the supervisor (PID 1's
            # whole node) down with it: that service ends failed, visibly.
            self._log.exception("service life failed")
            self._set(State.FAILED, f"internal error: {exc!r}", ready=False)
        finally:
            self.next_restart = None
            done.set()

    async def _kill_escapees(self) -> None:
        """Without a cgroup: kill what the run left outside its process group.

        Those are the processes among k4sinit's descendants that carry this
        service's tag (escapees.py): setsid'd or double-forked children, which
        the stop signal to the process group does not reach. Runs shielded,
        bounded; with a cgroup, the cgroup's kill has done this already.
        """
        search = self._ctx.escapee_search
        if self._cgroup is not None or search is None:
            return
        with trio.CancelScope(shield=True):
            left = await search.find(self.name)
            if not left:
                return
            self._log.info(
                "killing processes the service left outside its process group",
                pids=[p.pid for p in left],
            )
            if alive := await escapees.kill(left):
                self._log.error("processes of the service will not die", pids=alive)

    async def _wait_for_dependencies(self) -> None:
        while True:
            unmet = next(((d, c) for d, c in self.dependencies if not d.satisfies(c)), None)
            if unmet is None:
                return
            dep, condition = unmet
            self._set(
                State.WAITING, f"waiting for {dep.name}: {dep.unmet_reason(condition)}", ready=False
            )
            # A reload that changes the dependencies cancels this wait (update_spec).
            try:
                with trio.CancelScope() as self._dependency_wait:
                    await dep.changed()
            finally:
                self._dependency_wait = None

    async def _run_process(self) -> tuple[ExitStatus | None, str, bool]:
        """Run the process once; returns (status, why it ended, whether the run was stable).

        ``status`` is None when fork itself failed. Raises SpawnError when the
        program cannot be started at all.
        """
        env = {**self._ctx.base_env, **dict(self.spec.env), **self._notify_env()}
        cgroup = self._cgroup
        if cgroup is not None:
            await cgroup.kill_and_wait()  # nothing of an earlier run may linger
            try:
                warnings = cgroup.apply(self.spec.resources)
            except OSError as exc:
                raise process.SpawnError(f"cgroup {cgroup.path}: {exc.strerror or exc}") from exc
            for warning in warnings:
                self._log.warning(warning)
            oom_kills = cgroup.oom_kills()
        with contextlib.ExitStack() as run:
            fd = self.spec.notification_fd
            ready_r, ready_w = os.pipe() if fd is not None else (None, None)
            if ready_r is not None:
                run.callback(os.close, ready_r)
            try:
                spawned = process.spawn(
                    self._ctx.reaper,
                    self.spec.argv,
                    env=env,
                    cwd=self.spec.working_dir,
                    executable=self.spec.executable,
                    cgroup_procs=cgroup.procs_file if cgroup else None,
                    pass_fd=None if fd is None or ready_w is None else (fd, ready_w),
                )
            except process.SpawnError:
                self.pid = None
                raise
            except OSError as exc:  # fork itself failed (EAGAIN, ENOMEM): worth a retry
                self.pid = None
                return None, f"spawn failed: {exc.strerror}", False
            finally:
                if ready_w is not None:
                    os.close(ready_w)
            # No checkpoint since the spawn: attached before the listener reads a message.
            if self._ctx.notify is not None and self.spec.uses_notify_socket:
                self.notifications = Notifications(self.name)
                where = cgroup.path if cgroup is not None else None
                run.enter_context(
                    self._ctx.notify.attach(self.notifications, spawned.child.pid, where)
                )
            status, why = await self._supervise_run(spawned, ready_r)
        if cgroup is not None and cgroup.oom_kills() > oom_kills:
            why += f" (out of memory: limit {_bytes(self.spec.resources.memory)})"
        return status, why, self._stable_run

    def _notify_env(self) -> dict[str, str]:
        """``NOTIFY_SOCKET`` (and ``WATCHDOG_USEC``) for a service with a notify probe.

        Raises SpawnError when the daemon has no notify socket (a tool's supervisor).
        """
        if not self.spec.uses_notify_socket:
            return {}
        if self._ctx.notify is None:
            raise process.SpawnError("a notify probe, but this supervisor has no NOTIFY_SOCKET")
        env = {"NOTIFY_SOCKET": self._ctx.notify.address}
        liveness = self.spec.liveness_probe
        if liveness is not None and isinstance(liveness.action, NotifyAction):
            env["WATCHDOG_USEC"] = str(round(liveness.period * 1_000_000))
        return env

    async def _supervise_run(
        self, spawned: process.Spawned, ready_fd: int | None
    ) -> tuple[ExitStatus, str]:
        """Probe and capture the spawned process until it exits; (status, why it ended)."""
        cgroup = self._cgroup
        child = spawned.child
        self.pid = child.pid
        self._child = child
        self._kill_reason = None
        self._stable_run = False
        has_startup = self.spec.startup_probe is not None
        self._set(
            State.STARTING if has_startup else State.RUNNING,
            f"started, pid {child.pid}",
            ready=not has_startup and self._ready_when_running,
        )
        capture = trio.CancelScope(shield=True)
        status: ExitStatus | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._capture, spawned, capture)
            try:
                async with trio.open_nursery() as probing:
                    probing.start_soon(self._probe_again_on_reload, child, ready_fd)
                    status = await child.wait()
                    probing.cancel_scope.cancel()
            finally:
                with trio.CancelScope(shield=True):
                    if child.running:
                        self._set(State.STOPPING, "stopping", ready=False)
                    status = self.last_exit = await self._terminate(child)
                    if cgroup is not None and not await cgroup.kill_and_wait():
                        self._log.error("cgroup not empty after kill", cgroup=str(cgroup.path))
                    capture.deadline = trio.current_time() + process.DRAIN_SECONDS
        self._note_stability()
        return status, self._kill_reason or status.describe()

    def _note_stability(self) -> None:
        """Remember that this run counted as stable (ready for ``reset_after``)."""
        since = self._ready_since
        if since is not None and trio.current_time() - since >= self.spec.backoff.reset_after:
            self._stable_run = True

    async def _terminate(self, child: Child) -> ExitStatus:
        """Terminate with the grace period; bounded even if SIGKILL cannot land."""
        grace = self.spec.termination_grace_period
        with trio.move_on_after(grace + 10):
            return await process.terminate(child, self.spec.stop_signal, grace)
        self._log.error("process will not die", pid=child.pid)
        return ExitStatus(signal=signal.SIGKILL)

    async def _capture(self, spawned: process.Spawned, scope: trio.CancelScope) -> None:
        budget = LineBudget(trio.current_time())  # one per run, stdout and stderr together
        with scope:
            async with trio.open_nursery() as nursery:
                for fd, stream in ((spawned.stdout, "stdout"), (spawned.stderr, "stderr")):
                    sink = self._line_sink(stream, spawned.child.pid)
                    pump = functools.partial(pump_lines, budget=budget)
                    nursery.start_soon(pump, trio.lowlevel.FdStream(fd), sink)

    def _line_sink(self, stream: str, pid: int) -> LineSink:
        """Where a batch of output lines goes: the ring, followers and the log.

        A few lines log one event each; a longer batch (a flood) logs as ONE
        event. Lines dropped for the budget are counted (``dropped_lines``) and
        noted in the ring, to followers and in the log before the lines after them.
        """
        log = self._log.bind(stream=stream, pid=pid)

        def on_lines(lines: Sequence[str], dropped: int) -> None:
            now = time.time()
            entries = [LogLine(now, stream, pid, line) for line in lines]
            if dropped:
                self.dropped_lines += dropped
                note = f"k4sinit: {dropped} lines dropped (more than {LINE_RATE:g} lines/s)"
                entries.insert(0, LogLine(now, stream, pid, note))
                log.warning("output lines dropped", dropped=dropped)
            self.logs.extend(entries)
            if len(lines) <= LINES_PER_EVENT:
                for line in lines:  # the usual few lines: one console line each, as written
                    log.info(line)
            else:  # a flood: one event for the batch, not one per line
                log.info("\n".join(lines), lines=len(lines))
            for listener in list(self._log_listeners):
                try:
                    for entry in entries:
                        listener.send_nowait(entry)
                except trio.WouldBlock:
                    pass  # a slow follower misses lines rather than stalling the service
                except trio.BrokenResourceError:
                    self._log_listeners.discard(listener)

        return on_lines

    @contextlib.contextmanager
    def follow_logs(self) -> Iterator[trio.MemoryReceiveChannel[LogLine]]:
        """A channel of the new log lines while the ``with`` block lasts.

        Leaving the block (also by cancellation) unsubscribes at once: a follower of a
        service that prints nothing must not stay behind until its next line. A
        follower more than 1000 lines behind misses lines rather than stall the service.
        """
        send, receive = trio.open_memory_channel[LogLine](1000)
        self._log_listeners.add(send)
        try:
            with receive:
                yield receive
        finally:
            self._log_listeners.discard(send)
            send.close()

    # --- probes -----------------------------------------------------------------

    async def _probe_again_on_reload(self, child: Child, ready_fd: int | None) -> None:
        """:meth:`_probe` for this run, started over when :meth:`update_spec` cancels it."""
        self._started_up = False
        try:
            while True:
                with trio.CancelScope() as scope:
                    self._probe_scope = scope
                    await self._probe(child, ready_fd)
                    return
        finally:
            self._probe_scope = None

    @property
    def _ready_when_running(self) -> bool:
        """Nothing but running makes the service ready (no probe, no notification fd)."""
        return self.spec.readiness_probe is None and self.spec.notification_fd is None

    async def _probe(self, child: Child, ready_fd: int | None) -> None:
        spec = self.spec
        if spec.startup_probe is not None and not self._started_up:
            ok, result = await self._probe_until("startup", spec.startup_probe, lambda ok: True)
            if not ok:
                await self._kill(child, f"startup probe failed: {result.message}")
                return
            self._set(State.RUNNING, "startup probe passed", ready=self._ready_when_running)
        self._started_up = True
        readiness = spec.readiness_probe
        async with trio.open_nursery() as nursery:
            if readiness is not None and isinstance(readiness.action, NotifyAction):
                nursery.start_soon(self._watch_notified_readiness)
            elif readiness is not None:
                nursery.start_soon(self._watch_readiness, readiness)
            if ready_fd is not None:
                nursery.start_soon(self._watch_notification_fd, ready_fd)
            if spec.liveness_probe is not None:
                nursery.start_soon(self._watch_liveness, spec.liveness_probe, child)

    async def _watch_notified_readiness(self) -> None:
        """Ready on READY=1, not ready again after STOPPING=1; no polling."""
        notes = self.notifications
        assert notes is not None  # set with the spawn of a service with a notify probe
        while True:
            status = f" (STATUS={notes.status})" if notes.status else ""
            if notes.stopping:
                self._set(reason=f"stopping (STOPPING=1){status}", ready=False)
            elif notes.ready:
                self._set(reason="ready (READY=1)", ready=True)
            else:
                self._set(reason=f"waiting for READY=1 on NOTIFY_SOCKET{status}", ready=False)
            await notes.changed()

    async def _watch_notification_fd(self, fd: int) -> None:
        """s6's notification-fd: ready at the first newline the service writes.

        Reads at most :data:`NOTIFICATION_LIMIT` bytes without a newline; then,
        or at end of file, the service stays not ready and the reason says why.
        """
        n = self.spec.notification_fd
        self._set(reason=f"waiting for a newline on notification fd {n}")
        seen = 0
        stream = trio.lowlevel.FdStream(os.dup(fd))
        async with stream:
            while seen < NOTIFICATION_LIMIT:
                data = await stream.receive_some(NOTIFICATION_LIMIT - seen)
                if not data:
                    self._set(reason=f"closed notification fd {n} without a newline")
                    return
                if b"\n" in data:
                    self._set(reason=f"ready (newline on notification fd {n})", ready=True)
                    return
                seen += len(data)
        self._set(reason=f"wrote {seen} bytes without a newline on notification fd {n}")

    async def _run_exec(self, argv: Sequence[str], seconds: float) -> tuple[int | None, str]:
        env = {**self._ctx.base_env, **dict(self.spec.env)}
        try:
            status, output = await process.run_captured(
                self._ctx.reaper, argv, env=env, time_limit=seconds, cwd=self.spec.working_dir
            )
        except process.SpawnError as exc:
            return 127, str(exc)
        except OSError as exc:  # EMFILE and the like: the daemon's shortage, not the service's
            raise probes.ProbeInconclusive(
                f"k4sinit cannot run {argv[0]}: {exc.strerror or exc}"
            ) from exc
        if status is None:
            return None, output
        return (status.code if status.code is not None else -(status.signal or 0)), output

    def _check(self, kind: str, probe: Probe) -> probes.CheckFn:
        """The prober's check, keeping the last result of the ``kind`` probe for views.

        A notify probe (as liveness) is answered from the service's WATCHDOG=1 messages.
        """

        async def check(action: ProbeAction, timeout: float) -> probes.ProbeResult:  # noqa: ASYNC109
            if isinstance(action, NotifyAction):
                result = self._watchdog(probe.period)
            else:
                result = await self._prober.check(action, timeout)
            previous = self.probe_results.get(kind)
            self.probe_results[kind] = result
            if not result.ok and not result.inconclusive:
                self.probe_failures[kind] = self.probe_failures.get(kind, 0) + 1
            if result.inconclusive:
                self.probes_not_counted += 1
                if previous is None or not previous.inconclusive:
                    self._log.warning("probe not counted", probe=kind, reason=result.message)
            return result

        return check

    async def _probe_until(
        self, kind: str, probe: Probe, stop_on: Callable[[bool], bool]
    ) -> tuple[bool, probes.ProbeResult]:
        """Run ``probe`` until a verdict for which ``stop_on(verdict)`` holds."""
        verdict: list[tuple[bool, probes.ProbeResult]] = []
        with trio.CancelScope() as scope:

            def on_verdict(ok: bool, result: probes.ProbeResult) -> None:
                if stop_on(ok):
                    verdict.append((ok, result))
                    scope.cancel()

            fast = kind == "startup"
            await probes.run_probe(probe, self._check(kind, probe), on_verdict, fast_first=fast)
        return verdict[0]

    async def _watch_readiness(self, probe: Probe) -> None:
        def on_verdict(ok: bool, result: probes.ProbeResult) -> None:
            reason = "ready" if ok else f"readiness probe failed: {result.message}"
            self._set(reason=reason, ready=ok)

        check = self._check("readiness", probe)
        await probes.run_probe(probe, check, on_verdict, fast_first=True)

    def _watchdog(self, period: float) -> probes.ProbeResult:
        """A notify liveness check: did WATCHDOG=1 come within the last ``period``?"""
        notes = self.notifications
        assert notes is not None  # set with the spawn of a service with a notify probe
        age = trio.current_time() - notes.watchdog_at
        if age < period:
            return probes.ProbeResult(True, f"WATCHDOG=1 {age:.1f}s ago")
        return probes.ProbeResult(False, f"no WATCHDOG=1 for {age:.1f}s (every {period:g}s due)")

    async def _watch_liveness(self, probe: Probe, child: Child) -> None:
        _, result = await self._probe_until("liveness", probe, lambda ok: not ok)
        await self._kill(child, f"liveness probe failed: {result.message}")

    def send_signal(self, signum: int) -> int:
        """Signal the service's main process (``k4sinit kill``); returns its pid.

        What follows is the service's own business: an exit it causes is handled
        by the restart policy like any other. RuntimeError when nothing runs.
        """
        child = self._child
        # Child.signal never signals a reaped pid (which the kernel may have reused).
        if child is None or not child.signal(signum):
            raise RuntimeError(f"{self.name} has no running process ({self.state.value})")
        self._log.info("signal sent by request", signal=signal.Signals(signum).name, pid=child.pid)
        return child.pid

    async def _kill(self, child: Child, reason: str) -> None:
        self._kill_reason = reason
        self._set(State.STOPPING, reason, ready=False)
        await process.terminate(child, self.spec.stop_signal, self.spec.termination_grace_period)

    # --- views ------------------------------------------------------------------

    @property
    def cgroup(self) -> ServiceCgroup | None:
        """The service's cgroup (None without cgroups); its stats may be read from a thread."""
        return self._cgroup

    def snapshot(self) -> ServiceSnapshot:
        """The service's status as plain data (the wire form of ``status``).

        ``state`` is ``paused`` while the main process is stopped by a signal
        (SIGSTOP, SIGTSTP, a debugger): a view only, the life goes on as it was.
        """
        now = trio.current_time()
        pid = self.pid if self.state in (State.STARTING, State.RUNNING, State.STOPPING) else None
        state, reason = self.state.value, self.reason
        if pid is not None and self.state is not State.STOPPING and _stopped(pid):
            state = "paused"
            reason = (
                f"pid {pid} is stopped by a signal (k4sinit kill {self.name} -s CONT resumes it)"
            )
        return {
            "name": self.name,
            "state": state,
            "ready": self.ready,
            "pid": pid,
            "restarts": self.restarts,
            "last_exit": self.last_exit.to_json() if self.last_exit else None,
            "since": round(now - self.since, 3),
            "reason": reason,
            "next_restart_in": (
                round(self.next_restart - now, 3) if self.next_restart is not None else None
            ),
            "depends_on": {d.name: c.value for d, c in self.dependencies},
            "probes_not_counted": self.probes_not_counted,
            "dropped_lines": self.dropped_lines,
            "notify_status": self.notifications.status if self.notifications else None,
        }

    def _cgroup_detail(self) -> dict[str, Any] | None:
        if self._cgroup is None:
            return None
        limits = self.spec.resources
        return {
            "path": str(self._cgroup.path),
            "limits": {
                "memory": limits.memory,
                "cpu_millis": limits.cpu_millis,
                "pids": limits.pids,
                "cpu_weight": limits.cpu_weight,
            },
            **self._cgroup.stats().to_json(),
        }

    def _notify_detail(self) -> dict[str, Any] | None:
        notes = self.notifications
        if notes is None:
            return None
        return {
            "ready": notes.ready,
            "stopping": notes.stopping,
            "status": notes.status,
            "messages": notes.messages,
            "dropped_flood": notes.dropped,
            "watchdog_age": round(trio.current_time() - notes.watchdog_at, 3),
        }

    def detail(self) -> ServiceDetail:
        """:meth:`snapshot` plus spec summary, recent events and log lines."""
        spec = self.spec
        return {
            **self.snapshot(),
            "spec": {
                "command": list(spec.argv),
                "restart_policy": spec.restart_policy.value,
                "working_dir": spec.working_dir,
                "stop_signal": spec.stop_signal.name,
                "termination_grace_period": spec.termination_grace_period,
                "probes": {
                    kind: _describe_probe(p)
                    for kind, p in (
                        ("startup", spec.startup_probe),
                        ("readiness", spec.readiness_probe),
                        ("liveness", spec.liveness_probe),
                    )
                    if p is not None
                },
            },
            "probe_results": {
                kind: {"ok": r.ok, "message": r.message, "inconclusive": r.inconclusive}
                for kind, r in self.probe_results.items()
            },
            "cgroup": self._cgroup_detail(),
            "notify": self._notify_detail(),
            "rss_bytes": _rss(self.snapshot()["pid"]),
            "events": [e.to_json() for e in self.events],
            "logs": [entry.to_json() for entry in list(self.logs)[-20:]],
        }


def _stopped(pid: int) -> bool:
    """True if ``pid`` is stopped (state T, or t under a tracer) per /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False  # gone meanwhile, or no procfs
    after_name = stat.rfind(b")")  # the name is in parentheses and may hold anything
    return stat[after_name + 2 : after_name + 3] in (b"T", b"t")


def _rss(pid: int | None) -> int | None:
    """The resident memory of the service's main process (not its children), if running."""
    if pid is None:
        return None
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None  # it exited meanwhile


def _bytes(count: int | None) -> str:
    if count is None:
        return "none"
    for unit, size in (("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)):
        if count >= size and count % size == 0:
            return f"{count // size}{unit}"
    return str(count)


def _describe_probe(probe: Probe) -> str:
    return f"{probes.describe(probe.action)} every {probe.period:g}s, timeout {probe.timeout:g}s"
