"""``k4sinit run`` as PID 1 of a new pid namespace: it reaps every orphan and stops cleanly."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import child_cmd, services_config, wait_until

ORPHANS = 1000
K4SINIT = [sys.executable, "-m", "k4sinit"]


def ns_pids(pid: int) -> list[int]:
    """A process's pid in each pid namespace, outermost first (``NSpid`` in /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return [int(p) for p in line.split()[1:]]
    raise AssertionError(f"no NSpid line for pid {pid}")


class NamespaceDaemon:
    """``unshare --pid --fork --mount-proc python -m k4sinit run ...`` and its namespace init."""

    def __init__(self, unshare: str, config: Path, socket: Path, log: Path) -> None:
        self.socket = socket
        self.log_path = log
        run = ["run", "--config", str(config), "--socket", str(socket), "--log-format", "json"]
        with open(log, "wb") as out:
            self.unshare = subprocess.Popen(
                [unshare, "--pid", "--fork", "--mount-proc", *K4SINIT, *run],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, killed as one on failure
            )
        self.init_pid: int | None = None
        self.init_pid = wait_until(self._find_init, timeout=10, what="the namespace's init")

    def _find_init(self) -> int | None:
        if self.unshare.poll() is not None:
            raise AssertionError(f"unshare exited with {self.unshare.returncode}: {self.log()}")
        children = psutil.Process(self.unshare.pid).children()
        return children[0].pid if children else None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                events.append(json.loads(line))
        return events

    def status(self) -> dict[str, dict[str, Any]]:
        """``status --json`` by name; empty while the daemon does not answer yet."""
        out = subprocess.run(
            [*K4SINIT, "status", "--json", "--socket", str(self.socket)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if not out.stdout:
            return {}
        return {s["name"]: s for s in json.loads(out.stdout)["services"]}

    def zombie_children_of_init(self) -> list[int]:
        assert self.init_pid is not None
        zombies = []
        for child in psutil.Process(self.init_pid).children():
            with contextlib.suppress(psutil.NoSuchProcess):
                if child.status() == psutil.STATUS_ZOMBIE:
                    zombies.append(child.pid)
        return zombies

    def kill(self) -> None:
        """SIGKILL everything by pid (killing a namespace's init ends the namespace)."""
        if self.init_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.init_pid, signal.SIGKILL)
        if self.unshare.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.unshare.pid, signal.SIGKILL)
        self.unshare.wait(timeout=30)


@pytest.fixture
def ns_daemon(unshare: str, tmp_path: Path) -> Iterator[Any]:
    started: list[NamespaceDaemon] = []

    def start(config_text: str) -> NamespaceDaemon:
        config = tmp_path / "k4sinit.yaml"
        config.write_text(config_text)
        daemon = NamespaceDaemon(unshare, config, tmp_path / "k.sock", tmp_path / "k.log")
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.kill()


def test_pid1_of_a_namespace_reaps_orphans_and_stops_on_sigterm(ns_daemon: Any) -> None:
    d = ns_daemon(
        services_config(
            {
                "orphaner": {
                    "command": child_cmd("--orphans", str(ORPHANS), "--sleep", "0", "--exit", "0"),
                    "restartPolicy": "Never",
                },
                "sleeper": {"command": child_cmd()},
            }
        )
    )
    assert ns_pids(d.init_pid) == [d.init_pid, 1]  # PID 1 inside its namespace

    services = wait_until(
        lambda: (s := d.status()) and s["orphaner"]["state"] == "completed" and s,
        what="the orphaner to complete",
    )
    assert services["orphaner"]["last_exit"] == {"code": 0}

    wait_until(lambda: not d.zombie_children_of_init(), timeout=10, what="no zombies")

    def orphans_reaped() -> int:
        n = sum(1 for e in d.log_events() if e.get("event") == "reaped orphan")
        return n if n >= ORPHANS else 0

    assert wait_until(orphans_reaped, timeout=10, what="every orphan's reap logged") == ORPHANS

    os.kill(d.init_pid, signal.SIGTERM)
    assert d.unshare.wait(timeout=30) == 0
    assert not psutil.pid_exists(d.init_pid)
    events = d.log_events()
    assert any(e.get("service") == "sleeper" and e.get("state") == "stopped" for e in events), (
        d.log()
    )
    assert events[-1]["event"] == "all services stopped"
