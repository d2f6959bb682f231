"""PID 1: the boot stages, then supervision, then a clean end. Never exits.

::

    init_main(options, supervise)
      loop forever:
        boot():   mounts -> kernel cmdline -> config -> [switch into a tmpfs
                  root, re-exec] -> coldplug -> modules -> sysctls -> hostname
                  -> machine-id -> storage (the config's disk on the data
                  directory), then supervise(Booted): the composition root
                  (k4sinit.daemon.root: roles, cgroups, preflight, node files,
                  network, supervisor, control) runs until a shutdown is asked for
        shutdown: services stopped in reverse order (by the daemon), then
                  everything left SIGTERMed, SIGKILLed, sync, unmount, reboot(2)
        any error on the way: log it, then the fallback (emergency shell,
                  retry, or reboot after a countdown), and boot again

Each stage's start and end go into the boot's timeline (core/timeline.py; across
the re-exec in the environment), which the daemon serves to ``k4sinit analyze``.

This module knows the stages, not what runs between boot and shutdown: the
caller hands that in as ``supervise`` (``k4sinit init`` gives the daemon's
composition root), so PID 1's stages never import the daemon.

PID 1 exiting panics the kernel, so :func:`init_main` catches everything: it
is the catch-all top level of STYLE.md rule 8 (the others in k4sinit are
narrower policies: one control request, one service's life, one DHCP attempt).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from k4sinit import IMPORTED_AT
from k4sinit.config import ConfigErrors, load_config
from k4sinit.core import cmdline, imageinfo, log
from k4sinit.core.config import Config, Fallback, SwitchRoot, SystemSpec
from k4sinit.core.netspec import NetworkSpec, choose_network
from k4sinit.core.paths import DEFAULT_PATH
from k4sinit.core.timeline import TIMELINE_ENV, Timeline, process_start
from k4sinit.host import storage, system
from k4sinit.pid1 import power

CP_PATH = "/bin:/usr/bin"  # where a cp with -a is (busybox, coreutils); not u-root's /bbin
SWITCHED_ENV = "K4SINIT_SWITCHED"  # set across the re-exec after a switch root
NEW_ROOT = "/newroot"
MOVED_MOUNTS = ("/dev", "/proc", "/sys", "/run", "/tmp")
MIN_RETRY_DELAY = 5.0  # between boot attempts, so a fallback can never spin


@dataclass
class InitOptions:
    """What the command line of ``k4sinit init`` gave (None: from the kernel or default)."""

    config: str | None = None
    socket: str | None = None
    log_format: str = "auto"


class BootError(Exception):
    """A boot stage failed in a way the fallback must handle; the message says how."""


@dataclass(frozen=True)
class Booted:
    """What the boot stages hand to ``supervise``: the system is up but for the node's roles."""

    config: Config  # as loaded: the roles are not expanded yet
    kernel: cmdline.KernelOptions
    network: NetworkSpec  # the config's network section, else the kernel's ip=
    container: bool  # PID 1 of a container (k4sinit dev): the kernel and /etc are the host's
    named: bool  # a hostname came from the kernel or the config (else DHCP may give one)
    socket: str | None  # ``k4sinit init --socket``; None: $K4SINIT_SOCKET or the default
    started: float  # time.monotonic() when this boot attempt began
    log: Any
    log_writer: log.NonBlockingWriter | None = None  # the console's (for its drop count)
    timeline: Timeline = field(default_factory=Timeline)  # the stages so far (analyze)


#: Runs the node from the booted system until a shutdown is asked for; returns how to
#: end. Raises to fail the boot (BootError, ConfigErrors, OSError: shown, then the fallback).
Supervise = Callable[[Booted], power.Action]


