"""All services: start in dependency order, operator commands, stop in reverse.

Every service's life task starts at once; each waits for its own dependencies
(:meth:`ServiceRunner._wait_for_dependencies`), so everything whose
dependencies are met runs concurrently, not one by one. A dependency that
restarts does not restart its dependents: a dependent only checks its
dependencies before each of its own starts.

Stop goes in reverse: each service is stopped as soon as every service that
depends on it is down, so independent branches stop concurrently.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import trio

from k4sinit.core.config import Config
from k4sinit.core.graph import DependencyGraph
from k4sinit.core.spec import Dependency
from k4sinit.core.state import ServiceSnapshot
from k4sinit.supervision.escapees import SERVICE_ENV
from k4sinit.supervision.runner import RunnerContext, ServiceRunner


class UnknownService(KeyError):
    """A request named a service that is not in the config."""

    def __str__(self) -> str:
        return f"unknown service {self.args[0]!r}"


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
        # Each service's processes carry its name in their environment: without
        # cgroups that is how its escapees are found (escapees.py).
        self.runners: dict[str, ServiceRunner] = {
            name: ServiceRunner(
                config.services[name],
                dataclasses.replace(ctx, base_env={**ctx.base_env, SERVICE_ENV: name}),
            )
            for name in self.graph.order()
        }
        provided: dict[str, Dependency] = {**(builtins or {}), **self.runners}
        for runner in self.runners.values():
            runner.dependencies = [(provided[dep], cond) for dep, cond in runner.spec.depends_on]
        self._nursery: trio.Nursery | None = None
        self._stopping = False
        self._all_stopped = trio.Event()

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
        """Stop everything in reverse dependency order, concurrently where possible."""
        self._stopping = True
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

    def snapshot(self) -> list[ServiceSnapshot]:
        """Every service's status, in dependency order."""
        return [runner.snapshot() for runner in self.runners.values()]
