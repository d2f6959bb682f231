"""Build the lab's node image and boot a cluster in qemu: what ``scripts/cluster`` runs.

``.venv/bin/python rootfs/cluster.py [--workers N] [--api-port PORT] [--disk FILE] [--fresh]``

* One image for every node (:func:`build_image`, into ``rootfs/out/cluster``):
  the node image of ``rootfs/node.py`` with ``etc/k4sinit/cluster-worker.yaml`` as
  its config, ``etc/k4sinit/cluster-controller.yaml`` beside it, mke2fs, and the
  modules for the controller's disk (virtio_blk, ext4).
* The lab (``rootfs/lab.py``): a private L2 network in a network namespace of
  its own; the controller (3 GiB, 2 vCPUs, the disk ``--disk``, kept between
  runs so the cluster is too; ``--fresh`` starts a new one), then, once its
  apiserver makes a join token, ``--workers`` diskless workers (2 GiB, 1 vCPU
  each) booted with it.
* From another shell on the host, while it runs::

      scripts/kubectl get nodes -o wide
      K4SINIT_SOCKET=/run/k4sinit-lab/worker-1/control.sock .venv/bin/k4sinit status
      tail -f /run/k4sinit-lab/controller/console.log

  The apiserver is forwarded to ``127.0.0.1:--api-port`` (default 6443) and the
  admin kubeconfig, pointed there, kept in ``/run/k4sinit-lab/kubeconfig``.
* Ctrl-C (or SIGTERM) powers the workers off, then the controller (a second
  Ctrl-C kills them at once), and removes the network namespace with its
  bridge and taps.

Exit code: 0 once every node has powered off by itself, 130 after Ctrl-C, 1 if the
image cannot be built or the lab cannot start.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build  # rootfs/ is a directory of scripts, not a package
import gobuild
import lab
import node

WORKER_CONFIG = build.ROOT / "etc/k4sinit/cluster-worker.yaml"
CONTROLLER_CONFIG = build.ROOT / "etc/k4sinit/cluster-controller.yaml"
OUT = build.ROOT / "rootfs/out/cluster"
DISK = OUT / "controller-disk.raw"
#: The node image's modules, and the controller's disk: its driver and filesystem.
MODULES = (*node.NODE_MODULES, "virtio_blk", "ext4")
#: Formats the controller's disk at its first boot (storage: format: ifBlank).
BINARIES = (*build.DEFAULT_BINARIES, "/usr/sbin/mke2fs")
#: From qemu's start to a join token: the controller's boot and its apiserver's first start.
TOKEN_TIMEOUT = 900.0
WATCH_PERIOD = 15.0  # kubectl is a big binary: its start costs the VMs CPU


def build_image(
    *, userland: gobuild.Outputs | None = None, out: Path = OUT, quiet: bool = False
) -> Path:
    """The lab's image (cached like the node image), with ``userland`` (else built
    first); raises build.BuildError or gobuild.GoBuildError."""
    userland = userland or node.build_userland(quiet=quiet)
    return build.build(
        WORKER_CONFIG,
        out,
        MODULES,
        {lab.CONTROLLER_CONFIG: CONTROLLER_CONFIG},
        userland=userland,
        binaries=BINARIES,
        quiet=quiet,
    )


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the lab as Ctrl-C does


def watch(the_lab: lab.Lab, kubectl: node.Cluster) -> None:
    """Until every node's qemu has exited: say when a node turns Ready or not."""
    seen: dict[str, str] = {}
    while True:
        for name, machine in the_lab.vms.items():
            if machine.exit_code is not None and seen.get(name) != "exited":
                seen[name] = "exited"
                say(f"lab: {name}'s qemu exited ({machine.exit_code})")
        if all(m.exit_code is not None for m in the_lab.vms.values()):
            return
        try:
            items = kubectl.json("get", "nodes")["items"] if the_lab.kubeconfig.exists() else []
        except (node.ClusterError, ValueError, OSError):
            items = []
        for item in items:
            name = item["metadata"]["name"]
            conditions = item["status"].get("conditions", [])
            ready = next((c["status"] for c in conditions if c["type"] == "Ready"), "Unknown")
            state = "Ready" if ready == "True" else "NotReady"
            if seen.get(name) != state and seen.get(name) != "exited":
                since = the_lab.booted.get(name)
                after = (
                    f" ({time.monotonic() - since:.0f} s after its qemu started)" if since else ""
                )
                say(f"lab: node {name} {state}{after}")
                seen[name] = state
        time.sleep(WATCH_PERIOD)


