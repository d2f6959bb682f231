"""The state of one service: a small fixed record, its events and log lines.

"Up" and "ready" are different facts (s6): ``state`` says what the process is
doing, ``ready`` what its readiness probe says. The states::

              dependencies met         spawned (startup probe passed)
    waiting ------------------> starting ---------------------> running
       ^                                                           |
       |        delay over          died, policy says restart      |
       +------------------ backoff <-------------------------------+
                                                                   |
    stopped <- stopping <- (stop requested, any state)             |
    completed / failed  <- died, policy says no more restarts <----+
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any


class State(enum.Enum):
    WAITING = "waiting"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"
    BACKOFF = "backoff"
    FAILED = "failed"
    COMPLETED = "completed"

    @property
    def down(self) -> bool:
        """No process of the service exists and none is about to be started."""
        return self in (State.STOPPED, State.FAILED, State.COMPLETED)


@dataclass(frozen=True, slots=True)
class Event:
    """One recorded state change.

    ``time`` is wall-clock, for people; ``clock`` is trio's clock, for ordering
    and for tests on the virtual clock.
    """

    time: float
    clock: float
    state: State
    ready: bool
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "state": self.state.value,
            "ready": self.ready,
            "reason": self.reason,
        }


@dataclass(frozen=True, slots=True)
class LogLine:
    """One captured output line. ``time`` is wall-clock, for people."""

    time: float
    stream: str
    pid: int
    line: str

    def to_json(self) -> dict[str, Any]:
        return {"time": self.time, "stream": self.stream, "pid": self.pid, "line": self.line}
