"""The pod-network role: a host-gateway pod network, as flannel's host-gw backend.

Run where ``node.podNetwork`` is ``hostGateway`` and the node runs pods (worker,
single). The command is ``k4sinit pod-network`` (:mod:`k4sinit.node.routes`), a
process of its own that watches the cluster's Nodes through the apiserver:

* once this node's Node has ``spec.podCIDR`` (the controller-manager's
  ``--allocate-node-cidrs`` cuts ``node.podCIDR`` into a /24 per node), it
  writes the CNI conflist for that range (containerd's ``bridge_conflist``, at
  the path the bridge mode uses) and one masquerade rule for pods leaving the
  pod range; kubelet reports the node Ready once containerd has loaded it;
* for every other Node with a podCIDR and an InternalIP it keeps a route to the
  podCIDR via that address, and removes its routes no Node wants any more.

Its identity is the kubelet's kubeconfig (``system:node:<name>``; the Node
authorizer lets a node read every Node), as kube-proxy's is: on a worker that
file exists once kubelet's TLS bootstrap is done, hence ``dependsOn: kubelet``.
Ready when the conflist exists. Grace: the default 10 s; it leaves its routes
and rule in place when it stops, so pods keep their network until it is back.

Host-gw needs the nodes on one L2 network (each node's InternalIP a neighbour of
every other); it encapsulates nothing, so it costs no MTU and no CPU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from k4sinit.core.nodespec import POD_NETWORK
from k4sinit.core.spec import NETWORK, Condition, FileAction, Probe, ServiceSpec
from k4sinit.services import containerd, kubelet

if TYPE_CHECKING:
    from k4sinit.core.nodespec import NodeSettings

NAME = POD_NETWORK


def conflist_path(node: NodeSettings) -> str:
    return f"{node.cni_conf_dir}/{containerd.CNI_CONFLIST}"


def service(node: NodeSettings) -> ServiceSpec:
    args = (
        "pod-network",
        f"--kubeconfig={node.kubeconfig('kubelet')}",
        f"--node={node.name}",
        f"--cluster-cidr={node.pod_cidr}",
        f"--cni-conf={conflist_path(node)}",
    )
    return ServiceSpec(
        name=NAME,
        command=("k4sinit",),
        args=args,
        env=node.env,
        depends_on=(
            (kubelet.NAME, Condition.READY),  # its kubeconfig exists (a worker's: bootstrapped)
            (NETWORK, Condition.READY),
        ),
        readiness_probe=Probe(FileAction(conflist_path(node))),
    )


def files(node: NodeSettings) -> dict[str, str]:
    return {}  # the conflist waits for the Node's podCIDR: the program writes it


def directories(node: NodeSettings) -> tuple[str, ...]:
    return (node.cni_conf_dir,)
