"""The ``node`` section: the Kubernetes roles this node runs, and their overrides.

Only what the file itself shows is checked here; :mod:`k4sinit.node.roles`
applies the kernel's ``k4sinit.role=`` and turns the section into role
services. :func:`worker_problems` is the check both make.
"""

from __future__ import annotations

import ipaddress
import re

from k4sinit.config.network import network_hint
from k4sinit.config.probes import read_probe
from k4sinit.config.reader import Reader, did_you_mean, given, is_bool, kind_of
from k4sinit.config.resources import read_resources
from k4sinit.config.services import read_env
from k4sinit.core.jointoken import BOOTSTRAP_TOKEN, FORMAT, JoinToken, parse_join_token
from k4sinit.core.names import is_dns_subdomain, is_domain
from k4sinit.core.netspec import IPAddress, IPNetwork
from k4sinit.core.nodespec import (
    ALL_ROLES,
    DEFAULT_POD_CIDR,
    DEFAULT_SERVICE_CIDR,
    POD_NETWORKS,
    PROFILES,
    Datastore,
    NodeSpec,
    PodNetwork,
    Profile,
    RoleOverride,
)

__all__ = ["read_node", "worker_problems"]

_FLAG_NAME = re.compile(r"[A-Za-z0-9][-A-Za-z0-9_.]*")
# The apiserver refuses a service range of more than 2^20 addresses; the
# controller-manager cuts the pod range into /24 (IPv4) or /64 (IPv6) per node.
_MAX_SERVICE_HOST_BITS = 20
_NODE_MASK = {4: 24, 6: 64}


def read_node(top: Reader) -> NodeSpec | None:
    """``node``: the Kubernetes roles this node runs; see :mod:`k4sinit.core.nodespec`.

    Only what can be known from the file is checked here: the kernel's
    ``k4sinit.role=`` may still change the profile, so k4sinit.node.roles
    checks the profile's needs (a worker's server and token) again.
    """
    r = top.mapping("node", hint="write it as node: {profile: single}")
    if r is None:
        return None
    profile = r.choice("profile", PROFILES)
    name = r.string("name")
    if name is not None and not is_dns_subdomain(name):
        hint = "a Kubernetes node name: lowercase letters, digits, '-' and '.'"
        r.error(f"invalid node name {name!r}", hint, key="name")
    data_dir = r.absolute_path("dataDir")
    pki_dir = r.absolute_path("pkiDir")
    datastore = r.choice("datastore", [d.value for d in Datastore])
    service_cidr = _node_network(r, "serviceCIDR", "like 10.96.0.0/12")
    pod_cidr = _node_network(r, "podCIDR", "like 10.244.0.0/16")
    domain = r.string("clusterDomain")
    if domain is not None and (domain.endswith(".") or not is_domain(domain)):
        r.error(f"invalid cluster domain {domain!r}", "like cluster.local", key="clusterDomain")
    cluster_dns = _node_address(r, "clusterDNS")
    advertise = _node_address(r, "advertiseAddress")
    bin_path = _read_bin_path(r)
    multicall = r.absolute_path("multicall")
    server = r.string("server")
    if server is not None and not server.startswith("https://"):
        r.error(
            f"expected an https:// URL, got {server!r}", "like https://10.0.0.1:6443", key="server"
        )
    token = r.string("token")
    if token is not None and not BOOTSTRAP_TOKEN.fullmatch(token):
        r.error("invalid bootstrap token", "it has the form abcdef.0123456789abcdef", key="token")
    join_token = _read_join_token(r)
    bootstrap = r.absolute_path("bootstrapKubeconfig")
    images_dir = r.absolute_path("imagesDir")
    manifests_dir = r.absolute_path("manifestsDir")
    pause_image = r.string("pauseImage")
    cni_bin_dir = r.absolute_path("cniBinDir")
    cni_conf_dir = r.absolute_path("cniConfDir")
    pod_network = r.choice("podNetwork", POD_NETWORKS)
    roles = _read_roles(r)
    r.finish()
    _check_ranges(r, service_cidr, pod_cidr, cluster_dns)
    spec = NodeSpec(
        **given(
            profile=None if profile is None else Profile(profile),
            name=name,
            data_dir=data_dir,
            pki_dir=pki_dir,
            datastore=None if datastore is None else Datastore(datastore),
            service_cidr=service_cidr,
            pod_cidr=pod_cidr,
            cluster_domain=domain,
            cluster_dns=cluster_dns,
            advertise_address=advertise,
            bin_path=bin_path,
            multicall=multicall,
            server=server,
            token=token,
            join_token=join_token,
            bootstrap_kubeconfig=bootstrap,
            images_dir=images_dir,
            manifests_dir=manifests_dir,
            pause_image=pause_image,
            cni_bin_dir=cni_bin_dir,
            cni_conf_dir=cni_conf_dir,
            pod_network=None if pod_network is None else PodNetwork(pod_network),
        ),
        roles=roles,
        line=top.doc.line(("node",)),
    )
    if join_token is not None or "joinToken" not in r.data:  # else: one error is enough
        for problem, fix, where in worker_problems(spec):
            r.error(problem, fix, key=where)
    return spec


