"""The service dependency graph: the one dependency check, start order, neighbours.

An edge points from a service to a service it depends on (``dependsOn``).
Everything here is pure and deterministic: wherever several answers are
possible, the one following the config file's order is given.

:func:`check_dependencies` holds every dependency rule, once: the config
loader runs it on the file's services (with the profile's roles as
stand-ins), :func:`k4sinit.node.roles` on the services after expansion and
:class:`DependencyGraph` before it accepts services, so the same mistake gets
the same words wherever it is found. It gives :class:`DependencyProblem` s
naming the service and the dependency; each caller puts them where they were
written (file, line, field).
"""

from __future__ import annotations

import difflib
import heapq
from collections import deque
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

from k4sinit.core.nodespec import ALL_ROLES
from k4sinit.core.spec import BUILTIN_DEPENDENCIES, Condition, RestartPolicy, ServiceSpec


@dataclass(frozen=True, slots=True)
class DependencyProblem:
    """One broken dependency rule.

    ``service`` is the service whose ``dependsOn`` holds ``dependency``; for
    a cycle, ``dependency`` is None, ``cycle`` the closed path (``a, b, a``)
    and ``service`` its first member (in config order). ``hint`` is the
    likely fix, if there is one.
    """

    service: str
    dependency: str | None
    message: str
    hint: str | None = None
    cycle: tuple[str, ...] = ()


def check_dependencies(
    services: Mapping[str, ServiceSpec], roles: Collection[str] | None = None
) -> list[DependencyProblem]:
    """Every dependency rule, checked once over ``services`` (in config order).

    ``roles`` are the services a profile added (their ``dependsOn`` and
    restartPolicy are not the user's to change, so a hint does not suggest
    it), None when there is no ``node`` section. The rules:

    * a dependency names a service of ``services`` or a built-in (``network``,
      ``pki``); else "unknown service", with the closest name as a hint (or,
      for a Kubernetes role, that this profile does not run it);
    * condition Completed only on a service that can complete: not on a
      built-in, not on one with restartPolicy Always;
    * no cycles (a service depending on itself is one).

    Problems come per service in config order, its dependencies in order,
    then the cycles.
    """
    hints = None  # made at the first unknown name: a valid config needs none
    problems = []
    for name, spec in services.items():
        for dep, condition in spec.depends_on:
            target = services.get(dep)
            if dep in BUILTIN_DEPENDENCIES:
                if condition is Condition.COMPLETED:
                    message = f"condition Completed on the built-in {dep!r}, which never completes"
                    problems.append(DependencyProblem(name, dep, message, "use Ready"))
            elif target is None:
                hint: str | None = "it is not a role of this profile (or it is disabled)"
                if roles is None or dep not in ALL_ROLES:
                    hints = hints or NameHints([*sorted(services), *sorted(BUILTIN_DEPENDENCIES)])
                    hint = hints.hint(dep, exclude=name)
                message = f"unknown service {dep!r} in dependsOn"
                problems.append(DependencyProblem(name, dep, message, hint))
            elif condition is Condition.COMPLETED and target.restart_policy is RestartPolicy.ALWAYS:
                role = roles is not None and dep in roles
                what = f"the role {dep!r}" if role else repr(dep)
                message = (
                    f"condition Completed on {what}, which has restartPolicy Always"
                    " and so never completes"
                )
                # The fixes open to the user: a role's dependsOn and restartPolicy are not.
                fixes = [] if roles is not None and name in roles else ["use Ready"]
                if not role:
                    fixes.append("set its restartPolicy to OnFailure or Never")
                problems.append(DependencyProblem(name, dep, message, ", or ".join(fixes) or None))
    edges = {name: [dep for dep, _ in spec.depends_on] for name, spec in services.items()}
    for cycle in find_cycles_in(edges):
        message = "dependency cycle: " + " -> ".join(cycle)
        problems.append(DependencyProblem(cycle[0], None, message, cycle=tuple(cycle)))
    return problems


class DependencyError(ValueError):
    """Services whose dependencies break a rule of :func:`check_dependencies`."""

    def __init__(self, problems: list[DependencyProblem]) -> None:
        self.problems = problems
        super().__init__(
            "; ".join(
                f"service {p.service!r}: {p.message}" + ("" if p.hint is None else f", {p.hint}")
                for p in problems
            )
        )


class NameHints:
    """'did you mean ...?' for unknown names among many, in bounded work per name.

    Up to ``full`` names, every one is compared (difflib). Among more, only
    names within one deleted character of the unknown one are (``contaner``
    and ``containre`` reach ``container``: a typo, a missing or extra letter,
    a swap), at most ``full`` of them: an index of each name with one
    character deleted finds them in ``len(word)`` lookups, so a thousand
    unknown names among a thousand services cost thousands of comparisons,
    not a million. A name differing only in case is suggested first.
    """

    def __init__(self, names: Sequence[str], full: int = 32) -> None:
        self._names = list(names)
        self._full = full
        self._lower = {name.lower(): name for name in reversed(self._names)}
        self._index: dict[str, list[str]] = {}
        if len(self._names) > full:
            for name in self._names:
                for variant in dict.fromkeys(_one_deleted(name)):
                    self._index.setdefault(variant, []).append(name)

    def hint(self, word: str, exclude: str | None = None) -> str | None:
        """The hint for ``word``, never suggesting ``exclude``."""
        same_case = self._lower.get(word.lower())
        if same_case is not None and same_case != exclude:
            return f"did you mean {same_case!r}?"
        if len(self._names) <= self._full:
            candidates = self._names
        else:
            near: dict[str, None] = {}
            for variant in dict.fromkeys(_one_deleted(word)):
                near.update(dict.fromkeys(self._index.get(variant, ())))
            candidates = list(near)[: self._full]
        candidates = [name for name in candidates if name != exclude]
        close = difflib.get_close_matches(word, candidates, 1, 0.6)
        return f"did you mean {close[0]!r}?" if close else None


