"""``k4sinit reload`` (and SIGHUP to ``k4sinit run``): the config file read again, applied as a diff.

One reload at a time, in this order; nothing is touched before step 4::

    1. read and validate  the file, with the node's roles expanded as at the
                          start (the kernel's role, hostname and token kept);
                          invalid: the errors as ``check`` prints them, nothing
                          changes (a new dependency cycle is an invalid file)
    2. plan               core/reload.py: start, stop, restart, update in place;
                          a change that needs a reboot refuses the whole reload
    3. dry run, refused   the plan is the answer
    4. node files         the roles' files written again when the node's settings
                          changed (an OSError here: nothing else is done)
    5. apply              Supervisor.apply: each step logged and answered; a step
                          that fails is said, the others go on, supervision goes on

The pure part (what changes and why) is :mod:`k4sinit.core.reload`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import trio

from k4sinit.config import ConfigErrors, load_config
from k4sinit.control.wire import ReloadReply
from k4sinit.core.config import Config
from k4sinit.core.jointoken import JoinToken
from k4sinit.core.nodespec import NodeSettings
from k4sinit.core.reload import ReloadPlan, plan_reload
from k4sinit.node import roles
from k4sinit.services.registry import role_module
from k4sinit.supervision.supervisor import Supervisor

#: Reads the config file again and expands it: blocking; raises ConfigErrors.
Loader = Callable[[], roles.ExpandedNode]


def loader(
    source: str,
    *,
    role: str | None = None,
    hostname: str | None = None,
    token: JoinToken | None = None,
) -> Loader:
    """The :data:`Loader` of the file at ``source``, expanded with the kernel's choices
    as the start was (``role``, ``hostname``, ``token``: k4sinit.role= and the like)."""

    def load() -> roles.ExpandedNode:
        return roles.expand_node(
            load_config(source),
            role_from_kernel=role,
            hostname=hostname,
            token_from_kernel=token,
        )

    return load


def files_changed(old: NodeSettings | None, new: NodeSettings | None) -> dict[str, list[str]]:
    """Role -> the paths of its files that a reload from ``old`` to ``new`` changes
    (a role in both; a new role's files are new anyway)."""
    if old is None or new is None or old == new:
        return {}
    changed = {}
    for role in set(old.roles) & set(new.roles):
        before, after = role_module(role).files(old), role_module(role).files(new)
        paths = sorted(p for p in before.keys() | after.keys() if before.get(p) != after.get(p))
        if paths:
            changed[role] = paths
    return changed


class Reloader:
    """Reloads the daemon's config into its supervisor; see the module docstring."""

    def __init__(
        self,
        supervisor: Supervisor,
        node: NodeSettings | None,
        load: Loader,
        log: Any,
    ) -> None:
        self.supervisor = supervisor
        self.node = node  # the running node settings; the daemon reads them after a reload
        self._load = load
        self._log = log
        self._lock = trio.Lock()

    async def reload(self, *, dry_run: bool = False, why: str = "k4sinit reload") -> ReloadReply:
        """Read, validate, plan and (unless ``dry_run`` or refused) apply; see the module
        docstring. Never raises for a bad file: the reply says what is wrong."""
        async with self._lock:
            running = self.supervisor.config
            reply: ReloadReply = {
                "source": running.source,
                "dry_run": dry_run,
                "errors": [],
                "plan": None,
                "applied": False,
                "done": [],
                "failed": [],
            }
            try:
                expanded = await trio.to_thread.run_sync(self._load)
            except ConfigErrors as exc:
                reply["errors"] = str(exc).splitlines()
                self._log.warning(
                    "reload: invalid config, nothing changed", why=why, errors=len(exc.errors)
                )
                return reply
            new, node = expanded.config, expanded.settings
            plan = plan_reload(
                running,
                new,
                old_node=self.node,
                new_node=node,
                files_changed=files_changed(self.node, node),
            )
            reply["plan"] = plan.to_json()
            if plan.refused:
                self._log.warning(
                    "reload refused: it needs a reboot",
                    why=why,
                    refused=[str(r) for r in plan.refused],
                )
                return reply
            if dry_run:
                return reply
            await self._apply(new, node, plan, reply, why)
            return reply

    async def _apply(
        self,
        new: Config,
        node: NodeSettings | None,
        plan: ReloadPlan,
        reply: ReloadReply,
        why: str,
    ) -> None:
        """Steps 4 and 5 of the module docstring, into ``reply``."""
        self._log.info("reloading", why=why, **_summary(plan))
        if node is not None and node != self.node:
            try:
                await trio.to_thread.run_sync(partial(roles.write_files, node))
            except OSError as exc:
                reply["failed"].append(f"node files: {exc}")
                self._log.error("reload: the node's files could not be written", error=str(exc))
                return
        applied = await self.supervisor.apply(
            new, plan, say=lambda step: self._log.info("reload: " + step)
        )
        self.node = node
        reply["applied"] = True
        reply["done"], reply["failed"] = applied.done, applied.failed
        if applied.failed:
            self._log.error("reloaded with failures", failed=applied.failed)
        else:
            self._log.info("reloaded", steps=len(applied.done))


def _summary(plan: ReloadPlan) -> dict[str, list[str]]:
    return {
        "start": list(plan.start),
        "stop": list(plan.stop),
        "restart": [c.name for c in plan.restart],
        "update": [c.name for c in plan.update],
    }
