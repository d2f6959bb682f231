"""Preflight: does this machine have what a node profile needs?

Like ``k0s sysinfo`` and ``k3s check-config``, but for cgroup v2 only and for
k4sinit's three profiles. :func:`run_checks` reads /proc, /sys and the
filesystem (never writes, never loads a module) and returns one :class:`Check`
per fact, in a fixed order::

    kernel              release >= 5.4 pass, >= 4.15 warn, older fail
    cgroup2             cgroup2 mounted at /sys/fs/cgroup (v1 or hybrid: fail)
    cgroup controllers  cpu memory pids required*, cpuset io hugetlb wanted
    overlay*            filesystem known, or module installed
    br_netfilter*       /proc/sys/net/bridge, or module loaded / built in / installed
    netfilter*          nf_tables or ip_tables
    namespaces*         pid net ipc uts mnt cgroup; user namespaces (warn)
    veth, bridge*       module loaded / built in / installed (warn)
    seccomp*            the Seccomp field of /proc/self/status (warn)
    binary NAME         on the search path (runc, containerd, its shim*; the caller's)
    memory              MemTotal >= 1 GiB (worker), 2 GiB (controller, single)
    disk                free space on the data directory: < 1 GiB warn, < 100 MiB fail
    storage             with a storage section: its disk mounted at its mount point,
                        read-write, with free space and inodes (the device, free of size)
    sysctl ...          ip_forward*, bridge-nf-call-iptables*, vm.overcommit_memory*,
                        kernel.panic (all warn only: k4sinit sets them at boot)
    swap*               off (kubelet's failSwapOn)
    /dev/kmsg*          present (kubelet reads it)

``*``: only for the profiles that run containers (worker, single). A controller
runs the control plane as plain processes: it needs no container runtime, no
overlay and no bridge, and runs without cgroups (no limits) if it must.

A FAIL is a requirement not met; it is ``fatal`` when the profile cannot run
at all (missing binaries, no cgroup2 for containers, no overlay...), so boot
takes the never-die fallback. A FAIL that is not fatal (no netfilter, no
br_netfilter) lets the node come up with pod networking impaired.

``root`` re-roots every file read, so tests point it at a fake tree; only the
free-space figure comes from ``os.statvfs``.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import posixpath
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

from k4sinit.core.nodespec import CONTAINERD, ONESHOT_ROLES, Profile
from k4sinit.core.paths import DEFAULT_PATH
from k4sinit.host import storage
from k4sinit.host.storage import size_text
from k4sinit.host.system import mounted

if TYPE_CHECKING:
    from k4sinit.core.config import Config, StorageSpec
    from k4sinit.core.nodespec import NodeSettings

# Executed by containerd itself (not by k4sinit), so they must be real files on
# the search path; k4sinit's multicall dispatch cannot stand in for them.
RUNTIME_BINARIES = (CONTAINERD, "containerd-shim-runc-v2", "runc")
REQUIRED_CONTROLLERS = ("cpu", "memory", "pids")
OPTIONAL_CONTROLLERS = ("cpuset", "io", "hugetlb")
NAMESPACES = ("pid", "net", "ipc", "uts", "mnt", "cgroup")
MIN_KERNEL = (5, 4)  # what Kubernetes and containerd test on; cgroup2 complete enough
OLDEST_KERNEL = (4, 15)  # the first with the cgroup2 cpu controller
GiB = 1 << 30
MiB = 1 << 20
DISK_WARN = 1 * GiB
DISK_FAIL = 100 * MiB
MEMORY_WANTED = {Profile.CONTROLLER: 2 * GiB, Profile.WORKER: 1 * GiB, Profile.SINGLE: 2 * GiB}
CGROUP_MOUNT = "/sys/fs/cgroup"


class Status(Enum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Check:
    """One preflight fact: what was checked, the outcome, and why."""

    name: str
    status: Status
    detail: str
    fatal: bool = False  # a FAIL that makes the profile impossible here


def _pass(name: str, detail: str) -> Check:
    return Check(name, Status.PASS, detail)


def _warn(name: str, detail: str) -> Check:
    return Check(name, Status.WARN, detail)


def _fail(name: str, detail: str, *, fatal: bool) -> Check:
    return Check(name, Status.FAIL, detail, fatal)


class _Host:
    """Reads of one (possibly fake) root tree, cached for a run."""

    def __init__(self, root: Path) -> None:
        self.root = root
        release = self.read("/proc/sys/kernel/osrelease")
        self.release = release.strip() if release else os.uname().release
        self.module_dir = f"/lib/modules/{self.release}"
        self.mounts = mounted(str(self.path("/proc/self/mountinfo")))
        self._loaded: set[str] | None = None
        self._builtin: set[str] | None = None
        self._installed: set[str] | None = None
        self._config: dict[str, str] | None = None

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")

    def read(self, absolute: str) -> str | None:
        try:
            return self.path(absolute).read_text()
        except (OSError, UnicodeDecodeError):
            return None

    def exists(self, absolute: str) -> bool:
        return self.path(absolute).exists()

    # --- kernel modules ------------------------------------------------------

    def module(self, name: str, config_key: str) -> str | None:
        """How the kernel has module ``name``: "loaded", "built in", "installed" or None.

        Sources: /proc/modules (loaded); modules.builtin, /sys/module (built-in
        modules with parameters) and the kernel config (=y) for built in; and
        modules.dep (a file k4sinit can load at boot) for installed.
        """
        if self._loaded is None:
            self._loaded = {line.split()[0] for line in self._lines("/proc/modules") if line}
            # /sys/module also lists built-in modules that have parameters.
            self._builtin = _module_names(self._lines(f"{self.module_dir}/modules.builtin"))
            with contextlib.suppress(OSError):
                self._builtin |= {entry.name for entry in os.scandir(self.path("/sys/module"))}
            self._installed = _module_names(
                line.partition(":")[0] for line in self._lines(f"{self.module_dir}/modules.dep")
            )
        assert self._builtin is not None and self._installed is not None
        if name in self._loaded:
            return "loaded"
        if name in self._builtin or self.config().get(config_key) == "y":
            return "built in"
        if name in self._installed:
            return "installed"
        return None

    def config(self) -> dict[str, str]:
        """The kernel's build config (/proc/config.gz or /boot/config-RELEASE), if shipped."""
        if self._config is None:
            text = None
            with contextlib.suppress(OSError, EOFError, gzip.BadGzipFile):
                text = gzip.decompress(self.path("/proc/config.gz").read_bytes()).decode()
            text = text or self.read(f"/boot/config-{self.release}") or ""
            self._config = dict(
                line.split("=", 1)
                for line in text.splitlines()
                if line.startswith("CONFIG_") and "=" in line
            )
        return self._config

    def _lines(self, absolute: str) -> list[str]:
        return (self.read(absolute) or "").splitlines()


