"""Build the single-node image and boot it in qemu: what ``scripts/run-node`` runs.

``.venv/bin/python rootfs/node.py [--config FILE] [--memory MIB] [--api-port PORT]``

* The Go userland (k4s, runc, the shim, CNI plugins, pause) is built from the
  pinned modules of ``rootfs/k4s`` by ``rootfs/k4s/gobuild.py`` into
  ``rootfs/out/k4s`` (cached: rebuilt only when its sources change; a cold build
  takes many minutes and prints its progress).
* The image is :func:`build.build` of ``etc/k4sinit/node-vm.yaml`` (the single
  profile: kine, kube-apiserver, kube-scheduler, kube-controller-manager,
  manifests, coredns, containerd, images, kubelet, kube-proxy) into
  ``rootfs/out/node``.
* qemu gets the console on this terminal (Ctrl-A x quits, Ctrl-A c is qemu's
  monitor), a guest reboot restarts the VM (``k4sinit reboot`` comes back up),
  ``k4sinit poweroff`` ends qemu with exit code 0.
* k4sinit's control socket is relayed from the guest over a virtio-serial port to
  ``--socket`` (default ``/run/k4sinit-vm/control.sock``, mode 0600), so from
  another shell on the host::

      K4SINIT_SOCKET=/run/k4sinit-vm/control.sock .venv/bin/k4sinit status

* The apiserver is forwarded to ``127.0.0.1:--api-port`` (default 6443) on the
  host, and once the node has made its PKI its admin kubeconfig, pointed there,
  is written to ``--kubeconfig`` (default ``/run/k4sinit-vm/kubeconfig``, mode
  0600), and written again when a reboot makes a new one:
  ``scripts/kubectl get nodes`` uses both.

Exit code: qemu's (0 after a guest power-off), or 1 if the image cannot be built.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build  # rootfs/ is a directory of scripts, not a package
import gobuild
import vm

from k4sinit import cli, control

NODE_CONFIG = build.ROOT / "etc/k4sinit/node-vm.yaml"
NODE_OUT = build.ROOT / "rootfs/out/node"
#: The single profile's preflight asks for 2 GiB of MemTotal (the kernel keeps some
#: of what qemu gives) and 1 GiB free in the tmpfs root (half the memory by default).
NODE_MEMORY_MB = 3072
CONTROL_SOCKET = "/run/k4sinit-vm/control.sock"
KUBECONFIG = "/run/k4sinit-vm/kubeconfig"
API_PORT = 6443  # the apiserver's port in the guest, and by default on the host
#: Kernel modules in the image besides the config's, loaded by the kernel when asked
#: for (its request_module runs the image's /sbin/modprobe): what kube-proxy's
#: iptables rules (nf_tables backend) and the CNI plugins may use.
NODE_MODULES = (
    *build.DEFAULT_MODULES,
    "nft_ct",
    "nft_nat",
    "nft_masq",
    "nft_redir",
    "nft_reject_ipv4",
    "nft_reject_inet",
    "nft_fib_ipv4",
    "nft_fib_inet",
    "nft_limit",
    "xt_statistic",
    "xt_nat",
    "xt_recent",
    "xt_tcpudp",
    "xt_multiport",
    "xt_physdev",
    "xt_connmark",
    "ipt_REJECT",
    "nf_conntrack_netlink",
    "nfnetlink_acct",  # kube-proxy's packet counters (nfacct metrics)
    "xt_nfacct",
)


def build_userland(*, quiet: bool = False) -> gobuild.Outputs:
    """The Go userland (cached); raises gobuild.GoBuildError."""
    return gobuild.build(say=(lambda line: None) if quiet else build._say)


def build_image(
    *,
    config: str | os.PathLike[str] = NODE_CONFIG,
    out: str | os.PathLike[str] = NODE_OUT,
    quiet: bool = False,
) -> Path:
    """The node image (rebuilt only when an input changed), the userland built first;
    raises build.BuildError or gobuild.GoBuildError."""
    userland = build_userland(quiet=quiet)
    return build.build(config, out, NODE_MODULES, userland=userland, quiet=quiet)


def keep_kubeconfig(
    socket: str, path: str, api_port: int, *, stop: threading.Event, period: float = 5.0
) -> None:
    """Until ``stop``: ask the node for its admin kubeconfig every ``period`` seconds and
    write it to ``path`` (0600) whenever it differs, with the server
    ``https://127.0.0.1:<api_port>``. Every boot of a diskless node makes a new CA,
    so a reboot brings a new kubeconfig."""
    written = None
    while not stop.is_set():
        try:
            result = control.request(socket, control.Request("kubeconfig"), timeout=30)
        except control.ControlClientError:
            result = None  # not booted yet, or no PKI yet
        if result is not None:
            text = cli.with_server(result["kubeconfig"], f"https://127.0.0.1:{api_port}")
            if text != written:
                write_private(path, text)
                written = text
        stop.wait(period)


def write_private(path: str, text: str) -> None:
    """Replace ``path`` atomically with ``text``, mode 0600 (it holds a key)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


_T = TypeVar("_T")


class ClusterError(AssertionError):
    """kubectl failed, or the cluster did not get where it was awaited in time.

    An ``AssertionError`` so pytest shows it as a test failure."""