def init_main(options: InitOptions, supervise: Supervise) -> NoReturn:
    """Run as PID 1 forever: boot, supervise, shut down, or fall back. Never returns."""
    entered = time.monotonic()
    os.environ["PATH"] = DEFAULT_PATH
    os.environ.setdefault("HOME", "/")
    os.umask(0o022)
    container = system.in_container()
    # /proc first: the kernel command line says whether to log debug events.
    mounting = time.monotonic()
    early = system.mount_filesystems(container=container)
    timeline = first_stages(container, entered)
    timeline.add("mounts", mounting, time.monotonic())
    kernel = cmdline.read()
    writer = log.configure(options.log_format, colors=False, debug=kernel.debug)
    logger = log.get_logger()
    logger.info(
        "k4sinit starting",
        pid=os.getpid(),
        container=container,
        monotonic=round(time.monotonic(), 3),
    )
    image_info = imageinfo.load()  # the banner: what runs as the node's roles
    if image_info is not None and image_info.notice() is not None:
        logger.warning(image_info.summary())
    elif image_info is not None:
        logger.info("image: " + image_info.summary())
    for line in early:
        logger.info("stage 1: " + line)
    for warning in kernel.warnings:
        logger.warning(warning)
    system_spec = SystemSpec()
    while True:
        try:
            action, system_spec = boot(options, kernel, logger, writer, supervise, timeline)
            logger.info("services stopped; ending", action=action.verb)
            writer.wait_idle(2)
            finish(action, logger, writer)
        except BaseException as exc:
            report_failure(exc, logger)
            writer.wait_idle(2)
            fallback(system_spec, logger, writer)


def boot(
    options: InitOptions,
    kernel: cmdline.KernelOptions,
    logger: Any,
    writer: log.NonBlockingWriter,
    supervise: Supervise,
    timeline: Timeline | None = None,
) -> tuple[power.Action, SystemSpec]:
    """The stages (each recorded in ``timeline``), then ``supervise``; returns the
    shutdown action and the system spec.

    Raises on any stage failure (ConfigErrors for a broken config).
    """
    timeline = Timeline() if timeline is None else timeline
    started = time.monotonic()
    container = system.in_container()
    for line in system.mount_filesystems(container=container):  # again: a retry after a fix
        logger.info("stage 1: " + line)
    path = options.config or kernel.config or cmdline.DEFAULT_CONFIG
    with timeline.stage("config"):
        config = load_config(path)
    spec = config.system
    if should_switch_root(spec, kernel.switch_root, container=container):
        logger.info("switching into a tmpfs root", reason="booted from an initramfs")
        writer.wait_idle(2)
        switch_root_and_reexec(timeline)  # does not return
    network = node_network(config, kernel, logger)
    prepare_system(config, kernel, network, container=container, logger=logger, timeline=timeline)
    if config.storage is not None:
        with timeline.stage("storage"):
            mount_storage(config, logger)
    booted = Booted(
        config=config,
        kernel=kernel,
        network=network,
        container=container,
        named=bool(kernel.hostname or spec.hostname or network.hostname),
        socket=options.socket,
        started=started,
        log=logger,
        log_writer=writer,
        timeline=timeline,
    )
    return supervise(booted), spec


def first_stages(container: bool, entered: float, imported: float = IMPORTED_AT) -> Timeline:
    """The timeline up to ``entered`` (when :func:`init_main` began); ``imported``:
    when the interpreter had started and began importing k4sinit.

    After the switch root's re-exec: the stages before it, ``re-exec`` (a second
    interpreter start) and ``imports``. Otherwise from 0, the kernel's start: the
    kernel, its initramfs and the interpreter in one stage (PID 1's process exists
    from the kernel's first steps: nothing tells when /init began), then
    ``imports``; in a container (whose clock began with the host's) from this
    process's start.
    """
    carried = Timeline.from_env(os.environ.pop(TIMELINE_ENV, None))
    if carried is not None and carried.stages:
        carried.add("re-exec", carried.stages[-1].end, imported)
        timeline = carried
    elif container:
        timeline = Timeline(origin=process_start())
        timeline.add("interpreter", timeline.origin, imported)
    else:
        timeline = Timeline(origin=0.0)
        timeline.add("kernel, initramfs, interpreter", 0.0, imported)
    timeline.add("imports", imported, entered)
    return timeline


def node_network(config: Config, kernel: cmdline.KernelOptions, logger: Any) -> NetworkSpec:
    """The config's network section, else the kernel's ``ip=``, else loopback only.

    A malformed ``ip=`` is a warning (the node boots without it), not a fatal error.
    """
    try:
        return choose_network(config.network, kernel.ip)
    except ValueError as exc:
        logger.warning("kernel ip= option ignored", error=str(exc))
        return config.network


