"""The manifests role: the cluster's own objects, and a directory of manifests, applied.

What kubeadm's ``bootstrap-token`` and ``addon`` phases and k0s' manifest applier
do, as a service of the control plane: ``k4sinit apply-manifests`` (see
:mod:`k4sinit.node.applier`) applies every ``*.yaml``/``*.yml``/``*.json`` under
``node.manifestsDir`` (default ``<dataDir>/manifests``) with ``kubectl apply
--server-side`` once the apiserver is ready, and again whenever a file there
changes, as k3s auto-deploys its manifests directory. It is ready (a file
probe) once everything has been applied once; it keeps running to watch.

Into that directory, at every boot, k4sinit writes the objects a node needs
(``k4sinit-*.yaml``, derived, overwritten):

* ``k4sinit-nodes.yaml``: what lets nodes join and run, as kubeadm binds it.
  ``system:node-bootstrapper`` and
  ``system:certificates.k8s.io:certificatesigningrequests:nodeclient`` for
  the group of bootstrap tokens made for nodes
  (:data:`BOOTSTRAP_GROUP`): a joining kubelet may ask for its client
  certificate and the controller-manager's csrapproving controller approves
  it; ``...:selfnodeclient`` for ``system:nodes``: kubelets renew their own;
  ``system:node-proxier`` for ``system:nodes``: kube-proxy runs with its
  node's kubeconfig; and the Role that lets ``system:anonymous`` get
  ``kube-public/cluster-info`` (the apiserver lets anonymous requests through
  for that one path only, see apiserver.py).
* ``k4sinit-cluster-info.yaml``: ``kube-public/cluster-info`` with the server
  and the CA (:func:`cluster_info`), written by the ``pki`` step once the CA
  exists (k4sinit.node.pkicondition), not at boot; the controller-manager's
  bootstrapsigner adds a signature per bootstrap token to it, which is how a
  joining worker knows the CA is its cluster's (k4sinit.node.join).
* ``k4sinit-bootstrap-token.yaml``, when the config has ``node.token``: the
  token's Secret in ``kube-system`` (no expiry), so workers configured with
  the same token join.
* ``k4sinit-coredns.yaml``, when the node runs the coredns role:
  the ``system:coredns`` ClusterRole (kubeadm's rules) bound to CoreDNS's
  user, and the ``kube-system/kube-dns`` Service at ``node.clusterDNS``
  without a selector. Its EndpointSlice names this node's address, known
  only at run time (DHCP): the applier keeps it current (``--dns-service``).

A user's files go beside them; files are applied in name order, and what
was applied once stays (nothing is pruned).
"""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

import yaml

from k4sinit.core.nodespec import COREDNS, MANIFESTS
from k4sinit.core.spec import Condition, FileAction, Probe, ServiceSpec
from k4sinit.services import apiserver, coredns

if TYPE_CHECKING:
    from k4sinit.core.nodespec import NodeSettings

NAME = MANIFESTS
#: Written by the applier once everything has been applied; removed at its start.
READY_FILE = "/run/k4sinit/manifests.applied"
#: The group of the bootstrap tokens k4sinit makes for joining nodes (kubeadm's
#: is system:bootstrappers:kubeadm:default-node-token).
BOOTSTRAP_GROUP = "system:bootstrappers:k4sinit:default-node-token"
DNS_SERVICE = "kube-dns"
CLUSTER_INFO = "cluster-info"  # in kube-public, as kubeadm names it
FIELD_MANAGER = "k4sinit"


def service(node: NodeSettings) -> ServiceSpec:
    args = [
        "apply-manifests",
        f"--kubeconfig={node.kubeconfig('admin')}",
        f"--dir={node.manifests_dir}",
        f"--ready-file={READY_FILE}",
    ]
    if COREDNS in node.roles:
        args.append(f"--dns-service=kube-system/{DNS_SERVICE}")
        if node.advertise_address is not None:
            args.append(f"--node-address={node.advertise_address}")
    return ServiceSpec(
        name=NAME,
        command=("k4sinit",),
        args=tuple(args),
        env=node.env,
        depends_on=((apiserver.NAME, Condition.READY),),
        readiness_probe=Probe(FileAction(READY_FILE)),
    )


def files(node: NodeSettings) -> dict[str, str]:
    out = {f"{node.manifests_dir}/k4sinit-nodes.yaml": dump(node_objects())}
    if node.token is not None:
        out[f"{node.manifests_dir}/k4sinit-bootstrap-token.yaml"] = dump(
            [bootstrap_token_secret(node.token)]
        )
    if COREDNS in node.roles:
        out[f"{node.manifests_dir}/k4sinit-coredns.yaml"] = dump(coredns_objects(node))
    return out


def directories(node: NodeSettings) -> tuple[str, ...]:
    return (node.manifests_dir,)


def _binding(name: str, role: str, kind: str, subject: str) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": subject}],
    }


