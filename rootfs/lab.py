"""A lab of node VMs on one private L2 network: what ``scripts/cluster`` and tests/test_cluster.py run.

The network is the lab's own, made at start and gone at the end::

    host (its own network namespace: untouched, but for 127.0.0.1:<api port>)
      |  ApiForward: a TCP relay, each connection made from inside the lab namespace
    network namespace k4sinit-lab      (ip netns add; nothing else in it, no uplink)
      lab0   bridge, 192.168.44.1/24   (the nodes' gateway: answers ARP, routes nothing)
      +-- tap-controller -- qemu (in the namespace, through nsenter) -- eth0 192.168.44.10
      +-- tap-worker-1   -- qemu                                     -- eth0 192.168.44.11
      +-- ...

Nothing on the lab network can reach anything else: the namespace has no other
link and no route out, and the host has no link into it. Each VM's qemu runs
inside the namespace (its tap device is there), in a session of its own (a
Ctrl-C on the terminal reaches only the lab, which powers the nodes off in
order), and dies with the lab (``PR_SET_PDEATHSIG``). Its control socket is
relayed over its virtio-serial port to ``<run dir>/<node>/control.sock``
(:class:`vm.VM` does it), the console goes to ``<run dir>/<node>/console.log``.

Per node, only the kernel command line differs (one image for every node):
``k4sinit.hostname=`` (the node's name), ``ip=`` (its static address, the
gateway and DNS server: no DHCP on the lab network), the controller's
``k4sinit.config=`` (its config in the image, with the storage section), and a
worker's ``k4sinit.role=worker`` and ``k4sinit.token=`` (its join token, made on
the controller by ``k4sinit token create`` once its apiserver answers). The controller has a disk (a raw
file, ``/dev/vda``); workers are diskless.

:meth:`Lab.close` leaves nothing behind: the workers and then the controller are
powered off over their control sockets (within a deadline; then SIGKILL by pid),
the relays and the forward stop, and deleting the namespace takes the bridge
and the taps with it. A namespace left by a lab that was SIGKILLed is removed at
the next start, unless processes still run in it (then :class:`LabError`).
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

sys.path.insert(0, str(Path(__file__).resolve().parent))
import node  # rootfs/ is a directory of scripts, not a package
import vm

from k4sinit import control

NETNS = "k4sinit-lab"
SUBNET = ipaddress.IPv4Network("192.168.44.0/24")
GATEWAY = SUBNET[1]  # the bridge's own address in the lab namespace
CONTROLLER_HOST = 10  # the controller is SUBNET[10], worker N is SUBNET[10 + N]
BRIDGE = "lab0"
RUN_DIR = Path("/run/k4sinit-lab")
CONTROLLER = "controller"
#: Where the lab's image keeps the controller's config (rootfs/cluster.py puts it there).
CONTROLLER_CONFIG = "/etc/k4sinit/cluster-controller.yaml"
API_PORT = node.API_PORT
#: qemu's default MAC is the same for every VM: on one L2 network each needs its own
#: (52:54:00 is qemu's prefix; 44 the lab's).
MAC_PREFIX = "52:54:00:44:00"
CLONE_NEWNET = 0x40000000
POWEROFF_SECONDS = 120.0  # a node's orderly stop under TCG: services, then the kernel


class LabError(RuntimeError):
    """The lab could not be set up (a command failed, a lab runs already)."""


def ip(*args: str, netns: str | None = None) -> str:
    """``ip [-n NETNS] ARGS``; its output. Raises :class:`LabError` with ip's message."""
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


# --- the network ---------------------------------------------------------------------


