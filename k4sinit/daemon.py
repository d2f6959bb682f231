"""The daemon: reaper, supervisor, control server and signals, composed once.

``k4sinit run`` (and later PID 1's boot) builds one :class:`Daemon` and awaits
:meth:`Daemon.run`. It returns after an orderly stop of everything, asked for
by SIGTERM, SIGINT or ``k4sinit stop --all``.
"""

from __future__ import annotations

import contextlib
import os
import random
import resource
import signal
from typing import Any

import trio

from . import control
from .control import Request, RequestError, Send, error, ok
from .process import DEFAULT_PATH
from .reaper import ExitStatus, Reaper, become_subreaper
from .runner import RunnerContext, ServiceRunner
from .spec import Config
from .supervisor import Supervisor, UnknownService

SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def default_env() -> dict[str, str]:
    """What every service starts with (its own ``env`` goes on top)."""
    return {"PATH": os.environ.get("PATH") or DEFAULT_PATH, "HOME": os.environ.get("HOME", "/")}


def raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE as far as allowed; returns the new soft limit.

    Two pipes per service and containerd's appetite exhaust the usual 1024
    (bench/startup.py: 1000 services hit EMFILE at ~500); services inherit the
    limit, and containerd and kubelet expect a high one (their systemd units
    set LimitNOFILE=infinity). Root raises the hard limit to ``fs.nr_open``;
    anyone else raises the soft limit to the hard one.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if os.geteuid() == 0:
        try:
            with open("/proc/sys/fs/nr_open") as f:
                ceiling = int(f.read())
        except (OSError, ValueError):
            ceiling = hard
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, ceiling))
            return ceiling
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


class Daemon:
    """One supervisor with its control socket; see the module docstring."""

    def __init__(
        self,
        config: Config,
        socket_path: str,
        log: Any,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.log = log
        self.reaper = Reaper(on_orphan=self._orphan_reaped)
        ctx = RunnerContext(
            reaper=self.reaper,
            base_env=default_env(),
            log=log,
            rng=rng or random.Random(),
        )
        self.supervisor = Supervisor(config, ctx)
        self.control = control.ControlServer(socket_path, self.handle, log)
        self._shutdown = trio.Event()
        self._stopped = trio.Event()
        self._stop_reply_sent = trio.Event()
        self._stop_requested_by_client = False

    def request_shutdown(self, reason: str) -> None:
        if not self._shutdown.is_set():
            self.log.info("shutdown requested", reason=reason)
            self._shutdown.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Supervise until asked to stop, then stop everything in reverse order."""
        raise_fd_limit()
        if os.getpid() != 1 and not become_subreaper():
            self.log.warning("could not become a child subreaper; orphans go to our init")
        async with trio.open_nursery() as nursery:
            await nursery.start(self.reaper.run)
            nursery.start_soon(self._watch_signals)
            await nursery.start(self.control.serve)
            await nursery.start(self.supervisor.run)
            self.log.info(
                "supervising", services=len(self.supervisor.runners), socket=self.control.path
            )
            task_status.started()
            await self._shutdown.wait()
            await self.supervisor.stop_all()
            self._stopped.set()
            if self._stop_requested_by_client:
                with trio.move_on_after(2):
                    await self._stop_reply_sent.wait()
            self.log.info("all services stopped")
            nursery.cancel_scope.cancel()

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(*SHUTDOWN_SIGNALS) as signals:
            async for signum in signals:
                self.request_shutdown(signal.Signals(signum).name)

    def _orphan_reaped(self, pid: int, status: ExitStatus) -> None:
        self.log.info("reaped orphan", pid=pid, status=status.describe())

    # --- control requests ---------------------------------------------------------

    async def handle(self, request: Request, send: Send) -> None:
        """Answer one control request (see control.py for the protocol)."""
        sup = self.supervisor
        name = request.name or ""  # Request.from_json made sure the named ops have one
        try:
            if request.op == "status":
                await send(ok(sup[name].detail() if name else {"services": sup.snapshot()}))
            elif request.op == "logs":
                await self._logs(sup[name], request, send)
            elif request.op == "start":
                started = sup.start(name)
                await send(ok({"started": started, **sup[name].snapshot()}))
            elif request.op == "stop":
                await sup.stop(name)
                await send(ok(sup[name].snapshot()))
            elif request.op == "restart":
                await sup.restart(name)
                await send(ok(sup[name].snapshot()))
            elif request.op == "stop_all":
                self._stop_requested_by_client = True
                self.request_shutdown("stop --all")
                await self._stopped.wait()
                await send(ok({"services": sup.snapshot()}))
                self._stop_reply_sent.set()
        except UnknownService as exc:
            raise RequestError(str(exc)) from None
        except RuntimeError as exc:
            await send(error(str(exc)))

    async def _logs(self, runner: ServiceRunner, request: Request, send: Send) -> None:
        # Subscribe before taking the backlog so no line falls between the two.
        follow = runner.follow_logs() if request.follow else None
        backlog = list(runner.logs)[-request.lines :] if request.lines else []
        await send(ok([entry.to_json() for entry in backlog]))
        if follow is None:
            return
        async with follow:
            async for entry in follow:
                await send(ok([entry.to_json()]))
