"""The node's persistent storage: find a block device, format it only when blank, mount it.

::

    prepare(spec)
      wait (up to spec.wait s) until a filesystem with spec's label/UUID shows
        up, or else spec.path: kernel uevents wake the rescan, a rescan at
        least every second
      -> the filesystem found is spec.filesystem      -> mount it
         spec.path holds anything else                -> StorageError, untouched
         spec.path is blank and format is ifBlank     -> mkfs with the label/UUID,
                                                         then mount it
      -> mount: read-write, never over another mount; a write test (fsync)
         says whether the disk is full

Devices are found and identified by reading ``/sys/class/block`` and the
superblocks directly (ext2/3/4, xfs, btrfs, vfat, exfat, ntfs, swap, LUKS, LVM,
RAID, squashfs, iso9660, f2fs, GPT and DOS partition tables), so the image needs no
blkid; formatting runs ``mke2fs`` (e2fsprogs) or ``mkfs.xfs`` from the image.

**Blank** means, exactly: every byte of the device's first MiB and of its last
MiB (the whole device if it is smaller than 2 MiB) is zero, and the kernel
shows no partition on it. Every filesystem, partition table, RAID, LVM and
encryption header keeps its signature there (GPT's backup, md 0.90/1.0 and
ZFS labels at the end), so a device that ever held one is not blank; one with
data k4sinit cannot name is not blank either. k4sinit never formats a device
that is not blank: its checks come first, then ``mke2fs`` (which, run without
a terminal, would overwrite a filesystem without asking).

Every refusal is a :class:`StorageError` naming the device, what the config
asked for and what was found. Boot treats it as a failed boot (the fallback
follows): a controller that started on an empty root would make a new cluster.

This module waits for mkfs with :mod:`subprocess`: it runs in the boot stages,
before any reaper exists (see :mod:`k4sinit.pid1.boot`), never in trio.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import shutil
import socket
import stat
import struct
import subprocess
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Protocol

from k4sinit.core.config import FormatPolicy, StorageSpec
from k4sinit.core.paths import DEFAULT_PATH
from k4sinit.host import system

__all__ = [
    "BlockDevice",
    "Mounted",
    "Probe",
    "Signature",
    "StorageError",
    "UeventWatch",
    "block_devices",
    "device_at",
    "identify",
    "matches",
    "mounted_on",
    "prepare",
    "probe",
    "size_text",
]

MiB = 1 << 20
EDGE = MiB  # the head and the tail that must be all zero for a device to be blank
SCAN = 128 << 10  # what is read of every device while looking for a label: all the signatures
RESCAN = 1.0  # seconds between rescans when no uevent comes
MKFS_TIMEOUT = 600.0
WRITE_TEST = ".k4sinit-write-test"
_NETLINK_KOBJECT_UEVENT = 15  # linux/netlink.h; not in Python's socket module

# ext2/3/4 feature bits that tell them apart (blkid's rules).
_EXT_HAS_JOURNAL = 0x4  # compat
_EXT_JOURNAL_DEV = 0x8  # incompat: an external journal, not a filesystem
_EXT2_INCOMPAT = 0x2 | 0x10  # filetype, meta_bg
_EXT3_INCOMPAT = 0x2 | 0x4 | 0x10  # filetype, recover, meta_bg
_EXT3_RO_COMPAT = 0x1 | 0x2 | 0x4  # sparse_super, large_file, btree_dir


class StorageError(Exception):
    """The storage cannot be used as the config says; the message says what was found."""


@dataclass(frozen=True)
class Signature:
    """What a device's bytes say it holds: a filesystem (``filesystem``) or a container
    of other things (a partition table, RAID or LVM member, encryption)."""

    kind: str  # ext4, xfs, vfat, gpt, dos, linux_raid_member, ...
    filesystem: bool
    label: str | None = None
    uuid: str | None = None

    def describe(self) -> str:
        text = _KIND_NAMES.get(self.kind, self.kind)
        if self.label:
            text += f" labelled {self.label!r}"
        if self.uuid:
            text += f" (UUID {self.uuid})"
        return text


_KIND_NAMES = {
    "gpt": "a GPT partition table",
    "dos": "a DOS (MBR) partition table or boot sector",
    "LVM2_member": "an LVM physical volume",
    "linux_raid_member": "a Linux RAID member",
    "crypto_LUKS": "a LUKS encrypted volume",
    "swap": "swap space",
    "jbd": "an ext4 external journal",
}


def _u16(data: bytes, offset: int) -> int:
    return int(struct.unpack_from("<H", data, offset)[0]) if len(data) >= offset + 2 else -1


def _u32(data: bytes, offset: int) -> int:
    return int(struct.unpack_from("<I", data, offset)[0]) if len(data) >= offset + 4 else -1


def _at(data: bytes, offset: int, magic: bytes) -> bool:
    return data[offset : offset + len(magic)] == magic


def _text(raw: bytes) -> str | None:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace").strip() or None


def _uuid(raw: bytes) -> str | None:
    return str(uuidlib.UUID(bytes=raw)) if len(raw) == 16 and any(raw) else None


def _ext(head: bytes) -> Signature | None:
    sb = 1024
    if _u16(head, sb + 56) != 0xEF53:
        return None
    compat, incompat, ro_compat = (_u32(head, sb + off) for off in (92, 96, 100))
    if incompat & _EXT_JOURNAL_DEV:
        kind = "jbd"
    elif compat & _EXT_HAS_JOURNAL:
        plain = not (incompat & ~_EXT3_INCOMPAT or ro_compat & ~_EXT3_RO_COMPAT)
        kind = "ext3" if plain else "ext4"
    else:
        plain = not (incompat & ~_EXT2_INCOMPAT or ro_compat & ~_EXT3_RO_COMPAT)
        kind = "ext2" if plain else "ext4"
    return Signature(
        kind,
        kind != "jbd",
        _text(head[sb + 120 : sb + 136]),
        _uuid(head[sb + 104 : sb + 120]),
    )


def _xfs(head: bytes) -> Signature | None:
    if not _at(head, 0, b"XFSB"):
        return None
    return Signature("xfs", True, _text(head[108:120]), _uuid(head[32:48]))


def _btrfs(head: bytes) -> Signature | None:
    sb = 0x10000
    if not _at(head, sb + 0x40, b"_BHRfS_M"):
        return None
    return Signature(
        "btrfs", True, _text(head[sb + 0x12B : sb + 0x22B]), _uuid(head[sb + 0x20 : sb + 0x30])
    )


def _fat(head: bytes) -> Signature | None:
    """vfat (FAT12/16/32), exfat and ntfs: boot sectors that end in 55 AA."""
    if not _at(head, 510, b"\x55\xaa"):
        return None
    if _at(head, 3, b"EXFAT   "):
        return Signature("exfat", True)
    if _at(head, 3, b"NTFS    "):
        return Signature("ntfs", True)
    if head[0] not in (0xEB, 0xE9):
        return None
    for kind_at, label_at, serial_at in ((82, 71, 67), (54, 43, 39)):  # FAT32, then FAT12/16
        if _at(head, kind_at, b"FAT"):
            serial = _u32(head, serial_at)
            label = _text(head[label_at : label_at + 11])
            return Signature(
                "vfat",
                True,
                None if label == "NO NAME" else label,
                f"{serial >> 16:04X}-{serial & 0xFFFF:04X}" if serial else None,
            )
    return None


def _others(head: bytes) -> Iterator[Signature]:
    """Signatures at fixed offsets that need no parsing beyond a magic."""
    if _at(head, 0, b"LUKS\xba\xbe"):
        yield Signature("crypto_LUKS", False, None, _text(head[168:208]))
    if any(
        _at(head, page - 10, m) for page in (4096, 65536) for m in (b"SWAPSPACE2", b"SWAP-SPACE")
    ):
        yield Signature("swap", False, _text(head[1052:1068]), _uuid(head[1036:1052]))
    if any(_u32(head, off) == 0xA92B4EFC for off in (0, 4096)):  # md 1.1, 1.2
        yield Signature("linux_raid_member", False)
    if any(
        _at(head, 512 * n, b"LABELONE") and _at(head, 512 * n + 24, b"LVM2 001") for n in range(4)
    ):
        yield Signature("LVM2_member", False)
    if _at(head, 0, b"hsqs"):
        yield Signature("squashfs", True)
    if _at(head, 0x8001, b"CD001"):
        yield Signature("iso9660", True)
    if _u32(head, 1024) == 0xF2F52010:
        yield Signature("f2fs", True)
    if _at(head, 512, b"EFI PART") or _at(head, 4096, b"EFI PART"):
        yield Signature("gpt", False)


def identify(head: bytes) -> tuple[Signature, ...]:
    """Every signature in ``head`` (a device's first bytes; 128 KiB hold them all).

    A DOS partition table is reported only when no boot-sector filesystem
    (vfat, exfat, ntfs) explains the 55 AA at byte 510.
    """
    found = [s for probe_fs in (_ext, _xfs, _btrfs, _fat) if (s := probe_fs(head)) is not None]
    found += _others(head)
    if _at(head, 510, b"\x55\xaa") and not any(s.kind in ("vfat", "exfat", "ntfs") for s in found):
        found.append(Signature("dos", False))
    return tuple(found)


# --- block devices --------------------------------------------------------------------


@dataclass(frozen=True)
class BlockDevice:
    """One block device the kernel shows in sysfs."""

    name: str  # as in /sys/class/block: vdb, loop3, nvme0n1p1
    path: str  # its node: /dev/vdb
    size: int  # bytes
    read_only: bool
    partitions: tuple[str, ...] = ()  # the kernel's partitions of it (names)


def _read_sysfs(directory: str, name: str) -> str | None:
    try:
        with open(os.path.join(directory, name)) as f:
            return f.read().strip()
    except OSError:
        return None


def _device(directory: str, path: str) -> BlockDevice:
    """The device whose sysfs directory is ``directory``, with its node at ``path``."""
    size, ro = _read_sysfs(directory, "size"), _read_sysfs(directory, "ro")
    try:
        children = sorted(
            entry.name
            for entry in os.scandir(directory)
            if entry.is_dir(follow_symlinks=False)
            and os.path.exists(os.path.join(entry.path, "partition"))
        )
    except OSError:
        children = []
    return BlockDevice(
        os.path.basename(directory),
        path,
        int(size) * 512 if size and size.isdigit() else 0,  # sysfs counts 512-byte sectors
        ro == "1",
        tuple(children),
    )


def _numbers(path: str) -> str | None:
    """``major:minor`` of the block device node at ``path``, None if it is not one."""
    try:
        node = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISBLK(node.st_mode):
        return None
    return f"{os.major(node.st_rdev)}:{os.minor(node.st_rdev)}"


def block_devices(sysfs: str = "/sys", dev: str = "/dev") -> list[BlockDevice]:
    """Every block device with its node in ``dev`` and a size (empty loop and CD
    drives are left out), in name order."""
    found = []
    with contextlib.suppress(OSError):
        for name in sorted(os.listdir(os.path.join(sysfs, "class", "block"))):
            directory = os.path.realpath(os.path.join(sysfs, "class", "block", name))
            path = os.path.join(dev, name.replace("!", "/"))
            if _numbers(path) != _read_sysfs(directory, "dev"):
                continue  # no node, or a stale one
            device = _device(directory, path)
            if device.size > 0:
                found.append(device)
    return found


def device_at(path: str, sysfs: str = "/sys") -> BlockDevice | None:
    """The block device whose node is ``path`` (None if there is none)."""
    numbers = _numbers(path)
    if numbers is None:
        return None
    directory = os.path.realpath(os.path.join(sysfs, "dev", "block", numbers))
    return _device(directory, path) if os.path.isdir(directory) else None


def mounted_on(mount_point: str, sysfs: str = "/sys", dev: str = "/dev") -> BlockDevice | None:
    """The block device whose filesystem is mounted at ``mount_point`` (None: no mount
    there, or one of no block device, like tmpfs)."""
    try:
        if not os.path.ismount(mount_point):
            return None
        here = os.stat(mount_point).st_dev
    except OSError:
        return None
    numbers = f"{os.major(here)}:{os.minor(here)}"
    directory = os.path.realpath(os.path.join(sysfs, "dev", "block", numbers))
    if not os.path.isdir(directory):
        return None
    return _device(directory, os.path.join(dev, os.path.basename(directory).replace("!", "/")))


def _read_exactly(fd: int, length: int, offset: int) -> bytes:
    data = bytearray()
    while len(data) < length:
        chunk = os.pread(fd, length - len(data), offset + len(data))
        if not chunk:
            break
        data += chunk
    return bytes(data)


@dataclass(frozen=True)
class Probe:
    """What one device holds: its signatures, and where its head or tail is not zero."""

    device: BlockDevice
    signatures: tuple[Signature, ...]
    nonzero: int | None  # offset of the first non-zero byte of the head or tail; None: all zero

    @property
    def blank(self) -> bool:
        """See the module docstring: all zero at both ends, no partitions, no signature."""
        return not self.signatures and self.nonzero is None and not self.device.partitions

    @property
    def filesystems(self) -> tuple[Signature, ...]:
        return tuple(s for s in self.signatures if s.filesystem)

    def describe(self) -> str:
        """``ext4 labelled 'x' (UUID ...)``, ``blank``, or what else is there."""
        parts = [s.describe() for s in self.signatures]
        if self.device.partitions:
            parts.append(f"partitions {', '.join(self.device.partitions)}")
        if not parts and self.nonzero is not None:
            parts.append(f"data k4sinit cannot name (a non-zero byte at offset {self.nonzero})")
        return " and ".join(parts) or "blank (all zero at both ends)"


def probe(device: BlockDevice, *, edges: bool = True) -> Probe:
    """Read ``device``'s head (and, with ``edges``, the zero check of its first and last
    MiB). Raises StorageError when it cannot be read."""
    try:
        fd = os.open(device.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise StorageError(f"cannot open {device.path}: {exc.strerror}") from None
    try:
        size = os.lseek(fd, 0, os.SEEK_END)
        head = _read_exactly(fd, min(size, EDGE if edges else SCAN), 0)
        nonzero = None
        if edges:
            tail_start = max(EDGE, size - EDGE)
            tail = _read_exactly(fd, size - tail_start, tail_start)
            nonzero = _first_nonzero(head, 0)
            if nonzero is None:
                nonzero = _first_nonzero(tail, tail_start)
    except OSError as exc:
        raise StorageError(f"cannot read {device.path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    return Probe(device, identify(head[:SCAN]), nonzero)


def _first_nonzero(data: bytes, base: int) -> int | None:
    stripped = data.lstrip(b"\0")
    return None if not stripped else base + len(data) - len(stripped)


# --- waiting for a device -------------------------------------------------------------


class UeventWatch:
    """The kernel's device events (netlink), to wake a wait for a device when one appears.

    Without the netlink socket (a sandbox that refuses it), :meth:`wait`
    sleeps instead: the caller rescans at least every :data:`RESCAN` seconds anyway.
    """

    def __init__(self) -> None:
        self._sock: socket.socket | None
        try:
            self._sock = socket.socket(
                socket.AF_NETLINK,
                socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK,
                _NETLINK_KOBJECT_UEVENT,
            )
            self._sock.bind((0, 1))  # group 1: the kernel's events
        except OSError:
            self._sock = None

    @property
    def listening(self) -> bool:
        """Whether the kernel's events arrive (else :meth:`wait` only sleeps)."""
        return self._sock is not None

    def wait(self, timeout: float) -> bool:
        """Return after the next device event (True), or after ``timeout`` seconds (False)."""
        if self._sock is None:
            time.sleep(timeout)
            return False
        ready, _, _ = select.select([self._sock], [], [], timeout)
        while True:
            try:
                self._sock.recv(1 << 16)
            except OSError:  # drained (EAGAIN), or overrun (ENOBUFS): rescan either way
                return bool(ready)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()

    def __enter__(self) -> UeventWatch:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class Watch(Protocol):
    """What :func:`prepare` waits with: a :class:`UeventWatch`, or a test's fake."""

    def wait(self, timeout: float) -> object:
        """Return after a device event or ``timeout`` seconds, whichever comes first."""


