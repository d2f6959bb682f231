"""Shared fixtures: a steerable child command and a real ``k4sinit run`` daemon."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psutil
import pytest

from k4sinit.pid1.container import container_init, host_cgroup2_mount

TESTS = Path(__file__).resolve().parent
CHILD = [sys.executable, str(TESTS / "child.py")]


def child_cmd(*args: str) -> list[str]:
    """The command line of the steerable test child (see tests/child.py)."""
    return [*CHILD, *args]


class DaemonProcess:
    """A ``k4sinit run`` started by a test, with helpers to talk to it."""

    def __init__(
        self, config: Path, socket: Path, log: Path, extra_args: Sequence[str] = ()
    ) -> None:
        """``extra_args`` go after ``run``'s own (``--no-cgroups``)."""
        self.config = config
        self.socket = socket
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "k4sinit",
                "run",
                "--config",
                str(config),
                "--socket",
                str(socket),
                "--log-format",
                "json",
                *extra_args,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """Run ``k4sinit ARGS --socket ...`` and return the finished process."""
        cmd = [sys.executable, "-m", "k4sinit", args[0], "--socket", str(self.socket), *args[1:]]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)

    def status(self) -> dict[str, dict[str, Any]]:
        """``status --json`` as a mapping of name to service."""
        out = self.cli("status", "--json")
        return {s["name"]: s for s in json.loads(out.stdout)["services"]}

    def wait_for(
        self, predicate: Any, timeout: float = 30, what: str = "condition"
    ) -> dict[str, dict[str, Any]]:
        """Poll ``status --json`` until ``predicate(services)`` holds; returns the services."""
        deadline = time.monotonic() + timeout
        services: dict[str, dict[str, Any]] = {}
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"daemon exited with {self.proc.returncode}:\n{self.log_text()}"
                )
            with contextlib.suppress(json.JSONDecodeError, KeyError):
                services = self.status()
                if predicate(services):
                    return services
            time.sleep(0.05)
        raise AssertionError(
            f"timed out waiting for {what}; last status: {json.dumps(services, indent=1)}"
        )

    def wait_socket(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"daemon did not start:\n{self.log_text()}")
            time.sleep(0.02)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                events.append(json.loads(line))
        return events

    def stop(self) -> None:
        """SIGTERM the daemon; SIGKILL it and every descendant (by pid) if it hangs."""
        try:
            descendants = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            descendants = []
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for p in descendants:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        self._log.close()


@pytest.fixture
def start_daemon(tmp_path: Path) -> Iterator[Any]:
    """``start_daemon(yaml_text) -> DaemonProcess``; stopped and cleaned up after the test."""
    started: list[DaemonProcess] = []

    def start(config_text: str, name: str = "k4sinit") -> DaemonProcess:
        config = tmp_path / f"{name}.yaml"
        config.write_text(config_text)
        daemon = DaemonProcess(config, tmp_path / f"{name}.sock", tmp_path / f"{name}.log")
        started.append(daemon)
        daemon.wait_socket()
        return daemon

    yield start
    for daemon in started:
        daemon.stop()


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)  # psutil is untyped
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(autouse=True)
def _no_inherited_socket_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("K4SINIT_SOCKET", raising=False)


# --- helpers for the CLI, control-socket and pid-namespace tests -------------------


def services_config(services: dict[str, dict[str, Any]]) -> str:
    """A config text from plain data (JSON is YAML), services in the order given."""
    return json.dumps({"services": services}, indent=2)


T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T | None], timeout: float = 30, what: str = "condition"
) -> T:
    """Poll ``predicate()`` until it returns something truthy, which is returned."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def state_events(daemon: DaemonProcess, service: str | None = None) -> list[dict[str, Any]]:
    """The daemon's logged state changes (of one service if given), in log order."""
    return [
        e
        for e in daemon.log_events()
        if e.get("event") == "state" and (service is None or e.get("service") == service)
    ]


# --- k4sinit as PID 1 of a container (k4sinit dev) -------------------------------------


