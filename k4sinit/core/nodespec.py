"""The ``node:`` section of the config: which Kubernetes roles this node runs.

Pure data, like :mod:`k4sinit.core.netspec`: the config loader builds a
:class:`NodeSpec` from what the file says (``None`` where it says nothing);
:mod:`k4sinit.node.roles` resolves it into settings and expands the profile into
services. Nothing here does I/O or imports trio.

It is its own module, below :mod:`k4sinit.core.spec`, because ``Config`` holds a
``NodeSpec`` while :mod:`k4sinit.node.roles` needs ``Config`` and the config loader:
the types sit at the bottom, the expansion on top.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

from k4sinit.core.jointoken import JoinToken
from k4sinit.core.netspec import IPAddress, IPNetwork

# What a node is, and the profiles as k4sinit.role= and --profile spell them.
from k4sinit.core.reserved import PROFILES as PROFILES
from k4sinit.core.reserved import Profile as Profile
from k4sinit.core.spec import Probe, Resources


class Datastore(enum.Enum):
    """Where the apiserver keeps its state; the service has the binary's name."""

    KINE = "kine"  # etcd's API over SQLite (k3s' default)
    ETCD = "etcd"


class PodNetwork(enum.Enum):
    """How the node's pods get their network (``node.podNetwork``)."""

    BRIDGE = "bridge"  # one bridge over the whole podCIDR, written at boot: a node alone
    HOST_GATEWAY = "hostGateway"  # its Node's podCIDR, routes to the others' (pod-network role)
    NONE = "none"  # k4sinit writes no CNI config: a CNI add-on (a DaemonSet) does


POD_NETWORKS = tuple(p.value for p in PodNetwork)


def default_pod_network(profile: Profile) -> PodNetwork:
    """A single node bridges its pods on the whole range; a worker waits for an add-on."""
    return PodNetwork.BRIDGE if profile is Profile.SINGLE else PodNetwork.NONE


# Role names are service names and binary names (argv[0] of a multicall binary).
APISERVER = "kube-apiserver"
SCHEDULER = "kube-scheduler"
CONTROLLER_MANAGER = "kube-controller-manager"
MANIFESTS = "manifests"  # applies the cluster's own objects and the manifests directory
COREDNS = "coredns"  # the cluster DNS server
CONTAINERD = "containerd"
KUBELET = "kubelet"
KUBE_PROXY = "kube-proxy"
IMAGES = "images"  # a oneshot: the air-gap image import between containerd and kubelet
POD_NETWORK = "pod-network"  # k4sinit's host-gateway pod network (podNetwork: hostGateway)
DATASTORES = tuple(d.value for d in Datastore)
CONTROL_ROLES = (APISERVER, SCHEDULER, CONTROLLER_MANAGER, MANIFESTS, COREDNS)
WORKER_ROLES = (CONTAINERD, IMAGES, KUBELET, KUBE_PROXY)
ALL_ROLES = (*DATASTORES, *CONTROL_ROLES, *WORKER_ROLES, POD_NETWORK)
# Roles that run once (restartPolicy OnFailure): ``dependsOn: {images: Completed}`` is
# meaningful; every other role is restartPolicy Always and never completes.
ONESHOT_ROLES = frozenset({IMAGES})

# Also the roles' PATH: kubelet runs mount, umount and iptables, kube-proxy iptables;
# on this image busybox has them in /bin (u-root in /bbin).
DEFAULT_BIN_PATH = ("/bbin", "/usr/local/bin", "/usr/bin", "/usr/sbin", "/bin", "/sbin")
DEFAULT_DATA_DIR = "/var/lib/k4sinit"
PKI_DIR_NAME = "pki"  # <dataDir>/pki unless node.pkiDir says otherwise
KUBECONFIG_DIR_NAME = "kubeconfigs"  # beside the PKI directory: <pki>/../kubeconfigs
DEFAULT_CLUSTER_DOMAIN = "cluster.local"
APISERVER_PORT = 6443  # kube-apiserver's --secure-port, and the port of every kubeconfig's server
DEFAULT_SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/12")
DEFAULT_POD_CIDR = ipaddress.ip_network("10.244.0.0/16")
# The pause image of Kubernetes v1.37 (kubeadm's constant, containerd 2.4's default);
# with no registry in reach, an air-gapped image tarball must carry this name.
DEFAULT_PAUSE_IMAGE = "registry.k8s.io/pause:3.10.2"


