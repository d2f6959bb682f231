"""Boot analysis (``k4sinit analyze``): blame and the critical chain, from a timeline.

Input is the ``timeline`` reply (:class:`~k4sinit.core.timeline.TimelineJSON`);
:func:`units` reads it into :class:`Unit` s whose times count from the boot's
origin. Then:

- :func:`blame`: every unit by the time from its start to its readiness
  (a unit that completes, a one-shot: to its completion), longest first; those
  never ready last.
- :func:`critical_chain`: from a unit (default: the one ready last) down its
  dependencies, at each step the dependency satisfied last (the one that
  decided when the unit could start), with the wait k4sinit added on that
  edge: from the dependency being satisfied to the dependent's start.

The ``format_*`` functions render them for people. Pure: no trio, no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from k4sinit.core.spec import Condition
from k4sinit.core.timeline import TimelineJSON, UnitJSON


@dataclass(frozen=True, slots=True)
class Unit:
    """A service or built-in; times in seconds since the origin, None: not (yet) happened."""

    name: str
    kind: str  # "service" or "builtin"
    depends_on: Mapping[str, str]  # name -> Condition value
    waiting: float | None
    started: float | None
    ready: float | None
    completed: float | None

    @property
    def done(self) -> float | None:
        """When it got where it was going: completed (a one-shot), else ready."""
        return self.completed if self.completed is not None else self.ready

    @property
    def took(self) -> float | None:
        """From its start to :attr:`done`; None if either has not happened."""
        if self.started is None or self.done is None:
            return None
        return max(0.0, self.done - self.started)

    def satisfied_at(self, condition: str) -> float | None:
        """When ``condition`` (a Condition value) first held for a dependent."""
        if condition == Condition.STARTED.value:
            return self.started
        if condition == Condition.COMPLETED.value:
            return self.completed
        return self.ready

    def describe_state(self) -> str:
        """``not started`` or ``not ready`` for a unit without :attr:`done`."""
        return "not started" if self.started is None else "not ready"


def units(data: TimelineJSON) -> dict[str, Unit]:
    """The reply's units by name, in its order, with times since its origin."""
    origin = data["origin"]
    return {u["name"]: _unit(u, origin) for u in data["units"]}


def _unit(data: UnitJSON, origin: float) -> Unit:
    def at(t: float | None) -> float | None:
        return None if t is None else t - origin

    return Unit(
        name=data["name"],
        kind=data["kind"],
        depends_on=dict(data["depends_on"]),
        waiting=at(data["waiting"]),
        started=at(data["started"]),
        ready=at(data["ready"]),
        completed=at(data["completed"]),
    )


def blame(found: Mapping[str, Unit]) -> list[Unit]:
    """Every unit, longest :attr:`Unit.took` first; those without one last, by name."""
    timed = sorted((u for u in found.values() if u.took is not None), key=_blame_key)
    untimed = sorted((u for u in found.values() if u.took is None), key=lambda u: u.name)
    return timed + untimed


def _blame_key(unit: Unit) -> tuple[float, str]:
    return -(unit.took or 0.0), unit.name


@dataclass(frozen=True, slots=True)
class Link:
    """One unit of a critical chain and the edge to the unit above it.

    ``condition`` is what the unit above waited for (None for the chain's first
    unit); ``wait`` is k4sinit's own share on that edge: from the condition
    holding to the unit above being started (None if either never happened).
    """

    unit: Unit
    condition: str | None = None
    wait: float | None = None


def last_done(found: Mapping[str, Unit]) -> Unit | None:
    """The service that got ready (or completed) last; None if none did."""
    done = [u for u in found.values() if u.kind == "service" and u.done is not None]
    return max(done, key=lambda u: (u.done or 0.0, u.name), default=None)


def critical_chain(found: Mapping[str, Unit], target: str | None = None) -> list[Link]:
    """The chain from ``target`` (None: :func:`last_done`) down to a unit without
    dependencies, at each step the dependency satisfied last (one never satisfied
    counts as latest: it is what holds the unit up). Empty when there is no target;
    KeyError for an unknown ``target``.
    """
    unit = found[target] if target is not None else last_done(found)
    if unit is None:
        return []
    chain = [Link(unit)]
    seen = {unit.name}
    while True:
        deciding = _deciding_dependency(unit, found, seen)
        if deciding is None:
            return chain
        dependency, condition = deciding
        satisfied = dependency.satisfied_at(condition)
        wait = None
        if satisfied is not None and unit.started is not None:
            wait = max(0.0, unit.started - satisfied)
        chain.append(Link(dependency, condition, wait))
        seen.add(dependency.name)
        unit = dependency


def _deciding_dependency(
    unit: Unit, found: Mapping[str, Unit], seen: set[str]
) -> tuple[Unit, str] | None:
    """The dependency of ``unit`` satisfied last (never: latest of all), or None."""
    best: tuple[float, str, Unit, str] | None = None
    for name, condition in unit.depends_on.items():
        dependency = found.get(name)
        if dependency is None or name in seen:
            continue  # a built-in the reply does not show; or a cycle (never in a valid config)
        satisfied = dependency.satisfied_at(condition)
        key = (float("inf") if satisfied is None else satisfied, name)
        if best is None or key > best[:2]:
            best = (*key, dependency, condition)
    return None if best is None else (best[2], best[3])


# --- for people ---------------------------------------------------------------


def since(origin: float) -> str:
    """What the times count from, for a heading."""
    return "the kernel's start" if origin == 0.0 else "k4sinit's start"


def format_blame(found: Mapping[str, Unit]) -> str:
    """One line per unit: the time it took, its name (``(built-in)`` for network, pki)."""
    lines = []
    for unit in blame(found):
        took = f"{unit.took:10.3f}s" if unit.took is not None else f"{unit.describe_state():>11}"
        lines.append(f"{took}  {unit.name}{_kind(unit)}")
    return "\n".join(lines)


def format_chain(chain: list[Link], origin: float) -> str:
    """The chain as a tree, the unit ready last on top (as systemd-analyze draws it)."""
    if not chain:
        return "no service is ready yet"
    lines = [
        f'times since {since(origin)}: "@" when the unit was ready (or completed), "+" how '
        "long it took from its start;",
        "in brackets k4sinit's own wait: from a dependency being ready to the start of the "
        "unit above it.",
        "",
    ]
    for depth, link in enumerate(chain):
        unit = link.unit
        when = (
            f"@{unit.done:.3f}s +{unit.took:.3f}s"
            if unit.done is not None and unit.took is not None
            else f"({unit.describe_state()})"
        )
        line = f"{unit.name}{_kind(unit)} {when}"
        if depth:
            above = chain[depth - 1].unit.name
            edge = (
                f"{above} started {link.wait:.3f}s after {unit.name} was "
                f"{(link.condition or '').lower()}"
                if link.wait is not None
                else f"{above} not started yet"
            )
            line = f"{'   ' * (depth - 1)}└─ {line}  ({edge})"
        lines.append(line)
    return "\n".join(lines)


def _kind(unit: Unit) -> str:
    return " (built-in)" if unit.kind == "builtin" else ""
