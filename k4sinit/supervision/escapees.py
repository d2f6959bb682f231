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
from collections.abc import Callable, Collection, Iterable

import psutil
import trio

DAEMON_ENV = "K4SINIT_DAEMON"
SERVICE_ENV = "K4SINIT_SERVICE"


def descendants(skip: Collection[int] = ()) -> list[psutil.Process]:
    """Every process below this one (as a subreaper, escapees included), but for
    the processes in ``skip`` and everything below them (see :func:`_below`).
    Blocking: reads /proc."""
    found: list[psutil.Process] = []
    for pid in _below(skip):
        with contextlib.suppress(psutil.Error):
            found.append(psutil.Process(pid))
    return found


def _below(skip: Collection[int]) -> list[int]:
    """The pids below this process, without the subtrees of ``skip``.

    ``skip``: the live children k4sinit knows (the reaper's: other services'
    main processes). Their subtrees hold their own services' processes, not
    another service's escapees (those re-parent to k4sinit, the subreaper), and
    not reading their environments keeps a service's end from costing a read of
    every other service's processes (a stop-all was O(N^2) /proc reads).
    """
    below: dict[int, list[int]] = {}
    for pid, ppid in _parents().items():
        below.setdefault(ppid, []).append(pid)
    found: list[int] = []
    todo = [pid for pid in below.get(os.getpid(), []) if pid not in skip]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += below.get(pid, [])
    return found


def _parents() -> dict[int, int]:
    """pid -> parent pid of every process of the host (/proc/PID/stat)."""
    parents: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        parents[int(name)] = int(stat[stat.rindex(b")") + 2 :].split()[1])
    return parents


def tagged_below(daemon: str, skip: Collection[int] = ()) -> dict[str, list[psutil.Process]]:
    """:func:`tagged` among this process's descendants but for ``skip``'s subtrees
    (:func:`_below`), by service: each candidate's environment read once, a
    psutil.Process made only of those it names (the few to kill). Blocking:
    reads /proc."""
    mark = f"{DAEMON_ENV}={daemon}".encode()
    prefix = f"{SERVICE_ENV}=".encode()
    found: dict[str, list[psutil.Process]] = {}
    for pid in _below(skip):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue  # gone, a zombie, or not ours to read
        if mark not in env:
            continue
        name = next((v[len(prefix) :] for v in env if v.startswith(prefix)), None)
        if name is None:
            continue
        with contextlib.suppress(psutil.Error):
            found.setdefault(name.decode(errors="replace"), []).append(psutil.Process(pid))
    return found


class Search:
    """The escapee searches of every runner, shared: ends that come while a search
    runs are answered together by the next one, which starts after they came (so
    it sees every process they left). A stop-all of N services without cgroups
    walks /proc a few times, not N times.

    ``skip``: the pids whose subtrees are not searched (see :func:`_below`),
    asked at the start of each search.
    """

    def __init__(self, daemon: str, skip: Callable[[], Collection[int]]) -> None:
        self._daemon = daemon
        self._skip = skip
        self._running: _Round | None = None
        self._pending: _Round | None = None

    async def find(self, service: str) -> list[psutil.Process]:
        """The processes tagged with this daemon and ``service``; reads /proc in a
        thread. Call it shielded: a cancelled caller that started a search would
        leave the others of its round without an answer."""
        mine = self._pending
        if mine is not None:
            await mine.done.wait()
            return mine.found.get(service, [])
        mine = self._pending = _Round()
        try:
            while self._running is not None:
                await self._running.done.wait()
            self._pending, self._running = None, mine
            skip = self._skip()
            mine.found = await trio.to_thread.run_sync(tagged_below, self._daemon, skip)
        finally:
            if self._pending is mine:
                self._pending = None
            if self._running is mine:
                self._running = None
            mine.done.set()
        return mine.found.get(service, [])


class _Round:
    """One search and the ends it answers."""

    def __init__(self) -> None:
        self.done = trio.Event()
        self.found: dict[str, list[psutil.Process]] = {}


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
