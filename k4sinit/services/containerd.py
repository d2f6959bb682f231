"""The containerd role: the container runtime kubelet talks CRI to (containerd 2.x).

The command is ``containerd --config=<dataDir>/containerd/config.toml``; the
file is generated in containerd 2's layout (``version = 3``), after k3s
``pkg/agent/templates`` and k0s ``pkg/component/worker/containerd``:

* ``root`` /var/lib/containerd, ``state`` /run/containerd, the socket
  /run/containerd/containerd.sock;
* the CRI image service (``io.containerd.cri.v1.images``): the overlayfs
  snapshotter and the sandbox (pause) image of ``node.pauseImage`` as the
  pinned ``sandbox`` image, never pulled (``disable_pause_image_pull``): the
  air-gap tarball carries it, and the ``images`` oneshot imports it first;
* the CRI runtime (``io.containerd.cri.v1.runtime``): runc through
  ``io.containerd.runc.v2`` with ``SystemdCgroup = false`` (there is no
  systemd: cgroupfs, as kubelet's ``cgroupDriver``) and ``ShimCgroup =
  "/shims"``: each shim moves itself into k4sinit's ``/shims`` leaf, out of
  containerd's service cgroup, so stopping or restarting containerd (which
  empties that cgroup) leaves the pods running. CNI from ``node.cniBinDir``
  and ``node.cniConfDir``;
* the snapshotters that cannot work on a diskless node (btrfs, zfs,
  devmapper, blockfile, erofs) disabled, so containerd does not log their
  failures at every start.

With ``node.podNetwork: bridge`` (a single node's default) it also writes the
pod network: a CNI conflist with a ``bridge`` (cni0, gateway, masquerade)
whose ``host-local`` IPAM hands out ``node.podCIDR``, and ``portmap`` for
hostPort. The ``loopback`` plugin is not in the list because containerd's CRI
runs it for every pod by itself (it must be in the CNI bin dir). Where nodes
share the pod range, each node's share is the control plane's to allocate: with
``hostGateway`` the pod-network role writes the same conflist for the node's
own podCIDR once its Node has one (:func:`bridge_conflist`, without the bridge's
masquerade: pods reach pods on other nodes by their own addresses); with
``none`` (a worker's default) a CNI add-on (a DaemonSet) writes it.

Readiness: ``READY=1`` over ``NOTIFY_SOCKET`` (a ``notify`` probe), which
containerd sends once its plugins are loaded and its servers serve
(``command.notifyReady``); it says ``STOPPING=1`` on SIGTERM. It does not
pass ``NOTIFY_SOCKET`` on to runc (go-runc filters it out), so containers
are not held waiting for a notification of their own. Grace 30 s: it
exits in well under a second (containers and their shims live on), but it
closes its bolt database on the way.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from k4sinit.core.nodespec import CONTAINERD, PodNetwork
from k4sinit.core.spec import NotifyAction, Probe, ServiceSpec
from k4sinit.services import flags

if TYPE_CHECKING:
    from k4sinit.core.netspec import IPNetwork
    from k4sinit.core.nodespec import NodeSettings

NAME = CONTAINERD
ROOT = "/var/lib/containerd"
STATE = "/run/containerd"
SOCKET = f"{STATE}/containerd.sock"
SHIM_CGROUP = "/shims"  # k4sinit's leaf for shims (cgroups.CgroupTree.shims)
CNI_CONFLIST = "10-k4sinit.conflist"
BRIDGE = "cni0"


def config_path(node: NodeSettings) -> str:
    return f"{node.data_dir}/containerd/config.toml"


def service(node: NodeSettings) -> ServiceSpec:
    return ServiceSpec(
        name=NAME,
        command=(NAME,),
        args=flags({"config": config_path(node)}),
        env=node.env,
        readiness_probe=Probe(NotifyAction()),
        termination_grace_period=30.0,
    )


def files(node: NodeSettings) -> dict[str, str]:
    out = {config_path(node): config_toml(node)}
    if node.pod_network is PodNetwork.BRIDGE:
        out[f"{node.cni_conf_dir}/{CNI_CONFLIST}"] = cni_conflist(node)
    return out


def directories(node: NodeSettings) -> tuple[str, ...]:
    return ()


def _toml(value: str) -> str:
    # A TOML basic string: JSON's string escapes are TOML's.
    return json.dumps(value)


def config_toml(node: NodeSettings) -> str:
    images = "plugins.'io.containerd.cri.v1.images'"
    runtime = "plugins.'io.containerd.cri.v1.runtime'"
    runc = f"{runtime}.containerd.runtimes.runc"
    return f"""\
# Written by k4sinit at boot for node {node.name}; changes here are overwritten.
version = 3
root = {_toml(ROOT)}
state = {_toml(STATE)}
disabled_plugins = [
  "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.erofs",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = {_toml(SOCKET)}

[{images}]
  snapshotter = "overlayfs"

[{images}.pinned_images]
  sandbox = {_toml(node.pause_image)}

[{runtime}.containerd]
  default_runtime_name = "runc"

[{runc}]
  runtime_type = "io.containerd.runc.v2"
  disable_pause_image_pull = true

[{runc}.options]
  SystemdCgroup = false
  ShimCgroup = {_toml(SHIM_CGROUP)}

[{runtime}.cni]
  bin_dirs = [{_toml(node.cni_bin_dir)}]
  conf_dir = {_toml(node.cni_conf_dir)}
"""


def cni_conflist(node: NodeSettings) -> str:
    """The bridge network of a node alone: the whole pod range, masqueraded."""
    return bridge_conflist(node.pod_cidr, masquerade=True)


def bridge_conflist(subnet: IPNetwork, *, masquerade: bool) -> str:
    """A CNI conflist: pods on the cni0 bridge (their gateway) with addresses from
    ``subnet``; with ``masquerade`` the bridge plugin hides them behind the node's
    address on the way to anything outside ``subnet``."""
    default_route = "0.0.0.0/0" if subnet.version == 4 else "::/0"
    conflist = {
        "cniVersion": "1.0.0",
        "name": "k4sinit",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": masquerade,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": str(subnet)}]],
                    "routes": [{"dst": default_route}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    return json.dumps(conflist, indent=2) + "\n"
