"""Line capture: bounded lines, partial reads, and a real pipe that never sends a newline."""

from __future__ import annotations

import os

import trio

from k4sinit.output import LineSplitter, pump_lines


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
    lines: list[str] = []
    total = 3_000_000

    async def writer() -> None:
        with os.fdopen(write_fd, "wb", buffering=0) as pipe:
            await trio.to_thread.run_sync(pipe.write, b"x" * total + b"\nend")

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            await pump_lines(trio.lowlevel.FdStream(read_fd), lines.append, max_line=8192)
    assert max(len(line) for line in lines) == 8192
    assert sum(len(line) for line in lines[:-1]) == total
    assert lines[-1] == "end"