def _check_ranges(
    r: Reader,
    service_cidr: IPNetwork | None,
    pod_cidr: IPNetwork | None,
    cluster_dns: IPAddress | None,
) -> None:
    """The node's address ranges together: apart, of sizes Kubernetes takes,
    and the cluster DNS address inside the service range."""
    services, pods = service_cidr or DEFAULT_SERVICE_CIDR, pod_cidr or DEFAULT_POD_CIDR
    custom = pod_cidr is not None or service_cidr is not None
    if custom and services.version == pods.version and services.overlaps(pods):
        key = "podCIDR" if pod_cidr is not None else "serviceCIDR"
        r.error(f"podCIDR {pods} overlaps serviceCIDR {services}", key=key)
    if (
        service_cidr is not None
        and service_cidr.max_prefixlen - service_cidr.prefixlen > _MAX_SERVICE_HOST_BITS
    ):
        smallest = service_cidr.max_prefixlen - _MAX_SERVICE_HOST_BITS
        hint = f"the apiserver takes at most 2^20 addresses, a /{smallest}"
        r.error(f"serviceCIDR {service_cidr} is too large", hint, key="serviceCIDR")
    if pod_cidr is not None and pod_cidr.prefixlen > _NODE_MASK[pod_cidr.version]:
        mask = _NODE_MASK[pod_cidr.version]
        hint = f"each node gets a /{mask} of it, so it must be a /{mask} or larger"
        r.error(f"podCIDR {pod_cidr} is too small", hint, key="podCIDR")
    if cluster_dns is not None and cluster_dns not in services:
        r.error(f"clusterDNS {cluster_dns} is not in serviceCIDR {services}", key="clusterDNS")


def _read_join_token(r: Reader) -> JoinToken | None:
    """``joinToken``: what ``k4sinit token create`` printed (server, CA hash, token)."""
    text = r.string("joinToken")
    if text is None:
        return None
    try:
        return parse_join_token(text)
    except ValueError as exc:
        hint = f"k4sinit token create, on the controller, prints one: {FORMAT}"
        r.error(f"invalid join token: {exc}", hint, key="joinToken")
        return None


def worker_problems(node: NodeSpec) -> list[tuple[str, str | None, str | None]]:
    """What a worker lacks to join its control plane: (message, hint, key) each.

    A worker joins with a ``joinToken`` (or ``k4sinit.token=`` on the kernel
    command line), with ``server`` and a bootstrap ``token``, or with a
    ``bootstrapKubeconfig`` (which names the server itself). Other profiles
    need none (and keep them, in case the kernel makes the node a worker).
    """
    if node.profile is not Profile.WORKER:
        return []
    join = (
        "a worker joins with joinToken (or k4sinit.token= on the kernel command line), "
        "with server and token, or with bootstrapKubeconfig"
    )
    if node.join_token is not None:
        given_too = [
            key
            for key, value in (
                ("server", node.server),
                ("token", node.token),
                ("bootstrapKubeconfig", node.bootstrap_kubeconfig),
            )
            if value is not None
        ]
        if given_too:
            hint = "the join token holds the server and the token"
            return [(f"give joinToken or {' and '.join(given_too)}, not both", hint, "joinToken")]
        return []
    if node.bootstrap_kubeconfig is not None:
        if node.token is not None:
            return [("give token or bootstrapKubeconfig, not both", join, "token")]
        return []
    if node.server is None and node.token is None:
        return [("profile worker needs a control plane to join", join, None)]
    if node.server is None:
        return [("a token needs a server", "add server: https://<controller>:6443", None)]
    if node.token is None:
        return [("a server needs a token", "add token: abcdef.0123456789abcdef", None)]
    return []


