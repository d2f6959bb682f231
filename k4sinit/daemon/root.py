"""The composition root: the one place that builds a running k4sinit.

``k4sinit run`` (a child subreaper on any machine), ``k4sinit init`` (PID 1
of a node) and ``k4sinit dev`` (``init`` as PID 1 of a container,
pid1/container.py) all go through the same steps; each differs only in the
:class:`Options` it asks for::

    plan(config, options)          the node's settings and its roles expanded into
                                   services (ConfigErrors), and the network spec
    prepare(plan, options, log)    blocking, before the event loop, in this order
                                   (each a stage of the boot's timeline):
      1. cgroups                   k4sinit's subtree; leftovers of an earlier
                                   k4sinit in it are killed first
      2. preflight                 the profile's checks, logged as a table; a fatal
                                   failure is a BootError where options say so
      3. node files                the roles' files and directories: after the
                                   leftovers are gone, so none of them sees a
                                   half-written file, and after preflight, so a
                                   profile that cannot run writes nothing
      4. image info                /etc/k4sinit/image.json, for status
    serve(prepared, options, log,  in trio: the network (and its /etc files), the
          attached)                pki condition, the supervisor, the control
                                   server and port, the metrics endpoint, the
                                   watchdog's petting, until a shutdown is asked
                                   for; returns the shutdown's action

PID 1 of a node opens the config's hardware watchdog after ``prepare`` and
disarms it (the magic close) once ``serve`` has returned or failed
(:func:`supervise_node`, pid1/watchdog.py).

What each entry point asks for:

==================  ===============  ================  ====================
                    run              init (a node)     dev (a container)
==================  ===============  ================  ====================
signals             RUN_SIGNALS      INIT_SIGNALS      INIT_SIGNALS
reload signals      SIGHUP           none (request)    none (request)
power requests      refused          yes               yes
cgroups             yes (unless      yes               yes
                    --no-cgroups)
control port        no               PORT_NAME         no
/etc files          with a network   yes               no (the host's)
                    section
network (applied    with a network   yes               yes
and watched)        or node section,
                    or a service
                    waiting for it
hostname from DHCP  no               unless named      unless named
fatal preflight     logged           per boot.         per boot.preflight
                                     preflight
kernel options      none             role, hostname,   role, hostname,
                                     token, ip=        token, ip=
==================  ===============  ================  ====================

:func:`run` and :func:`init_main` are the two entry points' whole lives.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import trio

from k4sinit.control.client import socket_path
from k4sinit.core import cmdline, imageinfo
from k4sinit.core.config import Config
from k4sinit.core.imageinfo import ImageInfo
from k4sinit.core.jointoken import JoinToken
from k4sinit.core.log import NonBlockingWriter
from k4sinit.core.netspec import NetworkSpec
from k4sinit.core.nodespec import NodeSettings
from k4sinit.core.spec import NETWORK
from k4sinit.core.timeline import Timeline
from k4sinit.daemon.daemon import INIT_SIGNALS, RELOAD_SIGNALS, RUN_SIGNALS, Daemon, Shutdown
from k4sinit.daemon.reload import loader
from k4sinit.daemon.survivors import describe_survivors, serving, survivors
from k4sinit.network.host import HostNetwork
from k4sinit.pid1.power import Action
from k4sinit.pid1.watchdog import Watchdog, open_watchdog
from k4sinit.supervision.cgroups import CGROUP_MOUNT, CgroupTree, CgroupUnavailable

if TYPE_CHECKING:
    # Loaded where they are needed: a ``run`` of plain services loads no pyroute2
    # (the network), no preflight and none of PID 1's boot (bench/peers.py).
    from k4sinit.network import Network
    from k4sinit.node import preflight
    from k4sinit.pid1 import boot

RESOLV_CONF = Path("/etc/resolv.conf")
HOSTS = Path("/etc/hosts")


class EtcFiles(enum.Enum):
    """Whether the network writes /etc/resolv.conf and /etc/hosts."""

    ALWAYS = "always"  # a node's own /etc
    IF_CONFIGURED = "if configured"  # the host's: only when the config has a network section
    NEVER = "never"  # a container's /etc is the host's


@dataclass(frozen=True, kw_only=True)
class Options:
    """What an entry point asks of the composition root (the table in the module docstring)."""

    socket: str
    signals: Mapping[int, Shutdown] = field(default_factory=lambda: RUN_SIGNALS)
    reload_signals: tuple[int, ...] = RELOAD_SIGNALS  # none as PID 1: only the request
    power: bool = False  # reboot/poweroff/halt requests are served (PID 1)
    cgroups: bool = True
    cgroup_mount: Path = CGROUP_MOUNT
    control_port: str | None = None  # the virtio-serial port's name (control/port.py)
    etc_files: EtcFiles = EtcFiles.IF_CONFIGURED
    dhcp_hostname: bool = False  # a DHCP lease's hostname becomes the system's
    # A fatal preflight failure fails the start (a BootError), unless boot.preflight: warn.
    preflight_stops_boot: bool = False
    image_path: str = imageinfo.DEFAULT_PATH
    role: str | None = None  # the kernel's k4sinit.role=
    hostname: str | None = None  # the kernel's k4sinit.hostname=
    token: JoinToken | None = None  # the kernel's k4sinit.token= (a worker's join token)
    debug_hang: bool = False  # the kernel's k4sinit.debug=hang: the debug_hang request

    @classmethod
    def run(cls, socket: str | None, *, cgroups: bool = True) -> Options:
        """``k4sinit run``: supervise on this machine, as a child subreaper."""
        return cls(socket=socket_path(socket), cgroups=cgroups)

    @classmethod
    def init(
        cls,
        socket: str | None,
        kernel: cmdline.KernelOptions,
        *,
        container: bool,
        named: bool,
    ) -> Options:
        """``k4sinit init``: PID 1 of a node, or of a container (``k4sinit dev``)."""
        from k4sinit.control.port import PORT_NAME

        return cls(
            socket=socket_path(socket),
            signals=INIT_SIGNALS,
            reload_signals=(),
            power=True,
            control_port=None if container else PORT_NAME,
            etc_files=EtcFiles.NEVER if container else EtcFiles.ALWAYS,
            dhcp_hostname=not named,
            preflight_stops_boot=True,
            role=kernel.role,
            hostname=kernel.hostname,
            token=kernel.token,
            debug_hang=kernel.debug_hang,
        )


@dataclass(frozen=True)
class Attached:
    """What an entry point opened before the event loop and hands to the daemon."""

    log_writer: NonBlockingWriter | None = None  # its drops are a metric
    watchdog: Watchdog | None = None  # PID 1's, open: the daemon pets it


@dataclass(frozen=True)
class Plan:
    """What will run: the config with the node's roles expanded, and its network."""

    config: Config
    node: NodeSettings | None  # None: no node profile, no roles
    network: NetworkSpec


