"""Logging: structlog events written by a thread that may block, never by trio.

A serial console under qemu takes ~11 KB/s and a pipe reader may stall; if the
daemon wrote its log directly, one chatty service would freeze PID 1. So log
lines go into a bounded in-memory queue drained by a writer thread; when the
queue is full, lines are dropped and the drop is counted and reported in the
stream itself (``"N log lines dropped"``).

Output is human console lines on a TTY and JSON lines otherwise
(``--log-format`` overrides).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections import deque
from typing import Any, TextIO

import structlog

MAX_QUEUED_BYTES = 4 * 1024 * 1024


class NonBlockingWriter:
    """A file-like sink whose ``write`` never blocks; a thread does the I/O."""

    def __init__(self, target: TextIO, max_bytes: int = MAX_QUEUED_BYTES) -> None:
        self._target = target
        self._max_bytes = max_bytes
        self._queue: deque[str] = deque()
        self._queued = 0
        self.dropped = 0  # since the last report in the stream
        self.dropped_total = 0  # since the start (for metrics)
        self._cond = threading.Condition()
        self._closed = False
        self._idle = True
        self._thread = threading.Thread(target=self._drain, name="k4sinit-log", daemon=True)
        self._thread.start()

    def write(self, text: str) -> int:
        with self._cond:
            if self._queued + len(text) > self._max_bytes:
                self.dropped += 1
                self.dropped_total += 1
                self._cond.notify()  # the drop is reported even if nothing follows
                return len(text)
            self._queue.append(text)
            self._queued += len(text)
            self._cond.notify()
        return len(text)

    def flush(self) -> None:
        """Nothing to do here: the writer thread flushes after every batch."""

    def close(self, timeout: float = 5.0) -> None:
        """Write out what is queued (up to ``timeout`` seconds), then stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join(timeout)

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Block until everything queued so far has been written (for tests and shutdown)."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._queue and self._idle, timeout)

    def _drain(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self.dropped or self._closed)
                if not self._queue and not self.dropped and self._closed:
                    return
                batch = list(self._queue)
                self._queue.clear()
                self._queued = 0
                dropped, self.dropped = self.dropped, 0
                self._idle = False
            if dropped:
                batch.insert(0, f"k4sinit: {dropped} log lines dropped (output too slow)\n")
            try:
                self._target.write("".join(batch))
                self._target.flush()
            except (OSError, ValueError):
                pass  # a console that went away must not take the daemon with it
            with self._cond:
                self._idle = True
                self._cond.notify_all()


def configure(
    fmt: str = "auto",
    *,
    stream: TextIO | None = None,
    debug: bool = False,
    colors: bool | None = None,
) -> NonBlockingWriter:
    """Set up structlog for the daemon; returns the writer (close it on exit).

    ``fmt`` is ``"console"``, ``"json"`` or ``"auto"`` (console on a TTY).
    ``colors`` defaults to "on a TTY" (PID 1 turns them off: a serial console
    log is read as text).
    """
    target = stream or sys.stdout
    if fmt == "auto":
        fmt = "console" if _isatty(target) else "json"
    # A traceback (log.exception, exc_info=...) is rendered once: as the text of
    # an "exception" field in JSON, by the console renderer itself on a console
    # (which would render it a second time after format_exc_info).
    renderers: list[Any]
    if fmt == "json":
        renderers = [structlog.processors.format_exc_info, structlog.processors.JSONRenderer()]
    else:
        renderers = [
            structlog.dev.ConsoleRenderer(
                colors=_isatty(target) if colors is None else colors,
                exception_formatter=structlog.dev.plain_traceback,
            )
        ]
    writer = NonBlockingWriter(target)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            *renderers,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.DEBUG if debug else logging.INFO
        ),
        logger_factory=structlog.WriteLoggerFactory(file=writer),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    return writer


def get_logger(**bind: Any) -> Any:
    """A bound structlog logger (``service=...`` and so on)."""
    return structlog.get_logger("k4sinit").bind(**bind)


def _isatty(stream: TextIO) -> bool:
    try:
        return os.isatty(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return False
