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
Inside, ``k4sinit init`` finds itself in a container and asks the composition
root (k4sinit/daemon/root.py) for what a container gets: no control port, the
host's /etc left alone.

The container never outlives it:

- SIGTERM, SIGHUP (a terminal hang-up), SIGQUIT and SIGALRM become SIGTERM to
  the container's init, an orderly stop (SIGUSR1, SIGUSR2 go through: halt,
  power-off);
- if it is killed (SIGKILL), unshare gets SIGKILL from the kernel
  (PR_SET_PDEATHSIG, set in the child before it executes), and unshare's
  ``--kill-child`` passes it on to the container's init, which ends the pid
  namespace; a watcher process it forked beforehand (in its own session)
  sees its end and kills and removes the container's cgroup.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from k4sinit.core.paths import SHELL
from k4sinit.host.system import mounted
from k4sinit.supervision.cgroups import Cgroup
from k4sinit.supervision.process import JOIN_CGROUP

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


PR_SET_PDEATHSIG = 1
# What a signal to `k4sinit dev` becomes for the container's init.
FORWARDED: dict[int, int] = {
    signal.SIGTERM: signal.SIGTERM,
    signal.SIGHUP: signal.SIGTERM,
    signal.SIGQUIT: signal.SIGTERM,
    signal.SIGALRM: signal.SIGTERM,
    signal.SIGUSR1: signal.SIGUSR1,
    signal.SIGUSR2: signal.SIGUSR2,
}


def die_with_parent() -> None:
    """In a forked child before exec: SIGKILL when the parent dies (survives exec)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def watch_cgroup(cgroup: Cgroup) -> int:
    """Fork a watcher that cleans ``cgroup`` up once this process has ended, however.

    Returns the write end of a pipe that only this process holds (it is not
    inherited): the watcher reads EOF when this process exits, even by SIGKILL,
    then kills what is left in the cgroup and removes it. The watcher is in its
    own session (a terminal hang-up does not reach it), forked twice so that it
    is not our child (our only child is unshare: see :func:`container_init`),
    and exits afterwards.
    """
    read_end, write_end = os.pipe()
    middle = os.fork()
    if middle == 0:
        try:
            os.close(write_end)
            os.setsid()
            if os.fork() == 0:
                while os.read(read_end, 1):
                    pass
                cleanup(cgroup)
        finally:
            os._exit(0)
    os.close(read_end)
    os.waitpid(middle, 0)
    return write_end


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
    watcher: int | None = None
    if cgroup is not None:
        cgroup.create()
        watcher = watch_cgroup(cgroup)
        # Join the container's cgroup before unsharing, so it roots the cgroup namespace.
        argv = [SHELL, "-c", JOIN_CGROUP, cgroup.procs_file, *argv]
    else:
        print("k4sinit dev: no cgroup2 on this host; services run without cgroups", file=sys.stderr)
    # preexec_fn is safe here: this CLI runs no threads.
    proc = subprocess.Popen(argv, preexec_fn=die_with_parent)

    def forward(signum: int, _frame: object) -> None:
        init = container_init(proc.pid)
        if init is not None:
            # SIGTERM to PID 1: an orderly stop, then the namespace ends.
            with contextlib.suppress(ProcessLookupError):
                os.kill(init, FORWARDED[signum])
        elif proc.poll() is None:
            proc.kill()  # no init yet: nothing to stop in order; unshare takes its child along

    for signum in FORWARDED:
        signal.signal(signum, forward)
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
        if watcher is not None:
            os.close(watcher)  # the watcher finds the cgroup gone and exits
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
