"""Tests for k4sinit.config.storage: the ``storage`` section."""

from __future__ import annotations

from k4sinit.core.config import FormatPolicy, StorageSpec
from tests.config_helpers import errors_of, load, only_error, where


def test_storage_is_read_with_its_defaults() -> None:
    config = load(
        """
        node: {profile: controller}
        storage:
          device: {label: k4s-data, path: /dev/vda}
          format: ifBlank
        """
    )
    assert config.storage == StorageSpec(
        label="k4s-data",
        path="/dev/vda",
        format=FormatPolicy.IF_BLANK,
        mount_point="/var/lib/k4sinit",
        line=2,
    )
    assert config.storage.describe() == "label 'k4s-data'"
    assert load("services: {a: {command: [x]}}").storage is None


def test_every_field_is_read() -> None:
    config = load(
        """
        node: {profile: controller, dataDir: /var/lib/k4sinit}
        storage:
          device: {uuid: 0F2C6A3E-5B1D-4E8A-9C1F-2A3B4C5D6E7F}
          filesystem: xfs
          mountPoint: /var/lib/
          waitSeconds: 5
        """
    )
    assert config.storage == StorageSpec(
        uuid="0f2c6a3e-5b1d-4e8a-9c1f-2a3b4c5d6e7f",
        filesystem="xfs",
        mount_point="/var/lib",
        wait=5.0,
        line=2,
    )
    assert config.storage.describe() == "UUID 0f2c6a3e-5b1d-4e8a-9c1f-2a3b4c5d6e7f"


def test_the_mount_point_follows_the_node_data_dir() -> None:
    config = load(
        """
        node: {profile: controller, dataDir: /srv/k4s}
        storage: {device: {path: /dev/vdb}}
        """
    )
    assert config.storage is not None
    assert (config.storage.mount_point, config.storage.describe()) == ("/srv/k4s", "/dev/vdb")


def test_storage_errors_name_the_line_and_field() -> None:
    errors = errors_of(
        """
        services: {a: {command: [x]}}
        storage:
          device:
            label: "a label far too long"
            uuid: not-a-uuid
            path: vdb
            serial: x
          filesystem: ext5
          format: sometimes
          mountPoint: /proc/data
          waitSeconds: -1
        """
    )
    assert where(errors) == [
        (4, None, "storage.device.label"),
        (5, None, "storage.device.uuid"),
        (6, None, "storage.device.path"),
        (7, None, "storage.device.serial"),
        (8, None, "storage.filesystem"),
        (9, None, "storage.format"),
        (10, None, "storage.mountPoint"),
        (11, None, "storage.waitSeconds"),
    ]
    messages = [(e.message, e.hint) for e in errors]
    assert messages == [
        ("label 'a label far too long' is too long", "ext4 takes at most 16 bytes"),
        ("invalid UUID 'not-a-uuid'", "like 0f2c6a3e-5b1d-4e8a-9c1f-2a3b4c5d6e7f"),
        ("must be an absolute path, got 'vdb'", None),
        ("unknown key 'serial'", "known keys: label, uuid, path"),
        ("expected one of ext4, ext3, ext2, xfs, got 'ext5'", "did you mean 'ext4'?"),
        ("expected one of never, ifBlank, got 'sometimes'", None),
        (
            "cannot mount the storage on /proc/data",
            "PID 1 runs on it; use the node's data directory, like /var/lib/k4sinit",
        ),
        ("must be between 0 and 3600, got -1", None),
    ]


def test_the_device_must_be_named() -> None:
    error = only_error("services: {a: {command: [x]}}\nstorage: {device: {}}\n")
    assert (error.line, error.field, error.message) == (
        2,
        "storage.device",
        "name the device by label, uuid or path",
    )
    error = only_error("services: {a: {command: [x]}}\nstorage: {format: ifBlank}\n")
    assert (error.field, error.message) == ("storage", "missing required key 'device'")
    error = only_error("services: {a: {command: [x]}}\nstorage: {device: {path: /tmp/disk}}\n")
    assert (error.field, error.message, error.hint) == (
        "storage.device.path",
        "expected a device under /dev, got '/tmp/disk'",
        "like /dev/vdb",
    )


def test_formatting_needs_the_disk_to_format() -> None:
    error = only_error(
        """
        services: {a: {command: [x]}}
        storage:
          device: {label: k4s-data}
          format: ifBlank
        """
    )
    assert (error.line, error.field, error.message) == (
        4,
        "storage.format",
        "ifBlank needs device.path",
    )
    assert error.hint is not None and "a blank disk has no label or UUID" in error.hint


def test_the_node_state_must_be_on_the_storage() -> None:
    errors = errors_of(
        """
        node: {profile: controller, pkiDir: /etc/k4s/pki}
        storage:
          device: {label: k4s-data}
          mountPoint: /mnt/data
        """
    )
    assert where(errors) == [(4, None, "storage.mountPoint"), (4, None, "storage.mountPoint")]
    assert [e.message for e in errors] == [
        "node.dataDir /var/lib/k4sinit is not on the storage mounted at /mnt/data:"
        " the node's state would not persist",
        "node.pkiDir /etc/k4s/pki is not on the storage mounted at /mnt/data:"
        " the node's state would not persist",
    ]
    assert errors[0].hint == (
        "mount it at /var/lib/k4sinit or above, or move node.dataDir under /mnt/data"
    )
    # The default mount point is the data directory: a PKI kept elsewhere is still lost.
    error = only_error(
        """
        node: {profile: controller, pkiDir: /etc/k4s/pki}
        storage: {device: {label: k4s-data}}
        """
    )
    assert error.message.startswith("node.pkiDir /etc/k4s/pki is not on the storage")


def test_a_label_fits_the_filesystem() -> None:
    error = only_error(
        """
        services: {a: {command: [x]}}
        storage: {device: {label: thirteen-char}, filesystem: xfs}
        """
    )
    assert (error.field, error.message, error.hint) == (
        "storage.device.label",
        "label 'thirteen-char' is too long",
        "xfs takes at most 12 bytes",
    )
    error = only_error('services: {a: {command: [x]}}\nstorage: {device: {label: "a\\tb"}}\n')
    assert (error.field, error.message) == ("storage.device.label", "invalid label 'a\\tb'")
