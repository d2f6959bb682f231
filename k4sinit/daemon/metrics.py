"""What the metrics endpoint says: the supervisor's records, the cgroups, k4sinit itself.

:func:`collect` takes every service's record in the trio thread (the same
snapshot ``status`` answers with, so the two agree), then reads the cgroup
files and ``/proc/self`` and renders the text in a worker thread: a scrape of
many services never holds the event loop for the file reads.

The metrics (``service`` label on every ``k4sinit_service_*``):

=========================================  ========  ===========================================
name                                       type      what
=========================================  ========  ===========================================
k4sinit_service_state{state}               gauge     1 for the current state, 0 for the others
                                                     (waiting ... completed, and paused)
k4sinit_service_ready                      gauge     1 when ready
k4sinit_service_restarts_total             counter   restarts by policy
k4sinit_service_last_exit_code             gauge     the last exit's code (absent: none, or a
                                                     signal)
k4sinit_service_last_exit_signal           gauge     the signal number that ended the last run
k4sinit_service_time_in_state_seconds      gauge     seconds since the state last changed
k4sinit_service_probe_failures_total       counter   failed checks, by ``probe`` (startup,
                                                     readiness, liveness)
k4sinit_service_probes_not_counted_total   counter   checks k4sinit could not make fairly
k4sinit_service_log_lines_dropped_total    counter   output lines over the rate budget
k4sinit_service_memory_bytes               gauge     cgroup memory.current
k4sinit_service_cpu_seconds_total          counter   cgroup cpu.stat usage_usec / 1e6
k4sinit_service_pids                       gauge     cgroup pids.current
k4sinit_service_oom_kills_total            counter   cgroup memory.events oom_kill
k4sinit_event_loop_lag_seconds             gauge     the last sleep overshoot of :class:`LoopLag`
k4sinit_event_loop_lag_max_seconds         gauge     the largest in the last minute
k4sinit_log_lines_dropped_total            counter   k4sinit's own log lines dropped (slow
                                                     console)
k4sinit_orphans_reaped_total               counter   re-parented processes reaped
k4sinit_build_info{version}                gauge     1
process_resident_memory_bytes              gauge     k4sinit's RSS
process_open_fds, process_max_fds          gauge     its descriptors, RLIMIT_NOFILE
process_cpu_seconds_total                  counter   its user + system CPU time
process_start_time_seconds                 gauge     when it started (Unix time)
=========================================  ========  ===========================================

The cgroup metrics are absent for a service without a cgroup (``run
--no-cgroups``) and, each, where the controller is missing.
"""

from __future__ import annotations

import os
import resource
from collections import deque
from dataclasses import dataclass

import psutil
import trio

from k4sinit import __version__
from k4sinit.core.log import NonBlockingWriter
from k4sinit.core.prometheus import Family, render
from k4sinit.core.state import ExitStatus, ServiceSnapshot, State
from k4sinit.supervision.cgroups import ServiceCgroup, Stats
from k4sinit.supervision.reaper import Reaper
from k4sinit.supervision.supervisor import Supervisor

LAG_INTERVAL = 0.5  # seconds between two measurements of the event loop's lag
LAG_WINDOW = 120  # measurements kept for the maximum (a minute)
STATES = (*(s.value for s in State), "paused")


class LoopLag:
    """Measures the event loop's lag: how late a ``trio.sleep(LAG_INTERVAL)`` wakes up."""

    def __init__(self) -> None:
        self.last = 0.0
        self._recent: deque[float] = deque(maxlen=LAG_WINDOW)

    @property
    def max(self) -> float:
        """The largest lag of the last :data:`LAG_WINDOW` measurements."""
        return max(self._recent, default=0.0)

    async def run(self) -> None:
        """Measure until cancelled."""
        while True:
            before = trio.current_time()
            await trio.sleep(LAG_INTERVAL)
            self.last = round(max(0.0, trio.current_time() - before - LAG_INTERVAL), 6)
            self._recent.append(self.last)


@dataclass(frozen=True, slots=True)
class _Service:
    """One service's record, taken in the trio thread."""

    snapshot: ServiceSnapshot
    last_exit: ExitStatus | None
    probe_failures: dict[str, int]
    cgroup: ServiceCgroup | None


@dataclass(frozen=True, slots=True)
class _Daemon:
    """k4sinit's own counters, taken in the trio thread."""

    lag: float
    lag_max: float
    log_lines_dropped: int | None
    orphans_reaped: int


async def collect(
    supervisor: Supervisor, reaper: Reaper, lag: LoopLag, writer: NonBlockingWriter | None
) -> bytes:
    """The text format of every metric (module docstring), UTF-8."""
    services = [
        _Service(r.snapshot(), r.last_exit, dict(r.probe_failures), r.cgroup)
        for r in supervisor.runners.values()
    ]
    daemon = _Daemon(
        lag.last,
        lag.max,
        writer.dropped_total if writer is not None else None,
        reaper.orphans_reaped,
    )
    return await trio.to_thread.run_sync(_render, services, daemon)


