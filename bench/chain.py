"""Ready-to-start latency along a dependency chain a -> b -> c -> d.

Each service is the same small Python program: it waits ``--delay`` seconds
(its "work"), notes the wall-clock moment it is really ready, then says so
(creates its ready file, or sends ``READY=1`` to ``NOTIFY_SOCKET``), and
sleeps. Each edge x -> y is timed from x's own "really ready" moment to the
daemon spawning y (the ``started, pid`` state event of its JSON log): the
wait k4sinit itself adds to a dependent's start. Three ways, each in its own
daemon, ``--runs`` times:

* ``polling (before)``: a ``file`` readiness probe every ``--period`` seconds,
  run by the k4sinit of ``--before`` (default: the merge base with main, in a
  temporary git worktree): one check per period;
* ``fast first``: the same probe under this tree's k4sinit: checks 50 ms
  apart, doubling, until the first success;
* ``notify``: ``readinessProbe: {notify: {}}``, READY=1: nothing polled.

Prints the median and max per edge and mode. Run it niced:
``nice -n 19 .venv/bin/python bench/chain.py [--runs 5] [--delay 0.3] [--period 1]``
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from _common import PYTHON, ROOT, DaemonRun, exit_on_signals, machine, table, yaml_list

CHAIN = ("a", "b", "c", "d")

# The service: "work" for DELAY s, note when really ready, say so, then idle.
SERVICE = """
import os, socket, sys, time
delay, out, how = float(sys.argv[1]), sys.argv[2], sys.argv[3]
time.sleep(delay)
t = time.time()
if how == "notify":
    address = os.environ["NOTIFY_SOCKET"]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(b"READY=1", "\\0" + address[1:] if address.startswith("@") else address)
else:
    open(out + ".ready", "w").close()
with open(out + ".tmp", "w") as f:
    f.write(repr(t))
os.rename(out + ".tmp", out)
time.sleep(1e6)
"""


def make_config(tmp: Path, how: str, delay: float, period: float) -> str:
    lines = ["services:"]
    for i, name in enumerate(CHAIN):
        out = tmp / name
        argv = [PYTHON, "-S", "-c", SERVICE, f"{delay:g}", str(out), how]
        lines += [f"  {name}:", f"    command: {yaml_list(argv)}"]
        if how == "notify":
            lines.append("    readinessProbe: {notify: {}}")
        else:
            probe = f"{{file: {{path: {out}.ready}}, periodSeconds: {period:g}}}"
            lines.append(f"    readinessProbe: {probe}")
        if i:
            lines.append(f"    dependsOn: [{CHAIN[i - 1]}]")
    return "\n".join(lines) + "\n"


def one_run(how: str, args: argparse.Namespace, source: Path | None) -> list[float]:
    """Seconds from each service's real readiness to its dependent's spawn."""

    def config(tmp: Path) -> str:
        return make_config(tmp, how, args.delay, args.period)

    with DaemonRun(config, prefix="k4sinit-chain-", source=source) as run:
        run.wait_socket()
        run.wait_until(
            lambda services: all(s["ready"] for s in services), timeout=60, interval=0.05
        )
        ready = {name: float((run.tmp / name).read_text()) for name in CHAIN}
        events = run.log_events()
        run.stop_all()
    spawned = {
        e["service"]: e["t"]
        for e in events
        if e.get("event") == "state" and str(e.get("reason", "")).startswith("started")
    }
    return [spawned[y] - ready[x] for x, y in itertools.pairwise(CHAIN)]


@contextmanager
def checkout(rev: str) -> Iterator[Path]:
    """A temporary git worktree of ``rev`` (its k4sinit is imported from there)."""
    with tempfile.TemporaryDirectory(prefix="k4sinit-chain-before-") as tmp:
        path = Path(tmp) / "tree"
        git = ["git", "-C", str(ROOT)]
        subprocess.run([*git, "worktree", "add", "--quiet", "--detach", str(path), rev], check=True)
        try:
            yield path
        finally:
            subprocess.run([*git, "worktree", "remove", "--force", str(path)], check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--delay", type=float, default=0.3, help="each service's work, s")
    parser.add_argument("--period", type=float, default=1.0, help="probe periodSeconds")
    parser.add_argument("--before", help="the revision polled before (default: merge base)")
    args = parser.parse_args()
    exit_on_signals()
    before = args.before or subprocess.run(
        ["git", "-C", str(ROOT), "merge-base", "HEAD", "main"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    print(f"# {machine()}; {args.runs} runs, delay {args.delay:g}s, period {args.period:g}s")
    print(f"# before: {before[:12]}")
    results: dict[str, list[list[float]]] = {}
    with checkout(before) as old:
        modes = (("polling (before)", "file", old), ("fast first", "file", None))
        for label, how, source in (*modes, ("notify", "notify", None)):
            results[label] = [one_run(how, args, source) for _ in range(args.runs)]
    rows = []
    for label, runs in results.items():
        edges = list(zip(*runs, strict=True))  # per edge, the runs' latencies
        cells = [f"{statistics.median(e) * 1000:.0f} / {max(e) * 1000:.0f}" for e in edges]
        total = [sum(r) for r in runs]
        rows.append([label, *cells, f"{statistics.median(total) * 1000:.0f}"])
    header = ["mode", *(f"{x}->{y} ms (median / max)" for x, y in itertools.pairwise(CHAIN)), "sum"]
    print(table(header, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