def prepare_system(
    config: Config,
    kernel: cmdline.KernelOptions,
    network: NetworkSpec,
    *,
    container: bool,
    logger: Any,
    timeline: Timeline | None = None,
) -> None:
    """Coldplug, modules, sysctls, hostname, machine-id, loopback: each problem logged,
    none fatal. Coldplug and the modules are stages of ``timeline``."""
    timeline = Timeline() if timeline is None else timeline
    spec = config.system
    if spec.coldplug and not container:  # in a container the kernel is the host's
        with timeline.stage("coldplug"):
            plugged = system.coldplug()
        for line in plugged.details():
            logger.debug("stage 1: coldplug: " + line)
        logger.info("stage 1: coldplug: " + plugged.summary())
        for problem in plugged.problems:
            logger.warning("stage 1: coldplug: " + problem)
    if spec.modules and container:
        logger.info(
            "stage 1: kernel modules are the host's in a container; not loading",
            modules=list(spec.modules),
        )
    elif spec.modules:
        with timeline.stage("modules"):
            problems = system.load_modules(spec.modules)
        for problem in problems:
            logger.warning("stage 1: " + problem)
    for problem in system.apply_sysctls(spec.sysctls, container=container):
        logger.warning("stage 1: " + problem)
    hostname = kernel.hostname or spec.hostname or network.hostname
    if hostname:
        try:
            system.set_hostname(hostname)
        except OSError as exc:
            logger.warning("stage 1: hostname not set", error=str(exc))
    try:
        logger.info("stage 1: machine id", machine_id=system.ensure_machine_id())
    except OSError as exc:
        logger.warning("stage 1: no machine id", error=str(exc))
    # Loopback: the network brings it up first thing, before any service starts.
    if not container:
        power.disable_ctrl_alt_del()


def mount_storage(config: Config, logger: Any) -> None:
    """The config's ``storage`` mounted on its mount point, before the composition root
    writes the node's files and PKI there; a full disk is logged (preflight judges it).

    Raises BootError when the storage cannot be used: a controller that went on
    with its state in the root would make a new cluster, and lose it at reboot.
    """
    if config.storage is None:
        return
    try:
        done = storage.prepare(config.storage, say=lambda line: logger.info("storage: " + line))
    except storage.StorageError as exc:
        raise BootError(f"storage: {exc}") from None
    logger.info("storage: " + done.summary())
    if done.write_error is not None:
        logger.error("storage: writes fail", device=done.device, error=done.write_error)


def finish(action: power.Action, logger: Any, writer: log.NonBlockingWriter) -> None:
    """The end of the node: kill what is left, flush logs, sync, unmount, reboot(2)."""
    power.kill_everything(lambda line: logger.warning(line))
    logger.info("syncing and unmounting", action=action.verb)
    writer.wait_idle(2)
    power.unmount_all(lambda line: logger.warning(line))
    power.reboot(action)  # returns only if the kernel refused
    raise BootError(f"reboot({action.verb}) refused by the kernel")


def report_failure(exc: BaseException, logger: Any) -> None:
    """Show what went wrong on the console, readably (a config's errors, not a traceback)."""
    if isinstance(exc, ConfigErrors):
        logger.error("boot failed: the config is invalid", errors=len(exc.errors))
        for line in str(exc).splitlines():
            logger.error("  " + line)
    elif isinstance(exc, BootError | OSError):
        logger.error("boot failed", error=str(exc))
    else:
        logger.error("boot failed: unexpected error", error=repr(exc))
        for line in traceback.format_exception(exc):
            for part in line.rstrip().splitlines():
                logger.error("  " + part)


def fallback(spec: SystemSpec, logger: Any, writer: log.NonBlockingWriter) -> None:
    """The config's choice after a failed boot; returns when the boot should be retried."""
    delay = max(spec.fallback_delay, MIN_RETRY_DELAY)
    if spec.fallback is Fallback.REBOOT:
        for left in range(int(delay), 0, -1):
            logger.error(f"rebooting in {left}s")
            writer.wait_idle(1)
            _sleep_reaping(1)
        with contextlib.suppress(BaseException):
            finish(power.Action.REBOOT, logger, writer)
    elif spec.fallback is Fallback.SHELL:
        logger.error(
            "starting an emergency shell; exit it to boot again", shell=" ".join(spec.shell)
        )
        writer.wait_idle(2)
        code = run_console_shell(spec.shell)
        logger.info("emergency shell ended", status=code)
    logger.info(f"retrying the boot in {delay:g}s")
    writer.wait_idle(1)
    _sleep_reaping(delay)


