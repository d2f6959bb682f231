"""The kubelet role (Kubernetes v1.37).

Flags after k0s ``pkg/component/worker/kubelet.go`` and k3s
``pkg/daemons/agent``: since v1.27 nearly everything is in the
``KubeletConfiguration`` file, so the command line is ``--config``,
``--kubeconfig``, ``--hostname-override`` (the node name) and ``--node-ip``
when the config gives ``advertiseAddress``. A worker adds
``--bootstrap-kubeconfig`` and ``--cert-dir``: it joins with a bootstrap
token (TLS bootstrap), gets its client certificate signed by the control
plane's controller-manager and writes its kubeconfig where ``--kubeconfig``
points, beside the PKI, so a persistent PKI dir keeps its identity. The
cluster's ``ca.crt`` and the bootstrap kubeconfig are not written at boot:
the join (k4sinit.node.join, the worker's ``pki`` built-in) writes them once
it has checked the CA against the token, so a worker's kubelet waits for
``pki: Ready``.

The ``KubeletConfiguration`` (kubelet.config.k8s.io/v1beta1):

* ``cgroupDriver: cgroupfs`` (no systemd), ``cgroupsPerQOS`` and
  ``cgroupRoot: /``: pods go to ``/kubepods/...``, beside k4sinit's own
  ``/init``, ``/services`` and ``/shims`` (a ``cgroupRoot`` of ``/kubepods``
  would nest them as ``/kubepods/kubepods``). The root cgroup then holds no
  process, so kubelet can enable controllers for its subtree;
* x509 client authentication against the cluster CA, webhook authentication
  and authorization, anonymous off;
* ``clusterDNS`` / ``clusterDomain``, ``resolvConf`` /etc/resolv.conf (k4sinit
  writes it from the network config or DHCP);
* ``tlsCertFile`` / ``tlsPrivateKeyFile``: the kubelet-server certificate on
  a node with the cluster PKI; a worker serves a self-signed one from its
  cert dir and rotates its client certificate;
* health on 127.0.0.1:10248, ``failSwapOn: false``,
  ``staticPodPath`` <dataDir>/pod-manifests (``<dataDir>/manifests`` is the
  ``manifests`` role's: objects applied to the cluster), the containerd socket
  as ``containerRuntimeEndpoint`` (a config field since v1.27). The cgroup
  driver is said twice on purpose: since v1.36 kubelet takes it from
  containerd 2, which reports cgroupfs (``SystemdCgroup = false``); the field
  is what an older runtime would be matched against.

Readiness: ``READY=1`` over ``NOTIFY_SOCKET`` (a ``notify`` probe): kubelet
sends it once its loops run (``cmd/kubelet/app/server.go``, after
``RunKubelet``; a worker's TLS bootstrap, and so its kubeconfig, comes
before). No ``WATCHDOG_USEC``: kubelet's systemd watchdog stays off.

Dependencies: containerd and the network ready, and on a single node the
apiserver ready (it registers the node at once), on a worker the join. Grace 30 s: kubelet leaves
pods running on SIGTERM (graceful node shutdown needs systemd's inhibitor
locks) and exits within a second or two; the ceiling covers its checkpoint
writes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import yaml

from k4sinit.core.nodespec import KUBELET, Profile
from k4sinit.core.spec import NETWORK, PKI, Condition, NotifyAction, Probe, ServiceSpec
from k4sinit.services import apiserver, containerd, flags, images

if TYPE_CHECKING:
    from k4sinit.core.nodespec import NodeSettings

NAME = KUBELET
HEALTHZ_PORT = 10248
BOOTSTRAP_KUBECONFIG = "bootstrap-kubelet"  # <kubeconfigs>/bootstrap-kubelet.conf


def config_path(node: NodeSettings) -> str:
    return f"{node.data_dir}/kubelet/config.yaml"


def bootstrap_kubeconfig(node: NodeSettings) -> str | None:
    """The worker's bootstrap kubeconfig: given, written by the join, or None."""
    if node.profile is not Profile.WORKER:
        return None
    if node.bootstrap_kubeconfig is not None:
        return node.bootstrap_kubeconfig
    return node.kubeconfig(BOOTSTRAP_KUBECONFIG)


def service(node: NodeSettings) -> ServiceSpec:
    worker = node.profile is Profile.WORKER
    args = flags(
        {
            "config": config_path(node),
            "kubeconfig": node.kubeconfig("kubelet"),
            "bootstrap-kubeconfig": bootstrap_kubeconfig(node),
            "cert-dir": node.pki("kubelet") if worker else None,
            "hostname-override": node.name,
            "node-ip": node.advertise_address,
        }
    )
    depends_on = [
        (containerd.NAME, Condition.READY),
        (images.NAME, Condition.COMPLETED),  # air-gapped images, the pause image among them
        (NETWORK, Condition.READY),
    ]
    if worker:
        depends_on.append((PKI, Condition.READY))  # the join: ca.crt, the bootstrap kubeconfig
    else:
        depends_on.append((apiserver.NAME, Condition.READY))
    return ServiceSpec(
        name=NAME,
        command=(NAME,),
        args=args,
        env=node.env,
        depends_on=tuple(depends_on),
        readiness_probe=Probe(NotifyAction()),
        termination_grace_period=30.0,
    )


def files(node: NodeSettings) -> dict[str, str]:
    return {config_path(node): kubelet_configuration(node)}


def directories(node: NodeSettings) -> tuple[str, ...]:
    return (static_pod_path(node),)


def static_pod_path(node: NodeSettings) -> str:
    return f"{node.data_dir}/pod-manifests"


def _dump(header: str, data: dict[str, Any]) -> str:
    return f"# {header}\n" + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def kubelet_configuration(node: NodeSettings) -> str:
    worker = node.profile is Profile.WORKER
    config: dict[str, Any] = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": node.pki("ca.crt")},
        },
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": "/",
        "cgroupsPerQOS": True,
        "clusterDNS": [str(node.cluster_dns)],
        "clusterDomain": node.cluster_domain,
        "containerRuntimeEndpoint": f"unix://{containerd.SOCKET}",
        "failSwapOn": False,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": HEALTHZ_PORT,
        "resolvConf": "/etc/resolv.conf",
        "staticPodPath": static_pod_path(node),
    }
    if worker:
        config["rotateCertificates"] = True
    else:
        config["tlsCertFile"] = node.pki("kubelet-server.crt")
        config["tlsPrivateKeyFile"] = node.pki("kubelet-server.key")
    return _dump(f"Written by k4sinit at boot for node {node.name}.", config)


def bootstrap_kubeconfig_text(node: NodeSettings, server: str, token: str) -> str:
    """A kubeconfig for ``server`` that authenticates with the bootstrap ``token``
    (``id.secret``: it holds a secret) and trusts the node's ``ca.crt``."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "k4sinit",
                "cluster": {"server": server, "certificate-authority": node.pki("ca.crt")},
            }
        ],
        "users": [{"name": "kubelet-bootstrap", "user": {"token": token}}],
        "contexts": [
            {"name": "bootstrap", "context": {"cluster": "k4sinit", "user": "kubelet-bootstrap"}}
        ],
        "current-context": "bootstrap",
    }
    return _dump("Written by k4sinit's join for kubelet TLS bootstrap; it holds a token.", config)
