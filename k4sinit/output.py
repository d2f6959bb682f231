"""Capturing a service's output line by line, in bounded memory.

A service may write megabytes without a newline; the splitter then cuts the
line at ``max_line`` bytes, so memory stays bounded and the daemon never waits
for a newline. Reading is a trio stream over the pipe, so it never blocks.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

MAX_LINE = 8192
READ_SIZE = 65536


class LineSplitter:
    """Turns byte chunks into text lines of at most ``max_line`` bytes each."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._max_line = max_line
        self._partial = bytearray()

    def feed(self, data: bytes | bytearray) -> list[str]:
        """Return the complete lines in ``data`` (without newlines)."""
        self._partial += data
        lines: list[str] = []
        while True:
            end = self._partial.find(b"\n", 0, self._max_line + 1)
            if end >= 0:
                cut, skip = end, 1
            elif len(self._partial) >= self._max_line:
                cut, skip = self._max_line, 0  # an over-long line: cut it here
            else:
                break
            lines.append(_decode(self._partial[:cut]))
            del self._partial[: cut + skip]
        return lines

    def flush(self) -> list[str]:
        """Return what is left after the stream ended (a last line without newline)."""
        if not self._partial:
            return []
        line = _decode(self._partial)
        self._partial.clear()
        return [line]


def _decode(raw: bytes | bytearray) -> str:
    return bytes(raw).rstrip(b"\r").decode("utf-8", errors="replace")


async def pump_lines(
    stream: trio.abc.ReceiveStream,
    on_line: Callable[[str], None],
    max_line: int = MAX_LINE,
) -> None:
    """Read ``stream`` to EOF, calling ``on_line`` for every line. Closes the stream."""
    splitter = LineSplitter(max_line)
    async with stream:
        while True:
            try:
                data = await stream.receive_some(READ_SIZE)
            except trio.ClosedResourceError:
                break
            if not data:
                break
            for line in splitter.feed(data):
                on_line(line)
        for line in splitter.flush():
            on_line(line)
