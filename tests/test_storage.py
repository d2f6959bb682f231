"""Tests for k4sinit.host.storage: real loop devices, real mke2fs, real mounts.

Loop devices over sparse files in tmp_path, detached after each test; each
boot runs in :func:`tests.disks.isolated` (a child in a private mount
namespace: its mounts end with it, as at a reboot). Labels carry a random
suffix, since the label scan reads every block device of the machine.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from k4sinit.core.config import FormatPolicy, StorageSpec
from k4sinit.host import storage, system
from k4sinit.host.storage import Signature, StorageError, identify
from tests import disks
from tests.disks import MiB, isolated, mkfs, needs_loop

Attach = disks.Attach


@pytest.fixture
def attach(tmp_path: Path) -> Iterator[Attach]:
    with disks.loop_devices(tmp_path) as make:
        yield make


@pytest.fixture
def mount_point(tmp_path: Path) -> Path:
    """Where the tests mount (only ever in :func:`isolated`)."""
    return tmp_path / "data"


def prepare(wanted: StorageSpec, **options: Any) -> storage.Mounted:
    """storage.prepare in a boot of its own (see :func:`isolated`)."""
    return isolated(lambda: storage.prepare(wanted, **options))


@pytest.fixture
def label() -> str:
    return "k4s-" + uuid.uuid4().hex[:8]


def checksum(device: str) -> str:
    with open(device, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def spec(mount_point: Path, **fields: object) -> StorageSpec:
    return dataclasses.replace(StorageSpec(mount_point=str(mount_point), wait=0), **fields)  # type: ignore[arg-type]


# --- identify: signatures from bytes ----------------------------------------------------


def blank_head() -> bytearray:
    return bytearray(storage.SCAN)


def test_identify_names_what_other_tools_write() -> None:
    head = blank_head()
    head[0:4] = b"XFSB"
    head[32:48] = bytes(range(16))
    head[108:113] = b"mydat"
    assert identify(bytes(head)) == (
        Signature("xfs", True, "mydat", "00010203-0405-0607-0809-0a0b0c0d0e0f"),
    )

    fat = blank_head()
    fat[0] = 0xEB
    fat[82:90] = b"FAT32   "
    fat[67:71] = (0x1234ABCD).to_bytes(4, "little")
    fat[71:82] = b"BOOT       "
    fat[510:512] = b"\x55\xaa"
    assert identify(bytes(fat)) == (Signature("vfat", True, "BOOT", "1234-ABCD"),)

    gpt = blank_head()
    gpt[510:512] = b"\x55\xaa"  # the protective MBR
    gpt[512:520] = b"EFI PART"
    assert [s.kind for s in identify(bytes(gpt))] == ["gpt", "dos"]

    for offset, magic, kind in (
        (0, b"LUKS\xba\xbe", "crypto_LUKS"),
        (4086, b"SWAPSPACE2", "swap"),
        (4096, (0xA92B4EFC).to_bytes(4, "little"), "linux_raid_member"),
        (0, b"hsqs", "squashfs"),
        (0x8001, b"CD001", "iso9660"),
    ):
        head = blank_head()
        head[offset : offset + len(magic)] = magic
        assert [s.kind for s in identify(bytes(head))] == [kind]
    assert identify(bytes(blank_head())) == ()


@needs_loop
@pytest.mark.parametrize("kind", ["ext2", "ext3", "ext4"])
def test_identify_tells_the_ext_generations_apart(attach: Attach, kind: str, label: str) -> None:
    device = attach()
    mkfs(device, kind, label)
    found = storage.probe(storage.device_at(device) or pytest.fail("no device"))
    assert [(s.kind, s.label) for s in found.signatures] == [(kind, label)]
    assert not found.blank


# --- the first boot and the next ----------------------------------------------------------


@needs_loop
def test_a_blank_device_is_formatted_with_the_label_then_kept(
    attach: Attach, mount_point: Path, label: str
) -> None:
    device = attach()
    wanted = spec(mount_point, label=label, path=device, format=FormatPolicy.IF_BLANK)

    def first_boot() -> tuple[storage.Mounted, list[str], bool]:
        said: list[str] = []
        mounted = storage.prepare(wanted, say=said.append)
        (mount_point / "state.db").write_text("the cluster")
        return mounted, said, os.path.ismount(mount_point)

    first, said, is_mount = isolated(first_boot)
    assert (first.device, first.formatted, first.already, is_mount) == (device, True, False, True)
    assert (first.signature.kind, first.signature.label) == ("ext4", label)
    assert first.write_error is None
    assert 50 * MiB < first.size <= 64 * MiB and 0 < first.free <= first.size
    assert said == [f"{device} is blank: making ext4 (mke2fs -q -t ext4 -L {label} {device})"]
    assert "formatted and mounted on" in first.summary()

    def next_boot(again: StorageSpec) -> tuple[storage.Mounted, str, bool]:
        mounted = storage.prepare(again)
        # A retried boot finds it mounted already.
        retried = storage.prepare(again).already
        return mounted, (mount_point / "state.db").read_text(), retried

    again, data, retried = isolated(lambda: next_boot(wanted))
    assert (again.formatted, again.signature.uuid, data) == (
        False,
        first.signature.uuid,
        "the cluster",
    )
    assert retried is True
    by_label, data, _ = isolated(lambda: next_boot(spec(mount_point, label=label)))
    assert (by_label.device, by_label.formatted, data) == (device, False, "the cluster")


@needs_loop
def test_a_given_uuid_is_made_and_found(attach: Attach, mount_point: Path) -> None:
    device = attach()
    wanted_uuid = str(uuid.uuid4())
    made = prepare(spec(mount_point, uuid=wanted_uuid, path=device, format=FormatPolicy.IF_BLANK))
    assert made.signature.uuid == wanted_uuid
    assert prepare(spec(mount_point, uuid=wanted_uuid)).device == device


@needs_loop
def test_a_blank_device_is_not_formatted_unless_the_config_says_so(
    attach: Attach, mount_point: Path, label: str
) -> None:
    device = attach()
    with pytest.raises(StorageError) as caught:
        prepare(spec(mount_point, label=label, path=device))
    assert str(caught.value) == (
        f"{device} is blank and storage.format is never:"
        " set format: ifBlank to let k4sinit make a filesystem on it"
    )
    assert not mount_point.exists()


# --- devices that must never be formatted -------------------------------------------------


@needs_loop
def test_another_ext_generation_is_refused_untouched(
    attach: Attach, mount_point: Path, label: str
) -> None:
    device = attach()
    mkfs(device, "ext2", label)
    before = checksum(device)
    wanted = spec(mount_point, label=label, path=device, format=FormatPolicy.IF_BLANK)
    with pytest.raises(StorageError) as caught:
        prepare(wanted)
    message = str(caught.value)
    assert message.startswith(f"{device} (label {label!r}) holds ext2 labelled {label!r} (UUID ")
    assert message.endswith(
        "not the ext4 storage.filesystem asks for; not mounting it,"
        " and never formatting a device that holds a filesystem"
    )
    assert checksum(device) == before
    assert not mount_point.exists()


@needs_loop
@pytest.mark.parametrize(
    ("offset", "data", "found"),
    [
        (0, b"XFSB", "xfs"),
        (512, b"EFI PART", "a GPT partition table"),
        (600 * 1024, b"\x01", "data k4sinit cannot name (a non-zero byte at offset 614400)"),
        (64 * MiB - 4096, b"\x01", "data k4sinit cannot name (a non-zero byte at offset 67104768)"),
    ],
)
def test_a_device_holding_anything_is_never_formatted(
    attach: Attach, mount_point: Path, label: str, offset: int, data: bytes, found: str
) -> None:
    device = attach()
    with open(device, "r+b") as f:
        f.seek(offset)
        f.write(data)
    before = checksum(device)
    wanted = spec(mount_point, label=label, path=device, format=FormatPolicy.IF_BLANK)
    with pytest.raises(StorageError) as caught:
        prepare(wanted)
    assert str(caught.value) == (
        f"{device} holds {found}, not a filesystem with label {label!r}: k4sinit never formats"
        " a device that holds anything (wipe it yourself if it may be lost)"
    )
    assert checksum(device) == before


@needs_loop
def test_a_filesystem_with_another_label_is_not_ours(
    attach: Attach, mount_point: Path, label: str
) -> None:
    device = attach()
    mkfs(device, "ext4", "someone-else")
    before = checksum(device)
    wanted = spec(mount_point, label=label, path=device, format=FormatPolicy.IF_BLANK)
    with pytest.raises(StorageError, match=r"holds ext4 labelled 'someone-else' \(UUID .*\), not"):
        prepare(wanted)
    assert checksum(device) == before


@needs_loop
def test_two_devices_with_the_label_are_refused(
    attach: Attach, mount_point: Path, label: str
) -> None:
    first, second = attach(), attach()
    mkfs(first, label=label)
    mkfs(second, label=label)
    with pytest.raises(StorageError) as caught:
        prepare(spec(mount_point, label=label))
    assert str(caught.value) == (
        f"2 devices carry label {label!r}: {first}, {second}; k4sinit will not choose one"
        " (relabel or wipe the others)"
    )


# --- waiting, and what is missing ---------------------------------------------------------


class FakeWatch:
    """A watch on a virtual clock: each wait moves the clock; ``on_wait`` runs first."""

    def __init__(self, on_wait: Callable[[int], None] = lambda n: None) -> None:
        self.now = 100.0
        self.waits: list[float] = []
        self.on_wait = on_wait

    def clock(self) -> float:
        return self.now

    def wait(self, timeout: float) -> None:
        self.on_wait(len(self.waits))
        self.waits.append(timeout)
        self.now += timeout


@needs_loop
def test_a_missing_label_fails_after_the_bounded_wait(mount_point: Path, label: str) -> None:
    def boot() -> list[float]:
        watch = FakeWatch()
        try:
            storage.prepare(
                spec(mount_point, label=label, wait=2.5), watch=watch, clock=watch.clock
            )
        except StorageError as exc:
            exc.add_note(repr(watch.waits))
            raise
        return watch.waits

    with pytest.raises(StorageError) as caught:
        isolated(boot)
    assert str(caught.value).startswith(
        f"no filesystem with label {label!r} after 2.5s; block devices: "
    )
    assert "[1.0, 1.0, 0.5]" in (caught.value.__notes__ or [])


@needs_loop
def test_a_device_that_appears_during_the_wait_is_used(
    tmp_path: Path, mount_point: Path, label: str
) -> None:
    image, attached = tmp_path / "later.img", tmp_path / "attached"
    with open(image, "wb") as f:
        f.truncate(64 * MiB)
    subprocess.run(["mke2fs", "-q", "-t", "ext4", "-L", label, str(image)], check=True)

    def plug(n: int) -> None:
        if n == 1:  # at the second wait, the disk shows up
            argv = ["losetup", "--find", "--show", str(image)]
            out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
            attached.write_text(out.strip())

    def boot() -> tuple[str, list[float]]:
        watch = FakeWatch(plug)
        found = storage.prepare(
            spec(mount_point, label=label, wait=30), watch=watch, clock=watch.clock
        )
        return found.device, watch.waits

    try:
        device, waits = isolated(boot)
        assert (device, waits) == (attached.read_text(), [1.0, 1.0])
    finally:
        if attached.exists():
            subprocess.run(["losetup", "--detach", attached.read_text()], check=False)


@needs_loop
def test_a_missing_path_names_it(mount_point: Path) -> None:
    with pytest.raises(StorageError, match=r"^no block device at /dev/k4s-nothing after 0s; "):
        prepare(spec(mount_point, path="/dev/k4s-nothing"))


@needs_loop
def test_a_uevent_wakes_the_watch(attach: Attach) -> None:
    with storage.UeventWatch() as watch:
        if not watch.listening:
            pytest.skip("no uevent socket here (the wait falls back to rescans)")
        attach(8 * MiB)
        assert watch.wait(30) is True


# --- read-only and full -------------------------------------------------------------------


@needs_loop
def test_a_read_only_device_is_refused(
    attach: Attach, tmp_path: Path, mount_point: Path, label: str
) -> None:
    image = tmp_path / "ro.img"
    with open(image, "wb") as f:
        f.truncate(64 * MiB)
    subprocess.run(["mke2fs", "-q", "-t", "ext4", "-L", label, str(image)], check=True)
    device = subprocess.run(
        ["losetup", "--find", "--show", "--read-only", str(image)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        with pytest.raises(StorageError) as caught:
            prepare(spec(mount_point, label=label))
        name = os.path.basename(device)
        assert str(caught.value) == (
            f"{device} (label {label!r}) is read-only (sysfs {name}/ro is 1):"
            " the node's state needs a writable disk"
        )
    finally:
        subprocess.run(["losetup", "--detach", device], check=False)
    blank = attach(read_only=True)
    wanted = spec(mount_point, label=label, path=blank, format=FormatPolicy.IF_BLANK)
    with pytest.raises(StorageError, match="is read-only"):
        prepare(wanted, run=lambda argv: pytest.fail("mkfs ran"))
    assert not mount_point.exists()


@needs_loop
def test_a_full_disk_is_mounted_and_reported(attach: Attach, mount_point: Path, label: str) -> None:
    device = attach(8 * MiB)
    wanted = spec(mount_point, label=label, path=device, format=FormatPolicy.IF_BLANK)
    isolated(lambda: disks.fill(storage.prepare(wanted).mount_point + "/filler"))

    def full_boot() -> tuple[storage.Mounted, bool]:
        return storage.prepare(wanted), (mount_point / "filler").exists()

    full, kept = isolated(full_boot)

    assert full.write_error == "No space left on device"
    assert full.free < MiB  # ext4 keeps a little for itself
    assert full.summary().endswith("; writes fail: No space left on device")
    assert kept  # nothing was removed


# --- what goes wrong around the device ----------------------------------------------------


@needs_loop
def test_a_failed_mkfs_is_reported(attach: Attach, mount_point: Path, label: str) -> None:
    device = attach()

    def fail(argv: Sequence[str]) -> tuple[int, str]:
        return 1, "mke2fs: no luck"

    wanted = spec(mount_point, label=label, path=device, format=FormatPolicy.IF_BLANK)
    with pytest.raises(StorageError) as caught:
        prepare(wanted, run=fail)
    assert str(caught.value) == (f"making ext4 on {device} failed (exit status 1): mke2fs: no luck")


@needs_loop
def test_another_mount_on_the_mount_point_is_refused(
    attach: Attach, mount_point: Path, label: str
) -> None:
    device = attach()
    mkfs(device, label=label)
    mount_point.mkdir()

    def boot() -> storage.Mounted:
        system.mount("tmpfs", str(mount_point), "tmpfs")
        return storage.prepare(spec(mount_point, label=label))

    with pytest.raises(StorageError, match=r"already has another filesystem mounted on it"):
        isolated(boot)


@needs_loop
def test_what_the_image_had_in_the_mount_point_is_reported_hidden(
    attach: Attach, mount_point: Path, label: str
) -> None:
    device = attach()
    mkfs(device, label=label)
    (mount_point / "images").mkdir(parents=True)

    def boot() -> tuple[storage.Mounted, list[str]]:
        said: list[str] = []
        return storage.prepare(spec(mount_point, label=label), say=said.append), said

    mounted, said = isolated(boot)
    assert mounted.hidden == ("images",)
    assert said == [f"the mount on {mount_point} hides what the image has there: images"]
