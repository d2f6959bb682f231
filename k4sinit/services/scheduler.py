"""The kube-scheduler role (Kubernetes v1.37).

Flags after k0s ``pkg/component/controller/scheduler.go``: its kubeconfig
for the apiserver and for delegated authentication/authorization, serving
on 127.0.0.1:10259 only with the scheduler-server certificate (so the probe
verifies it against the cluster CA), ``--leader-elect=false`` on a
single-node control plane (nothing to elect; a controller profile keeps
Kubernetes' default, true, so a second controller can join), no profiling.

Readiness is ``/healthz`` over HTTPS, always allowed without credentials
(timeout 15 s, as kubeadm's probes).
Grace: the default 10 s; it holds no state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from k4sinit.core.nodespec import SCHEDULER, Profile
from k4sinit.core.spec import Condition, Probe, ServiceSpec, TLSConfig
from k4sinit.services import apiserver, flags, https_get

if TYPE_CHECKING:
    from k4sinit.core.nodespec import NodeSettings

NAME = SCHEDULER
PORT = 10259


def service(node: NodeSettings) -> ServiceSpec:
    kubeconfig = node.kubeconfig("scheduler")
    args = flags(
        {
            "authentication-kubeconfig": kubeconfig,
            "authorization-kubeconfig": kubeconfig,
            "bind-address": "127.0.0.1",
            "kubeconfig": kubeconfig,
            "leader-elect": "false" if node.profile is Profile.SINGLE else None,
            "profiling": "false",
            "secure-port": str(PORT),
            "tls-cert-file": node.pki("scheduler-server.crt"),
            "tls-private-key-file": node.pki("scheduler-server.key"),
        }
    )
    tls = TLSConfig(ca_file=node.pki("ca.crt"))
    return ServiceSpec(
        name=NAME,
        command=(NAME,),
        args=args,
        env=node.env,
        depends_on=((apiserver.NAME, Condition.READY),),
        readiness_probe=Probe(https_get(PORT, "/healthz", tls), timeout=15.0),
    )


def files(node: NodeSettings) -> dict[str, str]:
    return {}  # the kubeconfig comes from k4sinit.node.pki


def directories(node: NodeSettings) -> tuple[str, ...]:
    return ()