def profile_roles(
    profile: Profile, datastore: Datastore, pod_network: PodNetwork | None = None
) -> tuple[str, ...]:
    """The role services of ``profile``, in start order; with ``pod_network``
    hostGateway a node that runs pods (worker, single) adds the pod-network role."""
    control = (datastore.value, *CONTROL_ROLES)
    if profile is Profile.CONTROLLER:
        return control
    pods = (POD_NETWORK,) if pod_network is PodNetwork.HOST_GATEWAY else ()
    if profile is Profile.WORKER:
        return (*WORKER_ROLES, *pods)
    return (*control, *WORKER_ROLES, *pods)


@dataclass(frozen=True, slots=True)
class RoleOverride:
    """``node.roles.<role>``: what the config changes in one role's service.

    ``extra_args`` are flag names without dashes; a value of None removes the
    role's default flag of that name. Probes, resources replace the role's;
    ``env`` is laid over the role's environment; ``critical`` marks the role's
    service critical (the hardware watchdog's, see ServiceSpec.critical).
    """

    disabled: bool = False
    extra_args: tuple[tuple[str, str | None], ...] = ()
    readiness_probe: Probe | None = None
    liveness_probe: Probe | None = None
    resources: Resources | None = None
    env: tuple[tuple[str, str], ...] = ()
    critical: bool = False


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """The ``node:`` section as written; None means "the default" (see k4sinit.node.roles)."""

    profile: Profile = Profile.SINGLE
    name: str | None = None
    data_dir: str = DEFAULT_DATA_DIR
    pki_dir: str | None = None  # default <dataDir>/pki (PKI_DIR_NAME)
    datastore: Datastore = Datastore.KINE
    service_cidr: IPNetwork = DEFAULT_SERVICE_CIDR
    pod_cidr: IPNetwork = DEFAULT_POD_CIDR
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
    cluster_dns: IPAddress | None = None  # default: the 10th address of service_cidr
    advertise_address: IPAddress | None = None
    bin_path: tuple[str, ...] = DEFAULT_BIN_PATH
    multicall: str | None = None
    server: str | None = None
    token: str | None = None
    join_token: JoinToken | None = None  # a worker's; k4sinit.token= on the kernel wins
    bootstrap_kubeconfig: str | None = None
    images_dir: str | None = None  # default <dataDir>/images
    manifests_dir: str | None = None  # default <dataDir>/manifests
    pause_image: str = DEFAULT_PAUSE_IMAGE
    cni_bin_dir: str = "/opt/cni/bin"
    cni_conf_dir: str = "/etc/cni/net.d"
    pod_network: PodNetwork | None = None  # default: default_pod_network(profile)
    roles: tuple[tuple[str, RoleOverride], ...] = ()
    line: int | None = None  # where the section starts, for errors found at expansion

    def override(self, role: str) -> RoleOverride:
        """The config's override of ``role`` (an empty one if it has none)."""
        return dict(self.roles).get(role, RoleOverride())


@dataclass(frozen=True, slots=True)
class NodeSettings:
    """The ``node:`` section with every default resolved: what the role modules read.

    ``roles`` are the role services this node runs (its profile's, minus the
    disabled ones), in start order. ``advertise_address`` None leaves the
    choice to the apiserver and kubelet: the default route's interface.
    """

    profile: Profile
    name: str
    roles: tuple[str, ...]
    data_dir: str
    pki_dir: str
    kubeconfig_dir: str
    datastore: Datastore
    service_cidr: IPNetwork
    pod_cidr: IPNetwork
    cluster_domain: str
    cluster_dns: IPAddress
    advertise_address: str | None
    bin_path: tuple[str, ...]
    multicall: str | None
    server: str | None
    token: str | None
    join_token: JoinToken | None
    bootstrap_kubeconfig: str | None
    images_dir: str
    manifests_dir: str
    pause_image: str
    cni_bin_dir: str
    cni_conf_dir: str
    pod_network: PodNetwork

    def pki(self, name: str) -> str:
        """The path of PKI file ``name`` (``ca.crt``, ``sa.key``, ...), as k4sinit.node.pki lays them out."""
        return f"{self.pki_dir}/{name}"

    def kubeconfig(self, name: str) -> str:
        """The path of kubeconfig ``name`` (``admin``, ``kubelet``, ...): ``<pki>/../kubeconfigs``."""
        return f"{self.kubeconfig_dir}/{name}.conf"

    @property
    def path(self) -> str:
        """``binPath`` as a PATH value."""
        return ":".join(self.bin_path)

    @property
    def env(self) -> tuple[tuple[str, str], ...]:
        """The environment of every role service."""
        return (("PATH", self.path),)