def _node_network(r: Reader, key: str, example: str) -> IPNetwork | None:
    text = r.string(key)
    if text is None:
        return None
    try:
        return ipaddress.ip_network(text)
    except ValueError:
        hint = network_hint(text) if "/" in text else f"write a network {example}"
        r.error(f"invalid network {text!r}", hint, key=key)
        return None


def _node_address(r: Reader, key: str) -> IPAddress | None:
    text = r.string(key)
    if text is None:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        hint = "one address, without /prefix" if "/" in text else None
        r.error(f"invalid IP address {text!r}", hint, key=key)
        return None


def _read_bin_path(r: Reader) -> tuple[str, ...] | None:
    dirs = r.strings("binPath", non_empty=True)
    for i, directory in enumerate(dirs or ()):
        if not directory.startswith("/") or ":" in directory:
            hint = "an absolute directory without ':' (it joins PATH)"
            r.doc.error((*r.path, "binPath", i), f"invalid directory {directory!r}", hint)
            return None
    return dirs


def _read_roles(parent: Reader) -> tuple[tuple[str, RoleOverride], ...]:
    """``roles``: per role, ``disabled``, ``extraArgs``, probes, ``resources``, ``env``,
    ``critical``."""
    section = parent.mapping("roles", hint="write it as roles: {kubelet: {extraArgs: {...}}}")
    if section is None:
        return ()
    roles = []
    for role in section.data:
        if role not in ALL_ROLES:
            hint = did_you_mean(role, ALL_ROLES) or f"the roles are {', '.join(ALL_ROLES)}"
            section.error(f"unknown role {role!r}", hint, key=role)
            section.known.append(role)
            continue
        r = section.mapping(role)
        if r is None:
            continue
        disabled = r.take("disabled", "a boolean", is_bool)
        extra_args = _read_extra_args(r)
        readiness = read_probe(r, "readinessProbe")
        liveness = read_probe(r, "livenessProbe", single_success=True)
        resources = read_resources(r)
        env = read_env(r)
        critical = r.take("critical", "a boolean", is_bool, hint="true or false")
        r.finish()
        override = RoleOverride(
            **given(
                disabled=disabled,
                extra_args=extra_args,
                readiness_probe=readiness,
                liveness_probe=liveness,
                resources=resources,
                env=env,
                critical=critical,
            )
        )
        roles.append((role, override))
    return tuple(roles)


def _read_extra_args(parent: Reader) -> tuple[tuple[str, str | None], ...] | None:
    """``extraArgs: {flag: value}``; a flag set to null removes the role's default."""
    r = parent.mapping("extraArgs", hint="write it as flag: value pairs, e.g. v: '2'")
    if r is None:
        return None
    args: dict[str, str | None] = {}
    for key in r.data:
        r.known.append(key)
        flag = key.lstrip("-")
        value = r.data[key]
        if not _FLAG_NAME.fullmatch(flag):
            r.error(f"invalid flag name {key!r}", "like feature-gates or v", key=key)
        elif flag in args:
            r.error(f"the flag {flag!r} is given twice", key=key)
        elif value is not None and not isinstance(value, str):
            hint = "quote it to make it a string (null removes the flag)"
            r.error(f"expected a string or null, got {kind_of(value)}", hint, key=key)
        elif isinstance(value, str) and "\0" in value:
            r.error("a NUL byte cannot be passed to a program", key=key)
        else:
            args[flag] = value
    return tuple(args.items())
