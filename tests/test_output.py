"""Line capture: bounded lines, partial reads, a real pipe that never sends a newline,
and a flood: batches, the budget and its drop counts on trio's virtual clock."""

from __future__ import annotations

import os
from collections.abc import Sequence

import trio
import trio.testing

from k4sinit.supervision.output import DROP_PAUSE, LineBudget, LineSplitter, pump_lines


class Collect:
    """A sink that records what it is handed: (lines, dropped) per call."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], int]] = []

    def __call__(self, lines: Sequence[str], dropped: int) -> None:
        self.calls.append((list(lines), dropped))

    @property
    def lines(self) -> list[str]:
        return [line for lines, _ in self.calls for line in lines]


def test_splits_lines_across_chunks() -> None:
    splitter = LineSplitter()
    assert splitter.feed(b"one\ntw") == ["one"]
    assert splitter.feed(b"o\r\nthree\n\n") == ["two", "three", ""]
    assert splitter.flush() == []


def test_cuts_over_long_lines_and_keeps_the_rest() -> None:
    splitter = LineSplitter(max_line=4)
    assert splitter.feed(b"abcdefghij") == ["abcd", "efgh"]
    assert splitter.feed(b"\nxy") == ["ij"]
    assert splitter.flush() == ["xy"]


def test_a_newline_right_at_the_limit_is_not_a_cut() -> None:
    assert LineSplitter(max_line=4).feed(b"abcd\nef\n") == ["abcd", "ef"]


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    assert LineSplitter().feed(b"caf\xe9\n") == ["caf\ufffd"]


async def test_pump_reads_megabytes_without_newline_in_bounded_lines() -> None:
    read_fd, write_fd = os.pipe()
    sink = Collect()
    total = 3_000_000

    async def writer() -> None:
        with os.fdopen(write_fd, "wb", buffering=0) as pipe:
            await trio.to_thread.run_sync(pipe.write, b"x" * total + b"\nend")

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            await pump_lines(trio.lowlevel.FdStream(read_fd), sink, max_line=8192)
    lines = sink.lines
    assert max(len(line) for line in lines) == 8192
    assert sum(len(line) for line in lines[:-1]) == total
    assert lines[-1] == "end"


def test_take_hands_out_at_most_the_limit_and_skip_counts_the_rest() -> None:
    splitter = LineSplitter()
    splitter.push(b"a\nb\nc\nd\ne\npart")
    assert splitter.take(2) == ["a", "b"]
    assert splitter.skip() == 3
    assert splitter.take() == []
    splitter.push(b"ial\nnext\n")
    assert splitter.take(5) == ["partial", "next"]


def test_skip_counts_over_long_lines_in_pieces_and_keeps_the_partial_line() -> None:
    splitter = LineSplitter(max_line=4)
    splitter.push(b"abcdefghij")
    assert splitter.skip() == 2  # abcd, efgh: as take() would have cut them
    assert splitter.flush() == ["ij"]


def test_budget_is_a_token_bucket_that_resumes_only_after_refilling() -> None:
    budget = LineBudget(0.0, rate=10, burst=20, resume=5)
    assert budget.allowance(0.0) == 20
    budget.spend(20)
    assert [budget.allowance(t) for t in (0.1, 0.4, 0.49)] == [0, 0, 0]  # under resume
    assert budget.allowance(0.5) == 5
    budget.spend(3)
    assert budget.allowance(0.5) == 2  # not empty yet: no pause
    assert budget.allowance(100.0) == 20  # never more than the burst


class Flood(trio.abc.ReceiveStream):
    """A writer that never waits: every read returns ``lines`` more lines, at once.

    It gives up (EOF) after ``limit`` reads, so a pump that spins ends too.
    """

    def __init__(self, lines: int, limit: int = 5000) -> None:
        self.chunk = b"y\n" * lines
        self.reads = 0
        self.limit = limit

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        if self.reads == self.limit:
            return b""
        self.reads += 1
        return self.chunk

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()


async def test_pump_keeps_the_budget_counts_the_drops_and_pauses(
    autojump_clock: trio.abc.Clock,
) -> None:
    flood, sink = Flood(500), Collect()
    budget = LineBudget(0.0, rate=1000, burst=2000, resume=1000)
    with trio.move_on_after(3.0):
        await pump_lines(flood, sink, budget=budget, batch=256)
    kept, dropped = len(sink.lines), sum(d for _, d in sink.calls)
    assert kept + dropped == 500 * flood.reads  # cancelled: the last drops reported too
    # The burst, then one run of `resume` lines a second, each after its drop count.
    assert kept == 2000 + 2 * 1000
    assert [bool(lines) for lines, d in sink.calls if d] == [True, True, False]
    assert all(len(lines) <= 256 for lines, _ in sink.calls)
    # While dropping, one read per DROP_PAUSE: the writer waits, the daemon does not spin.
    assert flood.reads <= 3.0 / DROP_PAUSE + 20


async def test_pump_lets_other_tasks_run_between_batches() -> None:
    write, read = trio.testing.memory_stream_one_way_pair()
    order: list[str] = []
    first = trio.Event()

    def sink(lines: Sequence[str], dropped: int) -> None:
        order.append("batch")
        first.set()

    async def other() -> None:
        await first.wait()
        order.append("other")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(other)
            await write.send_all(b"line\n" * 100)  # one chunk, ten batches
            await write.aclose()
            await pump_lines(read, sink, batch=10)
    assert order.count("batch") == 10
    assert order.index("other") < 3  # before the chunk's batches were all done


async def test_pump_reports_drops_at_the_end_even_with_nothing_after_them(
    autojump_clock: trio.abc.Clock,
) -> None:
    write, read = trio.testing.memory_stream_one_way_pair()
    sink = Collect()
    await write.send_all(b"x\n" * 30 + b"tail")
    await write.aclose()
    await pump_lines(read, sink, budget=LineBudget(0.0, rate=1, burst=10, resume=5))
    assert sink.calls == [(["x"] * 10, 0), ([], 21)]  # 20 lines and the tail: dropped
