"""Boot an initramfs in qemu with Debian's kernel: a CLI and the :class:`VM` tests use.

``VM`` is a context manager: it starts ``qemu-system-x86_64`` with the serial
console on a pipe, a reader thread collects the console (``.console``, also copied
to a log file, each line stamped with its arrival time since qemu start), and on
leaving the ``with`` block qemu is killed by its pid if it still runs, whatever
happened inside. qemu also gets ``PR_SET_PDEATHSIG``, so it dies with the process
that started it even if that one is killed.

Acceleration: KVM only if ``/dev/kvm`` exists *and* a probe boot of the kernel
with a tiny busybox initramfs reaches its init (the result is cached per host
boot in ``/tmp``); otherwise TCG (``-accel tcg,thread=multi -cpu max``).
``K4SINIT_VM_ACCEL=kvm|tcg`` overrides the probe. On these machines KVM is nested
and does not boot a stock kernel, so expect TCG: ~10 s to a Python PID 1.

The network is qemu's user-mode network with ``restrict=on`` (the guest reaches
nothing outside; it gets 10.0.2.15/24 by DHCP) on a virtio-net NIC; there is a
virtio RNG. A guest reboot or power-off ends qemu (``-no-reboot``) unless
``reboot=True``; a kernel panic reboots (``panic=-1``) and so ends qemu too: check
:attr:`VM.panicked` or :attr:`VM.powered_off`, not only the exit code.

CLI: ``.venv/bin/python rootfs/vm.py [--image IMAGE] [--append ARGS] [--reboot]``
boots with the console on this terminal (``Ctrl-A x`` quits qemu).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypedDict, Unpack

import trio

from k4sinit import control
from k4sinit.control.port import PORT_NAME

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build
import newc
from relay import HostRelay

QEMU = "qemu-system-x86_64"
BASE_APPEND = "console=ttyS0 panic=-1 printk.time=1"
POWER_OFF = "reboot: Power down"
PANIC = "Kernel panic - not syncing"
#: Console text after which nothing awaited can come: :meth:`VM.wait_for` fails at once.
FATAL = re.compile(r"Kernel panic - not syncing.*|Failed to execute /init.*")
TCG = ["-accel", "tcg,thread=multi", "-cpu", "max"]
KVM = ["-accel", "kvm", "-cpu", "host"]


class VMError(AssertionError):
    """The VM did not do what was awaited: timed out, or qemu exited first.

    An ``AssertionError`` so pytest shows it as a test failure; the message ends
    with the last lines of the console."""


def qemu_command(
    image: str | os.PathLike[str],
    *,
    kernel: str | os.PathLike[str] | None = None,
    append: str = "",
    accel: Sequence[str] | None = None,
    memory_mb: int = 1024,
    cpus: int = 2,
    reboot: bool = False,
    quiet: bool = True,
    terminal: bool = False,
    control_port: str | os.PathLike[str] | None = None,
    forward: Sequence[tuple[int, int]] = (),
    tap: str | None = None,
    mac: str | None = None,
    netns: str | None = None,
    disks: Sequence[str | os.PathLike[str]] = (),
    extra: Sequence[str] = (),
) -> list[str]:
    """The qemu command line (see the module docstring). The serial console is
    qemu's stdio: a plain pipe (what :class:`VM` reads), or with ``terminal`` an
    interactive terminal with qemu's monitor behind Ctrl-A c. ``control_port``: a
    unix socket path at which qemu serves k4sinit's control port (a virtio-serial
    port named ``org.k4sinit.control``; see k4sinit/control/port.py). ``forward``:
    ``(host port, guest port)`` pairs of TCP ports forwarded from the host's
    loopback into the guest (the apiserver, for kubectl on the host).

    For a lab of several VMs (rootfs/lab.py): ``tap`` puts the NIC on that tap
    device instead of the user-mode network (``forward`` then has nothing to
    forward), ``mac`` gives it its address (qemu's default is the same for
    every VM), ``netns`` runs qemu in that network namespace (a path such as
    ``/run/netns/NAME``, through ``nsenter``, which execs qemu: the pid stays
    qemu's), and each of ``disks`` is a raw image on a virtio disk
    (``/dev/vda``, ``/dev/vdb``, ...). ``extra``: more arguments, last (``-device
    i6300esb -action watchdog=reset``: a watchdog)."""
    if tap is not None and forward:
        raise ValueError("forward needs the user-mode network, not a tap device")
    cmdline = " ".join(p for p in (BASE_APPEND, "quiet" if quiet else "", append) if p)
    netdev = (
        f"tap,id=n0,ifname={tap},script=no,downscript=no"
        if tap is not None
        else "user,id=n0,restrict=on"
        + "".join(f",hostfwd=tcp:127.0.0.1:{host}-:{guest}" for host, guest in forward)
    )
    return [
        *(["nsenter", f"--net={netns}"] if netns is not None else []),
        QEMU,
        *(accel if accel is not None else accelerator()),
        "-m",
        str(memory_mb),
        "-smp",
        str(cpus),
        "-kernel",
        str(kernel or build.kernel_image()),
        "-initrd",
        str(image),
        "-append",
        cmdline,
        "-nographic",
        *(
            ["-serial", "mon:stdio"]
            if terminal
            else [
                "-monitor",
                "none",
                "-chardev",
                "stdio,id=con0,signal=off",
                "-serial",
                "chardev:con0",
            ]
        ),
        "-netdev",
        netdev,
        "-device",
        # no iPXE ROM: nothing boots from the net
        "virtio-net-pci,netdev=n0,romfile=" + (f",mac={mac}" if mac else ""),
        *(a for disk in disks for a in ("-drive", f"file={disk},if=virtio,format=raw")),
        "-device",
        "virtio-rng-pci",
        *(
            [
                "-device",
                "virtio-serial-pci",
                "-chardev",
                f"socket,id=ctl,path={control_port},server=on,wait=off",
                "-device",
                f"virtserialport,chardev=ctl,name={PORT_NAME}",
            ]
            if control_port
            else []
        ),
        *([] if reboot else ["-no-reboot"]),
        *extra,
    ]


class QemuOptions(TypedDict, total=False):
    """The keyword arguments of :func:`qemu_command` that :class:`VM` passes on."""

    kernel: str | os.PathLike[str] | None
    append: str
    accel: Sequence[str] | None
    memory_mb: int
    cpus: int
    reboot: bool
    quiet: bool
    terminal: bool
    forward: Sequence[tuple[int, int]]
    tap: str | None
    mac: str | None
    netns: str | None
    disks: Sequence[str | os.PathLike[str]]
    extra: Sequence[str]


class VM:
    """One qemu run of ``image``; use as a context manager.

    ``console`` is the console text so far (``\\r`` removed), ``lines`` the same as
    ``(seconds since qemu start, line)`` pairs, ``exit_code`` qemu's exit status
    (None while it runs). ``log_path`` (default: a temp file, kept) receives the
    console as it arrives. Keyword arguments go to :func:`qemu_command`.

    With ``control_socket`` the guest's control port is relayed to that host path
    (mode 0600; :class:`relay.HostRelay` in a thread): ``k4sinit
    status --socket PATH`` on the host talks to PID 1 in the VM; see :meth:`request`
    and :meth:`k4sinit`. ``new_session`` starts qemu in a session of its own, so a
    Ctrl-C on the terminal reaches only the caller, which may then power the guest
    off in order (rootfs/lab.py does).
    """

    def __init__(
        self,
        image: str | os.PathLike[str],
        *,
        log_path: str | os.PathLike[str] | None = None,
        control_socket: str | os.PathLike[str] | None = None,
        new_session: bool = False,
        **qemu_args: Unpack[QemuOptions],
    ) -> None:
        self.image = Path(image)
        self.new_session = new_session
        self.control_socket = str(control_socket) if control_socket else None
        self._port_dir = tempfile.mkdtemp(prefix="k4sinit-vm-port-") if control_socket else None
        port = os.path.join(self._port_dir, "port.sock") if self._port_dir else None
        self.command = qemu_command(image, control_port=port, **qemu_args)
        self._relay = (
            RelayThread(port, self.control_socket) if port and self.control_socket else None
        )
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="k4sinit-vm-", suffix=".console")
            os.close(fd)
            log_path = name
        self.log_path = Path(log_path)
        self.lines: list[tuple[float, str]] = []
        self.started = 0.0  # time.monotonic() just before qemu was spawned
        self._partial = ""
        self._text: list[str] = []
        self._cond = threading.Condition()
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._stderr_path = self.log_path.with_suffix(".qemu-stderr")

    # --- lifecycle ------------------------------------------------------------

    def start(self) -> VM:
        """Spawn qemu and the console reader; returns self."""
        stderr = open(self._stderr_path, "wb")  # noqa: SIM115 (the child owns a copy)
        self.started = time.monotonic()
        try:
            self._proc = subprocess.Popen(
                self.command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                preexec_fn=_die_with_parent,
                start_new_session=self.new_session,
            )
        finally:
            stderr.close()
        self._reader = threading.Thread(target=self._read, name="vm-console", daemon=True)
        self._reader.start()
        if self._relay is not None:
            try:
                self._relay.start()
            except VMError as exc:
                raise VMError(f"{exc}{self._qemu_stderr()}") from None
        return self

    def request(self, op: str, name: str | None = None, timeout: float = 60, **fields: Any) -> Any:
        """One control request to PID 1 in the VM (through the relay); its result.
        Raises ``k4sinit.control.ControlClientError`` as the CLI would show it."""
        assert self.control_socket is not None, "VM(control_socket=...) not given"
        req = control.Request(op, name=name, **fields)
        return control.request(self.control_socket, req, timeout=timeout)

    def k4sinit(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run the host's ``k4sinit`` CLI against the VM, as README shows."""
        assert self.control_socket is not None, "VM(control_socket=...) not given"
        env = {**os.environ, "K4SINIT_SOCKET": self.control_socket}
        cli = [sys.executable, "-m", "k4sinit", *args]
        return subprocess.run(cli, env=env, capture_output=True, text=True, timeout=timeout)

    def kill(self) -> None:
        """SIGKILL qemu by its pid if it still runs, reap it, and join the reader."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        if self._reader is not None:
            self._reader.join(timeout=10)
        for pipe in (proc.stdin, proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        self._stop_relay()

    def _stop_relay(self) -> None:
        if self._relay is not None:
            self._relay.stop()
        if self._port_dir is not None:
            shutil.rmtree(self._port_dir, ignore_errors=True)

    def __enter__(self) -> VM:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()

    # --- console --------------------------------------------------------------

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        with open(self.log_path, "w", encoding="utf-8") as log:
            while True:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    chunk = b""
                now = time.monotonic() - self.started
                text = chunk.decode("utf-8", "replace").replace("\r", "")
                log.write(text)
                log.flush()
                with self._cond:
                    self._text.append(text)
                    self._partial += text
                    *complete, self._partial = self._partial.split("\n")
                    self.lines.extend((now, line) for line in complete)
                    if not chunk:
                        if self._partial:
                            self.lines.append((now, self._partial))
                            self._partial = ""
                        self._cond.notify_all()
                        return
                    self._cond.notify_all()

    @property
    def console(self) -> str:
        with self._cond:
            if len(self._text) > 1:
                self._text[:] = ["".join(self._text)]
            return self._text[0] if self._text else ""

    def tail(self, n: int = 40) -> str:
        """The last ``n`` console lines, for error messages."""
        return "\n".join(self.console.splitlines()[-n:])

    def send(self, text: str) -> None:
        """Type ``text`` on the serial console."""
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(text.encode())
        self._proc.stdin.flush()

    def wait_for(
        self,
        pattern: str | re.Pattern[str],
        timeout: float = 60,
        *,
        fatal: re.Pattern[str] | None = FATAL,
    ) -> re.Match[str]:
        """Block until ``pattern`` (a regex, searched in the whole console, multiline)
        appears; returns the match. Raises :class:`VMError` on timeout, when qemu
        exits (its console closes) without it, or at once when ``fatal`` (default:
        a kernel panic, or the kernel failing to run /init) appears first."""
        regex = re.compile(pattern, re.MULTILINE) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                console = self.console
                m = regex.search(console)
                if m:
                    return m
                bad = fatal.search(console) if fatal else None
                if bad:
                    raise VMError(
                        f"{bad.group(0).strip()!r} before {regex.pattern!r}; "
                        f"console:\n{self.tail()}"
                    )
                if self._reader is None or not self._reader.is_alive():
                    raise VMError(
                        f"qemu exited ({self.exit_code}) before {regex.pattern!r} "
                        f"appeared{self._qemu_stderr()}; console:\n{self.tail()}"
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise VMError(
                        f"{regex.pattern!r} did not appear within {timeout:g}s; "
                        f"console:\n{self.tail()}"
                    )
                self._cond.wait(min(left, 1.0))

    def wait(self, timeout: float = 60) -> int:
        """Wait for qemu to exit; returns its exit code. Raises :class:`VMError`
        (qemu still running, not killed) on timeout."""
        assert self._proc is not None
        try:
            code = self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise VMError(
                f"qemu still running after {timeout:g}s; console:\n{self.tail()}"
            ) from None
        if self._reader is not None:
            self._reader.join(timeout=10)
        return code

    @property
    def exit_code(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def panicked(self) -> bool:
        return PANIC in self.console

    @property
    def powered_off(self) -> bool:
        """The kernel printed its power-off message (a clean ``reboot(POWER_OFF)``)."""
        return POWER_OFF in self.console

    def _qemu_stderr(self) -> str:
        with contextlib.suppress(OSError):
            err = self._stderr_path.read_text(errors="replace").strip()
            if err:
                return f" (qemu: {err[-2000:]})"
        return ""


class RelayThread:
    """:class:`relay.HostRelay` between qemu's port socket ``port_path``
    and the host control socket ``listen_path``, in its own thread and trio run.

    :meth:`start` returns once ``listen_path`` accepts (VMError if the relay could
    not start); :meth:`stop` ends it (it also ends by itself when qemu exits)."""

    def __init__(self, port_path: str, listen_path: str) -> None:
        self.relay = HostRelay(port_path, listen_path)
        self._thread = threading.Thread(target=self._run, name="vm-relay", daemon=True)
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope: trio.CancelScope | None = None
        self._error: BaseException | None = None

    def start(self, timeout: float = 60) -> None:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise VMError(f"the control relay did not start within {timeout:g}s")
        if self._error is not None:
            raise VMError(f"the control relay failed: {self._error}")

    def stop(self) -> None:
        if self._token is not None and self._scope is not None:
            with contextlib.suppress(trio.RunFinishedError):
                trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def _run(self) -> None:
        async def main() -> None:
            self._token = trio.lowlevel.current_trio_token()
            with trio.CancelScope() as scope:
                self._scope = scope
                async with trio.open_nursery() as nursery:
                    await nursery.start(self.relay.run)
                    self._ready.set()

        try:
            trio.run(main)
        except BaseException as exc:  # start() reports it; later, a dead relay is the news
            self._error = exc
        finally:
            self._ready.set()


def _die_with_parent() -> None:
    """In the forked child: get SIGKILL when the parent dies (PR_SET_PDEATHSIG)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)