# --- finding, formatting, mounting ----------------------------------------------------


@dataclass(frozen=True)
class Mounted:
    """The storage as :func:`prepare` left it: mounted at ``mount_point``.

    ``write_error`` is why a test write failed (the disk is full, or the
    filesystem went read-only), None when writes work; ``hidden``: what the
    image had in the mount point, now covered by the mount.
    """

    device: str
    signature: Signature
    mount_point: str
    size: int  # bytes of the filesystem
    free: int  # bytes available, as df shows them (root may write into the reserve beyond)
    formatted: bool = False
    already: bool = False  # it was mounted there before (a boot retried)
    write_error: str | None = None
    hidden: tuple[str, ...] = ()

    def summary(self) -> str:
        """One line: device, filesystem, mount point, space."""
        what = "formatted and mounted" if self.formatted else "mounted"
        text = (
            f"{self.device} ({self.signature.describe()}) {what} on {self.mount_point}:"
            f" {size_text(self.free)} free of {size_text(self.size)}"
        )
        if self.write_error is not None:
            text += f"; writes fail: {self.write_error}"
        return text


def size_text(n: int) -> str:
    """``1.5 GiB``, ``2 GiB``, ``300 MiB``: a disk's size or free space for people."""
    if n >= 1 << 30:
        return f"{n / (1 << 30):.1f} GiB".replace(".0 GiB", " GiB")
    return f"{n >> 20} MiB"


