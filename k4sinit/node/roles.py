"""The node's Kubernetes roles: settings resolved from ``node:``, and profile expansion.

A config with a ``node:`` section (see :mod:`k4sinit.core.nodespec`) names a
profile; this module turns it into services::

    load_config(path)                     Config(services=<the file's>, node=NodeSpec)
      -> expand_node(config, role_from_kernel=...)    ExpandedNode:
           .settings                      NodeSettings (every default resolved)
           .config                        Config(services=<roles> + <the file's>)
      -> write_files(settings)            the roles' config files, at boot

(:func:`settings` and :func:`expand` give one half each.)

Profiles: ``controller`` = datastore, kube-apiserver, kube-scheduler,
kube-controller-manager, manifests, coredns; ``worker`` = containerd, images,
kubelet, kube-proxy; ``single`` = all of them. The kernel's ``k4sinit.role=`` wins over ``node.profile`` (and gives a
config without a node section the profile's roles with every default).

**Busybox dispatch.** A role's ``command[0]`` is its name and its ``PATH`` is
``node.binPath``. When no directory of binPath holds the role's binary but
``node.multicall`` is set, the service executes the multicall binary with
argv[0] = the role name (``ServiceSpec.executable``), as gobusybox
dispatches. Without either, the spawn fails with "kube-apiserver: binary not
found in /bbin:/usr/local/bin:/usr/bin:/usr/sbin", and the service is
``failed`` at once with that reason.

Nothing here imports trio or spawns anything; :func:`settings` may read the
hostname, :func:`expand` looks for binaries, :func:`write_files` writes.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import signal
import socket
from pathlib import Path
from typing import Any

from k4sinit.config import ConfigError, ConfigErrors, worker_problems
from k4sinit.core.config import Config
from k4sinit.core.graph import check_dependencies
from k4sinit.core.jointoken import PREFIX, JoinToken
from k4sinit.core.names import is_dns_subdomain
from k4sinit.core.nodespec import (
    KUBECONFIG_DIR_NAME,
    PKI_DIR_NAME,
    PROFILES,
    NodeSettings,
    NodeSpec,
    Profile,
    RoleOverride,
    default_pod_network,
    profile_roles,
)
from k4sinit.core.spec import (
    BUILTIN_DEPENDENCIES,
    ExecAction,
    FileAction,
    HTTPGetAction,
    NotifyAction,
    Probe,
    ServiceSpec,
    TCPSocketAction,
    UnixSocketAction,
)
from k4sinit.services.registry import role_module

__all__ = [
    "ExpandedNode",
    "NodeSettings",
    "describe",
    "directories",
    "expand",
    "expand_node",
    "files",
    "settings",
    "write_files",
]


# --- settings ------------------------------------------------------------------------


def settings(
    config: Config,
    *,
    role_from_kernel: str | None = None,
    hostname: str | None = None,
    token_from_kernel: JoinToken | None = None,
) -> NodeSettings | None:
    """The resolved node settings, or None when the node runs no roles.

    ``role_from_kernel`` (``k4sinit.role=``) wins over ``node.profile``;
    on a worker, ``token_from_kernel`` (``k4sinit.token=``) over the config's
    ``joinToken``, ``server``, ``token`` and ``bootstrapKubeconfig``.
    The node name is ``node.name``, else ``hostname`` (give the kernel's
    ``k4sinit.hostname=``), else the config's ``hostname``, else the system's,
    lowercased as kubelet does. Raises :class:`ConfigErrors` when the kernel's
    role is not a profile, the profile lacks what it needs (a worker's
    server and token), or the name is not a DNS subdomain (a fresh kernel's
    hostname is "(none)").
    """
    node = _effective(config, role_from_kernel, token_from_kernel)
    return None if node is None else _resolve(config, node, hostname)


def _resolve(config: Config, node: NodeSpec, hostname: str | None) -> NodeSettings:
    """The settings of ``node`` (the effective node section); see :func:`settings`."""
    name, source = next(
        (value.lower(), where)
        for value, where in (
            (node.name, "node.name"),
            (hostname, "k4sinit.hostname="),
            (config.system.hostname, "hostname"),
            (socket.gethostname(), "the system's hostname"),
        )
        if value
    )
    if not is_dns_subdomain(name):
        # kubelet would fail to register it, long after the boot looked fine.
        message = f"node name {name!r} (from {source}) is not a DNS subdomain"
        hint = "set node.name or hostname in the config, or k4sinit.hostname= on the kernel command line"
        raise ConfigErrors(config.source, [_error(config, None, "node.name", message, hint)])
    pki_dir = node.pki_dir or f"{node.data_dir}/{PKI_DIR_NAME}"
    roles = tuple(
        role
        for role in profile_roles(node.profile, node.datastore, node.pod_network)
        if not node.override(role).disabled
    )
    return NodeSettings(
        profile=node.profile,
        name=name,
        roles=roles,
        data_dir=node.data_dir,
        pki_dir=pki_dir,
        kubeconfig_dir=posixpath.join(posixpath.dirname(pki_dir.rstrip("/")), KUBECONFIG_DIR_NAME),
        datastore=node.datastore,
        service_cidr=node.service_cidr,
        pod_cidr=node.pod_cidr,
        cluster_domain=node.cluster_domain,
        cluster_dns=node.cluster_dns or node.service_cidr[10],
        advertise_address=None if node.advertise_address is None else str(node.advertise_address),
        bin_path=node.bin_path,
        multicall=node.multicall,
        server=node.server,
        token=node.token,
        join_token=node.join_token,
        bootstrap_kubeconfig=node.bootstrap_kubeconfig,
        images_dir=node.images_dir or f"{node.data_dir}/images",
        manifests_dir=node.manifests_dir or f"{node.data_dir}/manifests",
        pause_image=node.pause_image,
        cni_bin_dir=node.cni_bin_dir,
        cni_conf_dir=node.cni_conf_dir,
        pod_network=node.pod_network or default_pod_network(node.profile),
    )


def _effective(
    config: Config, role_from_kernel: str | None, token_from_kernel: JoinToken | None = None
) -> NodeSpec | None:
    """The node section with the kernel's role (and a worker's token) applied;
    checks what the profile needs."""
    node = config.node
    if role_from_kernel is not None:
        if role_from_kernel not in PROFILES:
            message = f"k4sinit.role={role_from_kernel!r} is not a profile"
            hint = f"expected one of {', '.join(PROFILES)}"
            raise ConfigErrors(config.source, [_error(config, None, "node.profile", message, hint)])
        profile = Profile(role_from_kernel)
        node = (
            NodeSpec(profile=profile)
            if node is None
            else dataclasses.replace(node, profile=profile)
        )
    if node is None:
        return None
    if token_from_kernel is not None and node.profile is Profile.WORKER:
        node = dataclasses.replace(
            node, join_token=token_from_kernel, server=None, token=None, bootstrap_kubeconfig=None
        )
    problems = worker_problems(node)
    if problems:
        why = "" if config.node and config.node.profile is node.profile else " (from k4sinit.role=)"
        errors = [
            _error(config, None, f"node.{key}" if key else "node", message + why, hint)
            for message, hint, key in problems
        ]
        raise ConfigErrors(config.source, errors)
    return node


def _error(
    config: Config, service: str | None, field: str | None, message: str, hint: str | None
) -> ConfigError:
    line = config.node.line if config.node is not None else None
    return ConfigError(config.source, line, service, field, message, hint)


# --- expansion -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ExpandedNode:
    """A config with the node's roles expanded, and the settings they were made from.

    ``settings`` is None (and ``config`` the loaded one) when the node runs no roles.
    """

    config: Config
    settings: NodeSettings | None


def expand_node(
    config: Config,
    *,
    role_from_kernel: str | None = None,
    hostname: str | None = None,
    token_from_kernel: JoinToken | None = None,
) -> ExpandedNode:
    """``config`` with the profile's role services first, then the file's own services,
    and the node's settings (:func:`settings`): one call for both.

    Each role is its module's service with the config's overrides applied
    (``extraArgs`` replace default flags of the same name and are appended;
    probes and resources replace; ``env`` is laid over), and its binary
    resolved on ``node.binPath`` (see the module docstring). A dependency on a
    disabled role is dropped, unless the file has a service of that name,
    which then takes the role's place. The result is validated again
    (unknown dependencies, impossible conditions, cycles), since the kernel's
    role may have changed the profile. Without a node section and a kernel
    role, ``config`` comes back as it is. Expand a loaded config once: the
    result has the role services, so a second expansion finds them taken.
    Raises :class:`ConfigErrors`.
    """
    node = _effective(config, role_from_kernel, token_from_kernel)
    if node is None:
        return ExpandedNode(config, None)
    node_settings = _resolve(config, node, hostname)
    errors: list[ConfigError] = []
    services: dict[str, ServiceSpec] = {}
    for role in node_settings.roles:
        spec = role_module(role).service(node_settings)
        spec = _override(
            spec, node.override(role), keep=set(node_settings.roles) | set(config.services)
        )
        services[role] = _dispatch(spec, node_settings)
    for name, spec in config.services.items():
        if name in services:
            message = f"{name!r} is a role of profile {node.profile.value}"
            hint = f"override it under node.roles.{name}, or disable the role there to replace it"
            errors.append(ConfigError(config.source, None, name, None, message, hint))
            continue
        services[name] = spec
    errors += _check(config, node, services, set(node_settings.roles))
    if errors:
        raise ConfigErrors(config.source, errors)
    return ExpandedNode(dataclasses.replace(config, services=services, node=node), node_settings)


def expand(
    config: Config,
    *,
    role_from_kernel: str | None = None,
    hostname: str | None = None,
    token_from_kernel: JoinToken | None = None,
) -> Config:
    """The expanded config alone (:func:`expand_node`'s ``config``), as ``check`` needs it."""
    return expand_node(
        config,
        role_from_kernel=role_from_kernel,
        hostname=hostname,
        token_from_kernel=token_from_kernel,
    ).config


def _override(spec: ServiceSpec, override: RoleOverride, *, keep: set[str]) -> ServiceSpec:
    extra = dict(override.extra_args)
    args = [a for a in spec.args if _flag_name(a) not in extra]
    args += [f"--{name}={value}" for name, value in extra.items() if value is not None]
    env = dict(spec.env) | dict(override.env)
    return dataclasses.replace(
        spec,
        args=tuple(args),
        env=tuple(env.items()),
        depends_on=tuple(
            (name, condition)
            for name, condition in spec.depends_on
            if name in keep or name in BUILTIN_DEPENDENCIES
        ),
        readiness_probe=override.readiness_probe or spec.readiness_probe,
        liveness_probe=override.liveness_probe or spec.liveness_probe,
        resources=override.resources or spec.resources,
        critical=override.critical or spec.critical,
    )


def _flag_name(arg: str) -> str | None:
    if not arg.startswith("--"):
        return None
    return arg[2:].partition("=")[0]


def _dispatch(spec: ServiceSpec, node: NodeSettings) -> ServiceSpec:
    """Run the multicall binary as ``command[0]`` when binPath has no binary of that name."""
    if node.multicall is None:
        return spec
    for directory in node.bin_path:
        candidate = os.path.join(directory, spec.command[0])
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return spec
    return dataclasses.replace(spec, executable=node.multicall)


def _check(
    config: Config, node: NodeSpec, services: dict[str, ServiceSpec], roles: set[str]
) -> list[ConfigError]:
    """The expanded ``services`` through :func:`k4sinit.core.graph.check_dependencies`.

    A problem in the file's own service is put where the file wrote it
    (``config.where``: line and field, as the loader gives them). A cycle is
    put at its first member the file wrote (the roles' dependencies are not
    the file's to change). A problem in a role's dependency is put where the
    node section starts, saying the profile gave the role that dependency.
    """
    errors = []
    for problem in check_dependencies(services, roles):
        name, dep, message = problem.service, problem.dependency, problem.message
        name = next((n for n in problem.cycle if n not in roles), name)
        field = None if dep is None else f"dependsOn.{dep}"
        if name in roles:
            line = config.node.line if config.node is not None else None
            message += f" (a dependency of the role, from profile {node.profile.value})"
        else:
            line, field = config.where.get((name, dep), (None, field))
        errors.append(ConfigError(config.source, line, name, field, message, problem.hint))
    return errors


# --- files ---------------------------------------------------------------------------


def files(node: NodeSettings) -> dict[str, str]:
    """Every file the node's roles need: absolute path -> content."""
    out: dict[str, str] = {}
    for role in node.roles:
        out.update(role_module(role).files(node))
    return out


def directories(node: NodeSettings) -> tuple[str, ...]:
    """Every directory the node's roles need to exist before they start."""
    return tuple(
        dict.fromkeys(d for role in node.roles for d in role_module(role).directories(node))
    )


def write_files(node: NodeSettings, root: str | os.PathLike[str] = "/") -> list[str]:
    """Write the roles' files and make their directories, under ``root``; returns the paths.

    Called by the boot once the filesystems are mounted and before the
    supervisor starts the roles, every boot (the files are derived, never
    edited). Each file is replaced atomically, mode 0600 (a worker's
    bootstrap kubeconfig holds a token; only root reads them); directories
    are made 0755. Raises OSError.
    """
    base = Path(root)
    for directory in directories(node):
        (base / directory.lstrip("/")).mkdir(mode=0o755, parents=True, exist_ok=True)
    written = []
    for path, content in files(node).items():
        target = base / path.lstrip("/")
        target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        temporary = target.with_name(f".{target.name}.k4sinit-tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, content.encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, target)
        written.append(path)
    return written


# --- describing --------------------------------------------------------------------


def describe(config: Config, node: NodeSettings | None) -> dict[str, Any]:
    """``config`` (expanded) as plain data in the config's own words, for people to read.

    What ``k4sinit config`` prints: the resolved node settings, every service
    with its full command line, probes, dependencies and limits, and the paths
    of the files the boot writes (not their contents: one may hold a token).
    """
    out: dict[str, Any] = {"source": config.source}
    if node is not None:
        out["node"] = _describe_node(node)
    out["services"] = {name: _describe_service(spec) for name, spec in config.services.items()}
    if node is not None:
        out["files"] = sorted(files(node))
        out["directories"] = list(directories(node))
    return out


def _describe_node(node: NodeSettings) -> dict[str, Any]:
    return {
        "profile": node.profile.value,
        "name": node.name,
        "roles": list(node.roles),
        "dataDir": node.data_dir,
        "pkiDir": node.pki_dir,
        "kubeconfigDir": node.kubeconfig_dir,
        "datastore": node.datastore.value,
        "serviceCIDR": str(node.service_cidr),
        "podCIDR": str(node.pod_cidr),
        "clusterDomain": node.cluster_domain,
        "clusterDNS": str(node.cluster_dns),
        "advertiseAddress": node.advertise_address,
        "binPath": list(node.bin_path),
        "multicall": node.multicall,
        "server": node.server,
        "token": None if node.token is None else "<hidden>",
        "joinToken": None if node.join_token is None else _hidden(node.join_token),
        "bootstrapKubeconfig": node.bootstrap_kubeconfig,
        "imagesDir": node.images_dir,
        "manifestsDir": node.manifests_dir,
        "pauseImage": node.pause_image,
        "cniBinDir": node.cni_bin_dir,
        "cniConfDir": node.cni_conf_dir,
    }


def _hidden(token: JoinToken) -> str:
    """A join token as ``config`` shows it: all but the token's secret."""
    return f"{PREFIX}::{token.server}::{token.ca_hash}::{token.token.id}.<hidden>"


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def _describe_service(spec: ServiceSpec) -> dict[str, Any]:
    out: dict[str, Any] = {"command": list(spec.command)}
    if spec.executable is not None:
        out["executable"] = spec.executable
    out["args"] = list(spec.args)
    out["env"] = dict(spec.env)
    if spec.working_dir is not None:
        out["workingDir"] = spec.working_dir
    out["dependsOn"] = {name: condition.value for name, condition in spec.depends_on}
    for key, probe in (
        ("startupProbe", spec.startup_probe),
        ("readinessProbe", spec.readiness_probe),
        ("livenessProbe", spec.liveness_probe),
    ):
        if probe is not None:
            out[key] = _describe_probe(probe, key)
    b = spec.backoff
    backoff = {
        "initialSeconds": _number(b.initial),
        "maxSeconds": _number(b.max),
        "multiplier": _number(b.multiplier),
        "jitter": _number(b.jitter),
        "resetAfterSeconds": _number(b.reset_after),
    }
    if b.crash_loop_limit is not None:
        backoff["crashLoopLimit"] = b.crash_loop_limit
    out["restartPolicy"] = spec.restart_policy.value
    out["restartBackoff"] = backoff
    out["stopSignal"] = signal.Signals(spec.stop_signal).name
    out["terminationGracePeriodSeconds"] = _number(spec.termination_grace_period)
    if spec.critical:
        out["critical"] = True
    r = spec.resources
    limits: dict[str, Any] = {}
    if r.memory is not None:
        limits["memory"] = r.memory
    if r.cpu_millis is not None:
        limits["cpu"] = f"{r.cpu_millis}m"
    if r.pids is not None:
        limits["pids"] = r.pids
    resources: dict[str, Any] = {"limits": limits} if limits else {}
    if r.cpu_weight is not None:
        resources["requests"] = {"cpu": f"{r.cpu_weight * 10}m"}
    if resources:
        out["resources"] = resources
    return out


def _describe_probe(probe: Probe, key: str) -> dict[str, Any]:
    """A probe as the config writes it (a notify probe with the timing it may have)."""
    action = probe.action
    handler: tuple[str, dict[str, Any]]
    if isinstance(action, HTTPGetAction):
        http: dict[str, Any] = {
            "scheme": action.scheme,
            "host": action.host,
            "port": action.port,
            "path": action.path,
        }
        if action.headers:
            http["httpHeaders"] = [{"name": n, "value": v} for n, v in action.headers]
        tls = {
            key: value
            for key, value in (
                ("caFile", action.tls.ca_file),
                ("certFile", action.tls.cert_file),
                ("keyFile", action.tls.key_file),
                ("serverName", action.tls.server_name),
            )
            if value is not None
        }
        if tls:
            http["tls"] = tls
        handler = ("httpGet", http)
    elif isinstance(action, TCPSocketAction):
        handler = ("tcpSocket", {"host": action.host, "port": action.port})
    elif isinstance(action, UnixSocketAction):
        handler = ("unixSocket", {"path": action.path})
    elif isinstance(action, FileAction):
        handler = ("file", {"path": action.path})
    elif isinstance(action, NotifyAction):
        handler = ("notify", {})
    else:
        assert isinstance(action, ExecAction)
        handler = ("exec", {"command": list(action.command)})
    timing = {
        "initialDelaySeconds": _number(probe.initial_delay),
        "periodSeconds": _number(probe.period),
        "timeoutSeconds": _number(probe.timeout),
        "successThreshold": probe.success_threshold,
        "failureThreshold": probe.failure_threshold,
    }
    if isinstance(action, NotifyAction):  # READY=1 takes no timing; WATCHDOG=1 no timeout
        timing = {} if key == "readinessProbe" else timing
        timing.pop("timeoutSeconds", None)
    return {handler[0]: handler[1], **timing}
