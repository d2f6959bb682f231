"""Boot figures of the single-node image (what ``scripts/run-node`` boots), in qemu.

Builds the image with ``rootfs/node.py`` (cached in ``rootfs/out/node``), boots it
``--runs`` times with the control port relayed to the host and the apiserver
forwarded, waits until every role is ready (polling ``status`` over the port), then
until the node is Ready and a first pod (busybox, from the air-gap image) Running
(kubectl on the host), reads the roles' events and memory, then powers the node
off. Prints, per run and as medians:

* qemu start -> every role ready, -> node Ready, -> first pod Running (host clock);
* the machine's memory in use at node Ready (MemTotal - MemAvailable), and each
  role's resident memory (its main process) and its cgroup's ``memory.current``;
* the sizes of the k4s binary and of the image, with k3s' figures beside them;

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
import gzip
import json
import re
import socket
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
from k4sinit.core.nodespec import Datastore, Profile, profile_roles  # noqa: E402

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


#: A first pod: busybox from the air-gap directory, doing nothing.
FIRST_POD = """\
apiVersion: v1
kind: Pod
metadata: {name: first}
spec:
  containers:
  - {name: sleep, image: k4sinit.local/busybox:1, imagePullPolicy: Never, command: [sleep, "3600"]}
"""
#: Published figures to print beside ours (k3s' release assets and docs): k3s v1.37's one binary,
#: compressed, and the resident memory its docs give for a server with its agent.
K3S_BINARY_MB = 81
K3S_SERVER_RESIDENT_GB = 1.6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_run(image: Path, log: Path, timeout: float, k4s: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="k4sinit-bench-node-") as tmp:
        port = free_port()
        machine = vm.VM(
            image,
            log_path=log,
            control_socket=Path(tmp, "control.sock"),
            memory_mb=node.NODE_MEMORY_MB,
            forward=[(port, node.API_PORT)],
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
            assert machine.control_socket is not None
            cluster = node.Cluster(machine.control_socket, k4s, port, Path(tmp, "kubeconfig"))
            cluster.refresh()
            cluster.wait("node Ready", cluster.node_ready, timeout)
            node_ready_host = time.monotonic() - machine.started
            status = machine.request("status", timeout=30)
            memory = status["memory"]["total"] - status["memory"]["available"]
            resident = {}
            for name in ROLES:
                detail = machine.request("status", name)
                cgroup = (detail.get("cgroup") or {}).get("memory_bytes")
                resident[name] = (detail.get("rss_bytes"), cgroup)
            cluster.apply_pods(FIRST_POD, timeout)
            cluster.wait("pod first Ready", lambda: cluster.pod_ready("first"), timeout)
            pod_host = time.monotonic() - machine.started
            rss = status["daemon"]["rss_bytes"]
            roles = role_times(machine, guest_clock(machine))
            machine.request("poweroff", timeout=120)
            machine.wait(120)
        marks = milestones(machine)
    return {
        "marks": marks,
        "roles": roles,
        "rss": rss,
        "all_ready_host": all_ready_host,
        "node_ready_host": node_ready_host,
        "pod_host": pod_host,
        "memory": memory,
        "resident": resident,
    }


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
    parser.add_argument("--timeout", type=float, default=900, help="per wait, seconds")
    args = parser.parse_args(argv)

    userland = node.build_userland()
    image = node.build_image()
    key = json.loads(image.with_name(image.name + ".key").read_text())
    k4s_mb = userland.k4s.stat().st_size / 1e6
    k4s_gz_mb = len(gzip.compress(userland.k4s.read_bytes(), 6)) / 1e6
    print(
        f"k4s binary: {k4s_mb:.1f} MB, {k4s_gz_mb:.1f} MB gzipped "
        f"(k3s v1.37: one binary of {K3S_BINARY_MB} MB compressed)"
    )
    print(
        f"image: {image}: {image.stat().st_size / 1e6:.1f} MB gzip, "
        f"{int(key['cpio_bytes']) / 1e6:.1f} MB cpio"
    )
    print(f"accel: {' '.join(vm.accelerator())}; memory {node.NODE_MEMORY_MB} MiB")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in userland.versions.items()) + "\n")

    runs = [
        one_run(image, node.NODE_OUT / f"bench-console-{i + 1}.log", args.timeout, userland.k4s)
        for i in range(args.runs)
    ]

    def med(values: list[float]) -> str:
        return f"{statistics.median(values):7.2f}"

    print("milestone (guest s since kernel start; host s since qemu start)")
    for name in runs[0]["marks"]:
        guests = [g for r in runs if (g := r["marks"].get(name, (0, None))[1]) is not None]
        hosts = [r["marks"][name][0] for r in runs if name in r["marks"]]
        print(f"  {name:<28} guest {med(guests) if guests else '      -'}   host {med(hosts)}")
    for label, key in (
        ("all roles ready", "all_ready_host"),
        ("node Ready", "node_ready_host"),
        ("first pod Running", "pod_host"),
    ):
        print(f"  {label + ' (host)':<28} guest       -   host {med([r[key] for r in runs])}")

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
    memory = statistics.median(r["memory"] for r in runs) / 2**20
    print(
        f"guest memory in use at node Ready (MemTotal - MemAvailable): {memory:.0f} MiB "
        f"(k3s' docs: ~{K3S_SERVER_RESIDENT_GB} GB resident for a server with its agent)"
    )
    print("\nrole at node Ready (median MiB)   resident  cgroup memory.current")
    for name in ROLES:
        rows = [r["resident"][name] for r in runs if name in r["resident"]]
        rss_values = [x[0] / 2**20 for x in rows if x[0] is not None]
        cgroup_values = [x[1] / 2**20 for x in rows if x[1] is not None]
        resident = f"{statistics.median(rss_values):8.1f}" if rss_values else "       -"
        current = f"{statistics.median(cgroup_values):8.1f}" if cgroup_values else "       -"
        print(f"  {name:<30} {resident}  {current}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
