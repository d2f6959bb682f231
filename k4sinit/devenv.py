"""``k4sinit dev``: k4sinit as PID 1 of a container on this machine.

New pid, mount, uts, ipc, net and cgroup namespaces (util-linux ``unshare``),
with a fresh /proc, /sys and cgroup2 mounted by k4sinit's own stage 1. The
container gets a cgroup of its own on the host (``k4sinit-dev-<pid>`` under
the host's cgroup2 mount) that becomes the root of its cgroup namespace, so
its services' cgroups never meet the host's or another container's. The
control socket is on the host's filesystem (the container shares it), so
``k4sinit status --socket PATH`` works from the host.

This process is a plain CLI, not the daemon: it waits for unshare with
subprocess, then kills whatever is left in the container's cgroup and removes it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from .cgroups import Cgroup
from .system import mounted

UNSHARE = [
    "unshare",
    "--pid",
    "--fork",
    "--kill-child",
    "--mount",
    "--uts",
    "--ipc",
    "--net",
    "--cgroup",
    "--mount-proc",
    "--propagation",
    "private",
]


def host_cgroup2_mount() -> Path | None:
    """Where the host's cgroup2 hierarchy is mounted (/sys/fs/cgroup, or .../unified)."""
    for target, fstype in mounted().items():
        if fstype == "cgroup2":
            return Path(target)
    return None


def run_dev(config: str, socket: str, log_format: str = "auto") -> int:
    """Run ``k4sinit init`` as PID 1 of new namespaces until it ends; its exit status.

    Ends when the container's init ends (``k4sinit poweroff``, SIGTERM to it,
    or ctrl-c here, which is ctrl-alt-del for it).
    """
    if shutil.which("unshare") is None:
        print("k4sinit dev: unshare (util-linux) is missing", file=sys.stderr)
        return 1
    mount = host_cgroup2_mount()
    cgroup = Cgroup(mount / f"k4sinit-dev-{os.getpid()}") if mount else None
    argv = [
        *UNSHARE,
        "--",
        "env",
        "container=k4sinit-dev",
        sys.executable,
        "-m",
        "k4sinit",
        "init",
        "--config",
        os.path.abspath(config),
        "--socket",
        os.path.abspath(socket),
        "--log-format",
        log_format,
    ]
    if cgroup is not None:
        cgroup.create()
        # Join the container's cgroup before unsharing, so it roots the cgroup namespace.
        argv = ["/bin/sh", "-c", 'echo 0 > "$0" && exec "$@"', cgroup.procs_file, *argv]
    else:
        print("k4sinit dev: no cgroup2 on this host; services run without cgroups", file=sys.stderr)
    proc = subprocess.Popen(argv)

    def forward(signum: int, _frame: object) -> None:
        init = container_init(proc.pid)
        if init is not None:
            os.kill(init, signum)  # SIGTERM to PID 1: an orderly stop, then the namespace ends

    signal.signal(signal.SIGTERM, forward)
    try:
        while True:
            try:
                code = proc.wait()
                break
            except KeyboardInterrupt:
                # Ctrl-C reaches the container's init too (same process group): its
                # ctrl-alt-del. Keep waiting for it to end.
                continue
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        if cgroup is not None:
            cleanup(cgroup)
    # unshare reports its child's death by a signal as 128+N; reboot(2) in a pid
    # namespace ends its init by SIGHUP (reboot) or SIGINT (power-off, halt).
    return (
        0
        if code in (128 + signal.SIGHUP, 128 + signal.SIGINT, -signal.SIGHUP, -signal.SIGINT)
        else code
    )


def container_init(unshare_pid: int) -> int | None:
    """The host pid of the container's PID 1: the child unshare forked."""
    try:
        children = Path(f"/proc/{unshare_pid}/task/{unshare_pid}/children").read_text().split()
    except OSError:
        return None
    return int(children[0]) if children else None


def cleanup(cgroup: Cgroup) -> None:
    """Kill anything left in the container's cgroup and remove the cgroup tree."""
    for _ in range(100):
        cgroup.kill()
        if not cgroup.populated():
            break
        time.sleep(0.02)
    cgroup.remove()
