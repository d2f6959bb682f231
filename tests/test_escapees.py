"""escapees.py: finding a service's processes by their environment tag, without cgroups.

- ``tagged_below`` finds this process's tagged descendants, by service, and
  skips the subtrees it is told to (other services' live main processes).
- ``Search`` answers ends that come together with one walk of /proc.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import psutil
import pytest
import trio

from k4sinit.supervision import escapees


@pytest.fixture
def children() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Two tagged sleepers of service a, one of service b; killed afterwards."""
    procs = [
        subprocess.Popen(
            ["sleep", "60"],
            env={escapees.DAEMON_ENV: "/run/test.sock", escapees.SERVICE_ENV: name},
        )
        for name in ("a", "a", "b")
    ]
    yield procs
    for proc in procs:
        proc.kill()
        proc.wait()


def pids(found: dict[str, list[psutil.Process]]) -> dict[str, set[int]]:
    return {name: {p.pid for p in procs} for name, procs in found.items()}


def test_tagged_below_finds_the_daemons_processes_by_service(
    children: list[subprocess.Popen[bytes]],
) -> None:
    a1, a2, b = children
    assert pids(escapees.tagged_below("/run/test.sock")) == {"a": {a1.pid, a2.pid}, "b": {b.pid}}
    assert escapees.tagged_below("/run/other.sock") == {}


def test_tagged_below_skips_the_subtrees_it_is_told_to(
    children: list[subprocess.Popen[bytes]],
) -> None:
    a1, a2, b = children
    found = escapees.tagged_below("/run/test.sock", skip={a1.pid, b.pid})
    assert pids(found) == {"a": {a2.pid}}


async def test_ends_that_come_together_share_a_search(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    walks: list[frozenset[int]] = []

    def walk(daemon: str, skip: frozenset[int]) -> dict[str, list[psutil.Process]]:
        walks.append(skip)
        return {"a": [psutil.Process()]}

    monkeypatch.setattr(escapees, "tagged_below", walk)
    search = escapees.Search("/run/test.sock", lambda: frozenset({1234}))
    answers: list[list[psutil.Process]] = []

    async def end(name: str) -> None:
        answers.append(await search.find(name))

    async with trio.open_nursery() as nursery:
        for name in ["a"] * 20 + ["b"] * 20:
            nursery.start_soon(end, name)
    # The first end walks at once; the other 39 come while it runs: one more walk.
    assert walks == [frozenset({1234})] * 2
    assert sorted(len(answer) for answer in answers) == [0] * 20 + [1] * 20