def _module_names(paths: Iterable[str]) -> set[str]:
    """``kernel/fs/overlayfs/overlay.ko.xz`` -> ``overlay`` (dashes as underscores)."""
    return {Path(p).name.split(".")[0].replace("-", "_") for p in paths if p.strip()}


def run_checks(
    profile: Profile,
    *,
    data_dir: str = "/var/lib",
    binaries: Sequence[str] = (),
    search_path: str = DEFAULT_PATH,
    root: Path = Path("/"),
) -> list[Check]:
    """Check what ``profile`` needs on this machine; one Check per fact, in a fixed order.

    ``binaries`` are the role binaries the caller will execute (it knows its
    multicall dispatch); worker and single add :data:`RUNTIME_BINARIES`.
    Never raises for what it reads.
    """
    host = _Host(root)
    containers = profile is not Profile.CONTROLLER
    checks = [check_kernel(host.release), _check_cgroup2(host, containers)]
    checks.append(_check_controllers(host, containers))
    if containers:
        checks += [
            _check_overlay(host),
            _check_br_netfilter(host),
            _check_netfilter(host),
            _check_namespaces(host),
            _check_user_namespaces(host),
            _check_optional_module(host, "veth", "CONFIG_VETH", "pods' network interfaces"),
            _check_optional_module(host, "bridge", "CONFIG_BRIDGE", "the CNI bridge plugin"),
            _check_seccomp(host),
        ]
    wanted = [*RUNTIME_BINARIES, *binaries] if containers else list(binaries)
    checks += [_check_binary(host, name, search_path) for name in dict.fromkeys(wanted)]
    checks += [_check_memory(host, profile), _check_disk(host, data_dir)]
    if containers:
        checks += [
            _check_sysctl(host, "net.ipv4.ip_forward", "1", "pods cannot reach beyond the node"),
            _check_sysctl(host, "net.bridge.bridge-nf-call-iptables", "1", "", optional=True),
            _check_sysctl(host, "vm.overcommit_memory", "1", "kubelet's default"),
        ]
    checks.append(_check_panic(host))
    if containers:
        checks += [_check_swap(host), _check_kmsg(host)]
    return checks


