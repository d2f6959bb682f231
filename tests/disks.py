"""Disks for tests: loop devices over sparse files, mke2fs, and boots in private mount namespaces.

Whatever mounts runs in :func:`isolated`: a forked child in a private mount
namespace, whose mounts end with it (a reboot, as far as the disk can tell),
and which no other process on the machine can copy and keep (a mount made in
the host's namespace is copied into every namespace created meanwhile, and
holds its loop device until that namespace ends).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import shutil
import subprocess
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from k4sinit.host import system

MiB = 1 << 20

needs_loop = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("losetup") or not shutil.which("mke2fs"),
    reason="needs root, losetup and mke2fs (e2fsprogs)",
)

Attach = Callable[..., str]
T = TypeVar("T")


@contextlib.contextmanager
def loop_devices(directory: Path) -> Iterator[Attach]:
    """attach(size=64 MiB, read_only=False, name=...) -> a loop device over a new sparse
    file in ``directory``; each is detached at the end, whatever happened."""
    devices: list[str] = []

    def make(size: int = 64 * MiB, *, read_only: bool = False, name: str = "disk") -> str:
        image = directory / f"{name}-{len(devices)}.img"
        with open(image, "wb") as f:
            f.truncate(size)
        argv = ["losetup", "--find", "--show", *(["--read-only"] if read_only else []), str(image)]
        device = subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()
        devices.append(device)
        return device

    try:
        yield make
    finally:
        for device in reversed(devices):
            subprocess.run(["losetup", "--detach", device], check=False)


_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNS = 0x20000
MS_REC, MS_PRIVATE = 0x4000, 1 << 18


def isolated(fn: Callable[[], T]) -> T:
    """``fn()`` in a forked child in a private mount namespace; its result, or its exception.

    The child's mounts end with it, so each call is a boot of its own.
    """
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            os.close(read)
            if _libc.unshare(CLONE_NEWNS) != 0:
                raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
            system.mount("none", "/", "", MS_REC | MS_PRIVATE)
            try:
                outcome: tuple[bool, object, str] = (True, fn(), "")
            except BaseException as exc:
                outcome = (False, exc, traceback.format_exc())
            with os.fdopen(write, "wb") as f:
                f.write(pickle.dumps(outcome))
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    ok, value, trace = pickle.loads(data) if data else (False, AssertionError("child died"), "")
    if not ok:
        assert isinstance(value, BaseException)
        value.add_note(trace)
        raise value
    return value  # type: ignore[return-value]


def mkfs(device: str, kind: str = "ext4", label: str | None = None) -> None:
    argv = ["mke2fs", "-q", "-t", kind, *(["-L", label] if label else []), device]
    subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)


def fill(path: str) -> None:
    """Write to ``path`` until the filesystem refuses even 4 KiB more."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (MiB, 4096):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\xff" * chunk)
                    os.fsync(fd)
    finally:
        os.close(fd)