@dataclass(frozen=True)
class Prepared:
    """A plan with the machine made ready for it (see :func:`prepare`)."""

    plan: Plan
    cgroups: CgroupTree | None
    checks: list[preflight.Check]
    image: ImageInfo | None
    timeline: Timeline  # the stages so far; the daemon adds its own and serves it


class CannotStart(Exception):
    """``run`` could not start; ``errors`` says why, one line each."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


class SurvivorsRunning(CannotStart):
    """Services of an earlier ``run`` at the socket still live (``found``: name -> pids)."""

    def __init__(self, socket: str, found: dict[str, list[int]]) -> None:
        super().__init__([describe_survivors(socket, found)])
        self.found = found


def plan(config: Config, options: Options, network: NetworkSpec | None = None) -> Plan:
    """The node's roles expanded (the kernel's role, hostname and token from ``options``).

    ``network``: the spec to apply (PID 1's choice between the config and the
    kernel's ``ip=``); None: the config's. Pure but for the binPath lookups;
    raises ConfigErrors.
    """
    network = config.network if network is None else network
    if config.node is None and options.role is None:
        # No profile, from the file or the kernel: no roles to expand (and the
        # role modules stay unloaded: a plain ``run`` starts sooner, smaller).
        return Plan(config, None, network)
    from k4sinit.node import roles

    expanded = roles.expand_node(
        config,
        role_from_kernel=options.role,
        hostname=options.hostname,
        token_from_kernel=options.token,
    )
    return Plan(expanded.config, expanded.settings, network)


def prepare(plan: Plan, options: Options, log: Any, timeline: Timeline | None = None) -> Prepared:
    """Cgroups, preflight, node files, image info, in that order (module docstring),
    each a stage of ``timeline`` (None: one since this process started).

    Blocking; call it before the event loop. Raises BootError for a fatal
    preflight failure (where ``options.preflight_stops_boot`` and the config
    does not say ``boot.preflight: warn``), OSError when a node file cannot be
    written.
    """
    timeline = Timeline.since_process_start() if timeline is None else timeline
    cgroups = None
    if options.cgroups:
        with timeline.stage("cgroups"):
            cgroups = setup_cgroups(log, options.cgroup_mount)
    enforced = options.preflight_stops_boot and plan.config.system.preflight == "enforce"
    checks: list[preflight.Check] = []
    if plan.node is not None:  # without a node profile there is neither
        from k4sinit.node import roles

        with timeline.stage("preflight"):
            checks = run_preflight(plan, log, enforced=enforced)
        with timeline.stage("node files"):
            for path in roles.write_files(plan.node):
                log.debug("written", path=path)
    return Prepared(plan, cgroups, checks, imageinfo.load(options.image_path), timeline)


def setup_cgroups(log: Any, mount: Path = CGROUP_MOUNT) -> CgroupTree | None:
    """k4sinit's cgroup subtree, or None (logged) where cgroup2 is not usable here."""
    try:
        tree = CgroupTree.discover(mount)
        tree.setup()
    except (CgroupUnavailable, OSError) as exc:
        log.warning("running without cgroups", reason=str(exc))
        return None
    log.info("cgroups ready", base=str(tree.base.path), controllers=sorted(tree.controllers))
    return tree


def run_preflight(plan: Plan, log: Any, *, enforced: bool) -> list[preflight.Check]:
    """The profile's preflight checks, logged as a table; none without a ``node:`` profile.

    A fatal failure raises BootError when ``enforced`` (PID 1 then takes its fallback).
    """
    if plan.node is None:
        return []
    from k4sinit.node import preflight
    from k4sinit.pid1 import boot

    checks = preflight.check_node(plan.node, plan.config)
    for line in preflight.format_table(checks).splitlines():
        log.info("preflight: " + line)
    fatal = preflight.fatal(checks)
    if fatal and enforced:
        raise boot.BootError(
            "preflight failed: " + "; ".join(f"{c.name}: {c.detail}" for c in fatal)
        )
    return checks


def compose(
    prepared: Prepared, options: Options, log: Any, attached: Attached = Attached()
) -> Daemon:
    """The network and the daemon, from a prepared plan; call it inside trio."""
    plan = prepared.plan
    network: Network | HostNetwork = HostNetwork(plan.network)
    if manages_network(plan, options):
        from k4sinit.network import Network

        etc = writes_etc_files(options.etc_files, plan.network)
        network = Network(
            plan.network,
            log,
            resolv_conf=RESOLV_CONF if etc else None,
            hosts=HOSTS if etc else None,
            on_dhcp_hostname=hostname_setter(log) if options.dhcp_hostname else None,
        )
    return Daemon(
        plan.config,
        options.socket,
        log,
        cgroups=prepared.cgroups,
        network=network,
        node=plan.node,
        checks=prepared.checks,
        signals=options.signals,
        power=options.power,
        control_port=options.control_port,
        image=prepared.image,
        log_writer=attached.log_writer,
        watchdog=attached.watchdog,
        debug_hang=options.debug_hang,
        timeline=prepared.timeline,
        reload_signals=options.reload_signals,
        load=loader(
            plan.config.source, role=options.role, hostname=options.hostname, token=options.token
        ),
    )


def manages_network(plan: Plan, options: Options) -> bool:
    """Whether k4sinit applies and watches the network (network/network.py), or takes
    the host's as it is (network/host.py): PID 1 always manages it; ``run`` only
    with a ``network:`` section, a node profile, or a service that waits for it."""
    return (
        options.etc_files is not EtcFiles.IF_CONFIGURED
        or plan.network.configured
        or plan.node is not None
        or any(
            name == NETWORK for spec in plan.config.services.values() for name, _ in spec.depends_on
        )
    )


def writes_etc_files(etc: EtcFiles, network: NetworkSpec) -> bool:
    """Whether the network writes /etc/resolv.conf and /etc/hosts."""
    return etc is EtcFiles.ALWAYS or (etc is EtcFiles.IF_CONFIGURED and network.configured)


async def serve(
    prepared: Prepared,
    options: Options,
    log: Any,
    attached: Attached = Attached(),
    *,
    task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED,
) -> Shutdown:
    """Compose the daemon and run it until a shutdown; returns what the shutdown asked for.

    ``started`` with the daemon once it supervises (its control socket is up).
    """
    daemon = compose(prepared, options, log, attached)
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        task_status.started(daemon)
    return daemon.action


def hostname_setter(log: Any) -> Callable[[str], None]:
    """What the network calls with a DHCP lease's hostname: set it, log it."""

    def set_hostname(name: str) -> None:
        from k4sinit.host import system

        try:
            system.set_hostname(name)
            log.info("hostname from DHCP", hostname=name)
        except OSError as exc:
            log.warning("hostname from DHCP not set", error=str(exc))

    return set_hostname


# --- the entry points ------------------------------------------------------------------


def run(plan: Plan, options: Options, log: Any, attached: Attached = Attached()) -> Shutdown:
    """``k4sinit run``'s life: refuse to start twice, prepare, serve until a shutdown.

    Raises SurvivorsRunning when services of an earlier run still live, and
    CannotStart for the OSErrors that stop it before it supervises (a node
    file, the control socket).
    """
    # A run killed by SIGKILL leaves its services running: never start them twice.
    # (A live daemon at the socket is refused by the control server, by that name.)
    left = (
        {}
        if serving(options.socket)
        else survivors(options.socket, cgroups=options.cgroups, mount=options.cgroup_mount)
    )
    if left:
        raise SurvivorsRunning(options.socket, left)
    try:
        prepared = prepare(plan, options, log)
        return trio.run(serve, prepared, options, log, attached)
    except (OSError, BaseExceptionGroup) as exc:
        # trio's nurseries wrap an error (the control socket that cannot be bound)
        # in exception groups: report the OSErrors inside, re-raise anything else.
        errors = _os_errors(exc)
        if errors is None:
            raise
        raise CannotStart([str(err) for err in errors]) from None


def _os_errors(exc: BaseException) -> list[OSError] | None:
    """The OSErrors that ``exc`` is (or that an exception group holds), or None if
    it holds anything else."""
    if isinstance(exc, OSError):
        return [exc]
    if isinstance(exc, BaseExceptionGroup):
        found: list[OSError] = []
        for inner in exc.exceptions:
            errors = _os_errors(inner)
            if errors is None:
                return None
            found += errors
        return found
    return None


def supervise_node(booted: boot.Booted) -> Action:
    """PID 1's supervision of a booted system (``boot.Supervise``); returns how to end.

    Raises what fails the boot: ConfigErrors (the roles), BootError (preflight),
    OSError (a node file).
    """
    log = booted.log
    options = Options.init(
        booted.socket, booted.kernel, container=booted.container, named=booted.named
    )
    with booted.timeline.stage("roles"):
        planned = plan(booted.config, options, booted.network)
    prepared = prepare(planned, options, log, booted.timeline)
    log.info("system ready", seconds=round(time.monotonic() - booted.started, 3))
    watchdog = _open_watchdog(booted.config, booted.container, log)
    try:
        attached = Attached(log_writer=booted.log_writer, watchdog=watchdog)
        action = trio.run(serve, prepared, options, log, attached)
    finally:
        # Services stopped (or the daemon failed: the boot's fallback follows):
        # the magic close, before the last steps and reboot(2).
        if watchdog is not None:
            watchdog.disarm()
            log.info("watchdog: disarmed", device=watchdog.device)
    # A plain stop (`stop --all`) of PID 1 ends the node as a reboot does.
    return Action.REBOOT if action is None else action


def _open_watchdog(config: Config, container: bool, log: Any) -> Watchdog | None:
    """The config's hardware watchdog, open and armed; None without one (logged)."""
    if config.watchdog is None:
        return None
    if container:
        log.info("watchdog: not in a container (the device is the host's)")
        return None
    return open_watchdog(config.watchdog, log)


def init_main(options: boot.InitOptions) -> NoReturn:
    """``k4sinit init``'s life: PID 1's boot loop, supervising with this root."""
    from k4sinit.pid1 import boot

    boot.init_main(options, supervise_node)