@dataclass(frozen=True)
class _Context:
    """What :func:`prepare` works with (its arguments)."""

    sysfs: str
    dev: str
    clock: Callable[[], float]
    run: Callable[[Sequence[str]], tuple[int, str]]
    load_module: Callable[[str], str | None] | None
    say: Callable[[str], None]


def prepare(
    spec: StorageSpec,
    *,
    sysfs: str = "/sys",
    dev: str = "/dev",
    watch: Watch | None = None,
    clock: Callable[[], float] = time.monotonic,
    run: Callable[[Sequence[str]], tuple[int, str]] | None = None,
    load_module: Callable[[str], str | None] | None = None,
    say: Callable[[str], None] = lambda line: None,
) -> Mounted:
    """Find the storage ``spec`` names (waiting up to ``spec.wait`` s), format it if
    it is blank and the spec allows, and mount it read-write at ``spec.mount_point``.

    ``watch`` wakes the wait (default: a :class:`UeventWatch`), ``run`` runs
    mkfs (argv -> exit status, output), ``load_module`` loads the filesystem's
    kernel module (default: :class:`~k4sinit.host.system.ModuleLoader`);
    ``say`` gets a line per step. Idempotent: storage already mounted there
    is kept. Raises :class:`StorageError`; never formats a device that is
    not blank.
    """
    context = _Context(sysfs, dev, clock, run or _run, load_module, say)
    if watch is None:
        with UeventWatch() as events:
            found = _wait_for(spec, context, events)
    else:
        found = _wait_for(spec, context, watch)
    return _use(spec, found, context)


