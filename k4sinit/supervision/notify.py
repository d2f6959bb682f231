"""systemd's readiness protocol (sd_notify): one datagram socket for the daemon.

A service whose readiness or liveness probe is ``notify`` gets
``NOTIFY_SOCKET=@k4sinit-notify-...`` (an abstract unix datagram socket,
:attr:`NotifyListener.address`), and sends ``KEY=VALUE`` lines to it, as
systemd's ``sd_notify(3)`` does. The socket has ``SO_PASSCRED``: the kernel
attaches the sender's pid, which no sender can forge. That pid says whose
message it is (:meth:`NotifyListener.owner`): a service's main process, a
process in the service's cgroup (or below it), or, without cgroups, a process
in the service's process group (each service leads its own). A message goes
only to the :class:`Notifications` of the service that sent it: no service can
speak for another.

What is read (everything else, ``MAINPID=`` included, is ignored):

* ``READY=1``: ready (``Notifications.ready``);
* ``STATUS=text``: the service's own status line (``Notifications.status``);
* ``STOPPING=1``: it is going down (``Notifications.stopping``);
* ``WATCHDOG=1``: alive (``Notifications.watchdog_at``, trio's clock).

Bad input is dropped and counted per reason (:attr:`NotifyListener.dropped`),
and logged at most once per reason every :data:`LOG_EVERY` seconds:
``oversized`` (more than :data:`MAX_DATAGRAM` bytes, systemd's limit too),
``malformed`` (not UTF-8, a NUL byte, no ``KEY=VALUE`` line),
``no-credentials``, ``unknown-sender`` (no notify service's process: gone
already, or another's), and ``flood`` (a service over :data:`RATE` messages a
second, after a burst of :data:`BURST`). File descriptors passed along
(``FDSTORE=1``) are closed at once. The socket is non-blocking and read at
most :data:`BATCH` datagrams per wake-up, so a flood costs CPU time, shared
with everything else, but never blocks the daemon.

A sender whose process has exited by the time its datagram is read can only
be recognised as a service's main process (``systemd-notify`` run as a child
is ``unknown-sender`` then, as it is for systemd without ``--pid``).
"""

from __future__ import annotations

import array
import contextlib
import os
import secrets
import socket
import struct
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import trio

MAX_DATAGRAM = 4096  # bytes; systemd's NOTIFY_BUFFER_MAX (PIPE_BUF)
BATCH = 64  # datagrams read per wake-up before yielding to other tasks
RATE = 20.0  # messages per second a service may send, on average ...
BURST = 100  # ... after a burst of this many
LOG_EVERY = 10.0  # seconds between two log lines about drops of one reason
STATUS_LIMIT = 200  # characters of STATUS= kept
_UCRED = struct.Struct("3i")  # pid, uid, gid
_MAX_FDS = 16  # descriptors a datagram may carry that we can close
_ANCILLARY = socket.CMSG_SPACE(_UCRED.size) + socket.CMSG_SPACE(_MAX_FDS * 4)
_CGROUP_MOUNT = Path("/sys/fs/cgroup")


class Notifications:
    """What one run of one service has said so far; a fresh one per run.

    ``changed()`` returns at the next message that changed something.
    ``watchdog_at`` starts at the run's start: the liveness window counts
    from there until the first ``WATCHDOG=1``.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.ready = False
        self.stopping = False
        self.status: str | None = None
        self.watchdog_at = trio.current_time()
        self.messages = 0  # accepted
        self.dropped = 0  # this run's messages dropped for a flood
        self._tokens = float(BURST)
        self._refilled = trio.current_time()
        self._changed = trio.Event()

    async def changed(self) -> None:
        await self._changed.wait()

    def admit(self) -> bool:
        """Take a token of the flood budget; False when there is none left."""
        now = trio.current_time()
        self._tokens = min(BURST, self._tokens + (now - self._refilled) * RATE)
        self._refilled = now
        if self._tokens < 1:
            self.dropped += 1
            return False
        self._tokens -= 1
        return True

    def apply(self, fields: dict[str, str]) -> None:
        """Take in one message's fields (the known ones; see the module docstring)."""
        self.messages += 1
        before = (self.ready, self.stopping, self.status)
        if fields.get("READY") == "1":
            self.ready = True
        if fields.get("STOPPING") == "1":
            self.stopping = True
        if "STATUS" in fields:
            self.status = fields["STATUS"][:STATUS_LIMIT] or None
        if fields.get("WATCHDOG") == "1":
            self.watchdog_at = trio.current_time()
        if (self.ready, self.stopping, self.status) != before:
            self._changed.set()
            self._changed = trio.Event()


def parse(data: bytes) -> dict[str, str] | None:
    """A datagram's ``KEY=VALUE`` lines (the last of a key wins); None if malformed."""
    if b"\0" in data:
        return None
    try:
        text = data.decode()
    except UnicodeDecodeError:
        return None
    fields = {}
    for line in text.split("\n"):
        key, eq, value = line.partition("=")
        if eq and key:
            fields[key] = value
        elif line:
            return None
    return fields or None


