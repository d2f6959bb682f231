"""Spawning and stopping service processes.

:func:`spawn` is the only way k4sinit starts a process. It is synchronous and
registers the pid with the :class:`~k4sinit.supervision.reaper.Reaper` before returning, so
no checkpoint lies between fork and registration (see reaper.py for why). Each
process leads its own process group, so a stop reaches its children too.

Output goes through pipes whose read ends are handed back raw; the caller wraps
them in :class:`trio.lowlevel.FdStream` (see :mod:`k4sinit.supervision.output`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import trio

from k4sinit.core.paths import DEFAULT_PATH, SHELL
from k4sinit.supervision.reaper import Child, ExitStatus, Reaper
from k4sinit.supervision.timeouts import DaemonLate, call_with_timeout

# Joins the cgroup whose cgroup.procs is $0, then becomes the program ("$@").
JOIN_CGROUP = 'echo 0 > "$0" && exec "$@"'
# Moves the descriptor given as stdin to fd N (s6's notification-fd), stdin to /dev/null.
PASS_STDIN_AS = "exec {fd}>&0 0</dev/null"
DISPATCH_DIR = "/run/k4sinit/bin"  # role-named symlinks to multicall binaries
# How long output may still be read after a process has exited.
DRAIN_SECONDS = 1.0


# Spawn failures that say nothing about the program and may pass.
TRANSIENT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.EAGAIN, errno.ENOMEM})


class SpawnError(Exception):
    """The program cannot be started (binary missing, not executable, bad cwd).

    Transient failures (out of fds, memory or pids) raise plain OSError instead.
    """


@dataclass
class Spawned:
    """A started process and the read ends of its stdout and stderr pipes."""

    child: Child
    stdout: int
    stderr: int


def dispatch_link(name: str, target: str, directory: str) -> str:
    """A symlink ``directory/<basename of name>`` -> ``target``; its path.

    Raises SpawnError when it cannot be made.
    """
    link = os.path.join(directory, os.path.basename(name))
    try:
        if os.path.islink(link) and os.readlink(link) == target:
            return link
        os.makedirs(directory, mode=0o755, exist_ok=True)
        tmp = f"{link}.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.symlink(target, tmp)
        os.replace(tmp, link)
    except OSError as exc:
        raise SpawnError(f"{name}: cannot link {link} -> {target}: {exc.strerror}") from exc
    return link


def find_executable(name: str, path: str, cwd: str | None = None) -> str | None:
    """Resolve ``name`` like execvp would in ``cwd``; None if it cannot be run."""
    try:
        return resolve_executable(name, path, cwd)
    except SpawnError:
        return None


def resolve_executable(name: str, path: str, cwd: str | None = None) -> str:
    """The file execvp would run for ``name`` in the working directory ``cwd``.

    With a slash, ``name`` is a path (a relative one from ``cwd``, as the child
    sees it after changing there); without one, it is looked up on ``path``.
    Raises :class:`SpawnError` saying what is wrong: no such file, a
    directory, not executable, not on ``path`` (noting a file of that name
    in ``cwd``), or a working directory that is missing or not a directory.
    """
    if cwd is not None:
        problem = _problem(cwd, want_dir=True)
        if problem is not None:
            raise SpawnError(f"{name}: working directory {cwd} {problem}")
    if "/" in name:
        full = os.path.join(cwd, name) if cwd is not None else name
        problem = _problem(full)
        if problem is not None:
            relative = cwd is not None and not name.startswith("/")
            raise SpawnError(f"{name}: {problem}{f' (in workingDir {cwd})' if relative else ''}")
        return full
    unusable = None
    for directory in path.split(os.pathsep):
        if not directory:
            continue
        candidate = os.path.join(directory, name)
        problem = _problem(candidate)
        if problem is None:
            return candidate
        if unusable is None and os.path.lexists(candidate):
            unusable = f"{candidate} {problem}"
    if unusable is not None:
        raise SpawnError(f"{name}: {unusable}")
    local = "" if cwd is None else os.path.join(cwd, name)
    if local and _problem(local) is None:
        raise SpawnError(
            f"{name}: binary not found in {path}"
            f" ({local} is not searched: write ./{name} to run it from workingDir)"
        )
    raise SpawnError(f"{name}: binary not found in {path}")


def _problem(path: str, *, want_dir: bool = False) -> str | None:
    """What stops ``path`` from being run (or entered, ``want_dir``); None if nothing."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return f"cannot be reached: {exc.strerror or exc}"
    if want_dir:
        if not stat.S_ISDIR(mode):
            return "is not a directory"
        return None if os.access(path, os.X_OK) else "cannot be entered (permission denied)"
    if stat.S_ISDIR(mode):
        return "is a directory, not a program"
    if not stat.S_ISREG(mode):
        return "is not a regular file"
    if not os.access(path, os.X_OK):
        return f"is not executable (mode {stat.S_IMODE(mode):04o})"
    return None


