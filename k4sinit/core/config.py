"""The whole config as types: the system and storage sections, and the one object the loader returns.

:mod:`k4sinit.config` reads YAML into these; :mod:`k4sinit.core.spec`,
:mod:`k4sinit.core.netspec` and :mod:`k4sinit.core.nodespec` hold the
sections' own types. Nothing here does I/O or imports trio.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

from k4sinit.core.monitoring import MetricsSpec, WatchdogSpec
from k4sinit.core.netspec import NetworkSpec
from k4sinit.core.nodespec import DEFAULT_DATA_DIR, NodeSpec
from k4sinit.core.paths import SHELL
from k4sinit.core.spec import ServiceSpec


class Fallback(enum.Enum):
    """What PID 1 does when booting fails (it never exits: that panics the kernel)."""

    SHELL = "shell"  # an emergency shell on the console; boot is retried when it exits
    RETRY = "retry"  # wait ``delay`` seconds, then run the boot stages again
    REBOOT = "reboot"  # count down ``delay`` seconds on the console, then reboot


class SwitchRoot(enum.Enum):
    """Whether PID 1 copies an initramfs root into a tmpfs and switches into it."""

    AUTO = "auto"  # when booted from an initramfs (runc cannot pivot_root out of one)
    ALWAYS = "always"
    NEVER = "never"


@dataclass(frozen=True, slots=True)
class SystemSpec:
    """The node itself, set up by PID 1 before any service starts."""

    hostname: str | None = None
    modules: tuple[str, ...] = ()
    sysctls: tuple[tuple[str, str], ...] = ()
    fallback: Fallback = Fallback.SHELL
    fallback_delay: float = 10.0
    switch_root: SwitchRoot = SwitchRoot.AUTO
    shell: tuple[str, ...] = (SHELL,)
    # "enforce": a fatal preflight failure fails the boot (the fallback follows);
    # "warn": it is reported (log, status) and the node boots anyway.
    preflight: str = "enforce"
    # Load the modules the devices present ask for (their modalias), before ``modules``.
    coldplug: bool = True


class FormatPolicy(enum.Enum):
    """Whether PID 1 may make a filesystem on the storage device."""

    NEVER = "never"  # mount what is there, or fail
    IF_BLANK = "ifBlank"  # make one on a blank device (never on one that holds anything)


# The filesystems ``storage`` can make and mount; the longest label each takes (bytes).
STORAGE_FILESYSTEMS: dict[str, int] = {"ext4": 16, "ext3": 16, "ext2": 16, "xfs": 12}
DEFAULT_STORAGE_WAIT = 30.0  # seconds for the device to appear (virtio disks come late)


@dataclass(frozen=True, slots=True)
class StorageSpec:
    """The ``storage:`` section: the block device that holds the node's state.

    The filesystem is found by ``label`` and/or ``uuid`` (it must carry all
    that are given), else ``path`` is the device. A device found neither way
    is waited for ``wait`` seconds. With ``format`` IF_BLANK and no filesystem
    found by label/UUID, ``path`` is formatted as ``filesystem`` with the
    label and UUID given, but only when it is blank (see k4sinit.host.storage).
    The config reader guarantees at least one of label, uuid, path, and a
    path whenever ``format`` is IF_BLANK.
    """

    label: str | None = None
    uuid: str | None = None  # lowercase, as the kernel and blkid show it
    path: str | None = None
    filesystem: str = "ext4"
    format: FormatPolicy = FormatPolicy.NEVER
    mount_point: str = DEFAULT_DATA_DIR
    wait: float = DEFAULT_STORAGE_WAIT
    line: int | None = None  # where the section starts

    def describe(self) -> str:
        """How the section names its device: ``label 'k4s-data'``, ``UUID ...``, ``/dev/vdb``."""
        names = []
        if self.label is not None:
            names.append(f"label {self.label!r}")
        if self.uuid is not None:
            names.append(f"UUID {self.uuid}")
        if not names and self.path is not None:
            names.append(self.path)
        return " and ".join(names)


@dataclass(frozen=True, slots=True)
class Config:
    """A whole validated config. ``services`` keeps the file's order."""

    source: str
    services: dict[str, ServiceSpec]
    system: SystemSpec = field(default_factory=SystemSpec)
    network: NetworkSpec = field(default_factory=NetworkSpec)
    # The ``node:`` section (None: no Kubernetes roles); k4sinit.node.roles
    # turns it into role services.
    node: NodeSpec | None = None
    # The ``storage:`` section (None: the node's state lives in its root, lost at reboot).
    storage: StorageSpec | None = None
    # The ``metrics:`` section (None: no metrics endpoint).
    metrics: MetricsSpec | None = None
    # The ``watchdog:`` section (None: no hardware watchdog is opened).
    watchdog: WatchdogSpec | None = None
    # Where the file wrote each service, (name, None), and each of its dependencies,
    # (name, dependency): (line, field), for the errors k4sinit.node.roles finds.
    where: Mapping[tuple[str, str | None], tuple[int | None, str | None]] = field(
        default_factory=dict, compare=False, repr=False
    )
