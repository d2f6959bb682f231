"""The state of one service: a small fixed record, its events, exits and log lines.

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
import os
import signal
from dataclasses import dataclass
from typing import Any, TypedDict


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
class ExitStatus:
    """How a process ended: exactly one of ``code`` and ``signal`` is set."""

    code: int | None = None
    signal: int | None = None

    @classmethod
    def from_wait_status(cls, status: int) -> ExitStatus:
        if os.WIFSIGNALED(status):
            return cls(signal=os.WTERMSIG(status))
        return cls(code=os.WEXITSTATUS(status))

    @property
    def success(self) -> bool:
        return self.code == 0

    @property
    def signal_name(self) -> str | None:
        if self.signal is None:
            return None
        try:
            return signal.Signals(self.signal).name
        except ValueError:
            return f"SIG{self.signal}"

    def describe(self) -> str:
        """``"exit code 3"`` or ``"killed by SIGKILL"``."""
        if self.signal is not None:
            return f"killed by {self.signal_name}"
        return f"exit code {self.code}"

    def to_json(self) -> ExitJSON:
        """``{"code": 3}`` or ``{"signal": "SIGKILL"}``: the wire form."""
        if self.signal is not None:
            return {"signal": self.signal_name}
        return {"code": self.code}


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

    def to_json(self) -> EventJSON:
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

    def to_json(self) -> LogLineJSON:
        return {"time": self.time, "stream": self.stream, "pid": self.pid, "line": self.line}


# --- the wire forms (control.py re-exports them; the CLI reads them) ---------------


class ExitJSON(TypedDict, total=False):
    """:class:`ExitStatus` on the wire: ``code`` or ``signal`` (a name), never both."""

    code: int | None
    signal: str | None


class EventJSON(TypedDict):
    time: float
    state: str
    ready: bool
    reason: str


class LogLineJSON(TypedDict):
    time: float
    stream: str
    pid: int
    line: str


class ServiceSnapshot(TypedDict):
    """One service in ``status``: ``state`` is a :class:`State` value or ``paused``."""

    name: str
    state: str
    ready: bool
    pid: int | None
    restarts: int
    last_exit: ExitJSON | None
    since: float
    reason: str
    next_restart_in: float | None
    depends_on: dict[str, str]  # name -> Condition value
    probes_not_counted: int
    dropped_lines: int
    notify_status: str | None  # the service's own STATUS= line (sd_notify), if it sent one


class ServiceDetail(ServiceSnapshot):
    """``status NAME``: the snapshot, a summary of the spec, recent events and output."""

    spec: dict[str, Any]
    probe_results: dict[str, dict[str, Any]]
    cgroup: dict[str, Any] | None
    notify: dict[str, Any] | None  # what it said over NOTIFY_SOCKET (None: not a notify service)
    rss_bytes: int | None
    events: list[EventJSON]
    logs: list[LogLineJSON]