# --- the checks ---------------------------------------------------------------


def check_kernel(release: str) -> Check:
    """The kernel release (``uname -r``): >= 5.4 pass, >= 4.15 warn, older fatal."""
    match = re.match(r"(\d+)\.(\d+)", release)
    if not match:
        return _warn("kernel", f"{release}: cannot parse the version")
    version = (int(match.group(1)), int(match.group(2)))
    if version >= MIN_KERNEL:
        return _pass("kernel", release)
    if version >= OLDEST_KERNEL:
        return _warn("kernel", f"{release}: older than 5.4, cgroup2 features may be missing")
    return _fail("kernel", f"{release}: older than 4.15, no cgroup2 cpu controller", fatal=True)


def _check_cgroup2(host: _Host, containers: bool) -> Check:
    mounts = host.mounts
    at_mount = mounts.get(CGROUP_MOUNT)
    if at_mount == "cgroup2":
        return _pass("cgroup2", f"cgroup2 at {CGROUP_MOUNT}")
    v2 = sorted(path for path, fstype in mounts.items() if fstype == "cgroup2")
    v1 = sorted(path for path, fstype in mounts.items() if fstype == "cgroup")
    if v1 and v2:
        reason = f"hybrid cgroup v1/v2: v1 at {CGROUP_MOUNT}/*, cgroup2 only at {', '.join(v2)}"
    elif v1:
        reason = "cgroup v1 only: no cgroup2 mounted"
    elif at_mount is not None:
        reason = f"{CGROUP_MOUNT} is {at_mount}, not cgroup2"
    elif "cgroup2" not in (host.read("/proc/filesystems") or ""):
        reason = "the kernel has no cgroup2 filesystem"
    else:
        reason = f"no cgroup2 mounted at {CGROUP_MOUNT}"
    if not containers:  # the control plane runs without cgroups, only without limits
        return _warn("cgroup2", f"{reason}; services run without limits")
    return _fail("cgroup2", f"{reason}; containers need cgroup2 at {CGROUP_MOUNT}", fatal=True)


def _check_controllers(host: _Host, containers: bool) -> Check:
    """Controllers available to our own cgroup (or the hierarchy's root)."""
    name = "cgroup controllers"
    v2 = sorted(path for path, fstype in host.mounts.items() if fstype == "cgroup2")
    if not v2:
        detail = "no cgroup2 hierarchy to read controllers from"
        return _fail(name, detail, fatal=True) if containers else _warn(name, detail)
    mount = CGROUP_MOUNT if CGROUP_MOUNT in v2 else v2[0]
    own = next(
        (
            line[3:]
            for line in (host.read("/proc/self/cgroup") or "").splitlines()
            if line[:3] == "0::"
        ),
        "/",
    )
    text = host.read(posixpath.join(mount, own.lstrip("/"), "cgroup.controllers"))
    if text is None:
        text = host.read(f"{mount}/cgroup.controllers") or ""
    have = set(text.split())
    missing = [c for c in REQUIRED_CONTROLLERS if c not in have]
    optional = [c for c in OPTIONAL_CONTROLLERS if c not in have]
    if not missing and not optional:
        return _pass(name, ", ".join(sorted(have)))
    if not missing:
        return _warn(name, f"cgroup2 controllers: {', '.join(optional)} missing")
    detail = f"cgroup2 controllers: {', '.join(missing)} missing"
    if optional:
        detail += f" (optional {', '.join(optional)} missing too)"
    if mount != CGROUP_MOUNT:
        detail += f" in {mount}"
    return _fail(name, detail, fatal=True) if containers else _warn(name, detail)


