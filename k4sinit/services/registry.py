"""The role registry: which module describes each Kubernetes role.

Every role module has ``NAME`` and ``spec(node) -> ServiceSpec`` (see
:class:`RoleModule`); ``kine`` and ``etcd`` share :mod:`~k4sinit.services.datastore`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from k4sinit.core.nodespec import Datastore
from k4sinit.services import (
    apiserver,
    containerd,
    controller_manager,
    coredns,
    datastore,
    images,
    kube_proxy,
    kubelet,
    manifests,
    pod_network,
    scheduler,
)

if TYPE_CHECKING:
    from k4sinit.core.nodespec import NodeSettings
    from k4sinit.core.spec import ServiceSpec


class RoleModule(Protocol):
    """What every role module provides; all three are pure (no I/O, no trio)."""

    def service(self, node: NodeSettings) -> ServiceSpec:
        """The role's service: command line, probes, dependencies, stop grace."""
        ...

    def files(self, node: NodeSettings) -> dict[str, str]:
        """Absolute path -> content of the config files the role reads."""
        ...

    def directories(self, node: NodeSettings) -> tuple[str, ...]:
        """Directories that must exist before the role starts."""
        ...


_MODULES: dict[str, RoleModule] = {
    **{d.value: datastore for d in Datastore},
    apiserver.NAME: apiserver,
    scheduler.NAME: scheduler,
    controller_manager.NAME: controller_manager,
    containerd.NAME: containerd,
    kubelet.NAME: kubelet,
    images.NAME: images,
    kube_proxy.NAME: kube_proxy,
    coredns.NAME: coredns,
    manifests.NAME: manifests,
    pod_network.NAME: pod_network,
}


def role_module(role: str) -> RoleModule:
    """The module describing ``role`` (``kine`` and ``etcd`` share :mod:`~k4sinit.services.datastore`)."""
    return _MODULES[role]
