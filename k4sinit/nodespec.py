"""The ``node:`` section of the config: which Kubernetes roles this node runs.

Pure data, like :mod:`k4sinit.netspec`: the config loader builds a
:class:`NodeSpec` from what the file says (``None`` where it says nothing);
:mod:`k4sinit.node` resolves it into settings and expands the profile into
services. Nothing here does I/O or imports trio.

It is its own module, below :mod:`k4sinit.spec`, because ``Config`` holds a
``NodeSpec`` while :mod:`k4sinit.node` needs ``Config`` and the config loader:
the types sit at the bottom, the expansion on top.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass

from k4sinit.netspec import IPAddress, IPNetwork
from k4sinit.spec import Probe, Resources


class Profile(enum.Enum):
    """What a node is: its control plane, a worker that joins one, or both."""

    CONTROLLER = "controller"
    WORKER = "worker"
    SINGLE = "single"


PROFILES = tuple(p.value for p in Profile)  # as k4sinit.role= and --profile spell them


class Datastore(enum.Enum):
    """Where the apiserver keeps its state; the service has the binary's name."""

    KINE = "kine"  # etcd's API over SQLite (k3s' default)
    ETCD = "etcd"


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
DATASTORES = tuple(d.value for d in Datastore)
CONTROL_ROLES = (APISERVER, SCHEDULER, CONTROLLER_MANAGER, MANIFESTS, COREDNS)
WORKER_ROLES = (CONTAINERD, IMAGES, KUBELET, KUBE_PROXY)
ALL_ROLES = (*DATASTORES, *CONTROL_ROLES, *WORKER_ROLES)
# Roles that run once (restartPolicy OnFailure): ``dependsOn: {images: Completed}`` is
# meaningful; every other role is restartPolicy Always and never completes.
ONESHOT_ROLES = frozenset({IMAGES})

# Also the roles' PATH: kubelet runs mount, umount and iptables, kube-proxy iptables;
# on this image busybox has them in /bin (u-root in /bbin).
DEFAULT_BIN_PATH = ("/bbin", "/usr/local/bin", "/usr/bin", "/usr/sbin", "/bin", "/sbin")
DEFAULT_DATA_DIR = "/var/lib/k4sinit"
DEFAULT_SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/12")
DEFAULT_POD_CIDR = ipaddress.ip_network("10.244.0.0/16")
# The pause image of Kubernetes v1.37 (kubeadm's constant, containerd 2.4's default);
# with no registry in reach, an air-gapped image tarball must carry this name.
DEFAULT_PAUSE_IMAGE = "registry.k8s.io/pause:3.10.2"


def profile_roles(profile: Profile, datastore: Datastore) -> tuple[str, ...]:
    """The role services of ``profile``, in start order."""
    control = (datastore.value, *CONTROL_ROLES)
    if profile is Profile.CONTROLLER:
        return control
    if profile is Profile.WORKER:
        return WORKER_ROLES
    return control + WORKER_ROLES


@dataclass(frozen=True, slots=True)
class RoleOverride:
    """``node.roles.<role>``: what the config changes in one role's service.

    ``extra_args`` are flag names without dashes; a value of None removes the
    role's default flag of that name. Probes, resources replace the role's;
    ``env`` is laid over the role's environment.
    """

    disabled: bool = False
    extra_args: tuple[tuple[str, str | None], ...] = ()
    readiness_probe: Probe | None = None
    liveness_probe: Probe | None = None
    resources: Resources | None = None
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """The ``node:`` section as written; None means "the default" (see k4sinit.node)."""

    profile: Profile = Profile.SINGLE
    name: str | None = None
    data_dir: str = DEFAULT_DATA_DIR
    pki_dir: str | None = None  # default <dataDir>/pki
    datastore: Datastore = Datastore.KINE
    service_cidr: IPNetwork = DEFAULT_SERVICE_CIDR
    pod_cidr: IPNetwork = DEFAULT_POD_CIDR
    cluster_domain: str = "cluster.local"
    cluster_dns: IPAddress | None = None  # default: the 10th address of service_cidr
    advertise_address: IPAddress | None = None
    bin_path: tuple[str, ...] = DEFAULT_BIN_PATH
    multicall: str | None = None
    server: str | None = None
    token: str | None = None
    bootstrap_kubeconfig: str | None = None
    images_dir: str | None = None  # default <dataDir>/images
    manifests_dir: str | None = None  # default <dataDir>/manifests
    pause_image: str = DEFAULT_PAUSE_IMAGE
    cni_bin_dir: str = "/opt/cni/bin"
    cni_conf_dir: str = "/etc/cni/net.d"
    roles: tuple[tuple[str, RoleOverride], ...] = ()
    line: int | None = None  # where the section starts, for errors found at expansion

    def override(self, role: str) -> RoleOverride:
        """The config's override of ``role`` (an empty one if it has none)."""
        return dict(self.roles).get(role, RoleOverride())
