"""Tiny container images made without a registry or network: docker-archive tarballs.

A docker archive (what ``docker save`` writes) is a tar of ``manifest.json``, an
image config JSON and one tar per layer; ``ctr images import`` reads it. The
archives here are reproducible: every entry is owned by root with mtime 0, so
the same inputs give the same bytes (and the same image digest).

:func:`hello_archive` is the test image the node image carries at
``/var/lib/k4sinit/images/hello.tar``: busybox-static as ``/bin/busybox``, ``/bin/sh``
and ``/bin/echo`` linking to it, and ``Cmd ["/bin/sh", "-c", "echo hello from a
container"]``.

:func:`pause_archive` is the pod sandbox image the node image carries at
``/var/lib/k4sinit/images/pause.tar``, tagged ``k4sinit.local/pause:3.10``: a
**stand-in for registry.k8s.io/pause**, which cannot be fetched here (no
registry in reach). It behaves like pause at its interface: as PID 1 of its
container it sleeps forever, reaps the zombies the pod's processes leave it,
and exits 0 at once on SIGTERM or SIGINT. It is busybox-static's ``sh``
running :data:`PAUSE_SCRIPT`, not the real pause (a tiny static C program);
a node that uses it names it in ``node.pauseImage``.
"""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path

HELLO_REF = "k4sinit.local/hello:1"
HELLO_PATH = "/var/lib/k4sinit/images/hello.tar"  # in the node image
HELLO_CMD = ("/bin/sh", "-c", "echo hello from a container")
BUSYBOX = "/bin/busybox"

PAUSE_REF = "k4sinit.local/pause:3.10"  # 3.10: registry.k8s.io/pause of Kubernetes v1.31
PAUSE_PATH = "/var/lib/k4sinit/images/pause.tar"  # in the node image
#: PID 1 of a pod sandbox. The kernel drops a signal to a container's PID 1 that
#: has no handler for it, hence the ``trap``; ``wait`` returns as soon as a trapped
#: signal arrives, so the exit is prompt. Orphans of the pod's processes are
#: reparented to this shell, and ash's ``wait`` reaps any child that exits, not
#: only its own ``sleep``. Measured with busybox 1.35 as PID 1 of a pid namespace:
#: three orphans reaped (no zombie left), SIGTERM and SIGINT each exit 0 in ~1 ms.
PAUSE_SCRIPT = "trap 'exit 0' TERM INT; while :; do sleep 86400 & wait $!; done"
PAUSE_CMD = ("/bin/sh", "-c", PAUSE_SCRIPT)
PAUSE_DESCRIPTION = (
    "stand-in for registry.k8s.io/pause:3.10 made by k4sinit's rootfs/oci.py: "
    "busybox sh that sleeps, reaps zombies and exits 0 on SIGTERM or SIGINT"
)

#: A layer's content: image path -> file bytes (mode 0755), or ``("symlink", target)``.
LayerFiles = Mapping[str, "bytes | tuple[str, str]"]


def layer_tar(files: LayerFiles) -> bytes:
    """An uncompressed layer tar of ``files``, with their parent directories."""
    entries: dict[str, bytes | tuple[str, str] | None] = {}
    for path in files:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            entries.setdefault("/".join(parts[:i]), None)  # a directory
    for path, content in files.items():
        entries[path.strip("/")] = content
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(entries):
            content = entries[name]
            if content is None:
                _add(tar, name, tarfile.DIRTYPE, 0o755)
            elif isinstance(content, tuple):
                _add(tar, name, tarfile.SYMTYPE, 0o777, link=content[1])
            else:
                _add(tar, name, tarfile.REGTYPE, 0o755, data=content)
    return buf.getvalue()


def docker_archive(
    ref: str,
    layers: Sequence[bytes],
    cmd: Sequence[str],
    *,
    env: Sequence[str] = ("PATH=/bin",),
    architecture: str = "amd64",
    labels: Mapping[str, str] | None = None,
) -> bytes:
    """A docker-archive tarball of one image tagged ``ref`` (``host/name:tag``)."""
    diff_ids = [hashlib.sha256(layer).hexdigest() for layer in layers]
    image_config: dict[str, object] = {"Env": list(env), "Cmd": list(cmd)}
    if labels:
        image_config["Labels"] = dict(labels)
    config = {
        "architecture": architecture,
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": image_config,
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d in diff_ids]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "k4sinit rootfs/oci.py"}],
    }
    config_bytes = json.dumps(config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    layer_names = [f"{d}/layer.tar" for d in diff_ids]
    manifest = [{"Config": config_name, "RepoTags": [ref], "Layers": layer_names}]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        _add(tar, "manifest.json", tarfile.REGTYPE, 0o644, data=json.dumps(manifest).encode())
        _add(tar, config_name, tarfile.REGTYPE, 0o644, data=config_bytes)
        for name, layer in zip(layer_names, layers, strict=True):
            _add(tar, name.split("/")[0], tarfile.DIRTYPE, 0o755)
            _add(tar, name, tarfile.REGTYPE, 0o644, data=layer)
    return buf.getvalue()


def hello_archive(busybox: str | Path = BUSYBOX) -> bytes:
    """The ``k4sinit.local/hello:1`` image: busybox-static and a shell that says hello."""
    layer = layer_tar(
        {
            "bin/busybox": Path(busybox).read_bytes(),
            "bin/sh": ("symlink", "busybox"),
            "bin/echo": ("symlink", "busybox"),
        }
    )
    return docker_archive(HELLO_REF, [layer], HELLO_CMD)


def pause_archive(busybox: str | Path = BUSYBOX) -> bytes:
    """The ``k4sinit.local/pause:3.10`` image: a stand-in for registry.k8s.io/pause.

    busybox-static with ``/bin/sh`` and ``/bin/sleep`` linking to it and
    :data:`PAUSE_CMD` as its command (see the module docstring for what it does
    and what it is not); its label ``org.opencontainers.image.description``
    says it is a stand-in.
    """
    layer = layer_tar(
        {
            "bin/busybox": Path(busybox).read_bytes(),
            "bin/sh": ("symlink", "busybox"),
            "bin/sleep": ("symlink", "busybox"),
        }
    )
    labels = {"org.opencontainers.image.description": PAUSE_DESCRIPTION}
    return docker_archive(PAUSE_REF, [layer], PAUSE_CMD, labels=labels)


def _add(
    tar: tarfile.TarFile, name: str, kind: bytes, mode: int, *, data: bytes = b"", link: str = ""
) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
