"""Stage 1 of the boot: mounts, kernel modules (coldplug and by name), sysctls, hostname, machine-id.

Every step is idempotent (what is already mounted or set is left alone), so
the same code runs as PID 1 of a node, again after a switch into a tmpfs root,
and as PID 1 of a container. Each step returns what it did or why it did not,
as lines for the boot log; a step that fails does not stop the others.

In a container (``container`` set in the environment, as container managers
do), k4sinit does not touch what belongs to the host: no tmpfs over /run and
/tmp (the manager provides them and the host reaches the control socket
there), no kernel modules, only the sysctls that are per network namespace,
and /etc/machine-id only if it is missing.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fnmatch
import os
import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

# Sane defaults for a Kubernetes node; the config's sysctls go on top.
DEFAULT_SYSCTLS: tuple[tuple[str, str], ...] = (
    ("net.ipv4.ip_forward", "1"),  # pods reach beyond the node
    ("net.ipv6.conf.all.forwarding", "1"),
    ("net.bridge.bridge-nf-call-iptables", "1"),  # kube-proxy sees bridged pod traffic
    ("net.bridge.bridge-nf-call-ip6tables", "1"),
    ("kernel.panic", "10"),  # a panicked diskless node reboots instead of hanging
    ("kernel.panic_on_oops", "1"),
    ("vm.overcommit_memory", "1"),  # kubelet's defaults (protectKernelDefaults)
    ("vm.panic_on_oom", "0"),
    ("fs.inotify.max_user_instances", "8192"),  # one per watching pod container
    ("fs.inotify.max_user_watches", "524288"),
)

MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_MOVE, MS_REC = 0x20, 0x1000, 0x2000, 0x4000
MS_RDONLY = 0x1


@dataclass(frozen=True)
class Mount:
    """One filesystem stage 1 wants at ``target``."""

    fstype: str
    target: str
    options: str = ""
    flags: int = MS_NOSUID | MS_NODEV | MS_NOEXEC
    mode: int = 0o755
    optional: bool = False  # the kernel may lack it (bpf, securityfs)
    in_container: bool = True  # a container manager provides it otherwise


MOUNTS: tuple[Mount, ...] = (
    Mount("proc", "/proc"),
    Mount("sysfs", "/sys"),
    Mount("devtmpfs", "/dev", "mode=0755", MS_NOSUID, in_container=False),
    Mount("devpts", "/dev/pts", "gid=5,mode=0620,ptmxmode=0666", MS_NOSUID | MS_NOEXEC),
    Mount("tmpfs", "/dev/shm", "mode=1777", MS_NOSUID | MS_NODEV),
    Mount("tmpfs", "/run", "mode=0755", MS_NOSUID | MS_NODEV, in_container=False),
    Mount("tmpfs", "/tmp", "mode=1777", MS_NOSUID | MS_NODEV, in_container=False),
    # In a container that shares the host's cgroup namespace these options would
    # change the host's hierarchy: mount_filesystems drops them there.
    Mount("cgroup2", "/sys/fs/cgroup", "nsdelegate,memory_recursiveprot"),
    Mount("bpf", "/sys/fs/bpf", "mode=0700", optional=True),
    Mount("securityfs", "/sys/kernel/security", optional=True),
)


def in_container() -> bool:
    """True when a container manager started us (systemd's ``container=`` convention)."""
    return bool(os.environ.get("container"))  # noqa: SIM112 (the convention is lowercase)


# The process's own symbols, libc's among them (as reaper.py does): find_library
# would run ldconfig in a subprocess at import, ~3 ms of every start.
_libc = ctypes.CDLL(None, use_errno=True)


def mount(source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None:
    """mount(2); raises OSError."""
    if (
        _libc.mount(source.encode(), target.encode(), fstype.encode(), flags, data.encode() or None)
        != 0
    ):
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype} on {target}: {os.strerror(err)}")


def umount(target: str, flags: int = 0) -> None:
    if _libc.umount2(target.encode(), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount {target}: {os.strerror(err)}")


def mounted(mountinfo: str = "/proc/self/mountinfo") -> dict[str, str]:
    """Visible mount point -> filesystem type.

    A mount over a mount point covers the earlier mount there (its parent, at
    the same path) and everything mounted under it: a fresh /sys hides the
    host's /sys/fs/cgroup. Covered entries of mountinfo are left out.
    """
    try:
        with open(mountinfo) as f:
            lines = f.read().splitlines()
    except OSError:
        return {}  # /proc not mounted yet
    mounts: dict[int, tuple[int, str, str]] = {}  # id -> (parent id, path, fstype)
    for line in lines:
        fields = line.split()
        path = _unescape(fields[4])
        mounts[int(fields[0])] = (int(fields[1]), path, fields[fields.index("-") + 1])
    # A namespace's root mount lists itself as its parent (proc(5)): not a cover.
    covered = {
        parent
        for mount_id, (parent, path, _) in mounts.items()
        if parent != mount_id and mounts.get(parent, (0, None))[1] == path
    }

    def reachable(mount_id: int) -> bool:
        for _ in range(len(mounts)):  # bounded walk up to the root
            parent, path, _ = mounts[mount_id]
            if parent not in mounts or parent == mount_id:
                return True
            if mounts[parent][1] != path and parent in covered:
                return False  # under a covered mount
            mount_id = parent
        return False

    return {
        path: fstype
        for mount_id, (_, path, fstype) in mounts.items()
        if mount_id not in covered and reachable(mount_id)
    }


def mount_filesystems(*, container: bool) -> list[str]:
    """Mount what stage 1 needs and is missing; returns one line per action or problem.

    /sys is mounted afresh when it shows another network namespace's links (a
    container in its own network namespace inherits the host's sysfs), and
    cgroup2 is then mounted in the fresh one.
    """
    done: list[str] = []
    for spec in MOUNTS:
        if container and not spec.in_container:
            continue
        current = mounted()
        if spec.target in current and not (spec.target == "/sys" and _sysfs_of_another_netns()):
            continue
        if spec.target == "/sys/fs/cgroup" and current.get("/sys/fs/cgroup") not in (
            None,
            "cgroup2",
        ):
            continue  # a v1 layout someone else made; cgroups.discover will say so
        try:
            os.makedirs(spec.target, mode=spec.mode, exist_ok=True)
            options = "" if container and spec.fstype == "cgroup2" else spec.options
            try:
                mount(spec.fstype, spec.target, spec.fstype, spec.flags, options)
            except OSError as exc:
                if spec.fstype != "cgroup2" or exc.errno != errno.EINVAL:
                    raise
                mount("cgroup2", spec.target, "cgroup2", spec.flags)  # an older kernel: no options
            done.append(f"mounted {spec.fstype} on {spec.target}")
        except OSError as exc:
            if not spec.optional:
                done.append(f"could not mount {spec.fstype} on {spec.target}: {exc.strerror}")
    return done


def _unescape(field: str) -> str:
    """mountinfo's octal escapes (space, tab, newline, backslash)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _sysfs_of_another_netns() -> bool:
    """/sys/class/net lists other links than our network namespace has (/proc/net/dev).

    Links are symlinks there; plain files (bonding_masters) are not links.
    """
    try:
        with open("/proc/self/net/dev") as f:
            ours = {line.split(":")[0].strip() for line in f.readlines()[2:]}
        theirs = {e.name for e in os.scandir("/sys/class/net") if e.is_symlink()}
    except OSError:
        return False
    return ours != theirs


def load_modules(names: Sequence[str], release: str | None = None) -> list[str]:
    """Load kernel modules (and their dependencies from modules.dep) in order.

    Uses finit_module(2) on the uncompressed ``.ko`` files Debian ships; a
    module already loaded (or built in) is fine. Returns one line per problem.
    """
    loader = ModuleLoader(release)
    return [problem for name in names if (problem := loader.load(name)) is not None]


class ModuleLoader:
    """Loads the modules of one kernel with their dependencies, each at most once.

    modules.dep is read once, when the loader is made (missing: nothing can load).
    """

    def __init__(self, release: str | None = None, *, base: Path | None = None) -> None:
        self.base = base or Path("/lib/modules") / (release or os.uname().release)
        self._deps = _modules_dep(self.base / "modules.dep")
        self._loaded = _loaded_modules()

    def load(self, name: str) -> str | None:
        """Load ``name`` after its dependencies; None when it is there now, else the problem.

        A module already loaded or built in (``/sys/module/NAME``) is there.
        """
        key = name.replace("-", "_")
        if key in self._loaded or (Path("/sys/module") / key).exists():
            return None
        chain = _dependency_chain(key, self._deps)
        if not chain:
            return f"module {name}: not found in {self.base}"
        for path in chain:
            module = module_name(path)
            if module in self._loaded:
                continue
            error = _finit_module(self.base / path)
            if error is not None:
                return f"module {module}: {error}"
            self._loaded.add(module)
        return None


def _modules_dep(path: Path) -> dict[str, list[str]]:
    """Module name -> [its file, then its dependencies' files] from modules.dep."""
    deps: dict[str, list[str]] = {}
    with contextlib.suppress(OSError):
        for line in path.read_text().splitlines():
            target, _, rest = line.partition(":")
            deps[module_name(target)] = [target, *rest.split()]
    return deps


def module_name(path: str) -> str:
    """A module's name from its file (``kernel/drivers/net/dummy-net.ko``) or name."""
    return Path(path).name.split(".")[0].replace("-", "_")


def _dependency_chain(name: str, deps: dict[str, list[str]]) -> list[str]:
    """Files to load for ``name``, dependencies first (modules.dep lists them deepest last)."""
    if name not in deps:
        return []
    own, *needed = deps[name]
    return [*reversed(needed), own]


def _loaded_modules() -> set[str]:
    with contextlib.suppress(OSError), open("/proc/modules") as f:
        return {line.split()[0] for line in f}
    return set()


def _finit_module(path: Path) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        return f"{path}: {exc.strerror}"
    try:
        number = _FINIT_MODULE.get(os.uname().machine)
        if number is None:
            return f"finit_module: unknown syscall number on {os.uname().machine}"
        if _libc.syscall(number, fd, b"", 0) != 0:
            err = ctypes.get_errno()
            if err != errno.EEXIST:
                return os.strerror(err)
    finally:
        os.close(fd)
    return None


_FINIT_MODULE = {"x86_64": 313, "aarch64": 273, "riscv64": 273}


# --- coldplug: the modules that the devices present ask for ---------------------------

MAX_COLDPLUG_ROUNDS = 16
_WILDCARD = re.compile(r"[*?[]")
_BRACKETS_OR_DASH = re.compile(r"\[[^\]]*\]|-")


def normalize_alias(alias: str) -> str:
    """kmod's alias_normalize: ``-`` reads as ``_`` outside ``[...]``.

    kmod applies it to both sides (the patterns of modules.alias.bin and the
    modalias looked up), so ``of:Nfoo-bar`` matches a pattern ``of:Nfoo_bar*``.
    """
    if "-" not in alias:
        return alias
    return _BRACKETS_OR_DASH.sub(lambda m: "_" if m.group() == "-" else m.group(), alias)


class ModuleAliases:
    """The aliases of one kernel's modules, indexed to match devices' modaliases.

    Patterns are fnmatch(3) globs, matched as kmod matches them (case
    sensitive, ``*`` also across ``:``). Each is filed under its literal
    prefix (up to its first wildcard), so a modalias is tried only against
    the patterns whose prefix it starts with: a few dict lookups per device
    even with Debian's full modules.alias (~26k lines). A pattern is compiled
    the first time it is tried, then kept.

    ``modules`` are those that can be loaded (modules.dep), ``builtin`` those
    built into the kernel (modules.builtin): a match on one of them needs no
    loading and is not missing.
    """

    def __init__(
        self,
        aliases: Iterable[tuple[str, str]],
        modules: Iterable[str] = (),
        builtin: Iterable[str] = (),
    ) -> None:
        self.modules = frozenset(modules)
        self.builtin = frozenset(builtin)
        # literal prefix -> [(file order, normalized pattern, module)]
        self._by_prefix: dict[str, list[tuple[int, str, str]]] = {}
        self._compiled: dict[str, re.Pattern[str]] = {}
        for order, (pattern, module) in enumerate(aliases):
            pattern = normalize_alias(pattern)
            prefix = _WILDCARD.split(pattern, maxsplit=1)[0]
            self._by_prefix.setdefault(prefix, []).append((order, pattern, module))
        self._lengths = sorted({len(prefix) for prefix in self._by_prefix})

    @classmethod
    def read(cls, base: Path) -> ModuleAliases:
        """modules.alias, modules.dep and the built-ins of the kernel in ``base``
        (``/lib/modules/RELEASE``). Raises OSError when modules.alias cannot be read.

        Built-ins come from modules.builtin (their names) and
        modules.builtin.modinfo (their aliases); either may be missing.
        """
        aliases = []
        for line in (base / "modules.alias").read_text(errors="replace").splitlines():
            fields = line.split()
            if len(fields) == 3 and fields[0] == "alias":
                aliases.append((fields[1], module_name(fields[2])))
        builtin: set[str] = set()
        with contextlib.suppress(OSError):
            names = (base / "modules.builtin").read_text(errors="replace").split()
            builtin.update(module_name(p) for p in names)
        with contextlib.suppress(OSError):
            for entry in (base / "modules.builtin.modinfo").read_bytes().split(b"\0"):
                key, _, value = entry.decode(errors="replace").partition("=")
                module, _, field = key.partition(".")
                if field == "alias" and value:
                    aliases.append((value, module_name(module)))
                    builtin.add(module_name(module))
        return cls(aliases, _modules_dep(base / "modules.dep"), builtin)

    def match(self, modalias: str) -> list[str]:
        """The modules with an alias matching ``modalias``, in file order, each once."""
        modalias = normalize_alias(modalias)
        found: list[tuple[int, str]] = []
        for length in self._lengths:
            if length > len(modalias):
                break
            for order, pattern, module in self._by_prefix.get(modalias[:length], ()):
                if len(pattern) == length:  # no wildcard: the whole pattern is its prefix
                    hit = len(modalias) == length
                else:
                    compiled = self._compiled.get(pattern)
                    if compiled is None:
                        compiled = self._compiled[pattern] = re.compile(fnmatch.translate(pattern))
                    hit = compiled.match(modalias) is not None
                if hit:
                    found.append((order, module))
        return list(dict.fromkeys(module for _, module in sorted(found)))


def read_modaliases(sysfs: str = "/sys") -> dict[str, str]:
    """Every device under ``sysfs``/devices that has a modalias: devpath -> modalias.

    The devpath is the kernel's (``/devices/pci0000:00/0000:00:03.0``), in
    sorted order. Symlinks (``driver``, ``subsystem``, ``device``) are not
    followed, so each device is seen once; unreadable entries are skipped.
    """
    root = os.path.normpath(sysfs)
    found: dict[str, str] = {}
    stack = [os.path.join(root, "devices")]
    while stack:
        directory = stack.pop()
        try:
            entries = os.scandir(directory)
        except OSError:
            continue
        with entries:
            for entry in entries:
                if entry.name == "modalias":
                    with contextlib.suppress(OSError), open(entry.path, errors="replace") as f:
                        modalias = f.read().strip()
                        if modalias:
                            found[directory[len(root) :]] = modalias
                elif entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return dict(sorted(found.items()))


@dataclass(frozen=True)
class Coldplug:
    """What :func:`coldplug` did.

    ``loaded``: (module, devpath, modalias) for each device a module was
    loaded for, in load order; ``devices``: how many devices had a modalias;
    ``rounds``: how many times sysfs was read; ``skipped``: why nothing was
    tried (no modules.alias), else None.
    """

    loaded: tuple[tuple[str, str, str], ...] = ()
    problems: tuple[str, ...] = ()
    devices: int = 0
    rounds: int = 0
    skipped: str | None = None

    @property
    def modules(self) -> list[str]:
        """The modules loaded for devices, in load order (not their dependencies)."""
        return list(dict.fromkeys(module for module, _, _ in self.loaded))

    def summary(self) -> str:
        """One line: what was loaded for how many devices."""
        if self.skipped is not None:
            return f"nothing to load: {self.skipped}"
        seen = f"{self.devices} device{'s' if self.devices != 1 else ''} with a modalias"
        if not self.loaded:
            return f"nothing to load for the {seen}"
        count = len({devpath for _, devpath, _ in self.loaded})
        return (
            f"loaded {', '.join(self.modules)} for {count} device{'s' if count != 1 else ''}"
            f" ({seen}, {self.rounds} rounds)"
        )

    def details(self) -> list[str]:
        """One line per device a module was loaded for."""
        return [f"{module} for {devpath} ({alias})" for module, devpath, alias in self.loaded]


def coldplug(
    release: str | None = None,
    *,
    sysfs: str = "/sys",
    base: Path | None = None,
    load: Callable[[str], str | None] | None = None,
    max_rounds: int = MAX_COLDPLUG_ROUNDS,
) -> Coldplug:
    """Load the modules that the devices present ask for, as udev's coldplug does.

    Reads every device's modalias under ``sysfs``/devices, matches it against
    modules.alias of ``base`` (default ``/lib/modules/RELEASE``, the running
    kernel's), and loads each matching module with ``load`` (default: a
    :class:`ModuleLoader`, dependencies first). Loading a bus driver makes new
    devices appear (virtio_pci: the virtio devices, which virtio_net wants), so
    this repeats until a round has nothing new to load, at most ``max_rounds``
    times. ``load`` returns None on success, else a problem line.

    A device with no matching module is normal (its driver is built in or not
    in the image); a module already there (``sysfs``/module, modules.builtin) is
    not loaded again; each module is tried once. Never raises for a module or a
    device: a module that fails to load is a line in ``problems``.
    """
    base = base or Path("/lib/modules") / (release or os.uname().release)
    try:
        aliases = ModuleAliases.read(base)
    except OSError as exc:
        return Coldplug(skipped=f"{base / 'modules.alias'}: {exc.strerror}")
    if load is None:
        load = ModuleLoader(base=base).load
    present = set(aliases.builtin)
    with contextlib.suppress(OSError):
        present.update(os.listdir(os.path.join(sysfs, "module")))  # loaded, or built in
    tried: set[str] = set()
    seen: dict[str, str] = {}  # devpath -> modalias, already matched
    loaded: list[tuple[str, str, str]] = []
    problems: list[str] = []
    for rounds in range(1, max_rounds + 1):
        wanted: dict[str, list[tuple[str, str]]] = {}  # module -> [(devpath, modalias)]
        for devpath, modalias in read_modaliases(sysfs).items():
            if seen.get(devpath) == modalias:
                continue
            seen[devpath] = modalias
            for module in aliases.match(modalias):
                if module not in present and module not in tried:
                    wanted.setdefault(module, []).append((devpath, modalias))
        if not wanted:
            return Coldplug(tuple(loaded), tuple(problems), len(seen), rounds)
        for module, devices in wanted.items():
            tried.add(module)
            devpath, modalias = devices[0]
            if module not in aliases.modules:  # a modules.alias that modules.dep does not back
                problems.append(f"module {module} (for {modalias}): not in {base}")
                continue
            problem = load(module)
            if problem is not None:
                problems.append(f"{problem} (for {devpath}, {modalias})")
                continue
            present.add(module)
            loaded.extend((module, d, m) for d, m in devices)
    problems.append(f"still loading after {max_rounds} rounds; stopped")
    return Coldplug(tuple(loaded), tuple(problems), len(seen), max_rounds)


def apply_sysctls(sysctls: Sequence[tuple[str, str]], *, container: bool) -> list[str]:
    """Write sysctls (config over defaults); returns one line per problem.

    A sysctl whose file does not exist yet (br_netfilter not loaded) is
    reported, not fatal. In a container only ``net.*`` ones are written: the
    others are the host's.
    """
    merged = dict(DEFAULT_SYSCTLS)
    merged.update(sysctls)
    problems = []
    for key, value in merged.items():
        if container and not key.startswith("net."):
            continue
        # Dots separate levels unless the key uses slashes (eth0.100 is one level).
        path = Path("/proc/sys") / (key if "/" in key else key.replace(".", "/"))
        try:
            path.write_text(value)
        except OSError as exc:
            if key in dict(sysctls) or exc.errno != errno.ENOENT:
                problems.append(f"sysctl {key}={value}: {exc.strerror}")
    return problems


_MACHINE_ID = re.compile(r"[0-9a-f]{32}")


def set_hostname(name: str) -> None:
    """Set the kernel hostname and write /etc/hostname (kubelet and people read it)."""
    if _libc.sethostname(name.encode(), len(name)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"sethostname: {os.strerror(err)}")
    with contextlib.suppress(OSError):
        Path("/etc/hostname").write_text(name + "\n")


def ensure_machine_id(path: str = "/etc/machine-id", persisted: str | None = None) -> str:
    """A stable machine id (kubelet needs one): kept if present, else created.

    ``persisted`` is a file that survives reboots (a diskless node's identity
    comes from its image or a persistent path); it is copied in when present.
    """
    target = Path(path)
    with contextlib.suppress(OSError):
        existing = target.read_text().strip()
        if _MACHINE_ID.fullmatch(existing):
            return existing
    machine_id = None
    if persisted:
        with contextlib.suppress(OSError):
            kept = Path(persisted).read_text().strip()
            machine_id = kept if _MACHINE_ID.fullmatch(kept) else None
    machine_id = machine_id or secrets.token_hex(16)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(machine_id + "\n")
    return machine_id
