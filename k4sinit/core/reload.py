"""A config reload as a plan: what to start, stop, restart, update in place, or refuse.

:func:`plan_reload` compares the running config (expanded: the node's roles
are services) with the new one, both already validated whole, and decides
per service::

    only in the new config             start     (in the new config's dependency order)
    only in the running config         stop      (in reverse dependency order)
    a RESTART field changed            restart   (stop, start; dependents left alone)
      or its role's files changed
    only LIVE fields changed           update    (applied to the running service)
    nothing changed                    unchanged (keeps its process)

and refuses the whole reload when a change needs a reboot: every field of
``system``, ``network`` and ``storage`` is set up at boot (see
:data:`SYSTEM_FIELDS`, :data:`NETWORK_FIELDS`, :data:`STORAGE_FIELDS`), and a
few node settings are what the node's identity was made from
(:data:`NODE_FIELDS`). A refused plan is applied not at all.

Every field of :class:`~k4sinit.core.spec.ServiceSpec` and of the sections is
classified in a table here; tests/test_reload_plan.py fails for a field added
to a spec without a row. Pure: no I/O, no trio.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

from k4sinit.core.config import Config
from k4sinit.core.graph import DependencyGraph
from k4sinit.core.nodespec import NodeSettings, Profile
from k4sinit.core.spec import ServiceSpec


class Apply(enum.Enum):
    """How a changed field takes effect."""

    RESTART = "restart"  # the service is stopped and started again with it
    LIVE = "live"  # applied to the running service; its process stays
    ROLES = "roles"  # a node setting: the roles are expanded again, their changes apply
    REFUSED = "refused"  # needs a reboot: the whole reload is refused


@dataclass(frozen=True, slots=True)
class Rule:
    """A field's row: its name in the config file, how a change applies, and why."""

    key: str
    apply: Apply
    why: str


_PROCESS = "the process is started with it"
#: Every ServiceSpec field. ``name`` is the service's key: a renamed service is
#: one stopped and another started, so it never differs for the same service.
SERVICE_FIELDS: Mapping[str, Rule] = {
    "name": Rule("name", Apply.RESTART, "the service's key: a rename is a stop and a start"),
    "command": Rule("command", Apply.RESTART, _PROCESS),
    "args": Rule("args", Apply.RESTART, _PROCESS),
    "env": Rule("env", Apply.RESTART, _PROCESS),
    "working_dir": Rule("workingDir", Apply.RESTART, _PROCESS),
    "executable": Rule("executable (node.multicall)", Apply.RESTART, _PROCESS),
    "resources": Rule(
        "resources", Apply.RESTART, "the cgroup's limits are set before the process starts"
    ),
    "depends_on": Rule(
        "dependsOn", Apply.LIVE, "dependencies are checked before each start, never after"
    ),
    "readiness_probe": Rule(
        "readinessProbe", Apply.LIVE, "the running process's probes restart with it"
    ),
    "liveness_probe": Rule(
        "livenessProbe", Apply.LIVE, "the running process's probes restart with it"
    ),
    "startup_probe": Rule(
        "startupProbe", Apply.LIVE, "used from the next start once the process has started up"
    ),
    "notification_fd": Rule(
        "notificationFd", Apply.RESTART, "the pipe is given to the process when it starts"
    ),
    "critical": Rule("critical", Apply.LIVE, "the watchdog's health check reads it each time"),
    "restart_policy": Rule("restartPolicy", Apply.LIVE, "decides at the next exit"),
    "backoff": Rule("restartBackoff", Apply.LIVE, "decides at the next exit"),
    "stop_signal": Rule("stopSignal", Apply.LIVE, "used at the next stop"),
    "termination_grace_period": Rule(
        "terminationGracePeriodSeconds", Apply.LIVE, "used at the next stop"
    ),
}