class LabNetwork:
    """The lab's network namespace with its bridge; a tap per VM.

    :meth:`create` makes the namespace (removing one a killed lab left, if no
    process runs in it), :meth:`add_tap` a tap device on the bridge, :meth:`destroy`
    deletes the namespace and everything in it.
    """

    def __init__(self, name: str = NETNS, subnet: ipaddress.IPv4Network = SUBNET) -> None:
        self.name = name
        self.subnet = subnet
        self.gateway = subnet[1]
        self.created = False

    @property
    def path(self) -> str:
        """The namespace's file (what ``nsenter --net=`` and ``setns`` take)."""
        return f"/run/netns/{self.name}"

    def create(self) -> None:
        if os.path.exists(self.path):
            pids = ip("netns", "pids", self.name).split()
            if pids:
                raise LabError(
                    f"network namespace {self.name} is in use (pids {', '.join(pids)}):"
                    " is a lab running? Stop it first"
                )
            ip("netns", "del", self.name)  # left by a lab that was killed
        ip("netns", "add", self.name)
        self.created = True
        ip("link", "set", "lo", "up", netns=self.name)
        ip("link", "add", BRIDGE, "type", "bridge", netns=self.name)
        ip("addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", BRIDGE, netns=self.name)
        ip("link", "set", BRIDGE, "up", netns=self.name)

    def add_tap(self, name: str) -> str:
        """A tap device ``name`` on the bridge, up; returns its name."""
        ip("tuntap", "add", "dev", name, "mode", "tap", netns=self.name)
        ip("link", "set", name, "master", BRIDGE, "up", netns=self.name)
        return name

    def links(self) -> list[str]:
        """The names of the links in the namespace (for tests and diagnostics)."""
        out = ip("-o", "link", "show", netns=self.name)
        return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]

    def destroy(self) -> None:
        """Delete the namespace (its bridge and taps go with it); idempotent."""
        if self.created and os.path.exists(self.path):
            ip("netns", "del", self.name)
        self.created = False


def enter_netns(path: str) -> None:
    """Move the calling thread (only it: network namespaces are per thread) into ``path``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


class ApiForward:
    """Serves ``127.0.0.1:port`` on the host; each connection is relayed to ``target``
    inside the namespace at ``netns_path``: a thread per connection moves itself
    into the namespace and connects from there (the host has no route into the
    lab). :meth:`stop` closes the listener and every relayed connection."""

    def __init__(self, netns_path: str, target: tuple[str, int], port: int) -> None:
        self.netns_path = netns_path
        self.target = target
        self.port = port
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            listener.bind(("127.0.0.1", self.port))
        except OSError as exc:
            listener.close()
            raise LabError(f"127.0.0.1:{self.port}: {exc.strerror} (--api-port)") from None
        listener.listen(16)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, name="lab-api", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _accept(self) -> None:
        while self._listener is not None:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # stopped
            threading.Thread(
                target=self._relay, args=(client,), name="lab-api-conn", daemon=True
            ).start()

    def _relay(self, client: socket.socket) -> None:
        with client:
            try:
                enter_netns(self.netns_path)
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                return  # the client sees the connection closed: the node is not up
            with upstream:
                upstream.settimeout(None)
                with self._lock:
                    self._open |= {client, upstream}
                try:
                    pump(client, upstream)
                finally:
                    with self._lock:
                        self._open -= {client, upstream}


def pump(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until both sides have ended (or one fails)."""
    peer = {a: b, b: a}
    reading = [a, b]
    while reading:
        ready, _, _ = select.select(reading, [], [])
        for sock in ready:
            try:
                data = sock.recv(65536)
                if data:
                    peer[sock].sendall(data)
                    continue
                peer[sock].shutdown(socket.SHUT_WR)  # pass the end on
            except OSError:
                return
            reading.remove(sock)


# --- the nodes -----------------------------------------------------------------------


@dataclass(frozen=True)
class LabNode:
    """One VM of the lab: its name, address and the kernel arguments that make it that node."""

    name: str
    host: int  # its address is subnet[host]
    subnet: ipaddress.IPv4Network = SUBNET

    @property
    def address(self) -> ipaddress.IPv4Address:
        return self.subnet[self.host]

    @property
    def tap(self) -> str:
        return f"tap-{self.name}"[:15]  # IFNAMSIZ

    @property
    def mac(self) -> str:
        return f"{MAC_PREFIX}:{self.host:02x}"

    def append(self, *extra: str) -> str:
        """The kernel command line of this node: its name, address, gateway, DNS; then ``extra``."""
        gateway, mask = self.subnet[1], self.subnet.netmask
        return " ".join(
            (
                f"k4sinit.hostname={self.name}",
                f"ip={self.address}::{gateway}:{mask}:{self.name}:eth0:off:{gateway}",
                *extra,
            )
        )


