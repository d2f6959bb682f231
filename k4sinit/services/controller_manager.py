"""The kube-controller-manager role (Kubernetes v1.37).

Flags after k0s ``pkg/component/controller/controllermanager.go`` and k3s
``pkg/daemons/control/server.go`` (``controllerManager``):

* its kubeconfig, also for delegated authentication/authorization, and
  ``--use-service-account-credentials`` (each controller its own identity);
* ``--service-account-private-key-file`` and ``--root-ca-file`` for the
  tokens it mints; ``--cluster-signing-cert-file``/``key-file`` = the cluster
  CA, so kubelet CSRs (TLS bootstrap of joining workers) get signed;
* ``--controllers=*,bootstrapsigner,tokencleaner`` (the two are off by
  default and bootstrap tokens need them);
* ``--allocate-node-cidrs`` from ``--cluster-cidr`` (the pod range) with
  ``--node-cidr-mask-size`` 24 (IPv4) or 64 (IPv6), and the service range;
* serving on 127.0.0.1:10257 with the controller-manager-server certificate;
  ``--leader-elect=false`` for a single node (see scheduler.py); no profiling.

Readiness is ``/healthz`` over HTTPS (timeout 15 s, kubeadm's). Grace: the default 10 s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from k4sinit.core.nodespec import CONTROLLER_MANAGER, Profile
from k4sinit.core.spec import Condition, Probe, ServiceSpec, TLSConfig
from k4sinit.services import apiserver, flags, https_get

if TYPE_CHECKING:
    from k4sinit.core.nodespec import NodeSettings

NAME = CONTROLLER_MANAGER
PORT = 10257


def service(node: NodeSettings) -> ServiceSpec:
    kubeconfig = node.kubeconfig("controller-manager")
    pki = node.pki
    args = flags(
        {
            "allocate-node-cidrs": "true",
            "authentication-kubeconfig": kubeconfig,
            "authorization-kubeconfig": kubeconfig,
            "bind-address": "127.0.0.1",
            "client-ca-file": pki("ca.crt"),
            "cluster-cidr": str(node.pod_cidr),
            "cluster-signing-cert-file": pki("ca.crt"),
            "cluster-signing-key-file": pki("ca.key"),
            "controllers": "*,bootstrapsigner,tokencleaner",
            "kubeconfig": kubeconfig,
            "leader-elect": "false" if node.profile is Profile.SINGLE else None,
            "node-cidr-mask-size": "24" if node.pod_cidr.version == 4 else "64",
            "profiling": "false",
            "requestheader-client-ca-file": pki("front-proxy-ca.crt"),
            "root-ca-file": pki("ca.crt"),
            "secure-port": str(PORT),
            "service-account-private-key-file": pki("sa.key"),
            "service-cluster-ip-range": str(node.service_cidr),
            "tls-cert-file": pki("controller-manager-server.crt"),
            "tls-private-key-file": pki("controller-manager-server.key"),
            "use-service-account-credentials": "true",
        }
    )
    tls = TLSConfig(ca_file=pki("ca.crt"))
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