def run(args: argparse.Namespace, image: Path, userland: gobuild.Outputs) -> None:
    """Boot the lab and watch it until its nodes have exited (or Ctrl-C)."""
    options = lab.LabOptions(
        image=image,
        disk=Path(args.disk),
        api_port=args.api_port,
        controller_memory_mb=args.controller_memory,
        worker_memory_mb=args.worker_memory,
    )
    with lab.Lab(options, say=say) as the_lab:
        say(f"lab: booting the controller ({the_lab.controller.address}, disk {args.disk})")
        the_lab.boot_controller()
        the_lab.keep_kubeconfig()
        say(f"lab: console in {the_lab.console_log(lab.CONTROLLER)}; waiting for a join token")
        token = the_lab.create_token(TOKEN_TIMEOUT)
        say("lab: join token made (k4sinit token list, on the controller)")
        for number in range(1, args.workers + 1):
            worker = the_lab.boot_worker(number, token)
            say(f"lab: booting worker-{number} (console in {worker.log_path})")
        say(
            "lab: from another shell:\n"
            "lab:   scripts/kubectl get nodes -o wide\n"
            f"lab:   K4SINIT_SOCKET={the_lab.socket(lab.CONTROLLER)} .venv/bin/k4sinit status\n"
            "lab: Ctrl-C powers every node off and removes the lab network"
        )
        kubectl = node.Cluster(
            the_lab.socket(lab.CONTROLLER), userland.k4s, args.api_port, the_lab.kubeconfig
        )
        watch(the_lab, kubectl)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rootfs/cluster.py",
        description="boot a controller and diskless workers in qemu on a private network",
    )
    parser.add_argument("--workers", type=int, default=1, help="default: %(default)s")
    parser.add_argument(
        "--api-port",
        type=int,
        default=lab.API_PORT,
        help="host port (on 127.0.0.1) for the apiserver (default: %(default)s)",
    )
    parser.add_argument(
        "--disk", default=str(DISK), help="the controller's disk (default: %(default)s)"
    )
    parser.add_argument("--fresh", action="store_true", help="a new disk: a new cluster")
    parser.add_argument(
        "--controller-memory",
        type=int,
        default=node.NODE_MEMORY_MB,
        help="MiB (default: %(default)s)",
    )
    parser.add_argument(
        "--worker-memory",
        type=int,
        default=lab.LabOptions.worker_memory_mb,
        help="MiB (default: %(default)s)",
    )
    parser.add_argument("--build-only", action="store_true", help="build the image, do not boot")
    args = parser.parse_args(argv)
    if not 0 <= args.workers <= lab.SUBNET.num_addresses - lab.CONTROLLER_HOST - 2:
        parser.error(f"--workers {args.workers}: out of range")
    try:
        userland = node.build_userland()
        image = build_image(userland=userland)
    except (build.BuildError, gobuild.GoBuildError) as exc:
        say(f"cluster: {exc}")
        return 1
    if args.build_only:
        print(image)
        return 0
    if args.fresh:
        Path(args.disk).unlink(missing_ok=True)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        run(args, image, userland)
    except KeyboardInterrupt:
        say("lab: stopped")
        return 130
    except lab.LabError as exc:
        say(f"cluster: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
