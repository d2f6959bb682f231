"""The coredns role: the cluster's DNS server, a process on the control plane node.

CoreDNS (the k4s binary's ``coredns`` role) runs on the host network, as k4sinit
supervises it, not as a Deployment: ``coredns -conf <dataDir>/coredns/Corefile``.
Pods reach it the usual way: kubelet's ``clusterDNS`` (``node.clusterDNS``, the
10th address of the service range) is the ClusterIP of the ``kube-system/kube-dns``
Service, which has no selector; the ``manifests`` role keeps its EndpointSlice
pointing at this node's address, port 53, and kube-proxy forwards to it.

The Corefile is kubeadm's, with the listeners k4sinit needs on loopback:

* ``kubernetes <clusterDomain> in-addr.arpa ip6.arpa`` with its own kubeconfig
  (``<kubeconfigs>/coredns.conf``, user ``k4sinit:coredns``, bound to the
  ``system:coredns`` ClusterRole by the ``manifests`` role), ``pods insecure``
  and ``fallthrough`` for reverse zones;
* ``forward . /etc/resolv.conf`` (k4sinit writes it from the network config or
  DHCP), ``cache 30``, ``loop``, ``reload``, ``loadbalance``, ``errors``;
* ``ready`` on 127.0.0.1:8181 (the readiness probe: 200 once the kubernetes
  plugin has synced), ``health`` on 127.0.0.1:8080 (liveness, as kubeadm's
  Deployment probes it), ``prometheus`` on 127.0.0.1:9153.

It serves port 53 on every address of the node. Grace 10 s (``health``'s
``lameduck 5s`` keeps answering for 5 s after SIGTERM).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from k4sinit.core.nodespec import COREDNS, MANIFESTS
from k4sinit.core.spec import NETWORK, Condition, HTTPGetAction, Probe, ServiceSpec
from k4sinit.services import apiserver

if TYPE_CHECKING:
    from k4sinit.core.nodespec import NodeSettings

NAME = COREDNS
DNS_PORT = 53
READY_PORT = 8181
HEALTH_PORT = 8080
METRICS_PORT = 9153
USER = "k4sinit:coredns"  # the CN of its client certificate (k4sinit.node.pki)


def corefile_path(node: NodeSettings) -> str:
    return f"{node.data_dir}/coredns/Corefile"


def service(node: NodeSettings) -> ServiceSpec:
    return ServiceSpec(
        name=NAME,
        command=(NAME,),
        args=("-conf", corefile_path(node)),
        env=node.env,
        depends_on=(
            (apiserver.NAME, Condition.READY),
            (MANIFESTS, Condition.READY),  # its RBAC and the kube-dns Service
            (NETWORK, Condition.READY),
        ),
        readiness_probe=Probe(HTTPGetAction(port=READY_PORT, path="/ready"), timeout=5.0),
        liveness_probe=Probe(
            HTTPGetAction(port=HEALTH_PORT, path="/health"),
            initial_delay=60.0,
            period=10.0,
            timeout=5.0,
            failure_threshold=5,
        ),
    )


def files(node: NodeSettings) -> dict[str, str]:
    return {corefile_path(node): corefile(node)}


def directories(node: NodeSettings) -> tuple[str, ...]:
    return ()


def corefile(node: NodeSettings) -> str:
    return f"""\
# Written by k4sinit at boot for node {node.name}; changes here are overwritten.
.:{DNS_PORT} {{
    errors
    health 127.0.0.1:{HEALTH_PORT} {{
        lameduck 5s
    }}
    ready 127.0.0.1:{READY_PORT}
    kubernetes {node.cluster_domain} in-addr.arpa ip6.arpa {{
        kubeconfig {node.kubeconfig("coredns")}
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }}
    prometheus 127.0.0.1:{METRICS_PORT}
    forward . /etc/resolv.conf
    cache 30
    loop
    reload
    loadbalance
}}
"""