def _check_overlay(host: _Host) -> Check:
    filesystems = (host.read("/proc/filesystems") or "").split()
    if "overlay" in filesystems:
        return _pass("overlay", "overlay in /proc/filesystems")
    state = host.module("overlay", "CONFIG_OVERLAY_FS")
    if state is not None:
        return _pass("overlay", f"module overlay {state}")
    return _fail(
        "overlay",
        f"not in /proc/filesystems, no module in {host.module_dir}: containerd's snapshotter needs it",
        fatal=True,
    )


def _check_br_netfilter(host: _Host) -> Check:
    if host.exists("/proc/sys/net/bridge"):
        return _pass("br_netfilter", "loaded or built in (/proc/sys/net/bridge)")
    state = host.module("br_netfilter", "CONFIG_BRIDGE_NETFILTER")
    if state is not None:
        return _pass("br_netfilter", f"module br_netfilter {state}")
    return _fail(
        "br_netfilter",
        f"no /proc/sys/net/bridge, no module in {host.module_dir}: bridged pod traffic bypasses iptables",
        fatal=False,
    )


def _check_netfilter(host: _Host) -> Check:
    found = []
    if host.exists("/proc/net/ip_tables_names"):
        found.append("ip_tables active (/proc/net/ip_tables_names)")
    else:
        state = host.module("ip_tables", "CONFIG_IP_NF_IPTABLES")
        if state is not None:
            found.append(f"ip_tables {state}")
    state = host.module("nf_tables", "CONFIG_NF_TABLES")
    if state is not None:
        found.append(f"nf_tables {state}")
    if found:
        return _pass("netfilter", ", ".join(found))
    return _fail(
        "netfilter",
        f"neither nf_tables nor ip_tables (none loaded, none in {host.module_dir}): no masquerade for pods",
        fatal=False,
    )


def _check_namespaces(host: _Host) -> Check:
    missing = [ns for ns in NAMESPACES if not host.exists(f"/proc/self/ns/{ns}")]
    if missing:
        return _fail("namespaces", f"namespaces: {', '.join(missing)} missing", fatal=True)
    return _pass("namespaces", ", ".join(NAMESPACES))


def _check_user_namespaces(host: _Host) -> Check:
    name = "user namespaces"
    if not host.exists("/proc/self/ns/user"):
        return _warn(name, "not in this kernel: pods with hostUsers: false cannot run")
    limit = (host.read("/proc/sys/user/max_user_namespaces") or "").strip()
    if limit == "0":
        return _warn(name, "user.max_user_namespaces is 0: pods with hostUsers: false cannot run")
    return _pass(name, f"max {limit}" if limit else "available")


def _check_optional_module(host: _Host, module: str, config_key: str, needed_by: str) -> Check:
    state = host.module(module, config_key)
    if state is not None:
        return _pass(module, f"module {module} {state}")
    return _warn(module, f"not loaded, not found in {host.module_dir}: needed by {needed_by}")


def _check_seccomp(host: _Host) -> Check:
    for line in (host.read("/proc/self/status") or "").splitlines():
        if line.startswith("Seccomp:"):
            return _pass("seccomp", "supported (Seccomp in /proc/self/status)")
    return _warn("seccomp", "no Seccomp field in /proc/self/status: RuntimeDefault profiles fail")


def _check_binary(host: _Host, name: str, search_path: str) -> Check:
    check = f"binary {name}"
    for directory in search_path.split(":"):
        if not directory:
            continue
        candidate = f"{directory.rstrip('/')}/{name}"
        path = host.path(candidate)
        if path.is_file():
            if os.access(path, os.X_OK):
                return _pass(check, candidate)
            return _fail(check, f"{name}: {candidate} is not executable", fatal=True)
    return _fail(check, f"{name}: not found in {search_path}", fatal=True)


