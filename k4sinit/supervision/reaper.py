"""The one process waiter: reaps every child and orphan, and routes exit statuses.

Why one waiter: CPython turns a status that another ``waitpid``
already collected into exit code 0. So nothing in k4sinit may wait for a
process except :class:`Reaper`: no ``trio.run_process``, ``subprocess.run``,
``os.system`` or psutil waits. Every spawn registers its pid here synchronously,
in the trio thread, before the next checkpoint, so the reaper can never see a
status for a pid it does not know yet; any other pid is an orphan that was
re-parented to us (we are PID 1 or a child subreaper) and is reaped and logged.

Lifecycle::

    reaper = Reaper()
    await nursery.start(reaper.run)   # SIGCHLD handler installed, backlog drained
    child = reaper.register(pid)      # right after fork, no checkpoint between
    status = await child.wait()
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable

import trio

# ExitStatus is pure data (state.py, where restart.py, which has no trio, reads it);
# it is re-exported here, beside the waiter that makes it.
from k4sinit.core.state import ExitStatus as ExitStatus

PR_SET_CHILD_SUBREAPER = 36


class Child:
    """A registered child process. Its status arrives through the reaper."""

    def __init__(self, pid: int, owner: object = None) -> None:
        self.pid = pid
        self.status: ExitStatus | None = None
        # The object that forked the pid (a subprocess.Popen), kept alive until
        # reaped so its own bookkeeping never waits for the pid (see _set_status).
        self._owner = owner
        self._exited = trio.Event()

    @property
    def running(self) -> bool:
        return self.status is None

    async def wait(self) -> ExitStatus:
        """Wait for the exit status. Cancellation leaves the child untouched."""
        await self._exited.wait()
        assert self.status is not None
        return self.status

    def signal(self, sig: int) -> bool:
        """Send ``sig`` to the child alone; False if it has already been reaped."""
        if self.status is not None:
            return False
        os.kill(self.pid, sig)
        return True

    def signal_group(self, sig: int) -> bool:
        """Send ``sig`` to the child's process group (its pgid is its pid).

        Works after the leader has been reaped as long as any member lives;
        returns False when the group is empty.
        """
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            return False
        return True

    def _set_status(self, status: ExitStatus) -> None:
        self.status = status
        if self._owner is not None and hasattr(self._owner, "returncode"):
            # Tell Popen the outcome so that its __del__/poll never calls
            # waitpid on a pid that may have been reused by then.
            code = status.code if status.code is not None else -(status.signal or 0)
            self._owner.returncode = code
        self._owner = None
        self._exited.set()


OrphanHandler = Callable[[int, ExitStatus], None]


class Reaper:
    """Reaps all children of this process; see the module docstring."""

    def __init__(self, on_orphan: OrphanHandler | None = None) -> None:
        self._children: dict[int, Child] = {}
        self._on_orphan = on_orphan
        self.orphans_reaped = 0

    def register(self, pid: int, owner: object = None) -> Child:
        """Start tracking ``pid``. Call right after the fork, with no checkpoint between."""
        child = Child(pid, owner)
        self._children[pid] = child
        return child

    def pids(self) -> frozenset[int]:
        """The registered children not reaped yet, now."""
        return frozenset(self._children)

    @property
    def children(self) -> int:
        """How many registered children have not been reaped yet."""
        return len(self._children)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Reap on every SIGCHLD until cancelled. Must run in the main thread."""
        with trio.open_signal_receiver(signal.SIGCHLD) as signals:
            self.reap()
            task_status.started()
            async for _ in signals:
                self.reap()

    def reap(self) -> int:
        """Collect every status that is ready now; returns how many."""
        count = 0
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            count += 1
            exit_status = ExitStatus.from_wait_status(status)
            child = self._children.pop(pid, None)
            if child is not None:
                child._set_status(exit_status)
            else:
                self.orphans_reaped += 1
                if self._on_orphan is not None:
                    self._on_orphan(pid, exit_status)
        return count


def become_subreaper() -> bool:
    """Make orphaned descendants re-parent to this process (not needed as PID 1).

    Returns False where the kernel refuses (then orphans go to our init).
    """
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