def spawn(
    reaper: Reaper,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    cwd: str | None = None,
    executable: str | None = None,
    cgroup_procs: str | None = None,
    dispatch_dir: str = DISPATCH_DIR,
    pass_fd: tuple[int, int] | None = None,
) -> Spawned:
    """Start ``argv`` in a new process group with stdin on /dev/null.

    ``executable`` is the file to run; ``argv[0]`` is what the process sees as
    its name (busybox-style dispatch). With ``cgroup_procs`` (a cgroup's
    ``cgroup.procs`` file) the process joins that cgroup before it executes:
    it runs through ``/bin/sh``, which moves itself there and then execs the
    program (argv[0] becomes the program's path; where the name matters, as
    for a multicall binary, the program is reached through a symlink named
    like ``argv[0]`` in ``dispatch_dir``, which is how busybox-style binaries
    are installed anyway). With ``pass_fd`` ``(n, fd)`` the process gets
    ``fd`` as its descriptor ``n`` (3 to 9: the shell places it, and dash
    takes one digit), through the same shell. Raises :class:`SpawnError`
    with a readable reason (see :func:`resolve_executable`); on success the
    child is already registered with ``reaper``.
    """
    path = env.get("PATH", DEFAULT_PATH)
    program = executable or argv[0]
    if any("\0" in part for part in (*argv, *env, *env.values(), cwd or "")):
        raise SpawnError(f"{program!r}: a NUL byte in the command line or environment")
    resolved = resolve_executable(program, path, cwd)
    stdin: int = subprocess.DEVNULL
    if cgroup_procs is not None or pass_fd is not None:
        program = resolved
        if os.path.basename(argv[0]) != os.path.basename(resolved):
            program = dispatch_link(argv[0], resolved, dispatch_dir)
        script = JOIN_CGROUP if cgroup_procs is not None else 'exec "$@"'
        if pass_fd is not None:
            stdin = pass_fd[1]
            script = f"{PASS_STDIN_AS.format(fd=pass_fd[0])} && {script}"
        argv = [SHELL, "-c", script, cgroup_procs or SHELL, program, *argv[1:]]
        resolved = SHELL
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    try:
        popen = subprocess.Popen(
            list(argv),
            executable=resolved,
            stdin=stdin,
            stdout=out_w,
            stderr=err_w,
            cwd=cwd,
            env=dict(env),
            process_group=0,
            close_fds=True,
        )
    except ValueError as exc:  # an embedded NUL byte in argv or env
        for fd in (out_r, err_r):
            os.close(fd)
        raise SpawnError(f"{program}: {exc}") from exc
    except OSError as exc:
        for fd in (out_r, err_r):
            os.close(fd)
        if exc.errno in TRANSIENT_ERRNOS:
            raise  # out of fds, memory or processes: worth a retry, not a verdict
        raise SpawnError(f"{program}: {_exec_failure(exc, resolved)}") from exc
    finally:
        os.close(out_w)
        os.close(err_w)
    # No checkpoint since the fork: register before the reaper can run.
    child = reaper.register(popen.pid, owner=popen)
    return Spawned(child, out_r, err_r)