def _check_memory(host: _Host, profile: Profile) -> Check:
    wanted = MEMORY_WANTED[profile]
    for line in (host.read("/proc/meminfo") or "").splitlines():
        key, _, value = line.partition(":")
        if key == "MemTotal" and value.split() and value.split()[0].isdigit():
            total = int(value.split()[0]) * 1024
            if total >= wanted:
                return _pass("memory", f"MemTotal {size_text(total)}")
            return _warn(
                "memory",
                f"MemTotal {size_text(total)}, below the {size_text(wanted)} a {profile.value} wants",
            )
    return _warn("memory", "no MemTotal in /proc/meminfo")


def _check_disk(host: _Host, data_dir: str) -> Check:
    # The data directory may not exist yet on a fresh diskless node: measure the
    # filesystem it will be created on.
    path = host.path(data_dir)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        stat = os.statvfs(path)
    except OSError as exc:
        return _warn("disk", f"{data_dir}: cannot statvfs: {exc.strerror}")
    free = stat.f_bavail * stat.f_frsize
    if free < DISK_FAIL:
        return _fail(
            "disk", f"{data_dir}: {size_text(free)} free, below {size_text(DISK_FAIL)}", fatal=True
        )
    if free < DISK_WARN:
        return _warn("disk", f"{data_dir}: {size_text(free)} free, below {size_text(DISK_WARN)}")
    return _pass("disk", f"{data_dir}: {size_text(free)} free")


def check_storage(spec: StorageSpec, root: Path = Path("/")) -> Check:
    """``storage``: the config's disk is what is mounted at its mount point, read-write,
    with free space (``f_bavail``, as df shows it) and free inodes; any of these
    missing is fatal, since the node's state would be lost or could not be written.

    Reads only (the boot's write test is in its log); the filesystem's label is
    read from the device when this process may open it.
    """
    target = str(root / spec.mount_point.lstrip("/"))
    device = storage.mounted_on(target)
    if device is None:
        detail = f"{spec.mount_point}: no disk mounted ({spec.describe()} expected)"
        return _fail("storage", detail + ": the node's state would be lost at reboot", fatal=True)
    what = device.path
    with contextlib.suppress(storage.StorageError):  # not root: the device stays unnamed
        found = storage.probe(device, edges=False).filesystems
        if found:
            what += f" ({found[0].describe()})"
        if not any(storage.matches(spec, signature) for signature in found):
            detail = f"{spec.mount_point}: {what} is mounted, not {spec.describe()}"
            return _fail("storage", detail, fatal=True)
    try:
        usage = os.statvfs(target)
    except OSError as exc:
        return _fail("storage", f"{spec.mount_point}: cannot statvfs: {exc.strerror}", fatal=True)
    free, size = usage.f_bavail * usage.f_frsize, usage.f_blocks * usage.f_frsize
    detail = f"{what} on {spec.mount_point}, {size_text(free)} free of {size_text(size)}"
    if usage.f_flag & os.ST_RDONLY:
        return _fail("storage", f"{detail}: mounted read-only", fatal=True)
    if free == 0 or usage.f_favail == 0:
        full = "no space" if free == 0 else "no inodes"
        return _fail("storage", f"{detail}: full ({full} left)", fatal=True)
    return _pass("storage", detail)


def _check_sysctl(host: _Host, key: str, wanted: str, why: str, *, optional: bool = False) -> Check:
    """A sysctl k4sinit sets at boot (system.DEFAULT_SYSCTLS): never more than a warning."""
    name = f"sysctl {key}"
    value = host.read("/proc/sys/" + key.replace(".", "/"))
    if value is None:
        if optional:
            return _pass(name, "absent (br_netfilter not loaded)")
        return _warn(name, "absent")
    value = value.strip()
    if value == wanted:
        return _pass(name, value)
    reason = f"; {why}" if why else ""
    # In a container k4sinit writes only the per-network-namespace (net.*) ones.
    where = "" if key.startswith("net.") else ", outside a container"
    return _warn(name, f"{value}, want {wanted}{reason} (k4sinit sets it at boot{where})")


