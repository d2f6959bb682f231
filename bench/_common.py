"""Shared by the benchmarks: run the real daemon on a generated config, read its log.

:class:`DaemonRun` is a context manager that writes ``config.yaml`` into a
fresh temp dir, starts ``python -m k4sinit run`` as a subprocess (its own
session, so a Ctrl-C at the terminal reaches only the benchmark) with its JSON
log in ``daemon.log``, and on exit always cleans up: ``SIGTERM`` to the
daemon, ``SIGKILL`` after a few seconds, ``SIGKILL`` to every descendant seen
before, removal of the temp dir.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from k4sinit import control

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable  # run the benchmarks with the project's venv python

Services = list[dict[str, Any]]  # the "services" of a status reply
Events = list[dict[str, Any]]  # parsed JSON log lines


class DaemonRun:
    """One daemon process on ``config`` (YAML text, or a function of the temp dir
    returning it); see the module docstring.

    ``spawned_wall`` is ``time.time()`` just before the spawn (the clock of the
    log's timestamps), ``spawned`` the ``time.perf_counter()`` of the same moment.
    """

    def __init__(
        self,
        config: str | Callable[[Path], str],
        *,
        prefix: str = "k4sinit-bench-",
        source: Path | None = None,
    ) -> None:
        """``source``: another checkout whose k4sinit runs (an older revision), not this one."""
        self.source = source
        self.tmp = Path(tempfile.mkdtemp(prefix=prefix))
        self.config = self.tmp / "config.yaml"
        self.config.write_text(config(self.tmp) if callable(config) else config)
        self.socket = str(self.tmp / "run" / "control.sock")
        self.log_path = self.tmp / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.ps: psutil.Process | None = None
        self.spawned = self.spawned_wall = 0.0

    def __enter__(self) -> DaemonRun:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def start(self) -> None:
        argv = [PYTHON, "-m", "k4sinit", "run", "--config", str(self.config)]
        argv += ["--socket", self.socket, "--log-format", "json"]
        env = dict(os.environ)
        if self.source is not None:  # first on sys.path: before this tree's editable install
            env["PYTHONPATH"] = str(self.source)
        with open(self.log_path, "wb") as log:
            self.spawned_wall, self.spawned = time.time(), time.perf_counter()
            self.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.source or ROOT,
                env=env,
                start_new_session=True,
            )
        self.ps = psutil.Process(self.proc.pid)

    # --- talking to it -----------------------------------------------------------

    def request(self, op: str, timeout: float | None = 30.0, **kw: Any) -> Any:
        return control.request(self.socket, control.Request(op, **kw), timeout=timeout)

    def status(self) -> Services:
        services: Services = self.request("status")["services"]
        return services

    def wait_socket(self, timeout: float = 30.0, interval: float = 0.005) -> float:
        """Poll until ``status`` answers; returns seconds since spawn."""
        deadline = time.perf_counter() + timeout
        while True:
            self.check_alive()
            try:
                self.status()
                return time.perf_counter() - self.spawned
            except control.ControlClientError:
                if time.perf_counter() > deadline:
                    raise TimeoutError(f"no control socket after {timeout}s") from None
            time.sleep(interval)

    def wait_until(
        self,
        done: Callable[[Services], bool],
        timeout: float,
        interval: float = 0.05,
    ) -> tuple[float, Services]:
        """Poll ``status`` until ``done(services)``; returns (perf_counter then, services)."""
        deadline = time.perf_counter() + timeout
        while True:
            self.check_alive()
            services = self.status()
            now = time.perf_counter()
            if done(services):
                return now, services
            if now > deadline:
                bad = [s for s in services if not done([s])][:3]
                raise TimeoutError(f"not done after {timeout}s, e.g. {bad}")
            time.sleep(interval)

    def check_alive(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"daemon exited with {self.proc.returncode}; log tail:\n{tail}")

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the daemon process itself (not its children)."""
        assert self.ps is not None
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    def rss_mib(self) -> float:
        assert self.ps is not None
        return float(self.ps.memory_info().rss / 2**20)

    def log_events(self) -> Events:
        """Every JSON log line so far, each with ``t`` = its timestamp as epoch seconds."""
        events = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                event = json.loads(line)
                event["t"] = datetime.fromisoformat(event["timestamp"]).timestamp()
            except (ValueError, KeyError, TypeError):
                continue  # e.g. the writer's own "lines dropped" notice
            events.append(event)
        return events

    def stop_all(self, timeout: float = 120.0) -> float:
        """``stop --all`` and wait for the daemon to exit; returns seconds taken."""
        assert self.proc is not None
        t0 = time.perf_counter()
        self.request("stop_all", timeout=timeout)
        self.proc.wait(timeout)
        return time.perf_counter() - t0

    # --- cleaning up -----------------------------------------------------------

    def cleanup(self) -> None:
        """Stop the daemon and everything it started; remove the temp dir. Idempotent."""
        try:
            if self.proc is not None:
                descendants = []
                with contextlib.suppress(psutil.Error):
                    descendants = psutil.Process(self.proc.pid).children(recursive=True)
                if self.proc.poll() is None:
                    self.proc.send_signal(signal.SIGTERM)
                    try:
                        self.proc.wait(15)
                    except subprocess.TimeoutExpired:
                        self.proc.kill()
                        self.proc.wait()
                for child in descendants:
                    with contextlib.suppress(psutil.Error):
                        child.kill()
                self.proc = None
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


def exit_on_signals() -> None:
    """Make SIGTERM and SIGINT raise in the benchmark, so every ``finally`` cleans up.

    SIGINT is set too because a shell starting us in the background leaves it ignored.
    """

    def raise_exit(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, raise_exit)
    signal.signal(signal.SIGINT, raise_exit)


def yaml_list(items: Sequence[str]) -> str:
    """A flow-style YAML list of strings (JSON is valid YAML)."""
    return json.dumps(list(items))


def summary(values: Sequence[float], scale: float = 1000.0) -> str:
    """``min / median / p90 / max`` of ``values`` (seconds), in ms by default."""
    if not values:
        return "-"
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    parts = (ordered[0], statistics.median(ordered), p90, ordered[-1])
    return " / ".join(f"{v * scale:7.1f}" for v in parts)


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain right-aligned text table."""
    cells = [list(map(str, header))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def machine() -> str:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{os.cpu_count()} cpus, load average {load}, python {sys.version.split()[0]}"
