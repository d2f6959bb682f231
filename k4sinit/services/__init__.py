"""The Kubernetes roles of a node, one module each; each only describes itself.

Every role module has the same three functions, all pure (no I/O, no trio):

* ``service(node) -> ServiceSpec``: the command line, probes, dependencies
  and stop grace of the role, built from the resolved
  :class:`~k4sinit.core.nodespec.NodeSettings`;
* ``files(node) -> dict[str, str]``: absolute path -> content of the config
  files the role reads (written by :func:`k4sinit.node.roles.write_files` at boot);
* ``directories(node) -> tuple[str, ...]``: directories that must exist
  before it starts (and that the role does not create itself).

Command lines are pinned to **Kubernetes v1.37** (containerd 2 with a version 3
config, etcd 3.7, kine 0.17: the versions of ``rootfs/k4s/go.mod``). The flag sets follow what the two
single-binary distributions pass, minus what they need for their own
extras (konnectivity, cloud controller, embedded tunnels): k0s
``pkg/component/controller/{apiserver,scheduler,controllermanager,kine,etcd}.go``
and ``pkg/component/worker/kubelet.go``; k3s ``pkg/daemons/control/server.go``
and ``pkg/daemons/agent``. Every flag is written ``--name=value`` (one argv
item), so ``node.roles.<role>.extraArgs`` can replace it by name.

:mod:`k4sinit.services.registry` maps role names to their modules (the
:class:`~k4sinit.services.registry.RoleModule` protocol);
:mod:`k4sinit.node.roles` picks the modules of a profile, applies the config's
overrides and resolves the binary (busybox dispatch).
"""

from __future__ import annotations

from collections.abc import Mapping

from k4sinit.core.spec import HTTPGetAction, Resources, TLSConfig

__all__ = ["CONTROL_PLANE_FIRST", "flags", "https_get"]

#: The CPU share of the datastore and the apiserver, which every other role and every
#: client waits for: ten times a default service's (cgroup2 cpu.weight 1000, as
#: ``requests.cpu: 10``). It only matters under contention: on an emulated node
#: (TCG) the idle cluster alone keeps ~70% of the CPU busy, and an apiserver
#: restarted among its reconnecting clients got a third of it, took over a minute
#: to serve, and then failed its own one-minute post-start hook
#: (start-service-ip-repair-controllers), again and again.
CONTROL_PLANE_FIRST = Resources(cpu_weight=1000)


def flags(values: Mapping[str, str | None]) -> tuple[str, ...]:
    """``{"secure-port": "6443"}`` -> ``("--secure-port=6443",)``, in order; None is left out."""
    return tuple(f"--{name}={value}" for name, value in values.items() if value is not None)


def https_get(port: int, path: str, tls: TLSConfig) -> HTTPGetAction:
    """An HTTPS ``httpGet`` on 127.0.0.1 (the roles serve their health there)."""
    return HTTPGetAction(port=port, path=path, scheme="HTTPS", tls=tls)
