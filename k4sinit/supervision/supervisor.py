"""All services: start in dependency order, operator commands, stop in reverse.

Every service's life task starts at once; each waits for its own dependencies
(:meth:`ServiceRunner._wait_for_dependencies`), so everything whose
dependencies are met runs concurrently, not one by one. A dependency that
restarts does not restart its dependents: a dependent only checks its
dependencies before each of its own starts.

Stop goes in reverse: each service is stopped as soon as every service that
depends on it is down, so independent branches stop concurrently.

A reload (:meth:`Supervisor.apply`) changes the set of services by a plan of
k4sinit/core/reload.py: removed services stop, the new config takes the
running one's place, changed services are updated in place or restarted (as
``restart`` does: their dependents are left alone), new ones start; the
others are not touched and keep their processes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from functools import partial

import trio

from k4sinit.core.config import Config
from k4sinit.core.graph import DependencyGraph
from k4sinit.core.reload import ReloadPlan
from k4sinit.core.spec import Dependency, ServiceSpec
from k4sinit.core.state import ServiceSnapshot, State
from k4sinit.supervision.escapees import SERVICE_ENV
from k4sinit.supervision.runner import RunnerContext, ServiceRunner


class UnknownService(KeyError):
    """A request named a service that is not in the config."""

    def __str__(self) -> str:
        return f"unknown service {self.args[0]!r}"


@dataclass
class Applied:
    """What :meth:`Supervisor.apply` did, one line per step (``restarted api``), and what
    failed (``start web: ...``); the steps not in either were not reached."""

    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


class Supervisor:
    """Owns one :class:`ServiceRunner` per configured service.

    Lifecycle::

        sup = Supervisor(config, ctx)
        await nursery.start(sup.run)   # all services started (each waits for deps)
        ...                            # start / stop / restart / snapshots
        await sup.stop_all()           # reverse dependency order; run() then returns
    """

    def __init__(
        self,
        config: Config,
        ctx: RunnerContext,
        builtins: Mapping[str, Dependency] | None = None,
    ) -> None:
        """``builtins`` provides the built-in dependencies (``network``) by name."""
        self.config = config
        self.graph = DependencyGraph(config.services)
        self._ctx = ctx
        self._builtins = dict(builtins or {})
        self.runners: dict[str, ServiceRunner] = {
            name: self._runner(config.services[name]) for name in self.graph.order()
        }
        self._link()
        self._nursery: trio.Nursery | None = None
        self._stopping = False
        self._all_stopped = trio.Event()
        self._reloading = trio.Lock()  # one reload at a time; stop_all waits for it

    def _runner(self, spec: ServiceSpec) -> ServiceRunner:
        # Each service's processes carry its name in their environment: without
        # cgroups that is how its escapees are found (escapees.py).
        env = {**self._ctx.base_env, SERVICE_ENV: spec.name}
        return ServiceRunner(spec, dataclasses.replace(self._ctx, base_env=env))

    def _link(self) -> None:
        """Point every runner's dependencies at the runners (and built-ins) that the running
        config's spec names (a reload links before the runners take their new specs)."""
        provided: dict[str, Dependency] = {**self._builtins, **self.runners}
        for name, runner in self.runners.items():
            depends_on = self.config.services[name].depends_on
            runner.dependencies = [(provided[dep], cond) for dep, cond in depends_on]

    def __getitem__(self, name: str) -> ServiceRunner:
        try:
            return self.runners[name]
        except KeyError:
            raise UnknownService(name) from None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start every service and supervise until :meth:`stop_all` has finished."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for runner in self.runners.values():
                runner.start(nursery)
            task_status.started()
            # Stay open for operator starts even when every service has ended.
            await self._all_stopped.wait()
        self._nursery = None

    def start(self, name: str) -> bool:
        """Start a stopped, failed or completed service; False if it is already active."""
        runner = self[name]
        if self._nursery is None or self._stopping:
            raise RuntimeError("the supervisor is shutting down")
        return runner.start(self._nursery, reset=True)

    async def stop(self, name: str) -> None:
        """Stop one service (its dependents are left alone)."""
        await self[name].stop()

    async def restart(self, name: str) -> None:
        """Stop one service and start it again, dependents untouched."""
        await self.stop(name)
        self.start(name)

    async def stop_all(self, reason: str = "node stopping") -> None:
        """Stop everything in reverse dependency order, concurrently where possible.

        A reload being applied ends at its next step; this waits for it, so that
        what stops is one config's services.
        """
        self._stopping = True
        async with self._reloading:
            await self._stop_all(reason)

    async def _stop_all(self, reason: str) -> None:
        down = {name: trio.Event() for name in self.runners}

        async def stop_one(name: str) -> None:
            for dependent in self.graph.dependents(name):
                await down[dependent].wait()
            await self.runners[name].stop(reason)
            down[name].set()

        async with trio.open_nursery() as nursery:
            for name in self.runners:
                nursery.start_soon(stop_one, name)
        self._all_stopped.set()

    async def apply(self, config: Config, plan: ReloadPlan, say: Callable[[str], None]) -> Applied:
        """Apply a reload's ``plan`` from the running config to ``config`` (validated).

        In this order: stop the removed services (reverse dependency order);
        take ``config`` as the running one; update the changed services in place;
        restart the ones that need it (an active or failed one: stop, start; a
        stopped or completed one only takes the new spec, for its next start);
        start the new ones (dependency order). Each affected service records one
        ``reloaded: ...`` event. ``say`` gets each step as it is done. A step that
        fails is recorded and the others go on; a shutdown that comes meanwhile
        ends the apply at its next step. Unchanged services are not touched.
        """
        applied = Applied()
        async with self._reloading:
            if self._nursery is None or self._stopping:
                applied.failed.append("the supervisor is shutting down")
                return applied
            nursery = self._nursery
            specs = config.services

            async def step(what: str, action: Callable[[], object]) -> None:
                if self._stopping:
                    applied.failed.append(f"{what}: the supervisor is shutting down")
                    return
                try:
                    result = action()
                    if isinstance(result, Awaitable):
                        await result
                except Exception as exc:  # one service's failure must not stop the others
                    applied.failed.append(f"{what}: {exc}")
                    say(f"{what} failed: {exc}")
                    return
                applied.done.append(what)
                say(what)

            for name in plan.stop:
                await step(f"stopped {name}", partial(self.runners[name].stop, "reloaded: removed"))
            self._take(config)
            for change in plan.update:
                reason = f"reloaded: {change.describe()}, applied live"
                runner = self.runners[change.name]
                await step(
                    f"updated {change.name}",
                    partial(runner.update_spec, specs[change.name], reason),
                )
            for change in plan.restart:
                await step(
                    f"restarted {change.name}",
                    partial(self._replace, nursery, specs[change.name], change.describe()),
                )
            for name in plan.start:
                runner = self.runners[name]
                await step(
                    f"started {name}",
                    partial(runner.start, nursery, reset=True, reason="reloaded: added; starting"),
                )
        return applied

    def _take(self, config: Config) -> None:
        """``config`` becomes the running one: its graph, a runner for each of its services
        (the ones kept are the same objects), their dependencies linked anew."""
        graph = DependencyGraph(config.services)  # before anything changes: it may raise
        self.runners = {
            name: self.runners.get(name) or self._runner(config.services[name])
            for name in graph.order()
        }
        self.config, self.graph = config, graph
        self._link()

    async def _replace(self, nursery: trio.Nursery, spec: ServiceSpec, what: str) -> None:
        """A restart with a new spec; a stopped or completed service only takes the spec."""
        runner = self.runners[spec.name]
        if not (runner.active or runner.state is State.FAILED):
            runner.replace_spec(spec, f"reloaded: {what}; applies at its next start")
            return
        await runner.stop(f"reloaded: {what}; restarting")
        runner.replace_spec(spec, f"reloaded: {what}; restarting")
        runner.start(nursery, reset=True)

    def snapshot(self) -> list[ServiceSnapshot]:
        """Every service's status, in dependency order."""
        return [runner.snapshot() for runner in self.runners.values()]
