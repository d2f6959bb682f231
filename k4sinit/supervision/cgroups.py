"""cgroup2: k4sinit's own subtree, one cgroup per service, limits, and kill-all.

Layout, under the cgroup k4sinit finds itself in (``/`` as PID 1 of a node or
of a cgroup namespace; a delegated cgroup under ``k4sinit run``)::

    <base>/                  controllers enabled for the subtree
      init/                  k4sinit itself (cgroup2 allows processes only in leaves)
      services/<name>/       one per service; resources.limits applied here
      shims/                 (a leaf) reserved for containerd's shims, so containerd can
                             restart without killing pods; a node stop kills it too
      kubepods/ ...          made by kubelet (cgroupRoot /): the pods' containers; a
                             node stop kills them, and whatever else others made here

A service's process is placed in its cgroup before it executes (process.spawn
runs it through ``sh -c 'echo 0 > cgroup.procs && exec "$@"'``: measured at
0.8 ms, against a racy write of the pid after spawn, Python in a ``preexec_fn``
of a threaded process, or ``clone3(CLONE_INTO_CGROUP)`` through ctypes). Stopping a service ends with ``cgroup.kill`` (or SIGKILL to
every pid where the kernel lacks it) and waiting for ``cgroup.events`` to say
``populated 0``: nothing of a stopped service survives, double-forked or not.

Every function here does small synchronous writes to cgroupfs (a kernel
pseudo-filesystem that never blocks on I/O), so they run in the trio thread.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from k4sinit.core.spec import Resources

CGROUP_MOUNT = Path("/sys/fs/cgroup")
CPU_PERIOD_US = 100_000


class CgroupUnavailable(Exception):
    """No writable cgroup2 hierarchy here; services run without cgroups."""


def own_cgroup(proc_self: str = "/proc/self/cgroup") -> str:
    """This process's cgroup2 path (``0::/path``); raises CgroupUnavailable."""
    try:
        lines = Path(proc_self).read_text().splitlines()
    except OSError as exc:
        raise CgroupUnavailable(f"cannot read {proc_self}: {exc.strerror}") from None
    for line in lines:
        if line.startswith("0::"):
            return line[3:]
    raise CgroupUnavailable("this process is in no cgroup2 hierarchy (cgroup v1 only)")


@dataclass(frozen=True)
class Stats:
    """What ``status NAME`` shows of a service's cgroup (None where unavailable)."""

    memory_bytes: int | None
    memory_peak_bytes: int | None
    cpu_seconds: float | None
    pids: int | None
    oom_kills: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "memory_bytes": self.memory_bytes,
            "memory_peak_bytes": self.memory_peak_bytes,
            "cpu_seconds": self.cpu_seconds,
            "pids": self.pids,
            "oom_kills": self.oom_kills,
        }


class Cgroup:
    """One cgroup directory."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def procs_file(self) -> str:
        return str(self.path / "cgroup.procs")

    def create(self) -> None:
        self.path.mkdir(exist_ok=True)

    def read(self, name: str) -> str | None:
        try:
            return (self.path / name).read_text()
        except OSError:
            return None

    def write(self, name: str, value: str) -> None:
        """Write a control file; raises OSError (EINVAL, EBUSY, ENOENT...) as the kernel says."""
        with open(self.path / name, "w") as f:
            f.write(value)

    def controllers(self) -> set[str]:
        return set((self.read("cgroup.controllers") or "").split())

    def enable_controllers(self) -> set[str]:
        """Enable for the children every controller this cgroup has; returns those enabled."""
        enabled = set()
        for name in sorted(self.controllers()):
            try:
                self.write("cgroup.subtree_control", f"+{name}")
                enabled.add(name)
            except OSError:
                pass  # e.g. EBUSY: processes live in this (non-root) cgroup
        return enabled

    def pids(self) -> list[int]:
        return [int(pid) for pid in (self.read("cgroup.procs") or "").split()]

    def all_pids(self) -> list[int]:
        """The processes of this cgroup and its descendants."""
        return [pid for group in self._subtree() for pid in group.pids()]

    def populated(self) -> bool:
        for line in (self.read("cgroup.events") or "").splitlines():
            key, _, value = line.partition(" ")
            if key == "populated":
                return value.strip() == "1"
        return bool(self.pids())

    def kill(self) -> None:
        """SIGKILL everything in this cgroup and below (cgroup.kill, or pid by pid)."""
        try:
            self.write("cgroup.kill", "1")
            return
        except FileNotFoundError:
            pass  # kernel < 5.14
        except OSError:
            if not self.path.exists():
                return
        for child in self._subtree():
            for pid in child.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    async def kill_and_wait(self, within: float = 10.0) -> bool:
        """Kill everything in the cgroup and wait until it is empty; False if not within ``within`` s.

        The kernel announces the change in ``cgroup.events``; we look again
        with a short, growing interval (dying processes are gone in ms).
        """
        delay = 0.001
        with trio.move_on_after(within):
            while True:
                self.kill()
                if not self.populated():
                    return True
                await trio.sleep(delay)
                delay = min(delay * 2, 0.05)
        return False

    def remove(self) -> None:
        """Remove the (empty) cgroup and its empty children; quietly keep busy ones."""
        for child in reversed(self._subtree()):
            with contextlib.suppress(OSError):
                child.path.rmdir()

    def _subtree(self) -> list[Cgroup]:
        """This cgroup and its descendants, parents first."""
        found = [self]
        for root, dirs, _ in os.walk(self.path):
            found.extend(Cgroup(Path(root) / d) for d in sorted(dirs))
        return found


class ServiceCgroup(Cgroup):
    """A service's cgroup: its limits and what status shows."""

    def apply(self, resources: Resources) -> list[str]:
        """Create the cgroup and write the limits; returns warnings for limits not enforced."""
        self.create()
        available = self.controllers()
        warnings = []
        wanted = (
            ("memory", "memory.max", resources.memory, str),
            (
                "cpu",
                "cpu.max",
                resources.cpu_millis,
                lambda m: f"{m * CPU_PERIOD_US // 1000} {CPU_PERIOD_US}",
            ),
            ("pids", "pids.max", resources.pids, str),
            ("cpu", "cpu.weight", resources.cpu_weight, str),
        )
        for controller, file, value, render in wanted:
            if value is None:
                continue
            if controller not in available:
                what = "weight" if file == "cpu.weight" else "limit"
                warnings.append(
                    f"{controller} {what} not enforced: no {controller} controller here"
                )
                continue
            self.write(file, render(value))
        if resources.memory is not None and "memory" in available:
            with contextlib.suppress(OSError):
                self.write("memory.swap.max", "0")  # a memory limit that swaps is no limit
        return warnings

    def oom_kills(self) -> int:
        for line in (self.read("memory.events") or "").splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def stats(self) -> Stats:
        def number(name: str) -> int | None:
            text = self.read(name)
            return int(text) if text and text.strip().isdigit() else None

        cpu = None
        for line in (self.read("cpu.stat") or "").splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                cpu = int(value) / 1e6
        events = self.read("memory.events")
        return Stats(
            memory_bytes=number("memory.current"),
            memory_peak_bytes=number("memory.peak"),
            cpu_seconds=cpu,
            pids=number("pids.current") if self.read("pids.current") else len(self.pids()),
            oom_kills=self.oom_kills() if events is not None else None,
        )


