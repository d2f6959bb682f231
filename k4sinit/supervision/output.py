"""Capturing a service's output line by line, in bounded memory and bounded time.

A service may write megabytes without a newline; the splitter then cuts the
line at ``max_line`` bytes, so memory stays bounded and the daemon never waits
for a newline. Reading is a trio stream over the pipe, so it never blocks.

A service may also write far faster than anyone can read (``yes``, an
apiserver at ``-v=10``). Every line kept costs the daemon work (the log ring,
followers, the console), so a flood must not take the loop that also answers
``status`` and runs everyone's probes. Hence:

* Lines go to the sink in batches of at most ``batch`` lines, with a checkpoint
  between batches: the work per wakeup is bounded, other tasks run in between.
* Each service has a :class:`LineBudget` (a token bucket on trio's clock).
  Lines past it are dropped without being decoded: only counted (a newline
  count over the bytes read), and the count is handed to the sink before the
  next kept line, so the reader sees where the gap is ("N lines dropped").
* While dropping, the pump pauses ``DROP_PAUSE`` between reads: the pipe fills
  and the flooding writer blocks for a moment instead of the daemon spinning on
  reads. A writer is never blocked longer than that at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import trio

MAX_LINE = 8192
READ_SIZE = 65536
BATCH_LINES = 256  # lines handed to the sink at once, between two checkpoints
LINE_RATE = 1000.0  # lines a second a service may keep, on average
LINE_BURST = 5000  # ... and at once (a start-up dump is kept whole)
DROP_PAUSE = 0.01  # seconds between reads while a service is over its budget

LineSink = Callable[[Sequence[str], int], None]
"""``sink(lines, dropped)``: a batch of lines (maybe empty), after ``dropped``
lines that were counted and thrown away just before them. Must not block."""


class LineSplitter:
    """Turns byte chunks into text lines of at most ``max_line`` bytes each.

    :meth:`push` adds bytes, :meth:`take` returns complete lines, :meth:`skip`
    counts and drops them without decoding; ``feed`` does push and take.
    Memory: what was pushed and not yet taken or skipped, plus one partial
    line of less than ``max_line`` bytes.
    """

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._max_line = max_line
        self._buffer = bytearray()
        self._start = 0  # where the untaken bytes begin in _buffer

    def feed(self, data: bytes | bytearray) -> list[str]:
        """Return the complete lines in ``data`` (without newlines)."""
        self.push(data)
        return self.take()

    def push(self, data: bytes | bytearray) -> None:
        """Add ``data`` after what is buffered."""
        if self._start:
            del self._buffer[: self._start]
            self._start = 0
        self._buffer += data

    def take(self, limit: int | None = None) -> list[str]:
        """Up to ``limit`` (default: all) complete lines, oldest first."""
        buffer, max_line = self._buffer, self._max_line
        lines: list[str] = []
        start = self._start
        while limit is None or len(lines) < limit:
            end = buffer.find(b"\n", start, start + max_line + 1)
            if end >= 0:
                lines.append(_decode(buffer[start:end]))
                start = end + 1
            elif len(buffer) - start >= max_line:  # an over-long line: cut it here
                lines.append(_decode(buffer[start : start + max_line]))
                start += max_line
            else:
                break
        self._start = start
        return lines

    def skip(self) -> int:
        """Drop every complete line buffered; return how many there were.

        Counts newlines rather than splitting, so a flood costs almost nothing.
        An over-long line counts once per ``max_line`` piece, as :meth:`take`
        would have cut it; the partial line at the end is kept.
        """
        buffer, start = self._buffer, self._start
        last = buffer.rfind(b"\n", start)
        count = 0
        if last >= 0:
            count = buffer.count(b"\n", start, last + 1)
            start = last + 1
        pieces = (len(buffer) - start) // self._max_line
        start += pieces * self._max_line
        del buffer[:start]
        self._start = 0
        return count + pieces

    def flush(self) -> list[str]:
        """Return what is left after the stream ended (a last line without newline)."""
        lines = self.take()
        if len(self._buffer) > self._start:
            lines.append(_decode(self._buffer[self._start :]))
        self._buffer.clear()
        self._start = 0
        return lines


def _decode(raw: bytes | bytearray) -> str:
    return bytes(raw).rstrip(b"\r").decode("utf-8", errors="replace")


class LineBudget:
    """How many lines of one service's output the daemon takes on.

    A token bucket on trio's clock: ``rate`` lines a second, at most ``burst``
    at once. Once it is empty, lines are dropped until ``resume`` lines' worth
    has built up again, so what is kept of a flood comes in runs, each after
    one "N lines dropped", rather than one line here and there. Shared by a
    service's stdout and stderr. Pure bookkeeping; the caller passes the time.
    """

    def __init__(
        self,
        now: float,
        rate: float = LINE_RATE,
        burst: int = LINE_BURST,
        resume: int | None = None,
    ) -> None:
        self._rate = rate
        self._burst = burst
        self._resume = min(burst, int(rate)) if resume is None else resume
        self._tokens = float(burst)
        self._stamp = now
        self._dropping = False

    def allowance(self, now: float) -> int:
        """How many lines may be kept now (0 while dropping)."""
        self._tokens = min(self._burst, self._tokens + (now - self._stamp) * self._rate)
        self._stamp = now
        if self._dropping and self._tokens < self._resume:
            return 0
        self._dropping = False
        return int(self._tokens)

    def spend(self, lines: int) -> None:
        """Count ``lines`` kept (at most the last :meth:`allowance`)."""
        self._tokens -= lines
        if self._tokens < 1:
            self._dropping = True


async def pump_lines(
    stream: trio.abc.ReceiveStream,
    sink: LineSink,
    *,
    max_line: int = MAX_LINE,
    budget: LineBudget | None = None,
    batch: int = BATCH_LINES,
) -> None:
    """Read ``stream`` to EOF, handing lines to ``sink`` in batches. Closes the stream.

    Without a ``budget`` every line is kept. With one, lines past it are
    dropped and counted (see the module docstring); a drop count with nothing
    after it is handed over at the end (EOF or cancellation) as
    ``sink([], dropped)``. Cancellation closes the stream; lines read but not
    yet handed over are lost.
    """
    splitter = LineSplitter(max_line)
    dropped = 0
    try:
        async with stream:
            while True:
                try:
                    data = await stream.receive_some(READ_SIZE)
                except trio.ClosedResourceError:
                    break
                if not data:
                    break
                splitter.push(data)
                while True:
                    room = batch
                    if budget is not None:
                        room = min(room, budget.allowance(trio.current_time()))
                    if room == 0:
                        dropped += splitter.skip()
                        break
                    lines = splitter.take(room)
                    if not lines:
                        break
                    if budget is not None:
                        budget.spend(len(lines))
                    sink(lines, dropped)
                    dropped = 0
                    if len(lines) == room:
                        await trio.lowlevel.checkpoint()  # more may wait: others run first
                if budget is not None and budget.allowance(trio.current_time()) == 0:
                    await trio.sleep(DROP_PAUSE)
            lines = splitter.flush()
            if budget is not None and lines:
                room = budget.allowance(trio.current_time())
                dropped += max(0, len(lines) - room)
                lines = lines[:room]
                budget.spend(len(lines))
            if lines:
                sink(lines, dropped)
                dropped = 0
    finally:
        if dropped:  # at EOF, or cancelled: the count is reported all the same
            sink([], dropped)
