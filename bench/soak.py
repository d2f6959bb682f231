"""Soak: one daemon through restarts, connection churn, log followers and an output flood.

One ``k4sinit run`` lives through four phases in a row; the script prints the
daemon's RSS and open fds at the start and end of each, how ``status`` answered
meanwhile (a background thread asks every 100 ms), and the goals of issue 11:

1. ``restarts``: ``crasher`` exits at once, restarted with no backoff, N times.
2. ``connect``: N connect/close on the control socket, nothing sent.
3. ``followers``: N ``logs -f`` on a service that prints nothing, opened in
   waves and closed by the client (each must leave nothing behind).
4. ``flood``: ``flood`` runs ``yes`` for S seconds next to five services with
   default liveness probes (period 1 s, timeout 1 s, threshold 3): three exec
   probes (``true``) and two file probes. A liveness kill of any of them during
   the flood is a false kill (nothing is wrong with them).

Goals: RSS at the end within 10% of the start, no fd growth, 0 false liveness
kills, every ``status`` answered within 100 ms.

Run: ``.venv/bin/python bench/soak.py [--restarts 10000] [--connects 100000]
[--followers 10000] [--flood 60]`` (about 5 minutes with the defaults).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import DaemonRun, Services, exit_on_signals, machine, summary, table, yaml_list

from k4sinit import control

PROBED = ("probe-exec-1", "probe-exec-2", "probe-exec-3", "probe-file-1", "probe-file-2")


def make_config(tmp: Path) -> str:
    go, flood, alive = tmp / "go", tmp / "flood", tmp / "alive"
    alive.touch()
    lines = ["services:"]
    # Sleeps until GO exists; from then on every life exits at once.
    lines += [
        "  crasher:",
        f"    command: {yaml_list(['sh', '-c', f'[ -e {go} ] && exit 0; exec sleep 100000'])}",
        "    restartBackoff: {initialSeconds: 0, maxSeconds: 0, jitter: 0, multiplier: 1}",
    ]
    lines += [
        "  quiet:",
        f"    command: {yaml_list(['sleep', '100000'])}",
        "  flood:",
        f"    command: {yaml_list(['sh', '-c', f'[ -e {flood} ] && exec yes flood-line; exec sleep 100000'])}",
    ]
    for name in PROBED:
        action = (
            'exec: {command: ["true"]}'
            if name.startswith("probe-exec")
            else f"file: {{path: {alive}}}"
        )
        lines += [
            f"  {name}:",
            f"    command: {yaml_list(['sleep', '100000'])}",
            f"    livenessProbe: {{{action}}}",
        ]
    return "\n".join(lines) + "\n"


@dataclass
class StatusWatch:
    """Asks ``status`` every 100 ms in a thread; keeps each answer's latency."""

    run: DaemonRun
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(0.1):
            t0 = time.perf_counter()
            try:
                self.run.request("status", timeout=10)
            except control.ControlClientError as exc:
                self.failures.append(str(exc))
                continue
            self.latencies.append(time.perf_counter() - t0)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        self._thread.start()
        try:
            yield
        finally:
            self._stop.set()
            self._thread.join()

    def take(self) -> tuple[list[float], list[str]]:
        """Latencies and failures since the last call."""
        lat, fail = self.latencies, self.failures
        self.latencies, self.failures = [], []
        return lat, fail


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def by_name(services: Services) -> dict[str, dict[str, Any]]:
    return {str(s["name"]): s for s in services}


def restarts_of(run: DaemonRun, names: tuple[str, ...]) -> int:
    services = by_name(run.status())
    return sum(int(services[n]["restarts"]) for n in names)


def phase_restarts(run: DaemonRun, tmp: Path, count: int) -> str:
    before = restarts_of(run, ("crasher",))
    (tmp / "go").touch()
    run.request("kill", name="crasher", signal="KILL")
    while (done := restarts_of(run, ("crasher",)) - before) < count:
        run.check_alive()
        time.sleep(0.2)
    (tmp / "go").unlink()  # the next life sleeps again
    run.wait_until(
        lambda ss: by_name(ss)["crasher"]["state"] == "running", timeout=30, interval=0.1
    )
    return f"{done} restarts"


def phase_connect(run: DaemonRun, count: int) -> str:
    for _ in range(count):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(run.socket)
    return f"{count} connect/close"