def _render(services: list[_Service], daemon: _Daemon) -> bytes:
    """Read the cgroups and /proc/self, and write the text (in a worker thread)."""
    stats = {s.snapshot["name"]: s.cgroup.stats() for s in services if s.cgroup is not None}
    return render([*_service_families(services, stats), *_daemon_families(daemon)]).encode()


def _service_families(services: list[_Service], stats: dict[str, Stats]) -> list[Family]:
    state = Family("k4sinit_service_state", "The service's state: 1 for the current one.")
    ready = Family("k4sinit_service_ready", "1 when the service is ready.")
    restarts = Family("k4sinit_service_restarts_total", "Restarts by policy.", "counter")
    code = Family("k4sinit_service_last_exit_code", "The exit code of the service's last run.")
    signal = Family(
        "k4sinit_service_last_exit_signal", "The signal that ended the service's last run."
    )
    in_state = Family(
        "k4sinit_service_time_in_state_seconds", "Seconds since the service's state changed."
    )
    probe_failures = Family(
        "k4sinit_service_probe_failures_total", "Failed probe checks, by probe.", "counter"
    )
    not_counted = Family(
        "k4sinit_service_probes_not_counted_total",
        "Probe checks k4sinit could not make fairly (not counted).",
        "counter",
    )
    dropped = Family(
        "k4sinit_service_log_lines_dropped_total",
        "Output lines dropped over the rate budget.",
        "counter",
    )
    memory = Family("k4sinit_service_memory_bytes", "cgroup memory.current.")
    cpu = Family("k4sinit_service_cpu_seconds_total", "cgroup CPU time used.", "counter")
    pids = Family("k4sinit_service_pids", "cgroup pids.current.")
    ooms = Family("k4sinit_service_oom_kills_total", "cgroup OOM kills.", "counter")
    for s in services:
        snap = s.snapshot
        name = {"service": snap["name"]}
        for one in STATES:
            state.add(1 if snap["state"] == one else 0, {**name, "state": one})
        ready.add(1 if snap["ready"] else 0, name)
        restarts.add(snap["restarts"], name)
        if s.last_exit is not None and s.last_exit.code is not None:
            code.add(s.last_exit.code, name)
        if s.last_exit is not None and s.last_exit.signal is not None:
            signal.add(s.last_exit.signal, name)
        in_state.add(snap["since"], name)
        for kind, count in sorted(s.probe_failures.items()):
            probe_failures.add(count, {**name, "probe": kind})
        not_counted.add(snap["probes_not_counted"], name)
        dropped.add(snap["dropped_lines"], name)
        got = stats.get(snap["name"])
        if got is None:
            continue
        for family, value in (
            (memory, got.memory_bytes),
            (cpu, got.cpu_seconds),
            (pids, got.pids),
            (ooms, got.oom_kills),
        ):
            if value is not None:
                family.add(value, name)
    return [
        state,
        ready,
        restarts,
        code,
        signal,
        in_state,
        probe_failures,
        not_counted,
        dropped,
        memory,
        cpu,
        pids,
        ooms,
    ]


def _daemon_families(daemon: _Daemon) -> list[Family]:
    families = [
        Family("k4sinit_event_loop_lag_seconds", "How late the event loop woke up last."),
        Family(
            "k4sinit_event_loop_lag_max_seconds", "The event loop's largest lag in the last minute."
        ),
        Family(
            "k4sinit_log_lines_dropped_total",
            "k4sinit's own log lines dropped (output too slow).",
            "counter",
        ),
        Family("k4sinit_orphans_reaped_total", "Re-parented processes reaped.", "counter"),
        Family("k4sinit_build_info", "k4sinit's version."),
    ]
    lag, lag_max, dropped, orphans, build = families
    lag.add(daemon.lag)
    lag_max.add(daemon.lag_max)
    if daemon.log_lines_dropped is not None:
        dropped.add(daemon.log_lines_dropped)
    orphans.add(daemon.orphans_reaped)
    build.add(1, {"version": __version__})
    return [*families, *_process_families()]


def _process_families() -> list[Family]:
    """The standard ``process_*`` metrics of k4sinit itself (as client libraries name them)."""
    me = psutil.Process()
    rss = Family("process_resident_memory_bytes", "Resident memory size in bytes.")
    fds = Family("process_open_fds", "Number of open file descriptors.")
    max_fds = Family("process_max_fds", "Maximum number of open file descriptors.")
    cpu = Family("process_cpu_seconds_total", "User and system CPU time in seconds.", "counter")
    start = Family("process_start_time_seconds", "Start time of the process (Unix time).")
    rss.add(me.memory_info().rss)
    fds.add(len(os.listdir("/proc/self/fd")))
    max_fds.add(resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    times = os.times()
    cpu.add(round(times.user + times.system, 3))
    start.add(round(me.create_time(), 3))
    return [rss, fds, max_fds, cpu, start]