class Cluster:
    """kubectl (the k4s build's) on the host, against a node's forwarded apiserver.

    ``refresh()`` fetches the node's admin kubeconfig over the control socket and
    points it at ``https://127.0.0.1:<port>`` (every boot makes a new CA: refresh
    after a reboot). Used by tests/test_e2e.py and bench/node_boot.py.
    """

    def __init__(self, control_socket: str, k4s: Path, port: int, kubeconfig: Path) -> None:
        self.control_socket = control_socket
        self.k4s = k4s
        self.port = port
        self.kubeconfig = kubeconfig

    def refresh(self) -> None:
        result = control.request(self.control_socket, control.Request("kubeconfig"), timeout=60)
        text = cli.with_server(result["kubeconfig"], f"https://127.0.0.1:{self.port}")
        write_private(str(self.kubeconfig), text)

    def run(
        self, *args: str, stdin: str | None = None, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """``kubectl ARGS``; raises ClusterError when it fails and ``check``."""
        argv = [str(self.k4s), "kubectl", f"--kubeconfig={self.kubeconfig}", *args]
        out = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise ClusterError(f"kubectl {' '.join(args)}:\n{out.stdout}{out.stderr}")
        return out

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-o", "json").stdout)

    def wait(
        self,
        what: str,
        condition: Callable[[], _T | None],
        timeout: float,
        explain: Sequence[str] = (),
    ) -> _T:
        """Until ``condition()`` is truthy (kubectl failing counts as not yet); its value.

        On timeout the ClusterError carries what the cluster says: the recent events,
        the nodes, and ``kubectl describe`` of each object in ``explain`` ("pod/web").
        """
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                value = condition()
            except (ClusterError, subprocess.TimeoutExpired) as exc:
                value, last = None, exc
            if value:
                return value
            time.sleep(2)
        raise ClusterError(
            f"{what}: not within {timeout:g}s; last error: {last}\n{self.diagnose(explain)}"
        )

    def diagnose(self, objects: Sequence[str] = ()) -> str:
        """What kubectl can tell about a stuck cluster; never raises."""
        queries: list[tuple[str, ...]] = [
            ("get", "nodes", "-o", "wide"),
            ("get", "events", "-A", "--sort-by=.lastTimestamp"),
        ]
        queries += [("describe", obj) for obj in objects]
        parts = []
        for args in queries:
            try:
                out = self.run(*args, timeout=60, check=False)
                text = (out.stdout + out.stderr).strip()
            except (OSError, subprocess.TimeoutExpired) as exc:
                text = f"({exc})"
            lines = text.splitlines()
            parts.append(f"--- kubectl {' '.join(args)}\n" + "\n".join(lines[-40:]))
        return "\n".join(parts)

    def node_ready(self) -> dict[str, Any] | None:
        """The first node whose Ready condition is True, or None."""
        item: dict[str, Any]
        for item in self.json("get", "nodes")["items"]:
            ready = [c for c in item["status"].get("conditions", []) if c["type"] == "Ready"]
            if ready and ready[0]["status"] == "True":
                return item
        return None

    def apply_pods(self, manifests: str, timeout: float = 300) -> None:
        """``kubectl apply`` once the namespace's default ServiceAccount exists: in a
        fresh cluster the controller-manager makes it a moment after it starts, and the
        apiserver refuses pods until then."""
        self.wait(
            "the default ServiceAccount",
            lambda: self.run("get", "serviceaccount", "default", check=False).returncode == 0,
            timeout,
        )
        self.run("apply", "-f", "-", stdin=manifests)

    def wait_pod_ready(self, name: str, timeout: float) -> dict[str, Any]:
        """Pod ``name`` once Ready; a timeout's error describes the pod and the events."""
        return self.wait(
            f"pod {name} Ready", lambda: self.pod_ready(name), timeout, [f"pod/{name}"]
        )

    def pod_ready(self, name: str) -> dict[str, Any] | None:
        """Pod ``name`` once its Ready condition is True, or None."""
        pod = self.json("get", "pod", name)
        conditions = pod["status"].get("conditions", [])
        ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
        return pod if ready else None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rootfs/node.py",
        description="build the single-node image and boot it in qemu (console here; Ctrl-A x quits)",
    )
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
    parser.add_argument(
        "--api-port",
        type=int,
        default=API_PORT,
        help="host port (on 127.0.0.1) for the apiserver (default: %(default)s)",
    )
    parser.add_argument(
        "--kubeconfig", default=KUBECONFIG, help="admin kubeconfig to write (default: %(default)s)"
    )
    parser.add_argument("--append", default="", help="more kernel command line, e.g. ip=...")
    parser.add_argument("--verbose", action="store_true", help="all kernel messages (no quiet)")
    parser.add_argument("--build-only", action="store_true", help="build the image, do not boot")
    args = parser.parse_args(argv)
    try:
        image = build_image(config=args.config, out=args.out)
    except (build.BuildError, gobuild.GoBuildError) as exc:
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
            forward=[(args.api_port, API_PORT)],
        )
        print(
            f"node: booting {image} in qemu ({' '.join(vm.accelerator())})\n"
            f"node: console below; Ctrl-A x quits qemu. From another shell:\n"
            f"node:   K4SINIT_SOCKET={args.socket} .venv/bin/k4sinit status\n"
            f"node:   scripts/kubectl get nodes   "
            f"(apiserver on 127.0.0.1:{args.api_port}, kubeconfig {args.kubeconfig})\n",
            file=sys.stderr,
            flush=True,
        )
        qemu = subprocess.Popen(cmd)
        relay = vm.RelayThread(port, args.socket)
        stop = threading.Event()
        kubeconfig = threading.Thread(
            target=keep_kubeconfig,
            args=(args.socket, args.kubeconfig, args.api_port),
            kwargs={"stop": stop},
            daemon=True,
        )
        try:
            relay.start()
            kubeconfig.start()
        except vm.VMError as exc:
            print(f"node: no control socket: {exc}", file=sys.stderr)
        try:
            return qemu.wait()
        finally:
            stop.set()
            if qemu.poll() is None:
                qemu.kill()
                qemu.wait()
            relay.stop()


if __name__ == "__main__":
    sys.exit(main())