_BOOT = "set up by PID 1 at boot"
SYSTEM_FIELDS: Mapping[str, Rule] = {
    "hostname": Rule("hostname", Apply.REFUSED, "set at boot; the node registered under its name"),
    "modules": Rule(
        "modules", Apply.REFUSED, "loaded at boot; a loaded module is not unloaded live"
    ),
    "sysctls": Rule("sysctls", Apply.REFUSED, "written at boot, before any service started"),
    "fallback": Rule("boot.fallback", Apply.REFUSED, "PID 1's boot loop holds the boot's config"),
    "fallback_delay": Rule(
        "boot.fallbackDelaySeconds", Apply.REFUSED, "PID 1's boot loop holds the boot's config"
    ),
    "switch_root": Rule("boot.switchRoot", Apply.REFUSED, "done once, at boot"),
    "shell": Rule("boot.shell", Apply.REFUSED, "PID 1's boot loop holds the boot's config"),
    "preflight": Rule("boot.preflight", Apply.REFUSED, "preflight runs at boot"),
    "coldplug": Rule("boot.coldplug", Apply.REFUSED, "done once, at boot"),
}

_LINKS = "applied at boot; changing links live could cut off the control plane"
NETWORK_FIELDS: Mapping[str, Rule] = {
    "interfaces": Rule("network.interfaces", Apply.REFUSED, _LINKS),
    "dns": Rule("network.dns", Apply.REFUSED, "written at boot"),
    "wait_for_carrier": Rule("network.waitForCarrier", Apply.REFUSED, _BOOT),
    "hostname": Rule("network.hostname", Apply.REFUSED, _BOOT),
    "source": Rule("network", Apply.REFUSED, "a network section is " + _LINKS),
}

_MOUNTED = "the node's state is mounted at boot, before anything writes to it"
STORAGE_FIELDS: Mapping[str, Rule] = {
    name: Rule(f"storage.{key}", Apply.REFUSED, _MOUNTED)
    for name, key in (
        ("label", "device.label"),
        ("uuid", "device.uuid"),
        ("path", "device.path"),
        ("filesystem", "filesystem"),
        ("format", "format"),
        ("mount_point", "mountPoint"),
        ("wait", "waitSeconds"),
        ("line", "line"),  # where the section starts: never compared
    )
}

_IDENTITY = "the node's PKI and datastore were made from it at boot"
_JOIN = "read once at boot, for the join (a worker's) or the bootstrap token's Secret"
_ROLES = "the roles are expanded again; their services and files follow the service rules"
#: Every NodeSettings field (the resolved ``node:`` section).
NODE_FIELDS: Mapping[str, Rule] = {
    "profile": Rule("node.profile", Apply.ROLES, _ROLES + " (not to or from worker: refused)"),
    "name": Rule(
        "node.name", Apply.REFUSED, "the node registered under its name; its certificates name it"
    ),
    "roles": Rule("node.roles", Apply.ROLES, _ROLES),
    "data_dir": Rule("node.dataDir", Apply.REFUSED, _IDENTITY),
    "pki_dir": Rule("node.pkiDir", Apply.REFUSED, _IDENTITY),
    "kubeconfig_dir": Rule("node.pkiDir", Apply.REFUSED, _IDENTITY),
    "datastore": Rule("node.datastore", Apply.ROLES, _ROLES + " (the new one starts empty)"),
    "service_cidr": Rule(
        "node.serviceCIDR",
        Apply.REFUSED,
        "the apiserver's certificate carries its first address (a reboot makes the PKI anew)",
    ),
    "pod_cidr": Rule("node.podCIDR", Apply.ROLES, _ROLES),
    "pod_network": Rule(
        "node.podNetwork",
        Apply.REFUSED,
        "the running pods were wired by the old network; their routes and CNI config stay",
    ),
    "cluster_domain": Rule(
        "node.clusterDomain", Apply.REFUSED, "the apiserver's certificate names it"
    ),
    "cluster_dns": Rule("node.clusterDNS", Apply.ROLES, _ROLES),
    "advertise_address": Rule("node.advertiseAddress", Apply.ROLES, _ROLES),
    "bin_path": Rule("node.binPath", Apply.ROLES, _ROLES),
    "multicall": Rule("node.multicall", Apply.ROLES, _ROLES),
    "server": Rule("node.server", Apply.REFUSED, _JOIN),
    "token": Rule("node.token", Apply.REFUSED, _JOIN),
    "join_token": Rule("node.joinToken", Apply.REFUSED, _JOIN),
    "bootstrap_kubeconfig": Rule("node.bootstrapKubeconfig", Apply.REFUSED, _JOIN),
    "images_dir": Rule("node.imagesDir", Apply.ROLES, _ROLES),
    "manifests_dir": Rule("node.manifestsDir", Apply.ROLES, _ROLES),
    "pause_image": Rule("node.pauseImage", Apply.ROLES, _ROLES),
    "cni_bin_dir": Rule("node.cniBinDir", Apply.ROLES, _ROLES),
    "cni_conf_dir": Rule("node.cniConfDir", Apply.ROLES, _ROLES),
}