def _exec_failure(exc: OSError, resolved: str) -> str:
    """Why exec failed on a file that exists and is executable."""
    if exc.errno == errno.ENOENT:  # the file is there: its #! interpreter is not
        try:
            with open(resolved, "rb") as f:
                first = f.readline(256)
        except OSError:
            first = b""
        if first.startswith(b"#!") and first[2:].split():
            interpreter = first[2:].split()[0].decode(errors="replace")
            return f"its interpreter {interpreter} (from its #! line) does not exist"
    if exc.errno == errno.EACCES:
        return f"{exc.strerror} (is its filesystem mounted noexec?)"
    return exc.strerror or str(exc)


async def terminate(child: Child, stop_signal: int, grace: float) -> ExitStatus:
    """Stop a child and its process group: ``stop_signal``, then SIGKILL after ``grace``.

    Returns the exit status. Leftover members of the group are SIGKILLed once
    the leader is gone. A SIGCONT follows the stop signal (as systemd does), so
    a stopped process acts on it instead of sitting out the grace period.
    Callers that must finish even when cancelled run this in a shielded scope.
    """
    if child.running:
        for sig in (stop_signal, signal.SIGCONT):
            child.signal_group(sig)
            # Signal the leader directly too: it may have left the group.
            _signal_quietly(child, sig)
        with trio.move_on_after(grace):
            await child.wait()
        if child.running:
            child.signal_group(signal.SIGKILL)
            _signal_quietly(child, signal.SIGKILL)
    status = await child.wait()
    child.signal_group(signal.SIGKILL)
    return status


def _signal_quietly(child: Child, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        child.signal(sig)


async def run_captured(
    reaper: Reaper,
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    time_limit: float,
    cwd: str | None = None,
    max_output: int = 65536,
) -> tuple[ExitStatus | None, str]:
    """Run a short command to completion, capturing stdout and stderr together.

    Returns ``(status, output)``; ``status`` is None when the command ran past
    ``time_limit`` and was killed (with its process group); the time the
    daemon itself was late does not count (:func:`~k4sinit.supervision.timeouts.call_with_timeout`),
    and :class:`~k4sinit.supervision.timeouts.DaemonLate` is raised, once the command is
    killed and reaped, if the daemon was too late to tell. Once ``max_output``
    bytes are read, both pipes are closed, as ``| head -c`` would do: a command
    that keeps writing gets SIGPIPE (or EPIPE), rather than the daemon reading
    and discarding its output until the time limit. Raises :class:`SpawnError`.
    """
    spawned = spawn(reaper, argv, env=env, cwd=cwd)
    chunks = bytearray()

    async def collect(fd: int, readers: trio.CancelScope) -> None:
        async with trio.lowlevel.FdStream(fd) as stream:
            while data := await stream.receive_some(65536):
                chunks.extend(data[: max(0, max_output - len(chunks))])
                if len(chunks) >= max_output:
                    readers.cancel()  # closes both pipes: nothing more is read

    async def read_all() -> None:
        async with trio.open_nursery() as readers:
            readers.start_soon(collect, spawned.stdout, readers.cancel_scope)
            readers.start_soon(collect, spawned.stderr, readers.cancel_scope)

    timed_out = False
    late: DaemonLate | None = None
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_all)
            try:
                await call_with_timeout(time_limit, spawned.child.wait)
            except trio.TooSlowError:
                timed_out = True
            except DaemonLate as exc:
                late = exc
            # Once the command is gone, nothing it left behind may hold the pipes.
            spawned.child.signal_group(signal.SIGKILL)
            # A daemonised leftover (setsid) could hold the pipes open forever.
            nursery.cancel_scope.deadline = trio.current_time() + DRAIN_SECONDS
    finally:
        if spawned.child.running:
            with trio.CancelScope(shield=True):
                await terminate(spawned.child, signal.SIGKILL, 0)
    status = await spawned.child.wait()
    if late is not None:
        raise late
    return (None if timed_out else status), chunks.decode("utf-8", errors="replace")
