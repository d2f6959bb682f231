"""Boot figures of the single-node image (what ``scripts/run-node`` boots), in qemu.

Builds the image with ``rootfs/node.py`` (cached in ``rootfs/out/node``), boots it
``--runs`` times with the control port relayed to the host, waits until every role
is ready (polling ``status`` over the port), reads the roles' events, then powers
the node off. Prints, per run and as medians:

* milestones on the guest's clock (seconds since the kernel started, from printk
  and from k4sinit's log timestamps anchored on its first line's ``monotonic=``),
  plus qemu start -> kernel start on the host's clock;
* per role: when it was started, how long after its last dependency was ready
  that was (k4sinit's own share), and how long the role itself took to be ready;
  then the critical path: the chain of dependencies ending at the last role ready;
* the image's size (gzip and cpio) and k4sinit's resident memory with the whole
  node running (``status``'s ``daemon.rss_bytes``).

Run as root from the repo root: ``.venv/bin/python bench/node_boot.py [--runs 2]``.
qemu is killed by pid if anything goes wrong; consoles are kept in
``rootfs/out/node/bench-console-N.log``.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "rootfs"))
sys.path.insert(0, str(ROOT / "bench"))
import node  # noqa: E402 (rootfs/ is a directory of scripts, not a package)
import vm  # noqa: E402
from boot import milestones  # noqa: E402

from k4sinit.control import ControlClientError  # noqa: E402
from k4sinit.nodespec import Datastore, Profile, profile_roles  # noqa: E402

ROLES = profile_roles(Profile.SINGLE, Datastore.KINE)  # what node-vm.yaml runs


def all_ready(status: dict[str, Any]) -> bool:
    services = {s["name"]: s for s in status["services"]}
    return all(
        services[r]["state"] == "completed" if r == "images" else services[r]["ready"]
        for r in ROLES
        if r in services
    )


_STAMP = re.compile(
    r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z? \[.*k4sinit starting.*monotonic=(\d+\.\d+)"
)


def guest_clock(machine: vm.VM) -> tuple[float, float]:
    """(wall time, guest seconds since kernel start) of k4sinit's first log line."""
    for _, line in machine.lines:
        if m := _STAMP.search(line):
            wall = datetime.fromisoformat(m.group(1)).replace(tzinfo=UTC).timestamp()
            return wall, float(m.group(2))
    raise RuntimeError("k4sinit's first line is not on the console")


def role_times(machine: vm.VM, anchor: tuple[float, float]) -> dict[str, dict[str, Any]]:
    """Per role: started/ready on the guest clock and its dependencies."""

    def guest(wall: float) -> float:
        return anchor[1] + wall - anchor[0]

    found: dict[str, dict[str, Any]] = {}
    status = {s["name"]: s for s in machine.request("status")["services"]}
    for name in ROLES:
        if name not in status:
            continue
        detail = machine.request("status", name)
        events = detail["events"]
        started = next(e["time"] for e in events if e["reason"].startswith("started"))
        # A oneshot (images) counts when it completed; its dependents wait for that.
        oneshot = any(e["state"] == "completed" for e in events)
        done = next(
            e["time"] for e in events if (e["state"] == "completed" if oneshot else e["ready"])
        )
        found[name] = {
            "started": guest(started),
            "ready": guest(done),
            "depends_on": [d for d in detail["depends_on"] if d in ROLES],
        }
    return found


def one_run(image: Path, log: Path, timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="k4sinit-bench-node-") as tmp:
        machine = vm.VM(
            image,
            log_path=log,
            control_socket=Path(tmp, "control.sock"),
            memory_mb=node.NODE_MEMORY_MB,
        )
        with machine:
            deadline = time.monotonic() + timeout
            status: dict[str, Any] = {}
            while time.monotonic() < deadline:
                try:
                    status = machine.request("status", timeout=30)
                    if all_ready(status):
                        break
                except ControlClientError:  # booting: the port does not answer yet
                    pass
                time.sleep(0.5)
            else:
                raise RuntimeError(f"not all ready within {timeout:g}s; see {log}")
            all_ready_host = time.monotonic() - machine.started
            rss = status["daemon"]["rss_bytes"]
            roles = role_times(machine, guest_clock(machine))
            machine.request("poweroff", timeout=120)
            machine.wait(120)
        marks = milestones(machine)
    return {"marks": marks, "roles": roles, "rss": rss, "all_ready_host": all_ready_host}


def critical_path(roles: dict[str, dict[str, Any]]) -> list[str]:
    """The chain of dependencies ending at the last role to be ready."""
    name = max(roles, key=lambda n: roles[n]["ready"])
    path = [name]
    while deps := [d for d in roles[name]["depends_on"] if d in roles]:
        name = max(deps, key=lambda d: roles[d]["ready"])
        path.append(name)
    return path[::-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=600, help="per boot, seconds")
    parser.add_argument("--k4s", help="a real k4s multicall binary (default: test stand-ins)")
    args = parser.parse_args(argv)

    image = node.build_image(k4s=args.k4s)
    key = json.loads(image.with_name(image.name + ".key").read_text())
    print(
        f"image: {image}: {image.stat().st_size / 1e6:.1f} MB gzip, "
        f"{int(key['cpio_bytes']) / 1e6:.1f} MB cpio"
    )
    print(f"accel: {' '.join(vm.accelerator())}; memory {node.NODE_MEMORY_MB} MiB")
    print(f"roles: {'k4s ' + args.k4s if args.k4s else 'test stand-ins (not Kubernetes)'}\n")

    runs = [
        one_run(image, node.NODE_OUT / f"bench-console-{i + 1}.log", args.timeout)
        for i in range(args.runs)
    ]

    def med(values: list[float]) -> str:
        return f"{statistics.median(values):7.2f}"

    print("milestone (guest s since kernel start; host s since qemu start)")
    for name in runs[0]["marks"]:
        guests = [g for r in runs if (g := r["marks"].get(name, (0, None))[1]) is not None]
        hosts = [r["marks"][name][0] for r in runs if name in r["marks"]]
        print(f"  {name:<28} guest {med(guests) if guests else '      -'}   host {med(hosts)}")
    print(
        f"  {'all roles ready (host)':<28} guest       -   host {med([r['all_ready_host'] for r in runs])}"
    )

    print("\nrole (guest s; median)        started  waited*  own**  ready")
    for name in runs[0]["roles"]:
        rows = [r["roles"][name] for r in runs]
        waits = []
        for r in runs:
            deps = [r["roles"][d]["ready"] for d in r["roles"][name]["depends_on"]]
            waits.append(r["roles"][name]["started"] - max(deps) if deps else 0.0)
        own = [x["ready"] - x["started"] for x in rows]
        print(
            f"  {name:<26} {med([x['started'] for x in rows])}  {med(waits)}"
            f"  {med(own)}  {med([x['ready'] for x in rows])}"
        )
    print("  * from the last dependency ready to this role started: k4sinit's share")
    print("  ** from started to ready: the role's own (probe period included)")
    for i, r in enumerate(runs):
        path = critical_path(r["roles"])
        own = sum(r["roles"][n]["ready"] - r["roles"][n]["started"] for n in path)
        print(f"\nrun {i + 1} critical path: {' -> '.join(path)}: roles' own {own:.2f}s")
    rss = [r["rss"] / 2**20 for r in runs]
    print(f"\nk4sinit RSS with the node running: {statistics.median(rss):.1f} MiB (median)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