def phase_followers(run: DaemonRun, count: int, wave: int) -> str:
    request = control.encode(control.Request("logs", name="quiet", follow=True).to_json())
    opened = 0
    while opened < count:
        batch = []
        try:
            for _ in range(min(wave, count - opened)):
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                batch.append(s)
                s.connect(run.socket)
                s.sendall(request)
            opened += len(batch)
            time.sleep(0.2)  # let the daemon register them as followers
        finally:
            for s in batch:
                s.close()
    return f"{opened} followers in waves of {wave}"


def phase_flood(run: DaemonRun, tmp: Path, seconds: float) -> str:
    kills_before = restarts_of(run, PROBED)
    cpu_before = run.cpu_seconds()
    (tmp / "flood").touch()
    run.request("kill", name="flood", signal="KILL")
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        run.check_alive()
        time.sleep(0.5)
    elapsed = time.perf_counter() - t0
    cpu = run.cpu_seconds() - cpu_before
    (tmp / "flood").unlink()
    run.request("kill", name="flood", signal="KILL")
    kills = restarts_of(run, PROBED) - kills_before
    flood = by_name(run.status())["flood"]
    dropped = flood.get("dropped_lines", "n/a")
    return (
        f"false liveness kills {kills}; daemon CPU {100 * cpu / elapsed:.0f}%; "
        f"flood lines dropped {dropped}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--restarts", type=int, default=10_000)
    parser.add_argument("--connects", type=int, default=100_000)
    parser.add_argument("--followers", type=int, default=10_000)
    parser.add_argument("--wave", type=int, default=500, help="followers open at once")
    parser.add_argument("--flood", type=float, default=60.0, help="seconds of output flood")
    args = parser.parse_args()
    exit_on_signals()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, args.wave + 256)), hard))

    print(f"# soak: {machine()}")
    rows: list[list[object]] = []
    with DaemonRun(make_config, prefix="k4sinit-soak-") as run:
        run.wait_socket()
        run.wait_until(
            lambda ss: all(s["state"] == "running" for s in ss), timeout=60, interval=0.1
        )
        time.sleep(2)  # let the first probe rounds settle before the baseline
        assert run.proc is not None
        pid = run.proc.pid
        start_rss, start_fds = run.rss_mib(), fds(pid)
        all_latencies: list[float] = []
        all_failures: list[str] = []
        watch = StatusWatch(run)
        phases: list[tuple[float, str, Callable[[], str]]] = [
            (args.restarts, "restarts", lambda: phase_restarts(run, run.tmp, args.restarts)),
            (args.connects, "connect", lambda: phase_connect(run, args.connects)),
            (args.followers, "followers", lambda: phase_followers(run, args.followers, args.wave)),
            (args.flood, "flood", lambda: phase_flood(run, run.tmp, args.flood)),
        ]
        with watch.running():
            for count, name, phase in phases:
                if not count:
                    continue  # this phase skipped (0 on the command line)
                rss0, fds0, t0 = run.rss_mib(), fds(pid), time.perf_counter()
                what = phase()
                seconds = time.perf_counter() - t0
                time.sleep(1)  # let the daemon finish closing what the phase left
                latencies, failures = watch.take()
                all_latencies += latencies
                all_failures += failures
                rows.append(
                    [
                        name,
                        f"{seconds:.1f}",
                        f"{rss0:.1f} -> {run.rss_mib():.1f}",
                        f"{fds0} -> {fds(pid)}",
                        summary(latencies),
                        len(failures),
                        what,
                    ]
                )
        end_rss, end_fds = run.rss_mib(), fds(pid)
        kills = restarts_of(run, PROBED)

    print(
        table(
            [
                "phase",
                "s",
                "RSS MiB",
                "fds",
                "status ms min / med / p90 / max",
                "unanswered",
                "what",
            ],
            rows,
        )
    )
    worst = max(all_latencies, default=float("nan"))
    growth = 100 * (end_rss - start_rss) / start_rss
    print()
    print(f"RSS      {start_rss:.1f} -> {end_rss:.1f} MiB ({growth:+.1f}%; goal within 10%)")
    print(f"fds      {start_fds} -> {end_fds} (goal: no growth)")
    print(f"liveness kills of the probed services, whole soak: {kills} (goal 0)")
    print(
        f"status   {len(all_latencies)} answered, slowest {worst * 1000:.1f} ms, "
        f"{len(all_failures)} unanswered (goal: all within 100 ms)"
    )
    if all_failures:
        print(f"         first failure: {all_failures[0]}")


if __name__ == "__main__":
    main()
