"""The kube-proxy role (Kubernetes v1.37): Services' virtual IPs on this node.

The command is ``kube-proxy --config=<dataDir>/kube-proxy/config.yaml``; the
``KubeProxyConfiguration`` (kubeproxy.config.k8s.io/v1alpha1), after k3s
``pkg/daemons/agent`` and kubeadm's defaults:

* ``mode: iptables`` (Linux's default; the image carries iptables with the
  nf_tables backend, ``xtables-nft-multi``, which the CNI bridge uses too),
  ``clusterCIDR`` the pod range, so traffic from outside it to a ClusterIP is
  masqueraded;
* ``hostnameOverride`` the node name (kube-proxy finds its Node by it);
* its kubeconfig is the kubelet's (``<kubeconfigs>/kubelet.conf``): the node's
  own identity, ``system:node:<name>`` in group ``system:nodes``, which the
  ``manifests`` role binds to ``system:node-proxier``. A joined worker needs
  no credential of its own that way: its kubelet writes that kubeconfig when
  its TLS bootstrap is done, which is why kube-proxy starts after kubelet is
  ready;
* health on 127.0.0.1:10256 (``/healthz`` answers 200 once the rules have been
  synced and are fresh: the readiness probe), metrics on 127.0.0.1:10249;
* ``conntrack.maxPerCore: 0``: keep the kernel's conntrack table size (a
  small VM's default is enough; kube-proxy would otherwise raise it);
* ``nodePortAddresses: [primary]``: NodePorts on the node's own address, not on
  every local one (kube-proxy's advice since v1.29).

Grace 10 s: on SIGTERM it exits at once and leaves the rules in place, so
Services keep working until it is back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import yaml

from k4sinit.core.nodespec import KUBE_PROXY
from k4sinit.core.spec import NETWORK, Condition, HTTPGetAction, Probe, ServiceSpec
from k4sinit.services import flags, kubelet, manifests

if TYPE_CHECKING:
    from k4sinit.core.nodespec import NodeSettings

NAME = KUBE_PROXY
HEALTHZ_PORT = 10256
METRICS_PORT = 10249


def config_path(node: NodeSettings) -> str:
    return f"{node.data_dir}/kube-proxy/config.yaml"


def service(node: NodeSettings) -> ServiceSpec:
    return ServiceSpec(
        name=NAME,
        command=(NAME,),
        args=flags({"config": config_path(node)}),
        env=node.env,
        depends_on=(
            (kubelet.NAME, Condition.READY),  # its kubeconfig exists (a worker's: bootstrapped)
            (manifests.NAME, Condition.READY),  # the node-proxier binding (dropped on a worker)
            (NETWORK, Condition.READY),
        ),
        readiness_probe=Probe(HTTPGetAction(port=HEALTHZ_PORT, path="/healthz"), timeout=5.0),
    )


def files(node: NodeSettings) -> dict[str, str]:
    return {config_path(node): configuration(node)}


def directories(node: NodeSettings) -> tuple[str, ...]:
    return ()


def configuration(node: NodeSettings) -> str:
    config: dict[str, Any] = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": node.kubeconfig("kubelet")},
        "clusterCIDR": str(node.pod_cidr),
        "conntrack": {"maxPerCore": 0},
        "healthzBindAddress": f"127.0.0.1:{HEALTHZ_PORT}",
        "hostnameOverride": node.name,
        "metricsBindAddress": f"127.0.0.1:{METRICS_PORT}",
        "mode": "iptables",
        "nodePortAddresses": ["primary"],
    }
    header = f"# Written by k4sinit at boot for node {node.name}.\n"
    return header + yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