def controller_node(subnet: ipaddress.IPv4Network = SUBNET) -> LabNode:
    return LabNode(CONTROLLER, CONTROLLER_HOST, subnet)


def worker_node(number: int, subnet: ipaddress.IPv4Network = SUBNET) -> LabNode:
    """Worker ``number`` (1, 2, ...): ``worker-<number>``."""
    return LabNode(f"worker-{number}", CONTROLLER_HOST + number, subnet)


@dataclass(frozen=True)
class LabOptions:
    """What a lab is made of; the defaults are what ``scripts/cluster`` runs."""

    image: Path
    disk: Path  # the controller's disk (a raw file; made, sparse, if missing)
    run_dir: Path = RUN_DIR
    netns: str = NETNS
    api_port: int = API_PORT
    controller_memory_mb: int = node.NODE_MEMORY_MB
    worker_memory_mb: int = 2048
    # The controller runs the whole control plane and pods: two vCPUs, as the single
    # node; with one, under TCG beside a worker, its kubelet's housekeeping took 50 s
    # and a pod waited minutes for its configmap (tests/test_cluster.py, 2026-12-03).
    # An idle worker leaves its share to it; a worker needs one.
    controller_cpus: int = 2
    worker_cpus: int = 1
    disk_bytes: int = 4 << 30
    token_ttl: str = "24h"