def _wait_for(spec: StorageSpec, context: _Context, watch: Watch) -> Probe:
    """The device's probe once it is there; StorageError after ``spec.wait`` s without it."""
    deadline = context.clock() + spec.wait
    waited = False
    while True:
        found = _locate(spec, context)
        if found is not None:
            return found
        left = deadline - context.clock()
        if left <= 0:
            raise StorageError(_missing(spec, context))
        if not waited:
            context.say(f"waiting up to {spec.wait:g}s for {spec.describe()}")
            waited = True
        watch.wait(min(left, RESCAN))


def matches(spec: StorageSpec, signature: Signature) -> bool:
    """Whether ``signature`` is a filesystem with every label and UUID ``spec`` gives."""
    return (
        signature.filesystem
        and (spec.label is None or signature.label == spec.label)
        and (spec.uuid is None or (signature.uuid or "").lower() == spec.uuid)
    )


def _locate(spec: StorageSpec, context: _Context) -> Probe | None:
    """The device with ``spec``'s label/UUID, else the one at ``spec.path``, else None.

    Two devices with the label/UUID are an error: k4sinit does not guess.
    """
    if spec.label is not None or spec.uuid is not None:
        found = []
        for device in block_devices(context.sysfs, context.dev):
            with contextlib.suppress(StorageError):  # unreadable: not the one (listed if missing)
                head = probe(device, edges=False)
                if any(matches(spec, s) for s in head.signatures):
                    found.append(device)
        if len(found) > 1:
            names = ", ".join(d.path for d in found)
            raise StorageError(
                f"{len(found)} devices carry {spec.describe()}: {names}; k4sinit will not"
                " choose one (relabel or wipe the others)"
            )
        if found:
            return probe(found[0])
    at_path = None if spec.path is None else device_at(spec.path, context.sysfs)
    return None if at_path is None else probe(at_path)


