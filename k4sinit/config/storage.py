"""The ``storage`` section: the block device that holds the node's state
(:class:`~k4sinit.core.config.StorageSpec`)::

    storage:
      device: {label: k4s-data, path: /dev/vda}  # label and/or uuid, and/or path
      filesystem: ext4                           # ext4 (default), ext3, ext2, xfs
      format: ifBlank                            # never (default), ifBlank
      mountPoint: /var/lib/k4sinit               # default: node.dataDir
      waitSeconds: 30                            # for the device to appear

Only the file is checked here; k4sinit.host.storage finds, checks, formats
and mounts the device at boot.
"""

from __future__ import annotations

import posixpath
import re

from k4sinit.config.reader import Reader, given
from k4sinit.core.config import STORAGE_FILESYSTEMS, FormatPolicy, StorageSpec
from k4sinit.core.nodespec import DEFAULT_DATA_DIR, NodeSpec

__all__ = ["read_storage"]

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
_MAX_WAIT = 3600.0
# Mounting over these would hide what PID 1 itself runs on.
_API_MOUNTS = ("/proc", "/sys", "/dev")
_NOT_OVER = ("/", "/run", "/tmp")


def read_storage(top: Reader, node: NodeSpec | None) -> StorageSpec | None:
    """``storage``: which device, which filesystem, whether it may be formatted, where it goes.

    The mount point defaults to the node's ``dataDir``; the node's data and
    PKI directories must be on the storage, or its state would not persist.
    """
    r = top.mapping("storage", hint="write it as storage: {device: {label: k4s-data}}")
    if r is None:
        return None
    label, uuid, path, named = _read_device(r)
    filesystem = r.choice("filesystem", list(STORAGE_FILESYSTEMS))
    policy = r.choice("format", [f.value for f in FormatPolicy])
    mount_point = _read_mount_point(r)
    wait = r.number("waitSeconds", maximum=_MAX_WAIT)
    r.finish()
    if label is not None and len(label.encode()) > STORAGE_FILESYSTEMS[filesystem or "ext4"]:
        limit = STORAGE_FILESYSTEMS[filesystem or "ext4"]
        hint = f"{filesystem or 'ext4'} takes at most {limit} bytes"
        r.doc.error((*r.path, "device", "label"), f"label {label!r} is too long", hint)
    if policy == FormatPolicy.IF_BLANK.value and path is None and named:
        r.error(
            "ifBlank needs device.path",
            "a blank disk has no label or UUID to be found by: name the disk to format,"
            " like path: /dev/vdb",
            key="format",
        )
    spec = StorageSpec(
        **given(
            label=label,
            uuid=uuid,
            path=path,
            filesystem=filesystem,
            format=None if policy is None else FormatPolicy(policy),
            wait=wait,
        ),
        mount_point=mount_point or (node.data_dir if node is not None else DEFAULT_DATA_DIR),
        line=top.doc.line(("storage",)),
    )
    if node is not None and (mount_point is not None or "mountPoint" not in r.data):
        _check_node_dirs(r, node, spec.mount_point)
    return spec


def _read_device(r: Reader) -> tuple[str | None, str | None, str | None, bool]:
    """``device``: (label, uuid, path, named); ``named`` is False after an error about
    the whole mapping (missing, or naming nothing), so later checks stay quiet."""
    device = r.mapping("device", required=True, hint="write it as device: {label: k4s-data}")
    if device is None:
        return None, None, None, False
    label = device.string("label")
    if label is not None and (not label or any(ord(c) < 0x20 or c == "\x7f" for c in label)):
        device.error(f"invalid label {label!r}", "printable characters, not empty", key="label")
        label = None
    uuid = device.string("uuid")
    if uuid is not None and not _UUID.fullmatch(uuid):
        device.error(
            f"invalid UUID {uuid!r}", "like 0f2c6a3e-5b1d-4e8a-9c1f-2a3b4c5d6e7f", key="uuid"
        )
        uuid = None
    path = device.absolute_path("path")
    if path is not None and not path.startswith("/dev/"):
        device.error(f"expected a device under /dev, got {path!r}", "like /dev/vdb", key="path")
        path = None
    device.finish()
    if not any(key in device.data for key in ("label", "uuid", "path")):
        device.error("name the device by label, uuid or path", "like device: {label: k4s-data}")
        return None, None, None, False
    return label, None if uuid is None else uuid.lower(), path, True


def _read_mount_point(r: Reader) -> str | None:
    text = r.absolute_path("mountPoint")
    if text is None:
        return None
    mount_point = posixpath.normpath(text)
    under_api = any(mount_point == api or mount_point.startswith(api + "/") for api in _API_MOUNTS)
    if under_api or mount_point in _NOT_OVER:
        r.error(
            f"cannot mount the storage on {mount_point}",
            "PID 1 runs on it; use the node's data directory, like /var/lib/k4sinit",
            key="mountPoint",
        )
        return None
    return mount_point


def _check_node_dirs(r: Reader, node: NodeSpec, mount_point: str) -> None:
    """The node's data and PKI directories must be on the storage: its state is the point."""
    for key, directory in (("dataDir", node.data_dir), ("pkiDir", node.pki_dir)):
        if directory is None:
            continue
        directory = posixpath.normpath(directory)
        if directory != mount_point and not directory.startswith(mount_point.rstrip("/") + "/"):
            r.error(
                f"node.{key} {directory} is not on the storage mounted at {mount_point}:"
                " the node's state would not persist",
                f"mount it at {directory} or above, or move node.{key} under {mount_point}",
                key="mountPoint",
            )
