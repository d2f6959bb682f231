"""Time from spawning the daemon to all N trivial services running and ready.

For each N (``--counts``), a config of N services, each ``sleep 1000`` with a
readiness ``file`` probe on a path that already exists; service i > 0 depends
on service (i-1)//fanout being Ready, so they start as a tree (depth about
log_fanout N). Prints, per N: the control socket's first answer, all-ready
(polled over the socket, and from the daemon's JSON log), ms per service, the
daemon's RSS and CPU seconds at all-ready, then the time of ``stop --all``.

Run: ``.venv/bin/python bench/startup.py [--counts 50,200,1000]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _common import DaemonRun, Events, Services, exit_on_signals, machine, table, yaml_list


def make_config(n: int, fanout: int, period: float, ready_file: str) -> str:
    lines = ["services:"]
    for i in range(n):
        lines += [
            f"  s{i:04d}:",
            f"    command: {yaml_list(['sleep', '1000'])}",
            f"    readinessProbe: {{file: {{path: {ready_file}}}, periodSeconds: {period:g}}}",
        ]
        if i > 0:
            lines.append(f"    dependsOn: {{s{(i - 1) // fanout:04d}: Ready}}")
    return "\n".join(lines) + "\n"


def all_ready(services: Services) -> bool:
    return all(s["state"] == "running" and s["ready"] for s in services)


def measure(n: int, args: argparse.Namespace) -> list[object]:
    def config(tmp: Path) -> str:
        (tmp / "ready").touch()
        return make_config(n, args.fanout, args.period, str(tmp / "ready"))

    with DaemonRun(config, prefix=f"k4sinit-startup-{n}-") as run:
        socket_up = run.wait_socket()
        ready_at, _ = run.wait_until(all_ready, timeout=args.timeout, interval=0.05)
        polled = ready_at - run.spawned
        rss, cpu = run.rss_mib(), run.cpu_seconds()
        stop = run.stop_all()
        events = run.log_events()
    first = events[0]["t"]
    ready_events = [e for e in events if e.get("event") == "state" and e.get("ready")]
    last_ready = max(e["t"] for e in ready_events)
    if len({e["service"] for e in ready_events}) != n:
        raise RuntimeError("the log does not show every service ready")
    stop_log = _between(events, "shutdown requested", "all services stopped")
    return [
        n,
        f"{socket_up:.3f}",
        f"{first - run.spawned_wall:.3f}",
        f"{polled:.3f}",
        f"{last_ready - first:.3f}",
        f"{(last_ready - first) * 1000 / n:.2f}",
        f"{rss:.1f}",
        f"{cpu:.2f}",
        f"{stop:.3f}",
        f"{stop_log:.3f}",
    ]


def _between(events: Events, start: str, end: str) -> float:
    t = {e["event"]: e["t"] for e in events if e.get("event") in (start, end)}
    return t[end] - t[start] if len(t) == 2 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--counts", default="50,200,1000", help="service counts (default %(default)s)"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per N (default %(default)s)")
    parser.add_argument("--fanout", type=int, default=10, help="dependents per service (tree)")
    parser.add_argument("--period", type=float, default=0.5, help="readiness periodSeconds")
    parser.add_argument("--timeout", type=float, default=180.0, help="give up after (s)")
    args = parser.parse_args()
    exit_on_signals()
    counts = [int(c) for c in args.counts.split(",")]
    print(f"# startup: {machine()}, {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"# each service: sleep 1000; readiness file probe (exists), period {args.period:g}s;")
    print(f"# s(i) depends on s((i-1)//{args.fanout}) Ready. First services of the config:")
    sample = make_config(3, args.fanout, args.period, "/tmp/k4sinit-startup-XXXX/ready")
    print("\n".join("#   " + line for line in sample.splitlines()))
    header = [
        "N",
        "socket-up s",
        "1st-log s",
        "all-ready(poll) s",
        "all-ready(log) s",
        "ms/svc",
        "RSS MiB",
        "CPU s",
        "stop s",
        "stop(log) s",
    ]
    rows = []
    for n in counts:
        for i in range(args.repeat):
            print(f"running N={n} ({i + 1}/{args.repeat}) ...", file=sys.stderr, flush=True)
            rows.append(measure(n, args))
    print(table(header, rows))
    print(
        "\nsocket-up, 1st-log and all-ready(poll) count from the spawn of the daemon (python start,"
        "\nimports, config load included); all-ready(log) from the daemon's first log line to the"
        "\nlast 'state' event with ready=true. RSS and CPU (user+sys, daemon only, polling included)"
        "\nat the moment all-ready was seen. stop: 'stop --all' request until the daemon exited."
    )


if __name__ == "__main__":
    main()
