"""What a ``k4sinit run`` killed by SIGKILL leaves behind, and the refusal to start twice.

A run killed at once (SIGKILL) leaves its services running, re-parented to
the host's init. The next ``run`` at the same socket finds them (in k4sinit's
cgroup subtree, and by the environment tag every service process carries,
escapees.py) and refuses to start them again, naming each with its pids.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path

from k4sinit.supervision import escapees
from k4sinit.supervision.cgroups import CGROUP_MOUNT, Cgroup, CgroupTree, CgroupUnavailable


def serving(socket_path: str) -> bool:
    """Whether a daemon answers at ``socket_path`` now (a plain connect, no request)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(socket_path)
        except OSError:
            return False
    return True


def survivors(
    socket_path: str, *, cgroups: bool = True, mount: Path = CGROUP_MOUNT
) -> dict[str, list[int]]:
    """Services of an earlier k4sinit at ``socket_path`` that still run: name -> pids.

    What a ``k4sinit run`` killed by SIGKILL leaves: its services, re-parented
    to the host's init. Found in k4sinit's cgroup subtree (``services/NAME``,
    where cgroup2 is usable and ``cgroups``) and by the environment tag every
    service process carries (escapees.py). Blocking (reads /proc and cgroupfs).
    """
    found: dict[str, set[int]] = {}
    if cgroups:
        try:
            tree: CgroupTree | None = CgroupTree.discover(mount)
        except (CgroupUnavailable, OSError):
            tree = None
        if tree is not None and tree.services.path.is_dir():
            for path in sorted(p for p in tree.services.path.iterdir() if p.is_dir()):
                if pids := Cgroup(path).all_pids():
                    found.setdefault(path.name, set()).update(pids)
    for name, procs in escapees.tagged(os.path.abspath(socket_path)).items():
        found.setdefault(name, set()).update(p.pid for p in procs)
    return {name: sorted(pids) for name, pids in sorted(found.items())}


def describe_survivors(socket_path: str, found: Mapping[str, Sequence[int]]) -> str:
    """Why ``run`` refuses to start: the survivors by name and pid, and what to do."""
    listed = ", ".join(
        f"{name} (pid{'s' if len(pids) > 1 else ''} {', '.join(map(str, pids))})"
        for name, pids in found.items()
    )
    every = " ".join(str(pid) for pids in found.values() for pid in pids)
    return (
        f"cannot start: services of an earlier k4sinit at {socket_path} still run: {listed}; "
        f"starting them again would run them twice: stop them first (kill {every})"
    )