#: Fields that say where something was written, not what: never compared.
_NOT_COMPARED = frozenset({"line"})


@dataclass(frozen=True, slots=True)
class Change:
    """A service to restart or update: the fields that changed, in the config's words."""

    name: str
    fields: tuple[str, ...]

    def describe(self) -> str:
        return f"{', '.join(self.fields)} changed"


@dataclass(frozen=True, slots=True)
class Refusal:
    """A change that needs a reboot: the field (in the config's words) and why."""

    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}; reboot to apply it"


class ChangeJSON(TypedDict):
    name: str
    fields: list[str]


class RefusalJSON(TypedDict):
    field: str
    reason: str


class PlanJSON(TypedDict):
    """A plan on the wire (control/wire.py's ReloadReply holds one)."""

    start: list[str]
    stop: list[str]
    restart: list[ChangeJSON]
    update: list[ChangeJSON]
    unchanged: list[str]
    refused: list[RefusalJSON]


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """What a reload does; see the module docstring. ``refused`` non-empty: nothing."""

    start: tuple[str, ...] = ()
    stop: tuple[str, ...] = ()
    restart: tuple[Change, ...] = ()
    update: tuple[Change, ...] = ()
    unchanged: tuple[str, ...] = ()
    refused: tuple[Refusal, ...] = ()

    @property
    def changes_nothing(self) -> bool:
        return not (self.start or self.stop or self.restart or self.update)

    def to_json(self) -> PlanJSON:
        return {
            "start": list(self.start),
            "stop": list(self.stop),
            "restart": [{"name": c.name, "fields": list(c.fields)} for c in self.restart],
            "update": [{"name": c.name, "fields": list(c.fields)} for c in self.update],
            "unchanged": list(self.unchanged),
            "refused": [{"field": r.field, "reason": r.reason} for r in self.refused],
        }


def changed_fields(old: Any, new: Any, rules: Mapping[str, Rule]) -> list[tuple[str, Rule]]:
    """(field, rule) of every field of two dataclasses of one type that differs.

    KeyError for a field without a rule: a spec field nobody classified is a bug.
    """
    out = []
    for f in dataclasses.fields(old):
        if f.name in _NOT_COMPARED:
            continue
        if getattr(old, f.name) != getattr(new, f.name):
            out.append((f.name, rules[f.name]))
    return out