def _missing(spec: StorageSpec, context: _Context) -> str:
    """Why nothing was found, with what was seen instead."""
    seen = []
    for device in block_devices(context.sysfs, context.dev)[:16]:
        try:
            seen.append(f"{device.path} ({probe(device, edges=False).describe()})")
        except StorageError as exc:
            seen.append(f"{device.path} ({exc})")
    if spec.path is not None and spec.label is None and spec.uuid is None:
        what = f"no block device at {spec.path}"
    elif spec.path is not None:
        what = f"no filesystem with {spec.describe()}, and no block device at {spec.path}"
    else:
        what = f"no filesystem with {spec.describe()}"
    return f"{what} after {spec.wait:g}s; block devices: {'; '.join(seen) or 'none'}"


def _use(spec: StorageSpec, found: Probe, context: _Context) -> Mounted:
    """Check what was found against ``spec``, format a blank device if allowed, mount."""
    device = found.device
    matching = [s for s in found.filesystems if matches(spec, s)]
    formatted = False
    if matching:
        signature = matching[0]
        if len(found.filesystems) > 1:
            raise StorageError(
                f"{device.path} holds {found.describe()}: more than one filesystem"
                " signature; k4sinit will not guess which is real (wipe the stale one)"
            )
        if signature.kind != spec.filesystem:
            raise StorageError(
                f"{device.path} ({spec.describe()}) holds {signature.describe()}, not the"
                f" {spec.filesystem} storage.filesystem asks for; not mounting it, and"
                " never formatting a device that holds a filesystem"
            )
    elif not found.blank:
        named = spec.label is not None or spec.uuid is not None
        wanted = f"a filesystem with {spec.describe()}" if named else f"{spec.filesystem}"
        raise StorageError(
            f"{device.path} holds {found.describe()}, not {wanted}:"
            " k4sinit never formats a device that holds anything (wipe it yourself if it"
            " may be lost)"
        )
    elif spec.format is not FormatPolicy.IF_BLANK:
        raise StorageError(
            f"{device.path} is blank and storage.format is {spec.format.value}:"
            " set format: ifBlank to let k4sinit make a filesystem on it"
        )
    else:
        _writable(device, spec)
        _load_filesystem(spec.filesystem, context)
        signature = _format(spec, device, context)
        formatted = True
    return _mount(spec, device, signature, formatted, context)


