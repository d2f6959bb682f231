"""The daemon: reaper, supervisor, control server and signals, running as one.

:class:`Daemon` holds the parts the composition root (root.py) gives it and
runs them: :meth:`Daemon.run` supervises until a shutdown is asked for (a
signal, ``k4sinit stop --all``, a power request), then stops everything in
reverse dependency order and returns; :attr:`Daemon.action` then says how the
shutdown ends. :meth:`Daemon.handle` answers the control requests; a reload
(the request, or a reload signal: SIGHUP to ``k4sinit run``) is daemon/reload.py's.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import resource
import signal
import time
from collections.abc import Collection, Mapping, Sequence
from functools import partial
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import psutil
import trio

from k4sinit import __version__
from k4sinit.control.server import ControlServer, Send
from k4sinit.control.wire import (
    REPLY_CHUNK,
    DaemonInfo,
    KillReply,
    KubeconfigReply,
    LogLineJSON,
    MemoryInfo,
    NetworkReply,
    Op,
    PKIReply,
    PKIStatus,
    PreflightReply,
    ReloadReply,
    Request,
    RequestError,
    ServiceDetail,
    StartReply,
    StatusReply,
    StoppedReply,
    TimelineJSON,
    TokenCreateReply,
    TokenListReply,
    TokenRevokeReply,
    error,
    ok,
)
from k4sinit.core.config import Config
from k4sinit.core.imageinfo import ImageInfo
from k4sinit.core.log import NonBlockingWriter
from k4sinit.core.netspec import NetworkSpec
from k4sinit.core.nodespec import NodeSettings
from k4sinit.core.paths import DEFAULT_PATH
from k4sinit.core.spec import NETWORK, PKI, PREFLIGHT
from k4sinit.core.timeline import Timeline
from k4sinit.daemon.boottimes import BuiltinTimes, timeline_reply
from k4sinit.daemon.metrics import LoopLag, collect
from k4sinit.daemon.reload import Loader, Reloader, loader
from k4sinit.network.host import HostNetwork
from k4sinit.pid1.power import Action  # imported by name: Daemon() has a flag called power
from k4sinit.pid1.watchdog import Watchdog, critical_failure
from k4sinit.supervision import escapees
from k4sinit.supervision.builtin import AlwaysReady
from k4sinit.supervision.cgroups import CgroupTree
from k4sinit.supervision.notify import NotifyListener
from k4sinit.supervision.reaper import ExitStatus, Reaper, become_subreaper
from k4sinit.supervision.runner import RunnerContext, ServiceRunner
from k4sinit.supervision.supervisor import Supervisor, UnknownService

if TYPE_CHECKING:
    # Loaded where they are used: pyroute2 (the network), cryptography and YAML
    # (the node's PKI, join and tokens) and the preflight checks cost ~200 ms and
    # tens of MB that a ``run`` of plain services never needs (bench/peers.py).
    from k4sinit.control.metrics import MetricsServer
    from k4sinit.control.port import GuestBridge
    from k4sinit.network import Network
    from k4sinit.node.join import NodeJoin
    from k4sinit.node.pkicondition import NodePKI
    from k4sinit.node.preflight import Check, CheckJSON, SummaryJSON

# How a shutdown ends: a power action (PID 1), or None, a plain stop: `k4sinit run`
# exits (and PID 1, asked by `stop --all`, reboots).
Shutdown = Action | None

# What each signal asks for: a plain stop ends `k4sinit run`; PID 1 follows busybox
# init (SIGTERM reboot, SIGUSR1 halt, SIGUSR2 power-off; SIGINT is ctrl-alt-del,
# which reboots) and treats SIGPWR (a UPS, a container manager) as power-off.
# `run` also stops in order on every other signal whose default would kill it
# at once and leave its services running: SIGQUIT, SIGUSR1, SIGUSR2, SIGALRM.
# SIGHUP reloads the config (RELOAD_SIGNALS). (PID 1 needs no such list: the
# kernel never delivers a signal it has no handler for.)
RUN_SIGNALS: Mapping[int, Shutdown] = MappingProxyType(
    {
        signal.SIGTERM: None,
        signal.SIGINT: None,
        signal.SIGQUIT: None,
        signal.SIGUSR1: None,
        signal.SIGUSR2: None,
        signal.SIGALRM: None,
    }
)
INIT_SIGNALS: Mapping[int, Shutdown] = MappingProxyType(
    {
        signal.SIGTERM: Action.REBOOT,
        signal.SIGINT: Action.REBOOT,
        signal.SIGUSR1: Action.HALT,
        signal.SIGUSR2: Action.POWEROFF,
        signal.SIGPWR: Action.POWEROFF,
    }
)
#: The signals that reload the config, for `k4sinit run` (PID 1 reloads only by request:
#: SIGHUP keeps its busybox meaning there).
RELOAD_SIGNALS: tuple[int, ...] = (signal.SIGHUP,)
#: What each power request ends the node with (PID 1 only).
POWER_ACTIONS: Mapping[Op, Action] = MappingProxyType(
    {Op.REBOOT: Action.REBOOT, Op.POWEROFF: Action.POWEROFF, Op.HALT: Action.HALT}
)


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


def memory_snapshot() -> MemoryInfo:
    """The machine's memory: ``total`` and ``available`` (/proc/meminfo's MemTotal and
    MemAvailable), in bytes; in use is their difference."""
    memory = psutil.virtual_memory()
    return {"total": int(memory.total), "available": int(memory.available)}


class Daemon:
    """One supervisor with its control socket; see the module docstring."""

    def __init__(
        self,
        config: Config,
        socket_path: str,
        log: Any,
        *,
        cgroups: CgroupTree | None = None,
        network: Network | HostNetwork | None = None,
        node: NodeSettings | None = None,
        checks: Sequence[Check] = (),
        signals: Mapping[int, Shutdown] = RUN_SIGNALS,
        power: bool = False,
        control_port: str | None = None,
        rng: random.Random | None = None,
        image: ImageInfo | None = None,
        log_writer: NonBlockingWriter | None = None,
        watchdog: Watchdog | None = None,
        debug_hang: bool = False,
        timeline: Timeline | None = None,
        reload_signals: Collection[int] = RELOAD_SIGNALS,
        load: Loader | None = None,
    ) -> None:
        """``signals`` maps each handled signal to its action; ``power`` allows
        reboot/poweroff/halt requests (PID 1 only); ``control_port`` names a virtio-serial
        port over which the host reaches the control socket (control/port.py);
        ``log_writer`` is the log's, whose drops the metrics count; ``watchdog``
        (open) is petted while healthy (pid1/watchdog.py); ``debug_hang`` allows the
        debug_hang request (the kernel's k4sinit.debug=hang).
        ``timeline`` holds the stages before the daemon (None: none but the process's
        start-up), to which it adds its own start. ``reload_signals`` reload the
        config, which ``load`` reads again (default: ``config.source``, expanded
        without kernel options)."""
        self.log = log
        self.image = image  # what the node image holds (/etc/k4sinit/image.json)
        self.node = node
        self._signals = dict(signals)
        self._power = power
        self.action: Shutdown = None  # what the shutdown asked for; read after run()
        self.cgroups = cgroups
        self.reaper = Reaper(on_orphan=self._orphan_reaped)
        # Every service's processes name this daemon in their environment (escapees.py).
        self._tag = os.path.abspath(socket_path)
        self.notify = NotifyListener(log)  # NOTIFY_SOCKET, for services with a notify probe
        ctx = RunnerContext(
            reaper=self.reaper,
            base_env={**default_env(), escapees.DAEMON_ENV: self._tag},
            cgroups=cgroups,
            log=log,
            rng=rng or random.Random(),
            notify=self.notify,
            # Other services' live main processes are skipped: see escapees._below().
            escapee_search=escapees.Search(self._tag, self.reaper.pids),
        )
        # Without a network object (tests, tools) the built-in condition is
        # loopback only: nothing to wait for beyond what the kernel already has.
        if network is None:
            from k4sinit.network import Network

            network = Network(NetworkSpec(), log, resolv_conf=None, hosts=None)
        self.network = network
        # The node's PKI once the network is up (a worker's: the join); without
        # roles, nothing to make.
        self.pki: NodePKI | NodeJoin | AlwaysReady = AlwaysReady(
            PKI, "no node profile: no PKI to make"
        )
        if node is not None:
            from k4sinit.node.join import node_identity

            if isinstance(self.network, HostNetwork):
                raise TypeError("a node's PKI needs the node's network, not the host's")
            self.pki = node_identity(node, self.network, log)
        self.preflight = list(checks)
        self.timeline = Timeline.since_process_start() if timeline is None else timeline
        self.builtin_times = BuiltinTimes(
            self.network, self.pki, pki_works=not isinstance(self.pki, AlwaysReady)
        )
        self.supervisor = Supervisor(config, ctx, builtins={NETWORK: self.network, PKI: self.pki})
        self._reload_signals = tuple(reload_signals)
        self.reloader = Reloader(self.supervisor, node, load or loader(config.source), log)
        self.control = ControlServer(socket_path, self.handle, log)
        self.port_bridge: GuestBridge | None = None
        if control_port:
            from k4sinit.control.port import GuestBridge

            self.port_bridge = GuestBridge.for_name(control_port, socket_path, log)
        self.watchdog = watchdog
        self._watchdog_grace = config.watchdog.grace if config.watchdog is not None else 0.0
        self._debug_hang = debug_hang
        self.loop_lag = LoopLag()
        self.metrics: MetricsServer | None = None
        if config.metrics is not None:
            from k4sinit.control.metrics import MetricsServer  # h11: only with metrics

            self.metrics = MetricsServer(
                config.metrics,
                partial(collect, self.supervisor, self.reaper, self.loop_lag, log_writer),
                log,
            )
        self._started = trio.current_time()
        self._shutdown = trio.Event()
        self._stopped = trio.Event()
        # stop --all / power requests waiting for their answer: run() lets each one
        # answer (however many came, whenever) before it ends the control server.
        self._stop_replies_pending = 0
        self._stop_replies_changed = trio.Event()

    def request_shutdown(self, reason: str, action: Shutdown = None) -> None:
        """Begin the orderly stop; ``action`` (None: a plain stop) is kept for the caller."""
        if not self._shutdown.is_set():
            self.log.info(
                "shutdown requested",
                reason=reason,
                action=action.verb if action is not None else "stop",
            )
            self.action = action
            self._shutdown.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Supervise until asked to stop, then stop everything in reverse order.

        On the way out, orderly or not (an exception from a daemon task), every
        service is stopped while the reaper still collects their exits and the
        signal handlers still stand; then whatever k4sinit started and is still
        alive is killed: its cgroups, and every process below it.
        """
        raise_fd_limit()
        subreaper = os.getpid() == 1 or become_subreaper()
        if not subreaper:
            self.log.warning("could not become a child subreaper; orphans go to our init")
        if self.cgroups is None:
            self.log.warning(
                "no cgroups: tracking a service's processes is best effort",
                detail="a stop signals the service's process group; processes that left it "
                "(setsid) are found by the environment k4sinit gave them and killed "
                "when the service ends, and every process below k4sinit when it exits"
                + ("" if subreaper else " (those re-parented to our init are lost)"),
            )
        async with trio.open_nursery() as outer:
            await outer.start(self.reaper.run)
            await outer.start(self.notify.run)
            outer.start_soon(self._watch_signals)
            try:
                await self._supervise(task_status)
            finally:
                with trio.CancelScope(shield=True):
                    await self._kill_leftovers()
                outer.cancel_scope.cancel()

    async def _supervise(self, task_status: trio.TaskStatus[None]) -> None:
        async with trio.open_nursery() as nursery:
            with self.timeline.stage("daemon start"):
                nursery.start_soon(self.builtin_times.watch)
                if self.watchdog is not None:
                    nursery.start_soon(self.watchdog.run, self._watchdog_health, self.log)
                await nursery.start(self.control.serve)
                if self.port_bridge is not None:
                    nursery.start_soon(self.port_bridge.run)
                if self.metrics is not None:
                    # Only for the metrics: a timer that never stops would also let trio's
                    # virtual clock (tests) jump while the daemon waits for a thread.
                    nursery.start_soon(self.loop_lag.run)
                    await nursery.start(self.metrics.serve)
                await nursery.start(self.network.run)
                if not isinstance(self.pki, AlwaysReady):
                    nursery.start_soon(self.pki.run)
                await nursery.start(self.supervisor.run)
            self.log.info(
                "supervising", services=len(self.supervisor.runners), socket=self.control.path
            )
            task_status.started()
            await self._shutdown.wait()
            await self.supervisor.stop_all()
            await self._kill_leftovers()
            self._stopped.set()
            with trio.move_on_after(2):  # a client that does not read is not waited for
                while self._stop_replies_pending:
                    await self._stop_replies_changed.wait()
            self.log.info("all services stopped")
            nursery.cancel_scope.cancel()

    async def _kill_leftovers(self) -> None:
        """Kill what outlived the services: their cgroups, then every process below us.

        Bounded (10 s each). Without cgroups the second is what catches
        escapees (setsid'd, re-parented to us as the subreaper). Not as PID 1:
        everything is below it, and its shutdown (boot.py) gives every other
        process a SIGTERM and a grace period first.
        """
        if self.cgroups is not None and not await self.cgroups.kill_everything(
            say=lambda line: self.log.info(line)
        ):
            self.log.error("processes survived the final kill", cgroup=str(self.cgroups.base.path))
        if os.getpid() == 1:
            return
        left = await trio.to_thread.run_sync(escapees.descendants)
        if not left:
            return
        self.log.info("killing processes left below k4sinit", pids=[p.pid for p in left])
        if alive := await escapees.kill(left):
            self.log.error("processes survived the final kill", pids=alive)

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(*self._signals, *self._reload_signals) as signals:
            async with trio.open_nursery() as reloads:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    if signum in self._reload_signals:
                        reloads.start_soon(self.reload, False, name)
                    else:
                        self.request_shutdown(name, self._signals[signum])

    async def reload(self, dry_run: bool, why: str) -> ReloadReply:
        """Reload the config (daemon/reload.py); the reply says what was done."""
        reply = await self.reloader.reload(dry_run=dry_run, why=why)
        self.node = self.reloader.node
        return reply

    def _watchdog_health(self) -> str | None:
        return critical_failure(
            self.supervisor.runners.values(), self._watchdog_grace, trio.current_time()
        )

    def _orphan_reaped(self, pid: int, status: ExitStatus) -> None:
        self.log.info("reaped orphan", pid=pid, status=status.describe())

    # --- control requests ---------------------------------------------------------

    async def handle(self, request: Request, send: Send) -> None:
        """Answer one control request (the replies are control/wire.py's types).

        Raises RequestError to refuse (an unknown service, a power request when
        not PID 1); a RuntimeError of the supervisor (kill without a process) is
        sent as an error line.
        """
        sup = self.supervisor
        name = request.name or ""  # Request.from_json made sure the named ops have one
        try:
            match request.op:
                case Op.STATUS:
                    await send(ok(self._status(name)))
                case Op.LOGS:
                    await self._logs(sup[name], request, send)
                case Op.START:
                    started: StartReply = {"started": sup.start(name), **sup[name].snapshot()}
                    await send(ok(started))
                case Op.STOP:
                    await sup.stop(name)
                    await send(ok(sup[name].snapshot()))
                case Op.RESTART:
                    await sup.restart(name)
                    await send(ok(sup[name].snapshot()))
                case Op.KILL:
                    signum = request.signal_number()
                    sup[name].send_signal(signum)
                    # The pid shown is the snapshot's (as before): the main process signalled.
                    killed: KillReply = {"signal": signum.name, **sup[name].snapshot()}
                    await send(ok(killed))
                case Op.TIMELINE:
                    reply: TimelineJSON = timeline_reply(
                        self.timeline, sup.runners.values(), self.builtin_times
                    )
                    await send(ok(reply))
                case Op.KUBECONFIG:
                    await send(ok(await self._admin_kubeconfig()))
                case Op.TOKEN_CREATE | Op.TOKEN_LIST | Op.TOKEN_REVOKE:
                    await send(ok(await self._tokens(request)))
                case Op.DEBUG_HANG:
                    await self._hang(send)
                case Op.RELOAD:
                    await send(ok(await self.reload(request.dry_run, "k4sinit reload")))
                case Op.STOP_ALL:
                    await self._stop_everything("k4sinit stop --all", None, send)
                case Op.REBOOT | Op.POWEROFF | Op.HALT if not self._power:
                    raise RequestError(f"{request.op}: k4sinit is not PID 1 here; use 'stop --all'")
                case Op.REBOOT | Op.POWEROFF | Op.HALT:
                    await self._stop_everything(
                        f"k4sinit {request.op}", POWER_ACTIONS[request.op], send
                    )
        except UnknownService as exc:
            raise RequestError(str(exc)) from None
        except RuntimeError as exc:
            await send(error(str(exc)))

    def _status(
        self, name: str
    ) -> StatusReply | ServiceDetail | NetworkReply | PKIReply | PreflightReply:
        """``status``, or ``status NAME``: a service, or one of the reserved names."""
        # The config reserves these names (spec.STATUS_NAMES): no service has one.
        if name == NETWORK:
            return {NETWORK: self.network.snapshot()}
        if name == PKI:
            return {PKI: self.pki_snapshot()}
        if name == PREFLIGHT:
            return {PREFLIGHT: self._preflight_json()}
        if name:
            return self.supervisor[name].detail()
        return {
            "daemon": self.self_snapshot(),
            "memory": memory_snapshot(),
            "services": self.supervisor.snapshot(),
            NETWORK: self.network.snapshot(),
            PKI: self.pki_snapshot(),
            PREFLIGHT: self._preflight_summary(),
            "image": self.image.to_json() if self.image is not None else None,
        }

    def _preflight_json(self) -> list[CheckJSON]:
        """The checks as ``status preflight`` shows them (none without a node profile)."""
        if not self.preflight:
            return []  # no checks ran: nothing to load node/preflight.py for
        from k4sinit.node import preflight

        return preflight.to_json(self.preflight)

    def _preflight_summary(self) -> SummaryJSON | None:
        """The line ``status`` shows for preflight; None when none ran."""
        if not self.preflight:
            return None
        from k4sinit.node import preflight

        return preflight.summary_json(self.preflight)

    async def _stop_everything(self, reason: str, action: Shutdown, send: Send) -> None:
        """``stop --all`` or a power request: the shutdown, answered once everything stopped."""
        self._stop_replies_pending += 1
        try:
            self.request_shutdown(reason, action)
            await self._stopped.wait()
            stopped: StoppedReply = {"services": self.supervisor.snapshot()}
            await send(ok(stopped))
        finally:
            # Also when the asker was itself a service, stopped meanwhile.
            self._stop_replies_pending -= 1
            self._stop_replies_changed.set()
            self._stop_replies_changed = trio.Event()

    async def _hang(self, send: Send) -> None:
        """``debug_hang``: block the event loop for good (PID 1 hung: the watchdog's test).

        Refused unless the kernel command line says ``k4sinit.debug=hang``. The
        answer goes out first, and a second passes so that the control port's
        bridge (in this same loop) forwards it to the host.
        """
        if not self._debug_hang:
            raise RequestError(
                "debug_hang: refused; only with k4sinit.debug=hang on the kernel command line"
            )
        await send(ok({"hanging": True}))
        await trio.sleep(1)
        self.log.warning("debug: blocking the event loop for good (debug_hang)")
        while True:
            time.sleep(3600)  # noqa: ASYNC251 (blocking the event loop is the point)

    def pki_snapshot(self) -> PKIStatus:
        """The built-in ``pki`` condition: ``{"ready": bool, "reason": str}``."""
        return {"ready": self.pki.ready, "reason": self.pki.reason}

    def self_snapshot(self) -> DaemonInfo:
        """k4sinit itself: pid, resident memory, uptime (for status and bench/)."""
        me = psutil.Process()
        return {
            "pid": me.pid,
            "rss_bytes": me.memory_info().rss,
            "uptime": round(trio.current_time() - self._started, 3),
            "version": __version__,
            "notify_dropped": dict(self.notify.dropped),
        }

    async def _admin_kubeconfig(self) -> KubeconfigReply:
        """The node's admin kubeconfig (control clients are root or k4sinit's own uid)."""
        if self.node is None:
            raise RequestError("kubeconfig: this node runs no Kubernetes roles (no node: section)")
        path = self.node.kubeconfig("admin")
        try:
            text = await trio.Path(path).read_text()
        except FileNotFoundError:
            raise RequestError(
                f"kubeconfig: {path} does not exist yet (pki: {self.pki.reason})"
            ) from None
        except OSError as exc:
            raise RequestError(f"kubeconfig: {path}: {exc.strerror or exc}") from None
        return {"path": path, "kubeconfig": text}

    async def _tokens(
        self, request: Request
    ) -> TokenCreateReply | TokenListReply | TokenRevokeReply:
        """``token create|list|revoke``: bootstrap tokens, through this node's apiserver
        as its admin (node/tokens.py, in a thread). RequestError says what went wrong."""
        node = self.node
        if node is None:
            raise RequestError("token: this node runs no Kubernetes roles (no node: section)")
        from k4sinit.node import tokens  # loaded with the node's PKI already
        from k4sinit.node.apiclient import APIError

        try:
            match request.op:
                case Op.TOKEN_CREATE:
                    ttl = tokens.DEFAULT_TTL if request.ttl is None else request.ttl_delta()
                    join_token, info = await trio.to_thread.run_sync(
                        partial(tokens.create_join_token, node, ttl=ttl, server=request.server)
                    )
                    self.log.info(
                        "bootstrap token created", id=info.id, expires=info.to_json()["expires"]
                    )
                    return {"join_token": str(join_token), "token": info.to_json()}
                case Op.TOKEN_LIST:
                    client = await trio.to_thread.run_sync(tokens.admin_client, node)
                    found = await trio.to_thread.run_sync(tokens.list_tokens, client)
                    return {"tokens": [info.to_json() for info in found]}
                case _:
                    token_id = request.name or ""
                    client = await trio.to_thread.run_sync(tokens.admin_client, node)
                    await trio.to_thread.run_sync(tokens.revoke, client, token_id)
                    self.log.info("bootstrap token revoked", id=token_id)
                    return {"id": token_id}
        except (tokens.TokenError, APIError) as exc:
            raise RequestError(f"token: {exc}") from None

    async def _logs(self, runner: ServiceRunner, request: Request, send: Send) -> None:
        """The last ``request.lines`` lines, as result lines of about ``REPLY_CHUNK``
        bytes (so a reply held for a slow client stays small), then with ``follow``
        one result line per new line until the client goes (cancelled)."""
        with contextlib.ExitStack() as stack:
            # Subscribe before taking the backlog so no line falls between the two.
            follow = stack.enter_context(runner.follow_logs()) if request.follow else None
            backlog = list(runner.logs)[-request.lines :] if request.lines else []
            batch: list[LogLineJSON] = []
            size = 0
            for entry in backlog:
                batch.append(entry.to_json())
                size += len(json.dumps(entry.line)) + 64  # as encoded: \x01 takes 6 bytes
                if size >= REPLY_CHUNK:
                    await send(ok(batch))
                    batch, size = [], 0
            if batch or not backlog:
                await send(ok(batch))
            if follow is None:
                return
            async for entry in follow:
                await send(ok([entry.to_json()]))
