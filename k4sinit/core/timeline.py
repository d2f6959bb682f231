"""The boot's timeline: PID 1's stages and each unit's first milestones.

What ``k4sinit analyze`` reads (core/analysis.py, core/bootplot.py). Two records:

- :class:`Timeline`: named stages with a start and an end (``mounts``,
  ``switch root``, ``coldplug``, ``preflight``...), in ``time.monotonic()``
  seconds: CLOCK_MONOTONIC, which counts from the kernel's start and goes on
  across PID 1's re-exec (the stages before it travel in :data:`TIMELINE_ENV`).
  Bounded: a boot retried forever keeps its last :data:`MAX_STAGES`.
- :class:`Milestones`: when a service first waited, was first spawned, first
  ready, first completed. Each is set once and never again, so a later restart
  (or the runner's bounded event history) cannot lose the boot's times.

Their wire form is :class:`TimelineJSON` (the ``timeline`` request's reply):
every time in CLOCK_MONOTONIC seconds; ``origin`` is where the boot's clock
starts (0.0, the kernel's start, for a node's PID 1; the process's start for
``k4sinit run``).

Pure: no trio (the daemon converts its clock's readings before it replies).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypedDict

from k4sinit import IMPORTED_AT
from k4sinit.core.state import State

TIMELINE_ENV = "K4SINIT_TIMELINE"  # the stages before PID 1's re-exec, as JSON
MAX_STAGES = 64


class StageJSON(TypedDict):
    name: str
    start: float
    end: float


class UnitJSON(TypedDict):
    """A service (``kind`` ``service``) or a built-in dependency (``builtin``:
    network, pki); a time is None until it happened."""

    name: str
    kind: str
    depends_on: dict[str, str]  # name -> Condition value, as in status
    waiting: float | None  # its life began (waiting for its dependencies)
    started: float | None  # first spawned (a built-in: began its own work)
    ready: float | None
    completed: float | None


class TimelineJSON(TypedDict):
    origin: float  # where the boot's clock starts (0.0: the kernel's start)
    now: float  # when the reply was made
    stages: list[StageJSON]
    units: list[UnitJSON]  # services in dependency order, then the built-ins used


@dataclass(frozen=True, slots=True)
class Stage:
    name: str
    start: float
    end: float

    def to_json(self) -> StageJSON:
        return {"name": self.name, "start": self.start, "end": self.end}


class Timeline:
    """PID 1's (or ``run``'s) stages, in CLOCK_MONOTONIC seconds; see the module docstring.

    ``clock`` is for tests; the daemon adds its own stages through :meth:`add`.
    """

    def __init__(self, origin: float = 0.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.origin = origin
        self._clock = clock
        self.stages: deque[Stage] = deque(maxlen=MAX_STAGES)

    @classmethod
    def since_process_start(cls) -> Timeline:
        """A timeline whose origin is this process's start, with its first stages:
        ``interpreter`` until k4sinit was imported, ``imports, config`` from then to now."""
        started = process_start()
        timeline = cls(origin=started)
        timeline.add("interpreter", started, IMPORTED_AT)
        timeline.add("imports, config", IMPORTED_AT, time.monotonic())
        return timeline

    def add(self, name: str, start: float, end: float) -> None:
        self.stages.append(Stage(name, start, end))

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Record the ``with`` block as stage ``name`` (also when it raises)."""
        start = self._clock()
        try:
            yield
        finally:
            self.add(name, start, self._clock())

    def to_json(self) -> list[StageJSON]:
        return [stage.to_json() for stage in self.stages]

    def to_env(self) -> str:
        """The origin and stages as :data:`TIMELINE_ENV`'s value (for a re-exec)."""
        return json.dumps({"origin": self.origin, "stages": self.to_json()})

    @classmethod
    def from_env(cls, value: str | None) -> Timeline | None:
        """What :meth:`to_env` wrote; None when ``value`` is missing or garbled."""
        if not value:
            return None
        try:
            data = json.loads(value)
            timeline = cls(origin=float(data["origin"]))
            for stage in data["stages"]:
                timeline.add(str(stage["name"]), float(stage["start"]), float(stage["end"]))
        except (ValueError, TypeError, KeyError):
            return None
        return timeline


def process_start(pid: int | str = "self") -> float:
    """When process ``pid`` started, in CLOCK_MONOTONIC seconds: field 22 of
    /proc/PID/stat, in clock ticks of CLOCK_BOOTTIME (the same but for time spent
    suspended). An exec keeps it; PID 1's is the kernel's early fork of it, long
    before /init runs. ``time.monotonic()`` when unreadable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        fields = stat[stat.rfind(b")") + 2 :].split()
        return int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.monotonic()


class Milestones:
    """The first time of each milestone of one unit, on the caller's clock.

    :meth:`note` is called with every change of state; each field is set once.
    """

    __slots__ = ("completed", "ready", "started", "waiting")

    def __init__(self) -> None:
        self.waiting: float | None = None
        self.started: float | None = None
        self.ready: float | None = None
        self.completed: float | None = None

    def note(self, state: State, ready: bool, now: float) -> None:
        if self.waiting is None and state is State.WAITING:
            self.waiting = now
        if self.started is None and state in (State.STARTING, State.RUNNING):
            self.started = now
        if self.ready is None and ready:
            self.ready = now
        if self.completed is None and state is State.COMPLETED:
            self.completed = now

    def to_json(
        self, name: str, kind: str, depends_on: dict[str, str], shift: float = 0.0
    ) -> UnitJSON:
        """The wire form, each time plus ``shift`` (the caller's clock to CLOCK_MONOTONIC)."""

        def at(t: float | None) -> float | None:
            return None if t is None else round(t + shift, 6)

        return {
            "name": name,
            "kind": kind,
            "depends_on": depends_on,
            "waiting": at(self.waiting),
            "started": at(self.started),
            "ready": at(self.ready),
            "completed": at(self.completed),
        }