def node_objects() -> list[dict[str, Any]]:
    """The bindings that let nodes join, get their certificates approved, and proxy."""
    csr = "system:certificates.k8s.io:certificatesigningrequests"
    return [
        _binding("k4sinit:kubelet-bootstrap", "system:node-bootstrapper", "Group", BOOTSTRAP_GROUP),
        _binding(
            "k4sinit:node-autoapprove-bootstrap", f"{csr}:nodeclient", "Group", BOOTSTRAP_GROUP
        ),
        _binding(
            "k4sinit:node-autoapprove-certificate-rotation",
            f"{csr}:selfnodeclient",
            "Group",
            "system:nodes",
        ),
        _binding("k4sinit:node-proxier", "system:node-proxier", "Group", "system:nodes"),
        *cluster_info_access(),
    ]


def cluster_info_access() -> list[dict[str, Any]]:
    """A Role and RoleBinding in kube-public that let ``system:anonymous`` get
    ``cluster-info`` and nothing else (kubeadm's ``bootstrap-signer-clusterinfo``)."""
    name = "k4sinit:bootstrap-signer-clusterinfo"
    rbac = "rbac.authorization.k8s.io"
    role = {
        "apiVersion": f"{rbac}/v1",
        "kind": "Role",
        "metadata": {"name": name, "namespace": "kube-public"},
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["configmaps"],
                "resourceNames": [CLUSTER_INFO],
                "verbs": ["get"],
            }
        ],
    }
    binding = {
        "apiVersion": f"{rbac}/v1",
        "kind": "RoleBinding",
        "metadata": {"name": name, "namespace": "kube-public"},
        "roleRef": {"apiGroup": rbac, "kind": "Role", "name": name},
        "subjects": [{"apiGroup": rbac, "kind": "User", "name": "system:anonymous"}],
    }
    return [role, binding]


def bootstrap_token_secret(
    token: str,
    *,
    description: str = "k4sinit: joins worker nodes (node.token)",
    expiration: str | None = None,
) -> dict[str, Any]:
    """The Secret that makes ``token`` (``id.secret``) a bootstrap token for nodes.

    ``expiration`` (RFC 3339) ends it; without one it never expires.
    """
    token_id, _, secret = token.partition(".")
    data = {
        "description": description,
        "token-id": token_id,
        "token-secret": secret,
        "usage-bootstrap-authentication": "true",
        "usage-bootstrap-signing": "true",
        "auth-extra-groups": BOOTSTRAP_GROUP,
    }
    if expiration is not None:
        data["expiration"] = expiration
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "bootstrap.kubernetes.io/token",
        "metadata": {"name": f"bootstrap-token-{token_id}", "namespace": "kube-system"},
        "stringData": data,
    }


def cluster_info(server: str, ca_pem: bytes) -> dict[str, Any]:
    """``kube-public/cluster-info``: a kubeconfig with the server and the CA, no credentials.

    A joining worker reads it anonymously and trusts it only once it has
    checked the CA against its token's hash and the bootstrapsigner's
    signature for its token (``jws-kubeconfig-<id>``, added to this object by
    the controller-manager); see k4sinit.node.join.
    """
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "",
                "cluster": {
                    "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                    "server": server,
                },
            }
        ],
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": CLUSTER_INFO, "namespace": "kube-public"},
        "data": {"kubeconfig": yaml.safe_dump(kubeconfig, sort_keys=False, width=1 << 20)},
    }


def cluster_info_file(node: NodeSettings) -> str:
    """Where the PKI step writes :func:`cluster_info` once the CA exists."""
    return f"{node.manifests_dir}/k4sinit-cluster-info.yaml"


def dump(objects: list[dict[str, Any]]) -> str:
    """Objects as a manifest file k4sinit writes (a header, then YAML documents)."""
    header = "# Written by k4sinit at every boot (k4sinit/services/manifests.py); do not edit.\n"
    return header + yaml.safe_dump_all(objects, sort_keys=False, default_flow_style=False)


def coredns_objects(node: NodeSettings) -> list[dict[str, Any]]:
    """CoreDNS's ClusterRole and binding (kubeadm's rules) and the kube-dns Service."""
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "system:coredns"},
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["endpoints", "services", "pods", "namespaces"],
                "verbs": ["list", "watch"],
            },
            {
                "apiGroups": ["discovery.k8s.io"],
                "resources": ["endpointslices"],
                "verbs": ["list", "watch"],
            },
        ],
    }
    dns = {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS"}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": DNS_SERVICE, "namespace": "kube-system", "labels": dns},
        "spec": {
            "clusterIP": str(node.cluster_dns),
            "ports": [
                {"name": "dns", "port": coredns.DNS_PORT, "protocol": "UDP"},
                {"name": "dns-tcp", "port": coredns.DNS_PORT, "protocol": "TCP"},
            ],
        },
    }
    binding = _binding("system:coredns", "system:coredns", "User", coredns.USER)
    return [role, binding, service]