class Lab:
    """The lab's network, forward and VMs; use as a context manager (see the module docstring).

    ``vms`` maps node names to their :class:`vm.VM`; :meth:`boot_controller`,
    :meth:`create_token` and :meth:`boot_worker` add to it. ``kubeconfig`` is the
    admin kubeconfig, pointed at ``https://127.0.0.1:<api_port>``, kept by
    :meth:`keep_kubeconfig`.
    """

    def __init__(self, options: LabOptions, say: Callable[[str], None] = print) -> None:
        self.options = options
        self.say = say
        self.network = LabNetwork(options.netns)
        self.controller = controller_node(self.network.subnet)
        self.forward = ApiForward(
            self.network.path, (str(self.controller.address), API_PORT), options.api_port
        )
        self.vms: dict[str, vm.VM] = {}
        self.booted: dict[str, float] = {}  # time.monotonic() at each node's qemu start
        self.kubeconfig = options.run_dir / "kubeconfig"
        self._stop_keeping = threading.Event()
        self._keeper: threading.Thread | None = None

    def __enter__(self) -> Lab:
        self.options.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.options.run_dir, 0o700)  # the relays refuse a directory others may write
        try:
            self.network.create()
            self.forward.start()
        except BaseException:
            self.close(graceful=False)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close(graceful=exc_type is None or exc_type is KeyboardInterrupt)

    def socket(self, name: str) -> str:
        """The host path of node ``name``'s control socket."""
        return str(self.options.run_dir / name / "control.sock")

    def console_log(self, name: str) -> Path:
        return self.options.run_dir / name / "console.log"

    # --- booting -------------------------------------------------------------------

    def boot(
        self,
        lab_node: LabNode,
        append: str,
        memory_mb: int,
        cpus: int,
        disks: tuple[Path, ...] = (),
    ) -> vm.VM:
        """Start ``lab_node``'s VM on its tap; returns it (running, its relay up)."""
        directory = self.options.run_dir / lab_node.name
        directory.mkdir(mode=0o700, exist_ok=True)
        os.chmod(directory, 0o700)
        self.network.add_tap(lab_node.tap)
        machine = vm.VM(
            self.options.image,
            log_path=self.console_log(lab_node.name),
            control_socket=self.socket(lab_node.name),
            new_session=True,
            append=append,
            memory_mb=memory_mb,
            cpus=cpus,
            reboot=True,
            tap=lab_node.tap,
            mac=lab_node.mac,
            netns=self.network.path,
            disks=disks,
        )
        self.vms[lab_node.name] = machine
        self.booted[lab_node.name] = time.monotonic()
        machine.start()
        return machine

    def boot_controller(self) -> vm.VM:
        """The controller, with its disk (made blank if missing: formatted at its first boot)."""
        disk = self.options.disk
        if not disk.exists():
            disk.parent.mkdir(parents=True, exist_ok=True)
            with open(disk, "wb") as f:
                f.truncate(self.options.disk_bytes)  # sparse: reads as zeros, so blank
        append = self.controller.append(f"k4sinit.config={CONTROLLER_CONFIG}")
        options = self.options
        return self.boot(
            self.controller, append, options.controller_memory_mb, options.controller_cpus, (disk,)
        )

    def boot_worker(self, number: int, token: str) -> vm.VM:
        """Worker ``number``, diskless, joining with ``token``."""
        worker = worker_node(number, self.network.subnet)
        append = worker.append("k4sinit.role=worker", f"k4sinit.token={token}")
        return self.boot(worker, append, self.options.worker_memory_mb, self.options.worker_cpus)

    def create_token(self, timeout: float) -> str:
        """A join token from the controller (``k4sinit token create``), once its apiserver
        takes one; raises :class:`LabError` after ``timeout`` seconds with the last error."""
        deadline = time.monotonic() + timeout
        machine = self.vms[CONTROLLER]
        last = ""
        while time.monotonic() < deadline:
            if machine.exit_code is not None:
                raise LabError(f"the controller's qemu exited ({machine.exit_code})")
            out = machine.k4sinit("token", "create", "--ttl", self.options.token_ttl, timeout=120)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
            last = (out.stderr or out.stdout).strip()
            time.sleep(5)
        raise LabError(f"no join token from the controller within {timeout:g}s: {last}")

    # --- the kubeconfig -------------------------------------------------------------

    def keep_kubeconfig(self) -> None:
        """Keep :attr:`kubeconfig` written from the controller's (a thread, until close)."""
        self._keeper = threading.Thread(
            target=node.keep_kubeconfig,
            args=(self.socket(CONTROLLER), str(self.kubeconfig), self.options.api_port),
            kwargs={"stop": self._stop_keeping},
            name="lab-kubeconfig",
            daemon=True,
        )
        self._keeper.start()

    # --- stopping ------------------------------------------------------------------

    def power_off(self, name: str, timeout: float = POWEROFF_SECONDS) -> bool:
        """``k4sinit poweroff`` on node ``name`` and wait for its qemu to exit; False
        (qemu still running) when the node did not answer or stop in time."""
        machine = self.vms[name]
        if machine.exit_code is not None:
            return True
        with contextlib.suppress(control.ControlClientError):
            control.request(self.socket(name), control.Request("poweroff"), timeout=timeout)
        try:
            machine.wait(timeout)
        except vm.VMError:
            return False
        return True

    def close(self, *, graceful: bool = True) -> None:
        """Power the nodes off (workers first; with ``graceful``), kill what still runs
        by pid, stop the forward and the relays, delete the namespace. A second
        Ctrl-C during the power-off skips to the kills."""
        self._stop_keeping.set()
        try:
            if graceful:
                for name in [*(n for n in self.vms if n != CONTROLLER), CONTROLLER]:
                    if name in self.vms and self.vms[name].exit_code is None:
                        self.say(f"lab: powering off {name}")
                        self.power_off(name)
        finally:
            for machine in self.vms.values():
                machine.kill()
            self.forward.stop()
            if self._keeper is not None:
                self._keeper.join(timeout=10)
            self.network.destroy()
            with contextlib.suppress(FileNotFoundError):
                self.kubeconfig.unlink()
            for name in self.vms:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.socket(name))