def section_refusals(old: Config, new: Config) -> list[Refusal]:
    """The changes to ``system``, ``network``, ``storage``, ``metrics`` and ``watchdog``:
    every one needs a reboot (or a restart of ``k4sinit run``)."""
    refused = []
    pairs: list[tuple[Any, Any, Mapping[str, Rule]]] = [
        (old.system, new.system, SYSTEM_FIELDS),
        (old.network, new.network, NETWORK_FIELDS),
    ]
    if old.storage is None or new.storage is None:
        if old.storage != new.storage:
            refused.append(Refusal("storage", _MOUNTED))
    else:
        pairs.append((old.storage, new.storage, STORAGE_FIELDS))
    if old.metrics != new.metrics:
        refused.append(Refusal("metrics", "its endpoint is opened when the daemon starts"))
    if old.watchdog != new.watchdog:
        refused.append(Refusal("watchdog", "the device is opened and armed at boot"))
    for before, after, rules in pairs:
        for _, rule in changed_fields(before, after, rules):
            if rule.apply is Apply.REFUSED:
                refused.append(Refusal(rule.key, rule.why))
    return refused


def node_refusals(old: NodeSettings | None, new: NodeSettings | None) -> list[Refusal]:
    """The node settings' changes that need a reboot (the others re-expand the roles)."""
    if old is None and new is None:
        return []
    if old is None or new is None:
        what = "added" if old is None else "removed"
        return [Refusal("node", f"a node section {what}: its PKI and roles are set up at boot")]
    keys = {
        rule.key: rule.why
        for _, rule in changed_fields(old, new, NODE_FIELDS)
        if rule.apply is Apply.REFUSED
    }  # pkiDir makes two fields: said once
    refused = [Refusal(key, why) for key, why in keys.items()]
    if (old.profile is Profile.WORKER) != (new.profile is Profile.WORKER):
        reason = (
            f"from {old.profile.value} to {new.profile.value}: a worker joins a cluster, "
            "the others make one, at boot"
        )
        refused.append(Refusal("node.profile", reason))
    return refused


def plan_reload(
    old: Config,
    new: Config,
    *,
    old_node: NodeSettings | None = None,
    new_node: NodeSettings | None = None,
    files_changed: Mapping[str, Sequence[str]] | None = None,
) -> ReloadPlan:
    """The plan from the running ``old`` to ``new`` (both expanded and valid).

    ``old_node``/``new_node`` are the node settings each was expanded with;
    ``files_changed`` maps a role to the paths of its files whose contents
    differ (a role whose files changed restarts). Never raises for a valid pair.
    """
    refused = [*section_refusals(old, new), *node_refusals(old_node, new_node)]
    restart: list[Change] = []
    update: list[Change] = []
    unchanged: list[str] = []
    files = files_changed or {}
    for name, spec in new.services.items():
        before = old.services.get(name)
        if before is None:
            continue
        changes = changed_fields(before, spec, SERVICE_FIELDS)
        keys = [rule.key for _, rule in changes]
        paths = files.get(name, ())
        if paths:
            keys.append("files " + ", ".join(paths))
        # NOTIFY_SOCKET is in the environment the process started with.
        notify_switched = before.uses_notify_socket != spec.uses_notify_socket
        if notify_switched:
            keys.append("a probe to or from notify")
        if paths or notify_switched or any(rule.apply is Apply.RESTART for _, rule in changes):
            restart.append(Change(name, tuple(keys)))
        elif changes:
            update.append(Change(name, tuple(keys)))
        else:
            unchanged.append(name)
    return ReloadPlan(
        start=tuple(n for n in _order(new.services) if n not in old.services),
        stop=tuple(n for n in reversed(_order(old.services)) if n not in new.services),
        restart=_in_order(restart, new.services),
        update=_in_order(update, new.services),
        unchanged=tuple(unchanged),
        refused=tuple(refused),
    )


def _order(services: Mapping[str, ServiceSpec]) -> list[str]:
    return DependencyGraph(services).order()


def _in_order(changes: list[Change], services: Mapping[str, ServiceSpec]) -> tuple[Change, ...]:
    """``changes`` in the dependency order of ``services``."""
    rank = {name: i for i, name in enumerate(_order(services))}
    return tuple(sorted(changes, key=lambda c: rank[c.name]))
