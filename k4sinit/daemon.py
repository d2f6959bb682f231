"""The daemon: reaper, supervisor, control server and signals, composed once.

``k4sinit run`` (and later PID 1's boot) builds one :class:`Daemon` and awaits
:meth:`Daemon.run`. It returns after an orderly stop of everything, asked for
by SIGTERM, SIGINT or ``k4sinit stop --all``.
"""

from __future__ import annotations

import os
import random
import signal
from typing import Any

import trio

from . import control
from .control import Request, RequestError, Send, error, ok
from .process import DEFAULT_PATH
from .reaper import ExitStatus, Reaper, become_subreaper
from .runner import RunnerContext
from .spec import Config
from .supervisor import Supervisor, UnknownService

SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def default_env() -> dict[str, str]:
    """What every service starts with (its own ``env`` goes on top)."""
    return {"PATH": os.environ.get("PATH") or DEFAULT_PATH, "HOME": os.environ.get("HOME", "/")}


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
        try:
            if request.op == "status":
                if request.name is None:
                    await send(ok({"services": sup.snapshot()}))
                else:
                    await send(ok(sup[request.name].detail()))
            elif request.op == "logs":
                await self._logs(request, send)
            elif request.op == "start":
                started = sup.start(request.name or "")
                await send(ok({"started": started, **sup[request.name or ""].snapshot()}))
            elif request.op == "stop":
                await sup.stop(request.name or "")
                await send(ok(sup[request.name or ""].snapshot()))
            elif request.op == "restart":
                await sup.restart(request.name or "")
                await send(ok(sup[request.name or ""].snapshot()))
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

    async def _logs(self, request: Request, send: Send) -> None:
        runner = self.supervisor[request.name or ""]
        # Subscribe before taking the backlog so no line falls between the two.
        follow = runner.follow_logs() if request.follow else None
        backlog = list(runner.logs)[-request.lines :] if request.lines else []
        await send(ok([entry.to_json() for entry in backlog]))
        if follow is None:
            return
        async with follow:
            async for entry in follow:
                await send(ok([entry.to_json()]))
