"""Restart latency: SIGKILL a service by pid, time until it is back and ready.

One service per daemon run, killed ``--reps`` times once it is ready. Two kinds
(``--probes``), each run with every readiness ``periodSeconds`` in ``--periods``:

* ``file``: ``sh -c ': > READY; exec sleep 1000'`` with a ``file`` probe on
  READY; the benchmark deletes READY just before each kill, so readiness needs
  a check after the new process has written it again.
* ``tcp``: a tiny python listener (``python -S``, bind + listen + sleep) with a
  ``tcpSocket`` probe.

The service has ``restartBackoff: {resetAfterSeconds: 0}``, so every death of a
ready service counts as after a stable run and is restarted at once (with the
default 30 s, the 2nd..nth quick kill would wait 1, 2, 4 ... s of backoff).

Measured by polling ``status`` every ``--interval`` s: kill -> new pid, kill ->
ready. From the daemon's JSON log (its wall-clock timestamps vs the kill's):
kill -> exit handled ("backoff" event, after reaping and draining output), exit
handled -> spawned ("running" event: the daemon's own share), spawned -> ready.

Run: ``.venv/bin/python bench/restart.py [--reps 20] [--periods 0.1,1]``
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time
from pathlib import Path

from _common import PYTHON, DaemonRun, Services, exit_on_signals, machine, summary, table, yaml_list

LISTENER = (
    "import socket,sys,time;s=socket.socket();"
    "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
    "s.bind(('127.0.0.1',int(sys.argv[1])));s.listen();time.sleep(1000)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_config(kind: str, period: float, ready: Path, port: int) -> str:
    if kind == "file":
        command = ["sh", "-c", f": > {ready}; exec sleep 1000"]
        probe = f"{{file: {{path: {ready}}}, periodSeconds: {period:g}}}"
    else:
        command = [PYTHON, "-S", "-c", LISTENER, str(port)]
        probe = f"{{tcpSocket: {{port: {port}}}, periodSeconds: {period:g}}}"
    return (
        "services:\n"
        "  svc:\n"
        f"    command: {yaml_list(command)}\n"
        f"    readinessProbe: {probe}\n"
        "    restartBackoff: {resetAfterSeconds: 0}\n"
        "    terminationGracePeriodSeconds: 2\n"
    )


def is_ready(services: Services) -> bool:
    return services[0]["state"] == "running" and services[0]["ready"] is True


def measure(kind: str, period: float, args: argparse.Namespace) -> list[list[object]]:
    port = free_port()

    def config(tmp: Path) -> str:
        return make_config(kind, period, tmp / "ready", port)

    new_pid, ready, kills = [], [], []
    with DaemonRun(config, prefix=f"k4sinit-restart-{kind}-") as run:
        run.wait_socket()
        _, services = run.wait_until(is_ready, timeout=30, interval=args.interval)
        for _ in range(args.reps):
            pid = services[0]["pid"]
            if kind == "file":
                (run.tmp / "ready").unlink()
            kills.append(time.time())
            t0 = time.perf_counter()
            os.kill(pid, signal.SIGKILL)

            def new_pid_seen(s: Services, old: int = pid) -> bool:
                return s[0]["pid"] not in (None, old)

            t_pid, services = run.wait_until(new_pid_seen, 30, args.interval)
            t_ready, services = run.wait_until(is_ready, 30, args.interval)
            new_pid.append(t_pid - t0)
            ready.append(t_ready - t0)
            time.sleep(args.pause)
        events = [e for e in run.log_events() if e.get("event") == "state"]
    handled, spawned, probed = [], [], []
    for kill in kills:
        after = [e for e in events if e["t"] >= kill - 0.001]
        exit_ev = next(e for e in after if e["state"] == "backoff")
        start_ev = next(e for e in after if e["t"] >= exit_ev["t"] and e["state"] == "running")
        ready_ev = next(e for e in after if e["t"] >= start_ev["t"] and e["ready"])
        handled.append(exit_ev["t"] - kill)
        spawned.append(start_ev["t"] - exit_ev["t"])
        probed.append(ready_ev["t"] - start_ev["t"])
    label = f"{kind}, period {period:g}s"
    return [
        [label, "kill -> new pid (poll)", summary(new_pid)],
        [label, "kill -> ready (poll)", summary(ready)],
        [label, "kill -> exit handled (log)", summary(handled)],
        [label, "exit handled -> spawned (log)", summary(spawned)],
        [label, "spawned -> ready (log)", summary(probed)],
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=20, help="kills per run (default %(default)s)")
    parser.add_argument(
        "--probes", default="file,tcp", help="file and/or tcp (default %(default)s)"
    )
    parser.add_argument("--periods", default="0.1,1", help="probe periods, s (default %(default)s)")
    parser.add_argument("--interval", type=float, default=0.005, help="status poll interval, s")
    parser.add_argument("--pause", type=float, default=0.05, help="pause between kills, s")
    args = parser.parse_args()
    exit_on_signals()
    print(f"# restart: {machine()}, {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"# {args.reps} SIGKILLs per run; status polled every {args.interval * 1000:g} ms")
    rows: list[list[object]] = []
    for kind in args.probes.split(","):
        for period in (float(p) for p in args.periods.split(",")):
            print(f"running {kind}, period {period:g}s ...", file=sys.stderr, flush=True)
            rows += measure(kind, period, args)
    print(table(["run", "measure", "ms: min / median / p90 / max"], rows))


if __name__ == "__main__":
    main()