class CgroupTree:
    """k4sinit's cgroup subtree; see the module docstring."""

    def __init__(self, base: Path) -> None:
        self.base = Cgroup(base)
        self.init = Cgroup(base / "init")
        self.services = Cgroup(base / "services")
        self.shims = Cgroup(base / "shims")
        self.controllers: set[str] = set()

    @classmethod
    def discover(cls, mount: Path = CGROUP_MOUNT) -> CgroupTree:
        """The tree rooted at this process's own cgroup; raises CgroupUnavailable."""
        if not (mount / "cgroup.controllers").exists():
            raise CgroupUnavailable(f"no cgroup2 hierarchy mounted at {mount}")
        base = mount / own_cgroup().lstrip("/")
        if base.name == "init" and (base.parent / "services").is_dir():
            base = base.parent  # we are already in our leaf (a re-exec, or a restart)
        if not os.access(base, os.W_OK):
            raise CgroupUnavailable(f"cannot write to {base}")
        return cls(base)

    def setup(self) -> None:
        """Move this process into ``init/``, enable controllers, create the subtree.

        Leftovers of a previous k4sinit in ``services/`` are killed and removed.
        Raises OSError when the hierarchy refuses us.
        """
        self.init.create()
        self.init.write("cgroup.procs", str(os.getpid()))
        self.controllers = self.base.enable_controllers()
        self.services.create()
        self.shims.create()
        self.services.enable_controllers()
        # No controllers below shims/: a cgroup with subtree_control set cannot
        # hold processes itself, and containerd's runc shims join shims/ directly.
        for stale in sorted(p for p in self.services.path.iterdir() if p.is_dir()):
            leftover = Cgroup(stale)
            leftover.kill()
            leftover.remove()

    def service(self, name: str) -> ServiceCgroup:
        return ServiceCgroup(self.services.path / name)

    async def kill_everything(
        self, within: float = 10.0, say: Callable[[str], None] = lambda line: None
    ) -> bool:
        """Node stop: kill every process in the node's cgroups but k4sinit's own ``init/``.

        That is ``services/`` and ``shims/``, and every other cgroup below the base:
        kubelet's ``kubepods/``, where the pods' containers are (their shims are
        gone by then, so nothing else would stop them). ``say`` hears which
        cgroups held processes, and how many. False if some survive ``within``.
        """
        groups = [self.services, self.shims]
        with contextlib.suppress(OSError):
            groups += [
                Cgroup(path)
                for path in sorted(self.base.path.iterdir())
                if path.is_dir() and path.name not in ("init", "services", "shims")
            ]
        emptied = True
        for group in groups:
            count = len(group.all_pids())
            if count:
                say(f"killing {count} process(es) left in {group.path}")
            emptied = await group.kill_and_wait(within) and emptied
        return emptied