def run_console_shell(argv: tuple[str, ...]) -> int | None:
    """Run a shell on our console (stdin/stdout/stderr) and reap until it exits.

    Outside trio no other waiter exists, so waitpid(-1) also reaps orphans.
    Returns its wait status, or None if it could not start.
    """
    try:
        pid = os.fork()
    except OSError:
        return None
    if pid == 0:  # the child: become a session leader on the console, then exec
        try:
            os.setsid()
            os.execvpe(
                argv[0],
                list(argv),
                {"PATH": DEFAULT_PATH, "HOME": "/", "TERM": os.environ.get("TERM", "linux")},
            )
        finally:
            os._exit(127)
    while True:
        try:
            done, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return None
        except InterruptedError:
            continue
        if done == pid:
            return status


def _sleep_reaping(seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        with contextlib.suppress(ChildProcessError):
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        time.sleep(min(left, 0.2))


# --- the switch into a tmpfs root ----------------------------------------------------


def should_switch_root(spec: SystemSpec, kernel_choice: str | None, *, container: bool) -> bool:
    """Switch when booted from an initramfs (runc cannot pivot_root out of one), unless told not to."""
    if container or os.environ.get(SWITCHED_ENV):
        return False
    choice = SwitchRoot(kernel_choice) if kernel_choice else spec.switch_root
    if choice is SwitchRoot.NEVER:
        return False
    return choice is SwitchRoot.ALWAYS or system.mounted().get("/") in ("rootfs", "ramfs")


def copy_tree(entries: list[str], target: str) -> None:
    """Copy top-level ``entries`` of / into ``target``, keeping links, modes and owners.

    busybox/coreutils ``cp -a`` when there is one: in C it is several times
    faster than shutil under qemu's TCG (thousands of small files). Not from
    /bbin: u-root's ``cp`` has no ``-a``. No reaper runs yet, so waiting for it
    here is safe.
    """
    cp = shutil.which("cp", path=CP_PATH)
    if cp is not None:
        subprocess.run([cp, "-a", *(f"/{e}" for e in entries), target + "/"], check=True)
        return
    for entry in entries:
        source, destination = Path("/") / entry, Path(target) / entry
        if source.is_dir() and not source.is_symlink():
            shutil.copytree(source, destination, symlinks=True)
        else:
            shutil.copy2(source, destination, follow_symlinks=False)


def switch_root_and_reexec(timeline: Timeline) -> NoReturn:
    """Copy / into a tmpfs, move the API mounts over, make it /, free the old, re-exec.

    ``timeline`` goes across the re-exec in :data:`TIMELINE_ENV`, with this as
    its ``switch root`` stage.
    """
    started = time.monotonic()
    os.makedirs(NEW_ROOT, exist_ok=True)
    system.mount("tmpfs", NEW_ROOT, "tmpfs", 0, "mode=0755")
    skip = {NEW_ROOT.lstrip("/"), *(m.lstrip("/") for m in MOVED_MOUNTS)}
    entries = sorted(entry for entry in os.listdir("/") if entry not in skip)
    copy_tree(entries, NEW_ROOT)
    current = system.mounted()
    for mount_point in MOVED_MOUNTS:
        os.makedirs(NEW_ROOT + mount_point, exist_ok=True)
        if mount_point in current:
            system.mount(mount_point, NEW_ROOT + mount_point, "", system.MS_MOVE)
    for entry in entries:  # free the initramfs' memory: it cannot be unmounted
        path = Path("/") / entry
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    os.chdir(NEW_ROOT)
    system.mount(".", "/", "", system.MS_MOVE)
    os.chroot(".")
    os.chdir("/")
    os.environ[SWITCHED_ENV] = "1"
    timeline.add("switch root", started, time.monotonic())
    os.environ[TIMELINE_ENV] = timeline.to_env()
    os.execv(sys.executable, sys.orig_argv)
