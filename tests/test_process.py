"""Spawning and stopping service processes (k4sinit.supervision.process), with real children.

Spawn errors say what is actually wrong with the program or its working
directory; a stop reaches the whole process group; a short command runs to
completion with its output captured, bounded in time and in size.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest
import trio

from k4sinit.supervision.process import SpawnError, run_captured, spawn, terminate
from k4sinit.supervision.reaper import ExitStatus, Reaper

ENV = {"PATH": "/usr/bin:/bin"}


def spawn_error(argv: list[str], *, cwd: str | None = None, env: dict[str, str] = ENV) -> str:
    """The message of the SpawnError that starting ``argv`` gives (nothing is started)."""
    reaper = Reaper()
    with pytest.raises(SpawnError) as caught:
        spawn(reaper, argv, env=env, cwd=cwd)
    assert reaper.children == 0
    return str(caught.value)


def script(path: Path, text: str = "#!/bin/sh\nexit 3\n", mode: int = 0o755) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_a_file_that_is_not_executable(tmp_path: Path) -> None:
    plain = script(tmp_path / "run.sh", mode=0o644)
    assert spawn_error([str(plain)]) == f"{plain}: is not executable (mode 0644)"


def test_a_directory(tmp_path: Path) -> None:
    assert spawn_error([str(tmp_path)]) == f"{tmp_path}: is a directory, not a program"


def test_a_path_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "missing"
    assert spawn_error([str(missing)]) == f"{missing}: does not exist"


def test_a_name_not_on_path_keeps_its_message() -> None:
    message = spawn_error(["no-such-binary-k4s"])
    assert message == "no-such-binary-k4s: binary not found in /usr/bin:/bin"


def test_a_name_on_path_that_is_not_executable(tmp_path: Path) -> None:
    script(tmp_path / "tool", mode=0o644)
    message = spawn_error(["tool"], env={"PATH": f"{tmp_path}:/usr/bin"})
    assert message == f"tool: {tmp_path}/tool is not executable (mode 0644)"


def test_a_name_found_only_in_the_working_directory_says_how_to_run_it(tmp_path: Path) -> None:
    script(tmp_path / "run.sh")
    assert spawn_error(["run.sh"], cwd=str(tmp_path)) == (
        f"run.sh: binary not found in /usr/bin:/bin"
        f" ({tmp_path}/run.sh is not searched: write ./run.sh to run it from workingDir)"
    )


def test_a_relative_command_missing_from_the_working_directory(tmp_path: Path) -> None:
    message = spawn_error(["./run.sh"], cwd=str(tmp_path))
    assert message == f"./run.sh: does not exist (in workingDir {tmp_path})"


def test_a_working_directory_that_is_missing_or_a_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    assert spawn_error(["true"], cwd=str(missing)) == (
        f"true: working directory {missing} does not exist"
    )
    file = script(tmp_path / "file")
    assert (
        spawn_error(["true"], cwd=str(file)) == f"true: working directory {file} is not a directory"
    )


def test_a_script_whose_interpreter_is_missing(tmp_path: Path) -> None:
    broken = script(tmp_path / "broken", "#!/no/such/interpreter -x\n")
    assert spawn_error([str(broken)]) == (
        f"{broken}: its interpreter /no/such/interpreter (from its #! line) does not exist"
    )


async def test_a_relative_command_runs_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # execvp in the child, after it changed to workingDir, finds ./run.sh: so must spawn.
    script(tmp_path / "run.sh")
    monkeypatch.chdir("/")  # nothing there named run.sh: only workingDir can make it work
    reaper = Reaper()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(reaper.run)
            spawned = spawn(reaper, ["./run.sh"], env=ENV, cwd=str(tmp_path))
            for fd in (spawned.stdout, spawned.stderr):
                os.close(fd)
            assert await spawned.child.wait() == ExitStatus(code=3)
            nursery.cancel_scope.cancel()
    assert reaper.children == 0


async def test_spawn_errors_name_the_program_and_leave_nothing_behind() -> None:
    reaper = Reaper()
    for argv, expected in (
        (["no-such-binary-k4s"], "no-such-binary-k4s: binary not found in /usr/bin:/bin"),
        (["/etc/passwd"], "/etc/passwd: is not executable (mode 0644)"),
    ):
        try:
            spawn(reaper, argv, env=ENV)
        except SpawnError as exc:
            assert str(exc) == expected
        else:
            raise AssertionError(f"{argv} started")
    try:
        spawn(reaper, ["true"], env=ENV, cwd="/no/such/dir")
    except SpawnError as exc:
        assert "/no/such/dir" in str(exc)
    assert reaper.children == 0


async def test_terminate_escalates_to_sigkill_after_the_grace_period(
    autojump_clock: trio.abc.Clock,
) -> None:
    reaper = Reaper()
    async with trio.open_nursery() as nursery:
        await nursery.start(reaper.run)
        spawned = spawn(
            reaper, ["sh", "-c", "trap '' TERM; echo up; while :; do sleep 0.05; done"], env=ENV
        )
        async with trio.lowlevel.FdStream(spawned.stdout) as out:
            assert await out.receive_some(10) == b"up\n"  # the trap is set
        trio.lowlevel.FdStream(spawned.stderr).close()
        start = trio.current_time()
        status = await terminate(spawned.child, signal.SIGTERM, grace=5.0)
        assert status == ExitStatus(signal=signal.SIGKILL)
        assert trio.current_time() - start >= 5.0
        nursery.cancel_scope.cancel()


def test_running_out_of_fds_is_transient_not_a_verdict_on_the_program() -> None:
    reaper = Reaper()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    in_use = len(os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 1, hard))
    try:
        with pytest.raises(OSError) as caught:
            spawn(reaper, ["true"], env=ENV)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    # (a SpawnError, which is no OSError, would have escaped pytest.raises)
    assert caught.value.errno == errno.EMFILE
    assert reaper.children == 0


@contextlib.asynccontextmanager
async def running_reaper() -> AsyncIterator[Reaper]:
    """A Reaper serving in the background; every child it knows is reaped on exit."""
    reaper = Reaper()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(reaper.run)
            yield reaper
            nursery.cancel_scope.cancel()
    assert reaper.children == 0


def gone_within(pid: int, seconds: float) -> bool:
    """Whether ``pid`` exits (or is left a zombie) within ``seconds``."""
    try:
        process = psutil.Process(pid)
        _, alive = psutil.wait_procs([process], timeout=seconds)
        return not alive or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def first_line(fd: int) -> bytes:
    """Read up to the first newline of pipe ``fd`` (the child says it is set up)."""
    data = b""
    async with trio.lowlevel.FdStream(fd) as stream:
        while not data.endswith(b"\n"):
            chunk = await stream.receive_some(256)
            assert chunk, f"the pipe closed before a line: {data!r}"
            data += chunk
    return data


async def test_a_stop_reaches_the_children_of_the_process_too() -> None:
    async with running_reaper() as reaper:
        spawned = spawn(reaper, ["sh", "-c", "sleep 300 & echo $!; wait"], env=ENV)
        grandchild = int(await first_line(spawned.stdout))
        os.close(spawned.stderr)
        status = await terminate(spawned.child, signal.SIGTERM, grace=10.0)
        assert status == ExitStatus(signal=signal.SIGTERM)
        # The grandchild was in the group: it is gone too (or a zombie of whoever
        # adopted it), well before its 300 s.
        assert await trio.to_thread.run_sync(gone_within, grandchild, 20.0)


async def test_a_stopped_process_is_continued_so_it_acts_on_the_stop_signal() -> None:
    async with running_reaper() as reaper:
        spawned = spawn(reaper, ["sh", "-c", "echo up; exec sleep 300"], env=ENV)
        assert await first_line(spawned.stdout) == b"up\n"
        os.close(spawned.stderr)
        spawned.child.signal(signal.SIGSTOP)
        status = await terminate(spawned.child, signal.SIGTERM, grace=25.0)
        # Ended by SIGTERM, not by the SIGKILL that would follow the grace period.
        assert status == ExitStatus(signal=signal.SIGTERM)


async def test_a_multicall_name_is_kept_as_argv0_through_the_cgroup_join(tmp_path: Path) -> None:
    # Without a real cgroup: /dev/null as cgroup.procs takes the shell's "echo 0 >".
    multicall = script(tmp_path / "k4s", '#!/bin/sh\necho "$(basename "$0")"\n')
    async with running_reaper() as reaper:
        spawned = spawn(
            reaper,
            ["kube-apiserver", "--flag"],
            env=ENV,
            executable=str(multicall),
            cgroup_procs="/dev/null",
            dispatch_dir=str(tmp_path / "bin"),
        )
        assert await first_line(spawned.stdout) == b"kube-apiserver\n"
        os.close(spawned.stderr)
        assert await spawned.child.wait() == ExitStatus(code=0)
    assert os.readlink(tmp_path / "bin" / "kube-apiserver") == str(multicall)


def test_a_nul_byte_in_the_environment_is_refused_before_anything_starts() -> None:
    assert (
        spawn_error(["true"], env={**ENV, "X": "a\0b"})
        == "'true': a NUL byte in the command line or environment"
    )


async def test_run_captured_returns_status_and_both_streams() -> None:
    async with running_reaper() as reaper:
        status, output = await run_captured(
            reaper, ["sh", "-c", "echo out; echo err >&2; exit 4"], env=ENV, time_limit=20
        )
    assert status == ExitStatus(code=4)
    assert sorted(output.splitlines()) == ["err", "out"]


async def test_run_captured_kills_a_command_past_its_time_limit() -> None:
    async with running_reaper() as reaper:
        status, output = await run_captured(
            reaper, ["sh", "-c", "echo started; exec sleep 300"], env=ENV, time_limit=1
        )
    assert (status, output) == (None, "started\n")


async def test_run_captured_stops_reading_at_its_output_limit() -> None:
    async with running_reaper() as reaper:
        status, output = await run_captured(
            reaper,
            ["sh", "-c", "while :; do echo yyyyyyyy; done"],
            env=ENV,
            time_limit=60,
            max_output=1000,
        )
    assert len(output) == 1000
    # The writer got SIGPIPE (or exited on EPIPE) instead of running to the time limit.
    assert status is not None and not status.success
