"""The one waiter: exit statuses arrive intact, whatever the load."""

from __future__ import annotations

import errno
import os
import resource
import signal
from pathlib import Path

import pytest
import trio

from k4sinit.daemon import raise_fd_limit
from k4sinit.supervision.process import SpawnError, spawn, terminate
from k4sinit.supervision.reaper import ExitStatus, Reaper

ENV = {"PATH": "/usr/bin:/bin"}


async def test_exit_codes_and_signals_are_reported_exactly() -> None:
    reaper = Reaper()
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            await nursery.start(reaper.run)
            seven = spawn(reaper, ["sh", "-c", "exit 7"], env=ENV).child
            killed = spawn(reaper, ["sh", "-c", "kill -9 $$"], env=ENV).child
            assert await seven.wait() == ExitStatus(code=7)
            assert await killed.wait() == ExitStatus(signal=signal.SIGKILL)
            assert (await killed.wait()).describe() == "killed by SIGKILL"
            assert (await killed.wait()).to_json() == {"signal": "SIGKILL"}
            nursery.cancel_scope.cancel()
    assert reaper.children == 0


async def test_two_hundred_concurrent_children_each_get_their_own_status() -> None:
    reaper = Reaper()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(reaper.run)
            children = [
                spawn(reaper, ["sh", "-c", f"exit {i % 256}"], env=ENV).child for i in range(200)
            ]
            codes = [(await child.wait()).code for child in children]
            nursery.cancel_scope.cancel()
    assert codes == [i % 256 for i in range(200)]


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


def test_the_daemon_raises_its_fd_limit_as_far_as_it_may() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    try:
        raised = raise_fd_limit()
        # Up to fs.nr_open with CAP_SYS_RESOURCE (PID 1 has it), else to the hard limit.
        assert raised in (hard, int(Path("/proc/sys/fs/nr_open").read_text()))
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == raised > min(1024, hard)
    finally:
        resource.setrlimit(
            resource.RLIMIT_NOFILE, (soft, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
        )