def _writable(device: BlockDevice, spec: StorageSpec) -> None:
    if device.read_only:
        raise StorageError(
            f"{device.path} ({spec.describe()}) is read-only (sysfs {device.name}/ro is 1):"
            " the node's state needs a writable disk"
        )


def _mkfs_argv(spec: StorageSpec, path: str) -> list[str]:
    if spec.filesystem == "xfs":
        argv = ["mkfs.xfs", "-q"]
        argv += ["-L", spec.label] if spec.label else []
        argv += ["-m", f"uuid={spec.uuid}"] if spec.uuid else []
    else:
        argv = ["mke2fs", "-q", "-t", spec.filesystem]
        argv += ["-L", spec.label] if spec.label else []
        argv += ["-U", spec.uuid] if spec.uuid else []
    return [*argv, path]


def _run(argv: Sequence[str]) -> tuple[int, str]:
    """Run ``argv`` to its end: (exit status, its output). Only where no reaper runs."""
    program = shutil.which(argv[0], path=DEFAULT_PATH)
    if program is None:
        return 127, f"{argv[0]} not found in {DEFAULT_PATH}"
    try:
        done = subprocess.run(
            [program, *argv[1:]],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=MKFS_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 126, str(exc)
    return done.returncode, done.stdout.decode(errors="replace").strip()


def _format(spec: StorageSpec, device: BlockDevice, context: _Context) -> Signature:
    """mkfs on the blank ``device``; the new filesystem's signature, read back."""
    argv = _mkfs_argv(spec, device.path)
    context.say(f"{device.path} is blank: making {spec.filesystem} ({' '.join(argv)})")
    status, output = context.run(argv)
    if status != 0:
        detail = f": {output}" if output else ""
        raise StorageError(
            f"making {spec.filesystem} on {device.path} failed (exit status {status}){detail}"
        )
    made = [s for s in probe(device, edges=False).filesystems if matches(spec, s)]
    if len(made) != 1 or made[0].kind != spec.filesystem:
        raise StorageError(
            f"{' '.join(argv)} succeeded, but {device.path} shows no such filesystem"
        )
    return made[0]


def _load_filesystem(kind: str, context: _Context) -> None:
    """The kernel's driver for ``kind`` (ext2/3 are the ext4 driver's), loaded if missing."""
    driver = "xfs" if kind == "xfs" else "ext4"
    try:
        with open("/proc/filesystems") as f:
            known = {line.split()[-1] for line in f if line.strip()}
    except OSError:
        known = set()
    if driver in known:
        return
    load = context.load_module or system.ModuleLoader().load
    problem = load(driver)
    if problem is not None:
        raise StorageError(f"the kernel has no {driver} filesystem: {problem}")


def _mount(
    spec: StorageSpec, device: BlockDevice, signature: Signature, formatted: bool, context: _Context
) -> Mounted:
    """Mount ``device`` read-write at the mount point (kept if it is there already)."""
    target = spec.mount_point
    already = _mounted_here(device, target)
    hidden: tuple[str, ...] = ()
    if not already:
        _writable(device, spec)
        _load_filesystem(signature.kind, context)
        try:
            os.makedirs(target, mode=0o755, exist_ok=True)
            hidden = tuple(sorted(os.listdir(target)))
        except OSError as exc:
            raise StorageError(f"cannot make the mount point {target}: {exc.strerror}") from None
        fstype = "xfs" if signature.kind == "xfs" else "ext4"  # ext4's driver mounts ext2/3 too
        try:
            system.mount(device.path, target, fstype)
        except OSError as exc:
            raise StorageError(_mount_failed(device, spec, signature, exc)) from None
        if hidden:
            context.say(
                f"the mount on {target} hides what the image has there: {', '.join(hidden)}"
            )
    usage = os.statvfs(target)
    return Mounted(
        device=device.path,
        signature=signature,
        mount_point=target,
        size=usage.f_blocks * usage.f_frsize,
        free=usage.f_bavail * usage.f_frsize,
        formatted=formatted,
        already=already,
        write_error=write_test(target),
        hidden=hidden,
    )


def _mounted_here(device: BlockDevice, target: str) -> bool:
    """Whether ``target`` is a mount point of ``device``'s filesystem; StorageError if
    another filesystem is mounted there."""
    try:
        if not os.path.ismount(target):
            return False
        here, node = os.stat(target).st_dev, os.stat(device.path).st_rdev
    except OSError:
        return False
    if here != node:
        raise StorageError(
            f"{target} already has another filesystem mounted on it"
            f" (device {os.major(here)}:{os.minor(here)}), not {device.path}"
        )
    return True


def _mount_failed(
    device: BlockDevice, spec: StorageSpec, signature: Signature, exc: OSError
) -> str:
    what = f"mounting {device.path} ({signature.describe()}) on {spec.mount_point} failed"
    if exc.errno in (errno.EROFS, errno.EACCES):
        return f"{what}: the device is read-only ({exc.strerror}); the node's state needs a writable disk"
    return f"{what}: {exc.strerror} (see the kernel log: dmesg)"


def write_test(directory: str) -> str | None:
    """Write, sync and remove a small file in ``directory``: None when that works, else why not."""
    path = os.path.join(directory, WRITE_TEST)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"\0" * 4096)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        return exc.strerror or str(exc)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
    return None
