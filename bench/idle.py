"""The daemon's RSS and CPU while nothing happens, with many services.

For each mode (``--modes``), a daemon supervises ``--services`` services
(``sleep 1000``, no dependencies). Once all are running and ready and
``--settle`` seconds have passed, the benchmark stops talking to the daemon and
measures over ``--seconds``: RSS at the start and end of the window, CPU
seconds (user+sys of the daemon process, not its children) used in it, and
that as a percentage of one core. Modes:

* ``none``: no probes.
* ``file``: a readiness ``file`` probe on an existing path, default period (1 s).
* ``exec``: a readiness ``exec`` probe running ``true``, default period (not
  run by default: it measures fork+exec+reap, ``--services`` per second).

Run: ``.venv/bin/python bench/idle.py [--services 200] [--seconds 30]``
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from _common import DaemonRun, Services, exit_on_signals, machine, table, yaml_list

MODES = ("none", "file", "exec")


def make_config(n: int, mode: str, ready: Path) -> str:
    probe = {
        "none": None,
        "file": f"{{file: {{path: {ready}}}}}",
        "exec": f"{{exec: {{command: {yaml_list(['true'])}}}}}",
    }[mode]
    lines = ["services:"]
    for i in range(n):
        lines += [f"  s{i:04d}:", f"    command: {yaml_list(['sleep', '1000'])}"]
        if probe:
            lines.append(f"    readinessProbe: {probe}")
    return "\n".join(lines) + "\n"


def all_ready(services: Services) -> bool:
    return all(s["state"] == "running" and s["ready"] for s in services)


def measure(mode: str, args: argparse.Namespace) -> list[object]:
    def config(tmp: Path) -> str:
        (tmp / "ready").touch()
        return make_config(args.services, mode, tmp / "ready")

    with DaemonRun(config, prefix=f"k4sinit-idle-{mode}-") as run:
        run.wait_socket()
        run.wait_until(all_ready, timeout=120, interval=0.2)
        time.sleep(args.settle)
        rss0, cpu0, t0 = run.rss_mib(), run.cpu_seconds(), time.perf_counter()
        time.sleep(args.seconds)
        rss1, cpu1, t1 = run.rss_mib(), run.cpu_seconds(), time.perf_counter()
        threads = run.ps.num_threads() if run.ps else 0
        run.check_alive()
    cpu = cpu1 - cpu0
    return [
        mode,
        args.services,
        f"{t1 - t0:.1f}",
        f"{rss0:.1f}",
        f"{rss1:.1f}",
        f"{cpu:.2f}",
        f"{100 * cpu / (t1 - t0):.1f}",
        threads,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--services", type=int, default=200, help="default %(default)s")
    parser.add_argument(
        "--seconds", type=float, default=30.0, help="idle window, default %(default)s"
    )
    parser.add_argument("--settle", type=float, default=2.0, help="wait after all-ready, s")
    parser.add_argument(
        "--modes", default="none,file", help=f"of {','.join(MODES)} (default %(default)s)"
    )
    args = parser.parse_args()
    exit_on_signals()
    modes = args.modes.split(",")
    if unknown := set(modes) - set(MODES):
        parser.error(f"unknown mode(s): {', '.join(sorted(unknown))}")
    print(f"# idle: {machine()}, {time.strftime('%Y-%m-%d %H:%M')}")
    rows = []
    for mode in modes:
        print(f"running {mode} ...", file=sys.stderr, flush=True)
        rows.append(measure(mode, args))
    header = [
        "probes",
        "services",
        "window s",
        "RSS start MiB",
        "RSS end MiB",
        "CPU s",
        "% of a core",
        "threads",
    ]
    print(table(header, rows))


if __name__ == "__main__":
    main()
