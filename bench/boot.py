"""Boot time of the node image in qemu, from qemu start to power-off.

Builds the image (``rootfs/build.py``, cached in ``rootfs/out/bench``) with a small
config: ``--services`` long-running services (``sleep``), a web server (Python's
``http.server``: the image has no busybox httpd since u-root replaced busybox) with
an ``httpGet`` readiness probe, and a oneshot ``k4sinit poweroff`` that waits for
all of them to be Ready. Then boots it ``--runs`` times and prints, per milestone,
the host's seconds since qemu was spawned (when the console line arrived) and the
guest's seconds since the kernel started (printk timestamps, and k4sinit's log
timestamps anchored on the ``monotonic=`` of its first line).

Run as root from the repo root: ``.venv/bin/python bench/boot.py [--runs 3]``.
qemu is killed by pid if anything goes wrong; the console of each run is kept in
``rootfs/out/bench/console-N.log``.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "rootfs"))
import build  # noqa: E402 (rootfs/ is a directory of scripts, not a package)
import vm  # noqa: E402

OUT = ROOT / "rootfs/out/bench"


def config(services: int) -> str:
    lines = ["services:"]
    names = [f"svc{i}" for i in range(services)]
    for name in names:
        lines += [f"  {name}:", f"    command: [sleep, '{1000 + len(lines)}']"]
    lines += [
        "  web:",
        "    command: [sh, -c, 'mkdir -p /tmp/www && echo ok > /tmp/www/index.html"
        " && exec python3.11 -m http.server -b 127.0.0.1 -d /tmp/www 8080']",
        "    readinessProbe:",
        "      httpGet: {port: 8080, path: /index.html}",
        "      periodSeconds: 0.2",
        "  poweroff:",
        "    command: [k4sinit, poweroff]",
        f"    dependsOn: [{', '.join([*names, 'web'])}]",
        "    restartPolicy: Never",
    ]
    return "\n".join(lines) + "\n"


# Searched, not matched: the first line after the BIOS carries terminal escapes.
_TS = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z? \[")
_PRINTK = re.compile(r"\[\s*(\d+\.\d{6})\] ")


def milestones(machine: vm.VM) -> dict[str, tuple[float, float | None]]:
    """``{milestone: (host s since qemu spawn, guest s since kernel start)}``."""
    found: dict[str, tuple[float, float | None]] = {}
    anchor: tuple[datetime, float] | None = None  # (log time, guest monotonic) of line 1
    first_running: tuple[float, float | None] | None = None
    for host, line in machine.lines:
        guest: float | None = None
        if m := _PRINTK.search(line):
            guest = float(m.group(1))
        elif (m := _TS.search(line)) and anchor is None and "k4sinit starting" in line:
            mono = re.search(r"monotonic=(\d+\.\d+)", line)
            if mono:
                anchor = (datetime.fromisoformat(m.group(1)), float(mono.group(1)))
        if (m := _TS.search(line)) and anchor is not None:
            guest = anchor[1] + (datetime.fromisoformat(m.group(1)) - anchor[0]).total_seconds()

        def mark(name: str, host: float = host, guest: float | None = guest) -> None:
            found.setdefault(name, (host, guest))

        if "k4sinit starting" in line:
            mark("k4sinit first line")
        elif "system ready" in line:
            mark("system ready")
        elif "supervising" in line:
            mark("supervising")
        elif " state " in line and "state=running" in line:
            service = re.search(r"service=(\S+)", line)
            if first_running is None:
                first_running = (host, guest)
                mark("first service spawned")
            if service and "ready=True" in line and service.group(1) != "poweroff":
                found["all ready"] = (host, guest)
        elif "shutdown requested" in line:
            mark("shutdown requested")
        elif "all services stopped" in line:
            mark("all services stopped")
        elif vm.POWER_OFF in line:
            mark("power down (kernel)")
    if "k4sinit first line" in found and anchor is not None:
        host = found["k4sinit first line"][0] - anchor[1]
        found = {"kernel start (est.)": (host, 0.0), **found}
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--services", type=int, default=4, help="sleep services (+ web)")
    parser.add_argument("--no-compress", action="store_true", help="boot an uncompressed cpio")
    parser.add_argument("--verbose-kernel", action="store_true", help="boot without 'quiet'")
    args = parser.parse_args(argv)

    OUT.mkdir(parents=True, exist_ok=True)
    cfg = OUT / "config.yaml"
    text = config(args.services)
    if not cfg.exists() or cfg.read_text() != text:
        cfg.write_text(text)
    image = build.build(cfg, OUT, userland=None, compress=not args.no_compress)
    key = json.loads(image.with_name(image.name + ".key").read_text())
    cpio_bytes = int(key["cpio_bytes"])
    print(
        f"image: {image}: {cpio_bytes / 1e6:.1f} MB cpio, {image.stat().st_size / 1e6:.1f} MB file"
    )
    print(f"accel: {' '.join(vm.accelerator())}\n")

    runs: list[dict[str, tuple[float, float | None]]] = []
    for i in range(args.runs):
        machine = vm.VM(image, log_path=OUT / f"console-{i + 1}.log", quiet=not args.verbose_kernel)
        with machine:
            machine.wait_for(re.escape(vm.POWER_OFF), 300)
            code = machine.wait(60)
            exited = time.monotonic() - machine.started
        found = milestones(machine)
        found["qemu exited"] = (exited, None)
        if code != 0 or machine.panicked:
            print(
                f"run {i + 1}: qemu exit {code}, panic={machine.panicked}; see {machine.log_path}"
            )
        runs.append(found)

    names = list(runs[0])
    width = max(len(n) for n in names)
    print(
        f"{'milestone':<{width}}  {'host s (median of ' + str(len(runs)) + ')':>22}  {'guest s':>8}  per run (host s)"
    )
    for name in names:
        hosts = [r[name][0] for r in runs if name in r]
        guests = [g for r in runs if name in r and (g := r[name][1]) is not None]
        guest = f"{statistics.median(guests):8.2f}" if guests else f"{'-':>8}"
        per_run = " ".join(f"{h:6.2f}" for h in hosts)
        print(f"{name:<{width}}  {statistics.median(hosts):22.2f}  {guest}  {per_run}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
