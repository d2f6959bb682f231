"""Tiny container images made without a registry or network: docker-archive tarballs.

A docker archive (what ``docker save`` writes) is a tar of ``manifest.json``, an
image config JSON and one tar per layer; ``ctr images import`` reads it. The
archives here are reproducible: every entry is owned by root with mtime 0, so
the same inputs give the same bytes (and the same image digest).

:func:`pause_archive` is the pod sandbox image the node image carries at
``/var/lib/k4sinit/images/pause.tar``: Kubernetes' own pause program (compiled
from ``build/pause/linux/pause.c`` of the pinned k8s.io/kubernetes module by
``rootfs/k4s/gobuild.py``), tagged ``k4sinit.local/pause:<its TAG>``, with
upstream's entrypoint and user. The name is k4sinit's because the bytes are
not the registry's image; the node's config names it in ``node.pauseImage``
and containerd's ``pinned_images.sandbox``.

:func:`busybox_archive` is ``k4sinit.local/busybox:1``, at
``/var/lib/k4sinit/images/busybox.tar``: busybox-static with a link per applet
(sh, wget, httpd, nc, nslookup, ...), so a user can run a debugging pod, or a
small web server, with no registry in reach.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path

BUSYBOX = "/bin/busybox"
BUSYBOX_REF = "k4sinit.local/busybox:1"
BUSYBOX_PATH = "/var/lib/k4sinit/images/busybox.tar"  # in the node image
PAUSE_PATH = "/var/lib/k4sinit/images/pause.tar"  # in the node image
#: Applets a container has no use for (busybox's init would only confuse).
BUSYBOX_SKIP = frozenset({"busybox", "init", "linuxrc"})


def pause_ref(tag: str) -> str:
    """The name of the pause image built from Kubernetes' pause ``tag`` (3.10.2)."""
    return f"k4sinit.local/pause:{tag}"


#: A layer's content: image path -> file bytes (mode 0755), ``("symlink", target)``,
#: or ``("dir", "1777")`` (a directory with that octal mode).
LayerFiles = Mapping[str, "bytes | tuple[str, str]"]


def layer_tar(files: LayerFiles) -> bytes:
    """An uncompressed layer tar of ``files``, with their parent directories."""
    entries: dict[str, bytes | tuple[str, str] | None] = {}
    for path in files:
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            entries.setdefault("/".join(parts[:i]), None)  # a directory
    for path, data in files.items():
        entries[path.strip("/")] = data
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(entries):
            content = entries[name]
            if content is None:
                _add(tar, name, tarfile.DIRTYPE, 0o755)
            elif isinstance(content, tuple) and content[0] == "dir":
                _add(tar, name, tarfile.DIRTYPE, int(content[1], 8))
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
    entrypoint: Sequence[str] = (),
    user: str | None = None,
    env: Sequence[str] = ("PATH=/bin",),
    architecture: str = "amd64",
    labels: Mapping[str, str] | None = None,
) -> bytes:
    """A docker-archive tarball of one image tagged ``ref`` (``host/name:tag``)."""
    diff_ids = [hashlib.sha256(layer).hexdigest() for layer in layers]
    image_config: dict[str, object] = {"Env": list(env), "Cmd": list(cmd)}
    if entrypoint:
        image_config["Entrypoint"] = list(entrypoint)
    if user is not None:
        image_config["User"] = user
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


def busybox_archive(busybox: str | Path = BUSYBOX) -> bytes:
    """``k4sinit.local/busybox:1``: busybox-static, a link per applet, ``sh`` as command."""
    applets = subprocess.run(
        [str(busybox), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    files: dict[str, bytes | tuple[str, str]] = {"bin/busybox": Path(busybox).read_bytes()}
    for applet in applets:
        if applet not in BUSYBOX_SKIP:
            files[f"bin/{applet}"] = ("symlink", "busybox")
    files["tmp"] = ("dir", "1777")
    files["etc"] = ("dir", "755")
    layer = layer_tar(files)
    return docker_archive(BUSYBOX_REF, [layer], ["sh"])


def pause_archive(pause: str | Path, ref: str) -> bytes:
    """Kubernetes' pause binary at ``/pause`` as upstream's image has it: its
    entrypoint, run as 65535 (nobody needs more to hold a pod's namespaces)."""
    layer = layer_tar({"pause": Path(pause).read_bytes()})
    labels = {
        "org.opencontainers.image.description": (
            "Kubernetes' pause (build/pause/linux/pause.c), built by k4sinit's "
            "rootfs/k4s/gobuild.py"
        )
    }
    return docker_archive(
        ref, [layer], [], entrypoint=["/pause"], user="65535:65535", env=(), labels=labels
    )


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
