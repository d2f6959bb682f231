"""A service's processes where there are no cgroups: found by an environment tag.

With cgroup2 a service's processes stay in its cgroup whatever they do. Without
it nothing in the kernel keeps them together: a child that calls setsid()
leaves the service's process group (which a stop signals), and one whose
parent exits re-parents to the nearest child subreaper (``k4sinit run`` is
one) or to init, so parentage is lost too. What every process keeps is the
environment it was exec'd with (``/proc/PID/environ``), and children inherit
it: k4sinit puts :data:`DAEMON_ENV` (its control socket) and
:data:`SERVICE_ENV` (the service's name) into every service's, and finds the
service's processes by them:

- when a service without a cgroup ends or is stopped, its tagged processes
  among k4sinit's descendants are killed (:func:`tagged` + :func:`kill`);
- when a ``k4sinit run`` starts, processes of the host tagged with its socket
  are services of an earlier run, killed by SIGKILL, that still run.

It is best effort: a process that drops or rewrites its environment (``env
-i``) escapes. k4sinit says so at start-up when it runs without cgroups.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterable

import psutil
import trio

DAEMON_ENV = "K4SINIT_DAEMON"
SERVICE_ENV = "K4SINIT_SERVICE"


def descendants() -> list[psutil.Process]:
    """Every process below this one (as a subreaper, escapees included)."""
    try:
        return list(psutil.Process().children(recursive=True))
    except psutil.Error:
        return []


def _environ(proc: psutil.Process) -> dict[str, str]:
    try:
        return dict(proc.environ())
    except (psutil.Error, OSError):
        return {}  # gone, a zombie, or not ours to read


def tagged(
    daemon: str, service: str | None = None, among: Iterable[psutil.Process] | None = None
) -> dict[str, list[psutil.Process]]:
    """Processes whose environment names ``daemon`` (and ``service``, if given), by service.

    ``among`` defaults to every process of the host. This process and its
    ancestors are never included (a ``run`` started from a service's shell).
    Blocking: reads /proc; call it in a thread from trio.
    """
    exclude = {os.getpid()}
    with contextlib.suppress(psutil.Error):
        exclude.update(p.pid for p in psutil.Process().parents())
    found: dict[str, list[psutil.Process]] = {}
    for proc in psutil.process_iter() if among is None else among:
        if proc.pid in exclude:
            continue
        env = _environ(proc)
        name = env.get(SERVICE_ENV)
        if env.get(DAEMON_ENV) != daemon or name is None:
            continue
        if service is not None and name != service:
            continue
        found.setdefault(name, []).append(proc)
    return found


async def kill(procs: Iterable[psutil.Process], within: float = 10.0) -> list[int]:
    """SIGKILL each process and wait until every one has exited; the pids still alive.

    Each is held by a pidfd first, and checked to still be the same process
    (psutil compares its start time), so a reused pid is never signalled;
    the pidfd turns readable when the process exits, so nothing is polled.
    A process that is a child of ours becomes a zombie, which the reaper collects.
    """
    held: list[tuple[int, int]] = []
    try:
        for proc in procs:
            try:
                fd = os.pidfd_open(proc.pid)
            except ProcessLookupError:
                continue
            if not proc.is_running():  # exited, and its pid perhaps reused, meanwhile
                os.close(fd)
                continue
            held.append((proc.pid, fd))
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
        left = list(held)
        with trio.move_on_after(within):
            while left:
                await trio.lowlevel.wait_readable(left[0][1])
                left.pop(0)
        return [pid for pid, _ in left]
    finally:
        for _, fd in held:
            os.close(fd)
