"""newc cpio archives (the initramfs format): write a tree, read and unpack an archive.

Written archives are reproducible: every entry is owned by root with mtime 0, in
sorted order, parents first. Only directories, regular files and symlinks are
written and read (an initramfs needs nothing else; the kernel's devtmpfs makes /dev).
"""

from __future__ import annotations

import gzip
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

TRAILER = "TRAILER!!!"
_MAGIC = b"070701"
_HEADER = 110  # the magic and 13 fields of 8 hex digits


@dataclass(frozen=True)
class Entry:
    """One member: ``path`` relative to the root, ``mode`` with the file type bits,
    ``data``: a file's content or a symlink's target."""

    path: str
    mode: int
    data: bytes

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)


def _header(ino: int, mode: int, size: int, nlink: int, name: bytes) -> bytes:
    fields = (ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, len(name) + 1, 0)
    head = _MAGIC + b"".join(b"%08X" % f for f in fields) + name + b"\0"
    return head + b"\0" * (-len(head) % 4)


def tree_entries(tree: Path) -> Iterator[Entry]:
    """Everything under ``tree``, parents first, sorted; symlinks carry their target."""
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames.sort()
        rel = Path(dirpath).relative_to(tree)
        if rel != Path("."):
            yield Entry(str(rel), os.lstat(dirpath).st_mode, b"")
        for name in sorted(filenames + [d for d in dirnames if Path(dirpath, d).is_symlink()]):
            path = Path(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                data = os.readlink(path).encode()
            elif stat.S_ISREG(st.st_mode):
                data = path.read_bytes()
            else:
                continue
            yield Entry(str(rel / name), st.st_mode, data)


def pack(tree: Path, out: Path, *, compress: bool = True) -> int:
    """Write ``tree`` as a newc cpio (gzip level 6 if ``compress``), owned by root,
    mtime 0, so equal trees give equal images. Returns the uncompressed size."""
    size = 0
    with open(out, "wb") as raw:
        f = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) if compress else raw
        with f:
            for ino, entry in enumerate(tree_entries(tree), start=1):
                nlink = 2 if entry.is_dir else 1
                chunk = _header(ino, entry.mode, len(entry.data), nlink, entry.path.encode())
                chunk += entry.data + b"\0" * (-len(entry.data) % 4)
                f.write(chunk)
                size += len(chunk)
            trailer = _header(0, 0, 0, 1, TRAILER.encode())
            f.write(trailer)
            size += len(trailer)
    return size


def gzip_file(src: Path, dest: Path) -> None:
    """``dest`` = ``src`` gzipped (level 6, mtime 0: reproducible)."""
    with (
        open(src, "rb") as raw,
        open(dest, "wb") as out,
        gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6, mtime=0) as gz,
    ):
        while chunk := raw.read(1 << 20):
            gz.write(chunk)


def _open(path: Path) -> BinaryIO:
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    return cast(BinaryIO, gzip.GzipFile(path, "rb")) if gzipped else open(path, "rb")


def read(path: Path) -> Iterator[Entry]:
    """The members of the archive at ``path`` (gzipped or not), in order, up to its
    trailer. Raises ValueError on anything that is not newc."""
    with _open(path) as f:
        while True:
            head = f.read(_HEADER)
            if len(head) < _HEADER or head[:6] != _MAGIC:
                raise ValueError(f"{path}: not a newc cpio archive (bad header)")
            fields = [int(head[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
            mode, size, namesize = fields[1], fields[6], fields[11]
            name = f.read(namesize)[:-1].decode()
            f.read(-(_HEADER + namesize) % 4)
            data = f.read(size)
            f.read(-size % 4)
            if name == TRAILER:
                return
            yield Entry(name.lstrip("/").removeprefix("./") or ".", mode, data)


def unpack(path: Path, dest: Path) -> int:
    """Extract the archive at ``path`` into ``dest`` (directories, files with their
    permission bits, symlinks; a later member replaces an earlier one, as the
    kernel does). Returns the number of members."""
    count = 0
    for entry in read(path):
        count += 1
        target = dest / entry.path
        if entry.path == ".":
            continue
        if entry.is_dir:
            target.mkdir(parents=True, exist_ok=True)
            target.chmod(stat.S_IMODE(entry.mode))
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.is_file():
            target.unlink()
        if entry.is_symlink:
            target.symlink_to(entry.data.decode())
        elif entry.is_file:
            target.write_bytes(entry.data)
            target.chmod(stat.S_IMODE(entry.mode))
    return count