class NotifyListener:
    """The daemon's ``NOTIFY_SOCKET``; see the module docstring.

    :attr:`address` is chosen at construction; :meth:`run` binds it and
    reports started, so start it before any service. Runners attach each run
    (:meth:`attach`, right after spawning, before any checkpoint) and detach
    it when the run ends.
    """

    def __init__(
        self, log: Any, *, cgroup_mount: Path = _CGROUP_MOUNT, proc: Path = Path("/proc")
    ) -> None:
        """``cgroup_mount`` and ``proc`` are where cgroup2 and procfs are (tests change them)."""
        self._log = log
        self._cgroup_mount = cgroup_mount
        self._proc = proc
        self._name = f"k4sinit-notify-{os.getpid()}-{secrets.token_hex(4)}"
        self.address = f"@{self._name}"  # as NOTIFY_SOCKET says it: @ is the abstract namespace
        self._by_pid: dict[int, Notifications] = {}
        self._by_cgroup: dict[Path, Notifications] = {}
        self.dropped: Counter[str] = Counter()
        self._unlogged: Counter[str] = Counter()
        self._logged_at: dict[str, float] = {}

    @contextlib.contextmanager
    def attach(self, notes: Notifications, pid: int, cgroup: Path | None) -> Iterator[None]:
        """Route the messages of ``pid`` (and of ``cgroup``, if given) to ``notes``."""
        self._by_pid[pid] = notes
        if cgroup is not None:
            self._by_cgroup[cgroup] = notes
        try:
            yield
        finally:
            if self._by_pid.get(pid) is notes:
                del self._by_pid[pid]
            if cgroup is not None and self._by_cgroup.get(cgroup) is notes:
                del self._by_cgroup[cgroup]

    def owner(self, pid: int) -> Notifications | None:
        """Whose message a datagram from ``pid`` is: see the module docstring."""
        notes = self._by_pid.get(pid)
        if notes is not None:
            return notes
        if self._by_cgroup:
            cgroup = self._cgroup_of(pid)
            while cgroup is not None and cgroup != self._cgroup_mount:
                notes = self._by_cgroup.get(cgroup)
                if notes is not None:
                    return notes
                cgroup = cgroup.parent if cgroup != cgroup.parent else None
        try:
            return self._by_pid.get(os.getpgid(pid))
        except OSError:
            return None  # gone meanwhile

    def _cgroup_of(self, pid: int) -> Path | None:
        try:
            with open(self._proc / str(pid) / "cgroup", encoding="utf-8", errors="replace") as f:
                for line in f:
                    if line.startswith("0::/"):
                        return self._cgroup_mount / line[4:].rstrip("\n")
        except OSError:
            pass
        return None

    async def run(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """Bind :attr:`address`, then read datagrams until cancelled; closed on the way out.

        Raises OSError if the address cannot be bound.
        """
        sock = socket.socket(
            socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC
        )
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            sock.bind(f"\0{self._name}")
            task_status.started()
            while True:
                await trio.lowlevel.wait_readable(sock)
                for _ in range(BATCH):
                    try:
                        data, ancillary, flags, _ = sock.recvmsg(MAX_DATAGRAM, _ANCILLARY)
                    except (BlockingIOError, InterruptedError):
                        break
                    self._receive(data, ancillary, flags)

    def _receive(self, data: bytes, ancillary: list[tuple[int, int, bytes]], flags: int) -> None:
        pid = None
        for level, kind, payload in ancillary:
            if level != socket.SOL_SOCKET:
                continue
            if kind == socket.SCM_CREDENTIALS and len(payload) >= _UCRED.size:
                pid = _UCRED.unpack_from(payload)[0]
            elif kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                for fd in fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            self._drop("oversized", pid)
            return
        if not pid:
            self._drop("no-credentials", pid)
            return
        notes = self.owner(pid)
        if notes is None:
            self._drop("unknown-sender", pid)
            return
        if not notes.admit():
            self._drop("flood", pid, notes.name)
            return
        fields = parse(data)
        if fields is None:
            self._drop("malformed", pid, notes.name)
            return
        notes.apply(fields)

    def _drop(self, reason: str, pid: int | None, service: str | None = None) -> None:
        """Count a dropped datagram; log the first and then a summary each LOG_EVERY s."""
        self.dropped[reason] += 1
        self._unlogged[reason] += 1
        now = trio.current_time()
        last = self._logged_at.get(reason)
        if last is not None and now - last < LOG_EVERY:
            return
        self._logged_at[reason] = now
        self._log.warning(
            "notify message dropped",
            reason=reason,
            count=self._unlogged.pop(reason),
            last_pid=pid,
            service=service,
        )
