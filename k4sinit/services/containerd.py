"""The containerd role: the container runtime kubelet talks CRI to.

The command is ``containerd --config=<dataDir>/containerd/config.toml``; the
file is generated (version 2 layout, read by containerd 1.6 and 1.7), after
k3s ``pkg/agent/templates`` and k0s ``pkg/component/worker/containerd``:

* ``root`` /var/lib/containerd, ``state`` /run/containerd, the socket
  /run/containerd/containerd.sock;
* the CRI plugin on (``disabled_plugins = []``: some packages disable it),
  with the sandbox (pause) image of ``node.pauseImage``, which the
  air-gapped image tarball must carry;
* runc through ``io.containerd.runc.v2`` with ``SystemdCgroup = false``
  (there is no systemd: cgroupfs, as kubelet's ``cgroupDriver``) and
  ``ShimCgroup = "/shims/containerd"``: the shims leave containerd's service
  cgroup, so a restart of containerd (which empties that cgroup) does not
  kill the pods; k4sinit creates the cgroup;
* CNI from ``node.cniBinDir`` and ``node.cniConfDir``.

On a single node it also writes the pod network: a CNI conflist with a
``bridge`` (cni0, gateway, masquerade) whose ``host-local`` IPAM hands out
``node.podCIDR``, and ``portmap`` for hostPort. The ``loopback`` plugin is not
in the list because containerd's CRI runs it for every pod by itself (it
must be in the CNI bin dir). A controller has no pods and a worker's share of
the pod range is the control plane's to allocate, so there a CNI add-on
(a DaemonSet) writes the network config.

Readiness: its socket accepts. Grace 30 s: it exits in well under a second
(containers and their shims live on), but it closes its bolt database on
the way.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from k4sinit.nodespec import Profile
from k4sinit.services import flags
from k4sinit.spec import Probe, ServiceSpec, UnixSocketAction

if TYPE_CHECKING:
    from k4sinit.node import NodeSettings

NAME = "containerd"
ROOT = "/var/lib/containerd"
STATE = "/run/containerd"
SOCKET = f"{STATE}/containerd.sock"
SHIM_CGROUP = "/shims/containerd"
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
        readiness_probe=Probe(UnixSocketAction(SOCKET)),
        termination_grace_period=30.0,
    )


def files(node: NodeSettings) -> dict[str, str]:
    out = {config_path(node): config_toml(node)}
    if node.profile is Profile.SINGLE:
        out[f"{node.cni_conf_dir}/{CNI_CONFLIST}"] = cni_conflist(node)
    return out


def directories(node: NodeSettings) -> tuple[str, ...]:
    return ()


def _toml(value: str) -> str:
    # A TOML basic string: JSON's string escapes are TOML's.
    return json.dumps(value)


def config_toml(node: NodeSettings) -> str:
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    return f"""\
# Written by k4sinit at boot for node {node.name}; changes here are overwritten.
version = 2
root = {_toml(ROOT)}
state = {_toml(STATE)}
disabled_plugins = []

[grpc]
  address = {_toml(SOCKET)}

[{cri}]
  sandbox_image = {_toml(node.pause_image)}

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
  ShimCgroup = {_toml(SHIM_CGROUP)}

[{cri}.cni]
  bin_dir = {_toml(node.cni_bin_dir)}
  conf_dir = {_toml(node.cni_conf_dir)}
"""


def cni_conflist(node: NodeSettings) -> str:
    default_route = "0.0.0.0/0" if node.pod_cidr.version == 4 else "::/0"
    conflist = {
        "cniVersion": "1.0.0",
        "name": "k4sinit",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": str(node.pod_cidr)}]],
                    "routes": [{"dst": default_route}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    return json.dumps(conflist, indent=2) + "\n"
