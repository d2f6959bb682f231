"""What a metrics scrape costs with many services, and whether a flood slows ``status``.

A daemon supervises ``--services`` services (``sleep 1000``) with ``metrics:
{listen: <tmp>/run/metrics.sock}``. Once all are running it measures:

* ``--scrapes`` scrapes one after another, each past the server's reuse window
  (so each collects afresh): latency at the client, the daemon's CPU per scrape
  (user+sys of the daemon process), the body's size;
* ``status`` latency with nothing else going on, and while ``--flooders``
  processes send scrapes as fast as they can.

Run: ``nice -n 19 .venv/bin/python bench/metrics.py [--services 200]``
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import time
from pathlib import Path

from _common import PYTHON, DaemonRun, exit_on_signals, machine, summary, table, yaml_list

FLOOD = """
import socket, sys
while True:
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(sys.argv[1])
        for _ in range(50):
            s.sendall(b"GET /metrics HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
            s.recv(1 << 20)
        s.close()
    except OSError:
        pass
"""


def make_config(n: int, tmp: Path) -> str:
    lines = [f"metrics: {{listen: {tmp / 'run' / 'metrics.sock'}}}", "services:"]
    for i in range(n):
        lines += [f"  s{i:04d}:", f"    command: {yaml_list(['sleep', '1000'])}"]
    return "\n".join(lines) + "\n"


def scrape(path: Path) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(str(path))
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(1 << 20):
            data += chunk
    return data.partition(b"\r\n\r\n")[2]


def timed_status(run: DaemonRun, count: int) -> list[float]:
    times = []
    for _ in range(count):
        t0 = time.perf_counter()
        run.status()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--services", type=int, default=200, help="default %(default)s")
    parser.add_argument("--scrapes", type=int, default=20, help="default %(default)s")
    parser.add_argument("--flooders", type=int, default=2, help="default %(default)s")
    args = parser.parse_args()
    exit_on_signals()
    print(f"# metrics: {machine()}, {time.strftime('%Y-%m-%d %H:%M')}")
    with DaemonRun(lambda tmp: make_config(args.services, tmp), prefix="k4sinit-metrics-") as run:
        sock = run.tmp / "run" / "metrics.sock"
        run.wait_socket()
        run.wait_until(lambda s: all(x["state"] == "running" for x in s), timeout=120)
        latencies, cpu, size = [], 0.0, 0
        for _ in range(args.scrapes):
            time.sleep(0.6)  # past the reuse window: a fresh collection
            cpu0, t0 = run.cpu_seconds(), time.perf_counter()
            size = len(scrape(sock))
            latencies.append(time.perf_counter() - t0)
            cpu += run.cpu_seconds() - cpu0
        quiet = timed_status(run, args.scrapes)
        flooders = [
            subprocess.Popen([PYTHON, "-c", FLOOD, str(sock)]) for _ in range(args.flooders)
        ]
        try:
            time.sleep(1)
            cpu0, t0 = run.cpu_seconds(), time.perf_counter()
            flooded = timed_status(run, args.scrapes)
            flood_cpu = (run.cpu_seconds() - cpu0) / (time.perf_counter() - t0)
        finally:
            for p in flooders:
                p.kill()
                p.wait()
        run.check_alive()
    print(
        table(
            ["services", "body KiB", "scrape ms min/med/p90/max", "daemon CPU ms per scrape"],
            [
                [
                    args.services,
                    f"{size / 1024:.0f}",
                    summary(latencies),
                    f"{1000 * cpu / args.scrapes:.1f}",
                ]
            ],
        )
    )
    print(
        table(
            ["status", "ms min/med/p90/max", "daemon % of a core"],
            [
                ["quiet", summary(quiet), "-"],
                [f"{args.flooders} flooding", summary(flooded), f"{100 * flood_cpu:.0f}"],
            ],
        )
    )


if __name__ == "__main__":
    main()
