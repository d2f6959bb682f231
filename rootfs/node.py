"""Build the single-node image and boot it in qemu: what ``scripts/run-node`` runs.

``.venv/bin/python rootfs/node.py [--k4s PATH] [--config FILE] [--memory MIB]``

* The image is :func:`build.build` of ``etc/k4sinit/node-vm.yaml`` (the single
  profile: kine, kube-apiserver, kube-scheduler, kube-controller-manager,
  containerd, kubelet) into ``rootfs/out/node``. With ``--k4s PATH`` the u-root
  k4s multicall binary at PATH serves the Kubernetes roles; without it the image
  carries the test stand-ins (tests/standins/kube.py), and the boot banner and
  ``k4sinit status`` say so.
* qemu gets the console on this terminal (Ctrl-A x quits, Ctrl-A c is qemu's
  monitor), a guest reboot restarts the VM (``k4sinit reboot`` comes back up),
  ``k4sinit poweroff`` ends qemu with exit code 0.
* k4sinit's control socket is relayed from the guest over a virtio-serial port to
  ``--socket`` (default ``/run/k4sinit-vm/control.sock``, mode 0600), so from
  another shell on the host::

      K4SINIT_SOCKET=/run/k4sinit-vm/control.sock .venv/bin/k4sinit status

Exit code: qemu's (0 after a guest power-off), or 1 if the image cannot be built.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build  # rootfs/ is a directory of scripts, not a package
import vm

NODE_CONFIG = build.ROOT / "etc/k4sinit/node-vm.yaml"
NODE_OUT = build.ROOT / "rootfs/out/node"
#: The single profile's preflight asks for 2 GiB of MemTotal (the kernel keeps some
#: of what qemu gives) and 1 GiB free in the tmpfs root (half the memory by default).
NODE_MEMORY_MB = 3072
CONTROL_SOCKET = "/run/k4sinit-vm/control.sock"


def build_image(
    *,
    k4s: str | os.PathLike[str] | None = None,
    config: str | os.PathLike[str] = NODE_CONFIG,
    out: str | os.PathLike[str] = NODE_OUT,
    quiet: bool = False,
) -> Path:
    """The node image (rebuilt only when an input changed); raises build.BuildError."""
    return build.build(config, out, k4s=k4s, quiet=quiet)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rootfs/node.py",
        description="build the single-node image and boot it in qemu (console here; Ctrl-A x quits)",
    )
    parser.add_argument("--k4s", help="the u-root k4s multicall binary (default: test stand-ins)")
    parser.add_argument("--config", default=str(NODE_CONFIG), help="default: %(default)s")
    parser.add_argument(
        "--out", default=str(NODE_OUT), help="build directory (default: %(default)s)"
    )
    parser.add_argument(
        "--memory", type=int, default=NODE_MEMORY_MB, help="MiB (default: %(default)s)"
    )
    parser.add_argument(
        "--socket", default=CONTROL_SOCKET, help="host control socket (default: %(default)s)"
    )
    parser.add_argument("--append", default="", help="more kernel command line, e.g. ip=...")
    parser.add_argument("--verbose", action="store_true", help="all kernel messages (no quiet)")
    parser.add_argument("--build-only", action="store_true", help="build the image, do not boot")
    args = parser.parse_args(argv)
    try:
        image = build_image(k4s=args.k4s, config=args.config, out=args.out)
    except build.BuildError as exc:
        print(f"node: {exc}", file=sys.stderr)
        return 1
    if args.build_only:
        print(image)
        return 0
    with tempfile.TemporaryDirectory(prefix="k4sinit-node-") as port_dir:
        port = os.path.join(port_dir, "port.sock")
        cmd = vm.qemu_command(
            image,
            append=args.append,
            memory_mb=args.memory,
            reboot=True,
            quiet=not args.verbose,
            terminal=True,
            control_port=port,
        )
        roles = "the k4s binary " + args.k4s if args.k4s else "TEST STAND-INS (not Kubernetes)"
        print(
            f"node: booting {image} in qemu ({' '.join(vm.accelerator())}); roles: {roles}\n"
            f"node: console below; Ctrl-A x quits qemu. From another shell:\n"
            f"node:   K4SINIT_SOCKET={args.socket} .venv/bin/k4sinit status\n",
            file=sys.stderr,
            flush=True,
        )
        qemu = subprocess.Popen(cmd)
        relay = vm.RelayThread(port, args.socket)
        try:
            relay.start()
        except vm.VMError as exc:
            print(f"node: no control socket: {exc}", file=sys.stderr)
        try:
            return qemu.wait()
        finally:
            if qemu.poll() is None:
                qemu.kill()
                qemu.wait()
            relay.stop()


if __name__ == "__main__":
    sys.exit(main())