class Container:
    """A ``k4sinit dev`` run: its log, its socket, its host cgroup."""

    def __init__(self, tmp_path: Path, config: str) -> None:
        self.config = tmp_path / "node.yaml"
        self.config.write_text(config)
        self.socket = tmp_path / "control.sock"
        self.log_path = tmp_path / "dev.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "k4sinit",
                "dev",
                "--config",
                str(self.config),
                "--socket",
                str(self.socket),
                "--log-format",
                "json",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        mount = host_cgroup2_mount()
        assert mount is not None
        self.cgroup = mount / f"k4sinit-dev-{self.proc.pid}"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "k4sinit", args[0], "--socket", str(self.socket), *args[1:]]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

    def status(self) -> dict[str, dict[str, Any]]:
        out = self.cli("status", "--json")
        return {s["name"]: s for s in json.loads(out.stdout)["services"]}

    def wait_ready(self, timeout: float = 60) -> dict[str, dict[str, Any]]:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"container ended early:\n{self.log_text()}")
            with contextlib.suppress(json.JSONDecodeError, KeyError):
                return all(s["ready"] for s in self.status().values())
            return False

        wait_until(
            ready, timeout=timeout, what=f"all services ready; log:\n{self.log_text()[-3000:]}"
        )
        return self.status()

    @property
    def init_pid(self) -> int:
        """The host pid of the container's PID 1 (dev -> unshare -> init)."""
        unshare = container_init(self.proc.pid)
        pid = container_init(unshare) if unshare else None
        assert pid is not None, "no container init"
        return pid

    def host_pids(self, *parts: str) -> list[int]:
        text = (self.cgroup.joinpath(*parts) / "cgroup.procs").read_text()
        return [int(p) for p in text.split()]

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                out.append(json.loads(line))
        return out

    def wait_exit(self, timeout: float = 60) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        """SIGTERM to dev (forwarded to PID 1); SIGKILL (ends the namespace) if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        with contextlib.suppress(OSError):
            for directory in sorted(
                self.cgroup.rglob("*"), key=lambda p: len(p.parts), reverse=True
            ):
                if directory.is_dir():
                    directory.rmdir()
            self.cgroup.rmdir()
        self._log.close()


@pytest.fixture
def boot(tmp_path: Path) -> Iterator[Any]:
    started: list[Container] = []

    def start(config: str) -> Container:
        container = Container(tmp_path, config)
        started.append(container)
        return container

    yield start
    for container in started:
        container.stop()


# --- the node image in qemu (tests/test_vm.py, tests/test_e2e.py) -----------------


def _missing_vm_tools() -> list[str]:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "rootfs"))
    import build  # rootfs/ is a directory of scripts, not a package

    kernel = list(Path("/boot").glob("vmlinuz-*"))
    missing = [t for t in ("qemu-system-x86_64", "cpio") if shutil.which(t) is None]
    required = (build.PYTHON, build.BUSYBOX, *build.DEFAULT_BINARIES)
    missing += [p for p in required if not Path(p).exists()]
    missing += [t for t in ("gcc", "pkg-config") if shutil.which(t) is None]
    return missing + ([] if kernel else ["/boot/vmlinuz-*"])


@pytest.fixture(scope="session")
def vm_tools() -> None:
    """qemu, a Debian kernel and the packages the image is made of: install them
    with scripts/vm-deps, or skip."""
    if not _missing_vm_tools():
        return
    if os.geteuid() != 0:
        pytest.skip(f"needs root to install {', '.join(_missing_vm_tools())} (scripts/vm-deps)")
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run(
        [str(root / "scripts/vm-deps")], capture_output=True, text=True, check=False
    )
    if proc.returncode != 0 or _missing_vm_tools():
        pytest.skip(
            f"cannot install {', '.join(_missing_vm_tools())} with scripts/vm-deps: "
            f"{(proc.stdout + proc.stderr).strip()[-500:]}"
        )


@pytest.fixture(scope="session")
def userland(vm_tools: None) -> Any:
    """The Go userland (k4s, runc, the shim, CNI plugins, pause) built from rootfs/k4s by
    rootfs/k4s/gobuild.py: cached, so only the first test of a fresh machine waits for
    the cold build (many minutes; it prints its progress). A failed build fails the
    test: nothing stands in for it."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "rootfs" / "k4s"))
    import gobuild

    try:
        return gobuild.build(say=lambda line: print(line, file=sys.stderr, flush=True))
    except gobuild.GoBuildError as exc:
        pytest.fail(f"the k4s build failed: {exc}", pytrace=False)


@pytest.fixture(scope="module")
def unshare() -> str:
    """The unshare binary, if this machine lets us make a pid namespace."""
    path = shutil.which("unshare")
    if path is None:
        pytest.skip("unshare (util-linux) is not installed")
    probe = subprocess.run(
        [path, "--pid", "--fork", "--mount-proc", "true"], capture_output=True, text=True
    )
    if probe.returncode != 0 and "Operation not permitted" in probe.stderr:
        pytest.skip(f"no permission to create a pid namespace: {probe.stderr.strip()}")
    return path