# --- acceleration ------------------------------------------------------------------


def accelerator() -> list[str]:
    """qemu's ``-accel``/``-cpu`` arguments: KVM if it exists and a probe boot
    works here (cached per host boot), else TCG. ``K4SINIT_VM_ACCEL`` overrides."""
    forced = os.environ.get("K4SINIT_VM_ACCEL")
    if forced:
        return KVM if forced == "kvm" else TCG
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return TCG
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    cache = Path(tempfile.gettempdir(), "k4sinit-kvm-probe.json")
    kernel = str(build.kernel_image())
    with contextlib.suppress(OSError, ValueError):
        saved = json.loads(cache.read_text())
        if saved["boot_id"] == boot_id and saved["kernel"] == kernel:
            return KVM if saved["kvm"] else TCG
    works = probe_kvm(kernel)
    with contextlib.suppress(OSError):
        cache.write_text(json.dumps({"boot_id": boot_id, "kernel": kernel, "kvm": works}))
    return KVM if works else TCG


def probe_kvm(kernel: str, timeout: float = 20) -> bool:
    """Boot ``kernel`` under KVM with a busybox-only initramfs; True if its init ran."""
    with tempfile.TemporaryDirectory(prefix="k4sinit-kvm-probe-") as tmp:
        tree = Path(tmp, "tree")
        (tree / "bin").mkdir(parents=True)
        shutil.copyfile(build.BUSYBOX, tree / "bin/busybox")
        (tree / "bin/busybox").chmod(0o755)
        init = tree / "init"
        init.write_text(
            "#!/bin/busybox sh\n/bin/busybox echo KVM-PROBE-OK\n/bin/busybox poweroff -f\n"
        )
        init.chmod(0o755)
        image = Path(tmp, "probe.cpio.gz")
        newc.pack(tree, image)
        vm = VM(image, accel=KVM, memory_mb=256, cpus=1, log_path=Path(tmp, "console"))
        with vm:
            try:
                vm.wait_for("KVM-PROBE-OK", timeout)
            except VMError:
                return False
            return True


# --- command line ----------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rootfs/vm.py",
        description="boot an initramfs in qemu with the console on this terminal (Ctrl-A x quits)",
    )
    parser.add_argument(
        "--image",
        default=str(build.ROOT / "rootfs/out" / build.IMAGE_NAME),
        help="initramfs (default: %(default)s, made by rootfs/build.py)",
    )
    parser.add_argument("--kernel", help="default: Debian's newest /boot/vmlinuz-*")
    parser.add_argument("--append", default="", help="more kernel command line arguments")
    parser.add_argument("--reboot", action="store_true", help="a guest reboot restarts the VM")
    parser.add_argument("--verbose", action="store_true", help="all kernel messages (no quiet)")
    parser.add_argument("--memory", type=int, default=1024, help="MiB (default: %(default)s)")
    parser.add_argument("--print", action="store_true", help="print the qemu command, do not run")
    args = parser.parse_args(argv)
    cmd = qemu_command(
        args.image,
        kernel=args.kernel,
        append=args.append,
        memory_mb=args.memory,
        reboot=args.reboot,
        quiet=not args.verbose,
        terminal=True,
    )
    if args.print:
        print(" ".join(cmd))
        return 0
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
