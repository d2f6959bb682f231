"""The one waiter: exit statuses arrive intact, whatever the load (spawning: test_process.py)."""

from __future__ import annotations

import resource
import signal
from pathlib import Path

import trio

from k4sinit.daemon import raise_fd_limit
from k4sinit.supervision.process import spawn
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
