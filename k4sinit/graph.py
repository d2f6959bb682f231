"""The service dependency graph: start order, direct neighbours and cycles.

An edge points from a service to a service it depends on (``dependsOn``).
Everything here is pure and deterministic: wherever several answers are
possible, the one following the config file's order is given.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterable, Mapping

from k4sinit.spec import BUILTIN_DEPENDENCIES, ServiceSpec


class CycleError(ValueError):
    """The graph has dependency cycles, so it has no start order."""

    def __init__(self, cycles: list[list[str]]) -> None:
        self.cycles = cycles
        super().__init__("dependency cycle: " + "; ".join(" -> ".join(c) for c in cycles))


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

    Built from services in config order; every ``dependsOn`` name must be one
    of them (``ValueError`` otherwise: the config loader reports unknown names
    before a graph is built). Methods taking a name raise ``KeyError`` for an
    unknown one.
    """

    def __init__(self, services: Mapping[str, ServiceSpec]) -> None:
        self._deps = {
            name: tuple(
                dict.fromkeys(dep for dep, _ in spec.depends_on if dep not in BUILTIN_DEPENDENCIES)
            )
            for name, spec in services.items()
        }
        dependents: dict[str, list[str]] = {name: [] for name in self._deps}
        for name, deps in self._deps.items():
            for dep in deps:
                if dep not in dependents:
                    raise ValueError(f"service {name!r} depends on unknown service {dep!r}")
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

    def find_cycles(self) -> list[list[str]]:
        """Dependency cycles, as :func:`find_cycles_in` gives them; empty if none."""
        return find_cycles_in(self._deps)

    def order(self) -> list[str]:
        """All names, each after everything it depends on (a start order).

        Among services whose dependencies are all placed, the one first in the
        config comes first. Raises :class:`CycleError` if there is a cycle.
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
        if len(order) < len(names):
            raise CycleError(self.find_cycles())
        return order

    def reverse_order(self) -> list[str]:
        """The exact reverse of :meth:`order` (a stop order: dependents first)."""
        return self.order()[::-1]