def _one_deleted(word: str) -> list[str]:
    """``word`` and every string made by deleting one of its characters."""
    return [word, *(word[:i] + word[i + 1 :] for i in range(len(word)))]


def find_cycles_in(edges: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Dependency cycles in ``edges``, a mapping of name -> names it depends on.

    Gives one cycle per strongly connected component of two or more names and
    one per self-loop, each as a closed path ``[a, b, c, a]`` (``a`` depends on
    ``b``). A cycle starts at its member that comes first in ``edges`` and cycles
    are listed in that order. Names that are not keys of ``edges`` are ignored:
    reporting unknown names is the caller's job.
    """
    deps = {name: [d for d in dict.fromkeys(ds) if d in edges] for name, ds in edges.items()}
    position = {name: i for i, name in enumerate(deps)}
    cycles = []
    for component in _strongly_connected(deps):
        if len(component) > 1:
            start = min(component, key=position.__getitem__)
            cycles.append(_cycle_through(start, component, deps))
    cycles += [[name, name] for name, ds in deps.items() if name in ds]
    cycles.sort(key=lambda cycle: position[cycle[0]])
    return cycles


def _strongly_connected(deps: Mapping[str, list[str]]) -> list[set[str]]:
    """Tarjan's algorithm, iterative: a chain of any length needs no recursion.

    Each frame of the explicit stack is a name and the position of the next
    of its dependencies to look at.
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    for root in deps:
        if root in index:
            continue
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        frames = [(root, 0)]
        while frames:
            v, i = frames[-1]
            if i < len(deps[v]):
                frames[-1] = (v, i + 1)
                w = deps[v][i]
                if w not in index:  # descend into w; low[v] is updated when w is done
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    frames.append((w, 0))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            frames.pop()
            if frames:
                parent = frames[-1][0]
                low[parent] = min(low[parent], low[v])
            if low[v] == index[v]:
                component = set()
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.add(w)
                    if w == v:
                        break
                components.append(component)
    return components


def _cycle_through(start: str, component: set[str], deps: Mapping[str, list[str]]) -> list[str]:
    """A shortest closed path ``start -> ... -> start`` of two or more names in ``component``."""
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for w in deps[v]:
            if w == start and v != start:
                path = [v]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [*reversed(path), start]
            if w in component and w != start and w not in came_from:
                came_from[w] = v
                queue.append(w)
    raise AssertionError(f"no cycle through {start!r} in its strongly connected component")


class DependencyGraph:
    """Who depends on whom among one config's services.

    Built from services in config order, which must pass
    :func:`check_dependencies` (:class:`DependencyError` otherwise; the config
    loader and the expansion report the same problems, with their lines,
    before a graph is built). Methods taking a name raise ``KeyError`` for an
    unknown one.
    """

    def __init__(self, services: Mapping[str, ServiceSpec]) -> None:
        problems = check_dependencies(services)
        if problems:
            raise DependencyError(problems)
        self._deps = {
            name: tuple(
                dict.fromkeys(dep for dep, _ in spec.depends_on if dep not in BUILTIN_DEPENDENCIES)
            )
            for name, spec in services.items()
        }
        dependents: dict[str, list[str]] = {name: [] for name in self._deps}
        for name, deps in self._deps.items():
            for dep in deps:
                dependents[dep].append(name)
        self._dependents = {name: tuple(names) for name, names in dependents.items()}

    @property
    def names(self) -> tuple[str, ...]:
        """All service names, in config order."""
        return tuple(self._deps)

    def dependencies(self, name: str) -> tuple[str, ...]:
        """The services ``name`` depends on directly, in its ``dependsOn`` order."""
        return self._deps[name]

    def dependents(self, name: str) -> tuple[str, ...]:
        """The services that depend directly on ``name``, in config order."""
        return self._dependents[name]

    def order(self) -> list[str]:
        """All names, each after everything it depends on (a start order).

        Among services whose dependencies are all placed, the one first in the
        config comes first. (The graph has no cycle: the constructor refused it.)
        """
        position = {name: i for i, name in enumerate(self._deps)}
        waiting = {name: len(deps) for name, deps in self._deps.items()}
        ready = [position[name] for name, count in waiting.items() if count == 0]
        heapq.heapify(ready)
        names = list(self._deps)
        order: list[str] = []
        while ready:
            name = names[heapq.heappop(ready)]
            order.append(name)
            for dependent in self._dependents[name]:
                waiting[dependent] -= 1
                if waiting[dependent] == 0:
                    heapq.heappush(ready, position[dependent])
        assert len(order) == len(names), "a cycle passed check_dependencies"
        return order
