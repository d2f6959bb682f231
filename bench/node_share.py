"""k4sinit's own share of the node's boot, in qemu: its first line to the first service.

Boots the single-node image (``rootfs/node.py``'s, or ``--image``) ``--runs`` times,
waits until the first service is spawned and the control port answers, asks the
daemon for its ``timeline`` (PID 1's stages, the same ``k4sinit analyze`` reads)
and the machine's memory in use, then kills qemu: no Kubernetes wait, about a
minute per run under TCG. Prints, per run and as medians, the milestones on the
guest's clock (seconds since the kernel started), k4sinit's share (its first line
to the first service spawned) and PID 1's stages.

Run as root from the repo root: ``.venv/bin/python bench/node_share.py [--runs 2]``;
``--image PATH`` boots another build (for example one made from an older revision)
with the same harness. Consoles are kept in ``rootfs/out/node/share-console-N.log``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "rootfs"))
sys.path.insert(0, str(ROOT / "bench"))
import node  # noqa: E402 (rootfs/ is a directory of scripts, not a package)
import vm  # noqa: E402
from boot import milestones  # noqa: E402

from k4sinit.control import ControlClientError  # noqa: E402

FIRST_SPAWN = r"state=running"  # the supervisor's first service state line


def one_run(image: Path, log: Path, timeout: float) -> dict[str, Any]:
    """Milestones, PID 1's stages and the memory in use, once the first service ran."""
    with tempfile.TemporaryDirectory(prefix="k4sinit-bench-share-") as tmp:
        machine = vm.VM(
            image,
            log_path=log,
            control_socket=Path(tmp, "control.sock"),
            memory_mb=node.NODE_MEMORY_MB,
        )
        with machine:
            machine.wait_for(FIRST_SPAWN, timeout)
            deadline = time.monotonic() + timeout
            while True:
                try:
                    timeline = machine.request("timeline", timeout=30)
                    status = machine.request("status", timeout=30)
                    break
                except ControlClientError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
        marks = milestones(machine)
    stages = [(s["name"], s["start"], s["end"]) for s in timeline["stages"]]
    memory = status["memory"]["total"] - status["memory"]["available"]
    return {"marks": marks, "stages": stages, "memory": memory}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=300, help="per wait, seconds")
    parser.add_argument("--image", type=Path, help="boot this image instead of building")
    args = parser.parse_args(argv)

    image = args.image or node.build_image()
    print(f"image: {image}: {image.stat().st_size / 1e6:.1f} MB")
    print(f"accel: {' '.join(vm.accelerator())}; memory {node.NODE_MEMORY_MB} MiB\n")
    runs = [
        one_run(image, node.NODE_OUT / f"share-console-{i + 1}.log", args.timeout)
        for i in range(args.runs)
    ]

    def med(values: list[float]) -> str:
        return f"{statistics.median(values):7.2f}" if values else "      -"

    print("milestone (median; guest s since kernel start, host s since qemu start)")
    for name in ("kernel start (est.)", "k4sinit first line", "system ready", "supervising"):
        guests = [g for r in runs if (g := r["marks"].get(name, (0, None))[1]) is not None]
        hosts = [r["marks"][name][0] for r in runs if name in r["marks"]]
        print(f"  {name:<24} guest {med(guests)}   host {med(hosts)}")
    name = "first service spawned"
    firsts = [r["marks"][name][1] for r in runs]
    print(f"  {name:<24} guest {med(firsts)}   host {med([r['marks'][name][0] for r in runs])}")
    shares = [r["marks"][name][1] - r["marks"]["k4sinit first line"][1] for r in runs]
    print(f"\nk4sinit's share (first line -> first service spawned): {med(shares)} s")
    print("  per run: " + ", ".join(f"{s:.2f}" for s in shares))
    memory = statistics.median(r["memory"] for r in runs) / 2**20
    print(f"memory in use at the first service (MemTotal - MemAvailable): {memory:.0f} MiB")
    print("\nPID 1's stages (guest s, median)       start      end   length")
    for i, (stage, _, _) in enumerate(runs[0]["stages"]):
        rows = [r["stages"][i] for r in runs if len(r["stages"]) > i]
        starts, ends = [x[1] for x in rows], [x[2] for x in rows]
        length = [x[2] - x[1] for x in rows]
        print(f"  {stage:<34} {med(starts)}  {med(ends)}  {med(length)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
