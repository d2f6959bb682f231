"""The air-gap image import: a oneshot between containerd and kubelet.

Every image tarball (``*.tar``, ``*.tar.gz``, ``*.tgz``: docker-archive or
OCI layout, as ``ctr images import`` takes them) in ``node.imagesDir`` is
imported into containerd's ``k8s.io`` namespace once containerd is ready and
before kubelet starts, so a node with no registry in reach has its pause image
and its workloads (k0s and k3s do the same with their airgap bundles). No
tarball is fine: the loop does nothing. A failed import fails the oneshot
(restartPolicy OnFailure retries it with backoff) and kubelet keeps waiting,
visibly, with the reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from k4sinit.core.nodespec import IMAGES
from k4sinit.core.paths import SHELL
from k4sinit.core.spec import Backoff, Condition, RestartPolicy, ServiceSpec
from k4sinit.services import containerd

if TYPE_CHECKING:
    from k4sinit.core.nodespec import NodeSettings

NAME = IMAGES

# $1: the images directory; $2: containerd's socket. POSIX sh (busybox or dash).
SCRIPT = """\
set -e
found=0
for image in "$1"/*.tar "$1"/*.tar.gz "$1"/*.tgz; do
    [ -e "$image" ] || continue
    found=$((found + 1))
    echo "importing $image"
    ctr --address "$2" --namespace k8s.io images import "$image"
done
echo "imported $found image archive(s) from $1"
"""


def service(node: NodeSettings) -> ServiceSpec:
    return ServiceSpec(
        name=NAME,
        command=(SHELL, "-c", SCRIPT, NAME, node.images_dir, containerd.SOCKET),
        env=node.env,
        depends_on=((containerd.NAME, Condition.READY),),
        restart_policy=RestartPolicy.ON_FAILURE,
        backoff=Backoff(initial=2.0, max=60.0),
        termination_grace_period=30.0,
    )


def files(node: NodeSettings) -> dict[str, str]:
    return {}


def directories(node: NodeSettings) -> tuple[str, ...]:
    return (node.images_dir,)
