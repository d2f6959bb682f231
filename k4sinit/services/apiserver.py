"""The kube-apiserver role (Kubernetes v1.37).

Flags after k0s ``pkg/component/controller/apiserver.go`` and k3s
``pkg/daemons/control/server.go`` (``apiServer``), without their extras
(konnectivity egress, k3s' tunnel and cert-dir):

* storage: ``--etcd-servers=http://127.0.0.1:2379`` (kine or etcd on loopback);
* serving: ``--secure-port=6443``, the apiserver certificate, and
  ``--advertise-address`` when the config gives one (else the apiserver takes
  the address of the default route's interface: the node's first address);
* clients: ``--client-ca-file`` (the cluster CA); anonymous requests only
  for ``kube-public/cluster-info`` (an ``AuthenticationConfiguration`` file,
  ``--authentication-config``, whose anonymous authenticator has that one path
  as its condition): a joining worker reads it before it trusts anything,
  as kubeadm's discovery does; every other caller, our readiness probe
  included, presents a client certificate or a token, as with k3s'
  ``--anonymous-auth=false``; ``--enable-bootstrap-token-auth`` for kubelet
  TLS bootstrap,
  ``--authorization-mode=Node,RBAC``, ``--enable-admission-plugins=NodeRestriction``;
* kubelets: the apiserver-kubelet-client certificate and
  ``--kubelet-preferred-address-types``; the kubelet's serving certificate is
  not verified (no ``--kubelet-certificate-authority``), as kubeadm, since a
  joined worker serves a self-signed one;
* aggregation: the front-proxy CA and client and the ``--requestheader-*`` set;
* service accounts: ``sa.pub`` / ``sa.key`` and the issuer
  ``https://kubernetes.default.svc.<clusterDomain>`` (k3s' choice);
* ``--service-cluster-ip-range``, ``--allow-privileged`` (kubelet runs
  privileged pods such as a CNI daemonset), ``--profiling=false``.

The probes are kubeadm's, with the admin client certificate (system:masters):
readiness ``/readyz`` every second with a 15 s timeout (under TCG a healthy
apiserver takes more than a second to answer at times); a startup probe on
``/livez`` that allows kubeadm's 4 minutes before liveness takes over, since the
first start of v1.37 waits for its watch cache and makes the default RBAC
objects, which on an emulated machine takes two minutes; it looks every 2 s (120
times, not kubeadm's 24 x 10 s), so the node does not wait up to 10 s more for
an apiserver that is up. Then liveness ``/livez`` every 10 s, killed after
8 failures in a row: an apiserver wedged on its storage recovers by
restarting, a slow start is not mistaken for that. CPU: ``CONTROL_PLANE_FIRST``
(see k4sinit/services/__init__.py). Grace 30 s: on SIGTERM it
drains requests in flight; watches end at once, so it is done in a few seconds.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import yaml

from k4sinit.core.nodespec import APISERVER, APISERVER_PORT
from k4sinit.core.spec import NETWORK, PKI, Condition, Probe, ServiceSpec, TLSConfig
from k4sinit.services import CONTROL_PLANE_FIRST, datastore, flags, https_get

if TYPE_CHECKING:
    from k4sinit.core.nodespec import NodeSettings

NAME = APISERVER
PORT = APISERVER_PORT
#: The one path anonymous requests may take (kubeadm's discovery reads it).
CLUSTER_INFO_PATH = "/api/v1/namespaces/kube-public/configmaps/cluster-info"


def service(node: NodeSettings) -> ServiceSpec:
    pki = node.pki
    args = flags(
        {
            "advertise-address": node.advertise_address,
            "allow-privileged": "true",
            "authentication-config": authentication_config_path(node),
            "authorization-mode": "Node,RBAC",
            "client-ca-file": pki("ca.crt"),
            "enable-admission-plugins": "NodeRestriction",
            "enable-bootstrap-token-auth": "true",
            "etcd-servers": f"http://127.0.0.1:{datastore.CLIENT_PORT}",
            "kubelet-client-certificate": pki("apiserver-kubelet-client.crt"),
            "kubelet-client-key": pki("apiserver-kubelet-client.key"),
            "kubelet-preferred-address-types": "InternalIP,ExternalIP,Hostname",
            "profiling": "false",
            "proxy-client-cert-file": pki("front-proxy-client.crt"),
            "proxy-client-key-file": pki("front-proxy-client.key"),
            "requestheader-allowed-names": "front-proxy-client",
            "requestheader-client-ca-file": pki("front-proxy-ca.crt"),
            "requestheader-extra-headers-prefix": "X-Remote-Extra-",
            "requestheader-group-headers": "X-Remote-Group",
            "requestheader-username-headers": "X-Remote-User",
            "secure-port": str(PORT),
            "service-account-issuer": f"https://kubernetes.default.svc.{node.cluster_domain}",
            "service-account-key-file": pki("sa.pub"),
            "service-account-signing-key-file": pki("sa.key"),
            "service-cluster-ip-range": str(node.service_cidr),
            "tls-cert-file": pki("apiserver.crt"),
            "tls-private-key-file": pki("apiserver.key"),
        }
    )
    return ServiceSpec(
        name=NAME,
        command=(NAME,),
        args=args,
        env=node.env,
        depends_on=(
            (datastore.name(node), Condition.READY),
            (NETWORK, Condition.READY),
            (PKI, Condition.READY),  # built in: the certificates and kubeconfigs exist
        ),
        readiness_probe=Probe(
            https_get(PORT, "/readyz", admin_tls(node)), timeout=15.0, failure_threshold=3
        ),
        startup_probe=Probe(
            https_get(PORT, "/livez", admin_tls(node)),
            initial_delay=5.0,
            period=2.0,
            timeout=15.0,
            failure_threshold=120,
        ),
        liveness_probe=Probe(
            https_get(PORT, "/livez", admin_tls(node)),
            period=10.0,
            timeout=15.0,
            failure_threshold=8,
        ),
        termination_grace_period=30.0,
        resources=CONTROL_PLANE_FIRST,
    )


def admin_tls(node: NodeSettings) -> TLSConfig:
    """The cluster CA and the admin client certificate: what probes of the apiserver present."""
    return TLSConfig(
        ca_file=node.pki("ca.crt"), cert_file=node.pki("admin.crt"), key_file=node.pki("admin.key")
    )


def authentication_config_path(node: NodeSettings) -> str:
    return f"{node.data_dir}/kube-apiserver/authentication.yaml"


def files(node: NodeSettings) -> dict[str, str]:
    # Certificates and keys come from k4sinit.node.pki.
    return {authentication_config_path(node): authentication_config()}


def authentication_config() -> str:
    """Anonymous access to ``kube-public/cluster-info`` alone (see the module docstring)."""
    config = {
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "AuthenticationConfiguration",
        "anonymous": {"enabled": True, "conditions": [{"path": CLUSTER_INFO_PATH}]},
    }
    header = "# Written by k4sinit at boot (k4sinit/services/apiserver.py).\n"
    return header + yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


def directories(node: NodeSettings) -> tuple[str, ...]:
    return ()
