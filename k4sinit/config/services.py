"""The ``services`` section: each service's command, environment, probes,
restarts, stop signal and resources, and the dependencies between them.

A service entry is read on its own (:func:`_read_service`); the names and the
dependencies of all of them are then checked together through
:func:`k4sinit.core.graph.check_dependencies`, with a ``node`` section's role
services standing in for themselves.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from typing import Any, TypeGuard

from k4sinit.config.document import Document, KeyPath, field_of
from k4sinit.config.probes import read_probe
from k4sinit.config.reader import Reader, did_you_mean, given, is_bool, is_int, kind_of
from k4sinit.config.resources import read_resources
from k4sinit.core.graph import check_dependencies
from k4sinit.core.names import is_dns_label
from k4sinit.core.nodespec import ONESHOT_ROLES, NodeSpec, profile_roles
from k4sinit.core.spec import (
    PREFLIGHT,
    STATUS_NAMES,
    Backoff,
    Condition,
    RestartPolicy,
    ServiceSpec,
)

__all__ = ["read_env", "read_services"]

# A service so named would shadow a built-in condition or what `k4sinit status NAME` shows.
_RESERVED_NAMES = STATUS_NAMES
_MAX_MULTIPLIER = 10.0


@dataclass(frozen=True, slots=True)
class _Dependency:
    name: str
    condition: Condition | None  # None: invalid, already reported
    path: KeyPath


@dataclass(frozen=True, slots=True)
class _Service:
    """What one service entry gave: its spec (None if invalid) and what cross-checks need."""

    spec: ServiceSpec | None
    restart_policy: RestartPolicy | None
    dependencies: tuple[_Dependency, ...]


def read_services(top: Reader, node: NodeSpec | None) -> dict[str, ServiceSpec]:
    """``services``: required, unless a ``node`` section brings role services.

    With a node section the profile's roles are services too: a service of the
    file may depend on them but not take their names (a disabled role's name
    is free: the file's service of that name takes its place).
    """
    section = top.mapping("services", required=node is None)
    if section is None:
        return {}
    roles = frozenset() if node is None else _active_roles(node)
    services: dict[str, _Service] = {}
    for name in section.data:
        _check_service_name(section, name)
        if node is not None and name in roles:
            message = f"{name!r} is a role of profile {node.profile.value}"
            hint = f"override it under node.roles.{name}, or disable the role there to replace it"
            section.error(message, hint, key=name)
        entry = section.mapping(name)
        if entry is not None:
            services[name] = _read_service(entry, name)
    top.doc.where = _check_dependencies(
        top.doc, services, list(section.data), None if node is None else roles
    )
    return {name: s.spec for name, s in services.items() if s.spec is not None}


def _active_roles(node: NodeSpec) -> frozenset[str]:
    """The role services ``node`` runs: its profile's roles minus the disabled ones."""
    roles = profile_roles(node.profile, node.datastore, node.pod_network)
    return frozenset(role for role in roles if not node.override(role).disabled)


def _check_service_name(section: Reader, name: str) -> None:
    if name in _RESERVED_NAMES:
        hint = (
            "choose another name, it is kept for the boot's checks (k4sinit status preflight)"
            if name == PREFLIGHT
            else "choose another name, it is kept for a built-in condition"
        )
        section.error(f"the name {name!r} is reserved", hint, key=name)
    elif not is_dns_label(name):
        hint = (
            "use at most 63 lowercase letters, digits and '-', starting and ending"
            " with a letter or digit (it names a cgroup and is typed on the command line)"
        )
        section.error("invalid service name", hint, key=name)


def _read_service(r: Reader, name: str) -> _Service:
    command = r.strings("command", required=True, non_empty=True)
    args = r.strings("args")
    env = read_env(r)
    working_dir = r.absolute_path("workingDir")
    dependencies = _read_dependencies(r)
    readiness = read_probe(r, "readinessProbe")
    liveness = read_probe(r, "livenessProbe", single_success=True)
    startup = read_probe(r, "startupProbe", single_success=True)
    policy = r.choice("restartPolicy", [p.value for p in RestartPolicy])
    restart_policy = None if policy is None else RestartPolicy(policy)
    backoff = _read_backoff(r)
    stop_signal = _read_signal(r)
    grace = r.number("terminationGracePeriodSeconds")
    resources = read_resources(r)
    critical = r.take("critical", "a boolean", is_bool, hint="true or false")
    notification_fd = r.integer(
        "notificationFd", 3, maximum=9, hint="s6's notification-fd: a descriptor from 3 to 9"
    )
    if notification_fd is not None and "readinessProbe" in r.data:
        hint = "remove one: a newline on notificationFd makes the service ready"
        message = "notificationFd and readinessProbe both say when it is ready"
        r.error(message, hint, key="notificationFd")
    r.finish()
    spec = None
    if command is not None:
        depends_on = tuple((d.name, d.condition) for d in dependencies if d.condition)
        fields = given(
            args=args,
            env=env,
            working_dir=working_dir,
            depends_on=depends_on,
            readiness_probe=readiness,
            liveness_probe=liveness,
            startup_probe=startup,
            restart_policy=restart_policy,
            backoff=backoff,
            stop_signal=stop_signal,
            termination_grace_period=grace,
            resources=resources,
            critical=critical,
            notification_fd=notification_fd,
        )
        spec = ServiceSpec(name=name, command=command, **fields)
    if "restartPolicy" not in r.data:
        restart_policy = RestartPolicy.ALWAYS  # the spec's default
    return _Service(spec, restart_policy, tuple(dependencies))


def read_env(r: Reader) -> tuple[tuple[str, str], ...] | None:
    """``env``: ``NAME: value`` pairs, the valid ones in file order (a service's or a role's)."""
    env = r.mapping("env", hint="write it as NAME: value pairs")
    if env is None:
        return None
    pairs = []
    for name in env.data:
        if not name or "=" in name or "\0" in name:
            env.error(
                "invalid environment variable name", "it must be non-empty without '='", key=name
            )
        value = env.string(name, hint="quote it to make it a string")
        if value is not None:
            pairs.append((name, value))
    return tuple(pairs)


def _read_dependencies(r: Reader) -> list[_Dependency]:
    """``dependsOn``: a mapping of service -> condition, or a list of services (Ready)."""
    expected = "a mapping of service: condition or a list of services"
    value = r.take("dependsOn", expected, _is_deps)
    path = (*r.path, "dependsOn")
    if isinstance(value, list):
        deps: dict[str, _Dependency] = {}  # by name: a long list is checked in linear time
        for i, name in enumerate(value):
            if not isinstance(name, str):
                r.doc.error((*path, i), f"expected a service name, got {kind_of(name)}")
            elif name in deps:
                r.doc.error((*path, i), f"{name!r} is listed twice")
            else:
                deps[name] = _Dependency(name, Condition.READY, (*path, i))
        return list(deps.values())
    if isinstance(value, dict):
        conditions = Reader(r.doc, path, value)
        listed = []
        for name in value:
            condition = conditions.choice(name, [c.value for c in Condition])
            known = None if condition is None else Condition(condition)
            listed.append(_Dependency(name, known, (*path, name)))
        return listed
    return []


def _is_deps(value: object) -> TypeGuard[dict[str, Any] | list[Any]]:
    return isinstance(value, dict | list)


def _check_dependencies(
    doc: Document,
    services: dict[str, _Service],
    names: list[str],
    roles: frozenset[str] | None = None,
) -> dict[tuple[str, str | None], tuple[int | None, str | None]]:
    """The file's dependencies through :func:`k4sinit.core.graph.check_dependencies`.

    ``names`` are all the file's service names, in order, the invalid ones
    too (a dependency on one is not unknown). ``roles`` are the node
    section's role services (None without one): they
    stand in with their restartPolicy (Always, but OnFailure for the oneshot
    ``images``) and no dependencies of their own, which :func:`k4sinit.node.roles`
    checks. Each problem is reported where the dependency (or, for a cycle,
    the service) is written. Returns where that is for every service and
    dependency (line, field), for the errors the expansion finds.
    """
    paths: dict[tuple[str, str | None], KeyPath] = {}
    stand_ins = {}
    for name in names:
        paths[(name, None)] = ("services", name)
        service = services.get(name, _Service(None, None, ()))
        for dep in service.dependencies:
            paths[(name, dep.name)] = dep.path
        # An invalid condition or restartPolicy is reported already: stand-ins that
        # raise no second error (the name of the dependency is still checked).
        depends_on = tuple((d.name, d.condition or Condition.READY) for d in service.dependencies)
        policy = service.restart_policy or RestartPolicy.NEVER
        stand_ins[name] = ServiceSpec(name, (name,), depends_on=depends_on, restart_policy=policy)
    for role in sorted(roles or ()):
        policy = RestartPolicy.ON_FAILURE if role in ONESHOT_ROLES else RestartPolicy.ALWAYS
        stand_ins.setdefault(role, ServiceSpec(role, (role,), restart_policy=policy))
    for problem in check_dependencies(stand_ins, roles):
        doc.error(paths[(problem.service, problem.dependency)], problem.message, problem.hint)
    return {key: _where(doc, path) for key, path in paths.items()}


def _where(doc: Document, path: KeyPath) -> tuple[int | None, str | None]:
    """The line and field of ``path`` inside its service, as an error names them."""
    return doc.line(path), field_of(path[2:])


def _read_backoff(parent: Reader) -> Backoff | None:
    """``restartBackoff``, a k4sinit extension; see :class:`~k4sinit.core.spec.Backoff`."""
    r = parent.mapping("restartBackoff")
    if r is None:
        return None
    backoff = Backoff(
        **given(
            initial=r.number("initialSeconds"),
            max=r.number("maxSeconds"),
            # Bounded so that check refuses what restarts could not compute.
            multiplier=r.number("multiplier", 1.0, maximum=_MAX_MULTIPLIER),
            jitter=r.number("jitter", maximum=1.0),
            reset_after=r.number("resetAfterSeconds"),
            crash_loop_limit=r.integer("crashLoopLimit", 1),
        )
    )
    r.finish()
    if backoff.initial > backoff.max:
        r.error(f"initialSeconds ({backoff.initial:g}) is more than maxSeconds ({backoff.max:g})")
    return backoff


def _read_signal(r: Reader) -> signal.Signals | None:
    """``stopSignal``: a name with or without ``SIG`` (``SIGTERM``, ``TERM``) or a number."""
    value = r.take("stopSignal", "a signal name or number", _is_signal_like)
    if value is None:
        return None
    if isinstance(value, int):
        try:
            return signal.Signals(value)
        except ValueError:
            r.error(f"no signal has number {value}", key="stopSignal")
            return None

    def with_prefix(name: str) -> str:
        return name if name.startswith("SIG") else f"SIG{name}"

    name = with_prefix(value)
    if name not in signal.Signals.__members__:
        hint = did_you_mean(with_prefix(value.upper()), list(signal.Signals.__members__))
        r.error(f"unknown signal {value!r}", hint, key="stopSignal")
        return None
    return signal.Signals[name]


def _is_signal_like(value: object) -> TypeGuard[str | int]:
    return isinstance(value, str) or is_int(value)