def _check_panic(host: _Host) -> Check:
    value = (host.read("/proc/sys/kernel/panic") or "").strip()
    if value and value != "0":
        return _pass("sysctl kernel.panic", value)
    shown = value or "absent"
    return _warn("sysctl kernel.panic", f"{shown}: a panicked node hangs instead of rebooting")


def _check_swap(host: _Host) -> Check:
    devices = [
        line.split()[0] for line in (host.read("/proc/swaps") or "").splitlines()[1:] if line
    ]
    if devices:
        return _warn("swap", f"on ({', '.join(devices)}): kubelet's failSwapOn refuses to start")
    return _pass("swap", "off")


def _check_kmsg(host: _Host) -> Check:
    if host.exists("/dev/kmsg"):
        return _pass("/dev/kmsg", "present")
    return _warn("/dev/kmsg", "missing: kubelet's OOM watcher reads it")


# --- presenting the result ----------------------------------------------------


def summary(checks: Sequence[Check]) -> tuple[int, int, int]:
    """(passed, warnings, failed)."""
    counts = Counter(c.status for c in checks)
    return counts[Status.PASS], counts[Status.WARN], counts[Status.FAIL]


def fatal(checks: Sequence[Check]) -> list[Check]:
    """The failures that make the profile impossible on this machine."""
    return [c for c in checks if c.status is Status.FAIL and c.fatal]


def format_table(checks: Sequence[Check]) -> str:
    """``CHECK  RESULT  DETAIL`` lines, then a count; a fatal failure shows as ``FAIL!``."""
    rows = [("CHECK", "RESULT", "DETAIL")]
    for c in checks:
        result = {Status.PASS: "pass", Status.WARN: "warn", Status.FAIL: "FAIL"}[c.status]
        rows.append(
            (c.name, result + ("!" if c.fatal and c.status is Status.FAIL else ""), c.detail)
        )
    width = max(len(r[0]) for r in rows)
    lines = [f"{name:<{width}}  {result:<6}  {detail}".rstrip() for name, result, detail in rows]
    passed, warned, failed = summary(checks)
    tail = f"{passed} passed, {warned} warning{'' if warned == 1 else 's'}, {failed} failed"
    if failed:
        tail += f" ({len(fatal(checks))} fatal: FAIL! means the profile cannot run here)"
    return "\n".join([*lines, tail]) + "\n"


class CheckJSON(TypedDict):
    """A :class:`Check` on the wire (``status preflight``)."""

    name: str
    status: str  # a Status value
    detail: str
    fatal: bool


class SummaryJSON(TypedDict):
    """The checks' counts and failures, under the ``status`` table."""

    passed: int
    warnings: int
    failed: int
    failures: list[str]  # "name: detail"


def to_json(checks: Sequence[Check]) -> list[CheckJSON]:
    """The checks as status shows them."""
    return [
        {"name": c.name, "status": c.status.value, "detail": c.detail, "fatal": c.fatal}
        for c in checks
    ]


def summary_json(checks: Sequence[Check]) -> SummaryJSON | None:
    """The line status shows (None when no preflight ran): counts and the failures."""
    if not checks:
        return None
    passed, warned, failed = summary(checks)
    return {
        "passed": passed,
        "warnings": warned,
        "failed": failed,
        "failures": [f"{c.name}: {c.detail}" for c in checks if c.status is Status.FAIL],
    }


def check_node(settings: NodeSettings, config: Config) -> list[Check]:
    """The checks of a node's profile: its roles' programs on its ``binPath``, and
    its storage when the config has a ``storage`` section.

    ``config`` is the expanded config (:func:`k4sinit.node.roles`); a
    multicall binary counts once, and a oneshot's shell does not count.
    """
    binaries = sorted(
        {
            config.services[role].executable or config.services[role].command[0]
            for role in settings.roles
            if role in config.services and role not in ONESHOT_ROLES
        }
    )
    checks = run_checks(
        settings.profile,
        data_dir=settings.data_dir,
        binaries=binaries,
        search_path=settings.path,
    )
    if config.storage is not None:
        after_disk = next((i + 1 for i, c in enumerate(checks) if c.name == "disk"), len(checks))
        checks.insert(after_disk, check_storage(config.storage))
    return checks
