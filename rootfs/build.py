"""Build the node's initramfs with the u-root tool: k4sinit as ``/init``, u-root's
core commands in ``/bbin``.

Run it with the project's venv (``.venv/bin/python rootfs/build.py --help``) or call
:func:`build`. With ``--config etc/k4sinit/node-vm.yaml`` it is a single-node
Kubernetes node image. The image holds:

* u-root's core commands (``rootfs/uroot``, built by ``rootfs/uroot/urootbuild.py``):
  ``/bbin/bb``, one gobusybox binary, with a link ``/bbin/<command> -> bb`` per
  command (ls, cat, ip, mount, umount, ps, dmesg, ...);
* Debian's ``/usr/bin/python3.11`` with its ldd closure and a trimmed stdlib;
* k4sinit and its dependencies (copied from the venv by their ``RECORD`` files) in
  ``/usr/lib/k4sinit/site-packages``, everything precompiled to ``unchecked-hash``
  ``.pyc`` files by that same interpreter (so the magic number matches);
* ``/init`` and ``/usr/bin/k4sinit``, two copies of a small launcher that calls
  ``k4sinit.cli.entry()``;
* ``/bin/sh``: Debian's dash (u-root's gosh cannot be k4sinit's shell: its ``-c``
  ignores the arguments after the script, and its ``exec`` runs a child instead of
  replacing the shell), and ``/sbin/modprobe``: Debian's kmod (u-root's modprobe
  knows no aliases and no ``-q``, which the kernel's own module requests use);
* the node's Go userland, built from the pinned modules of ``rootfs/k4s`` by
  ``rootfs/k4s/gobuild.py`` (``userland``): the k4s multicall binary at
  ``/bbin/k4s`` beside u-root's ``bb``, with a symlink ``/bbin/<role> -> k4s`` per role
  (kine, etcd, kube-apiserver, kube-scheduler, kube-controller-manager, kubelet,
  kube-proxy, kubectl, containerd, ctr, coredns), containerd's shim and runc in
  ``/usr/bin``, the CNI plugins in ``/opt/cni/bin``, and Kubernetes' pause as the
  pod sandbox image;
* the kernel modules of Debian's kernel that the caller asks for and that the
  config lists under ``modules:``, with their dependencies and a ``depmod``-made
  ``modules.dep`` for just those;
* ``/etc/k4sinit/config.yaml`` (the config given), ``/etc/k4sinit/image.json``
  (what the image holds and the upstream versions, read by k4sinit at boot: see
  ``k4sinit/core/imageinfo.py``), ``/etc/passwd``, ``/etc/group``, ``/etc/hosts``, and
  empty mount points;
* binaries at their host paths with their ldd closures (default: Debian's
  iptables-nft with its extensions and ``iptables``/``ip6tables`` (``-save``,
  ``-restore``) links, which kube-proxy and the CNI plugins run);
* air-gap image archives in ``/var/lib/k4sinit/images``, which the node's
  ``images`` oneshot imports into containerd: ``pause.tar`` (Kubernetes'
  pause, built from its source) and ``busybox.tar``, ``k4sinit.local/busybox:1``
  (busybox-static with every applet: sh, wget, httpd, nc, ...), for pods that
  need no registry (see ``oci.py``). That is the only busybox in the image: a
  container image's layer, not the node's userland.

The tree is staged in ``OUT/rootfs`` and compiled, packed as the base archive, and
the u-root tool makes the image from it (``urootbuild.make_image``: ``-base``,
``-useinit``, u-root's ``/bbin``). The image is then unpacked back into
``OUT/rootfs`` (kept, for inspection) and checked there under ``chroot``: k4sinit
and its dependencies import from bytecode; ``/bbin/k4s`` runs and lists its roles,
runc and a CNI plugin run; every command k4sinit and the roles run resolves on
their ``PATH`` and runs (:data:`NEEDED_COMMANDS`). It is written to
``OUT/k4sinit.cpio.gz`` (gzipped here, level 6). A build whose inputs did not change
since the last one returns at once. Needs root (chroot) and the Debian packages
listed in ``scripts/vm-deps``. See ``rootfs/README.md`` for the layout.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.metadata
import json
import os
import posixpath
import re
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from packaging.requirements import Requirement

from k4sinit.config import ConfigErrors, load_config
from k4sinit.core.paths import DEFAULT_PATH, SHELL
from k4sinit.host.system import module_name

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "k4s"))
sys.path.insert(0, str(Path(__file__).resolve().parent / "uroot"))
import gobuild  # rootfs/k4s/gobuild.py: the Go userland
import newc  # rootfs/ is a directory of scripts, not a package
import oci
import urootbuild  # rootfs/uroot/urootbuild.py: u-root's tool and commands

ROOT = Path(__file__).resolve().parent.parent
IMAGE_NAME = "k4sinit.cpio.gz"

PYTHON = "/usr/bin/python3.11"
STDLIB = Path("/usr/lib/python3.11")
#: busybox-static: only for the air-gap ``k4sinit.local/busybox:1`` pod image.
BUSYBOX = "/bin/busybox"
SITE = "/usr/lib/k4sinit/site-packages"  # in the image
#: The image's ``/bin/sh`` (k4sinit's :data:`SHELL`: the cgroup join before a
#: service's program, the images oneshot, the emergency shell; the kernel's last
#: resort): Debian's dash, copied from here.
DASH = "/bin/dash"
#: Debian's kmod, at this path in the image, with ``/sbin/modprobe`` linked to it.
KMOD = "/usr/bin/kmod"
MODPROBE = "/sbin/modprobe"

#: Loaded by k4sinit at boot in this order (FACTS: the virtio NIC chain; the bridge
#: chain for br_netfilter), plus overlay, veth and the virtio RNG qemu provides.
DEFAULT_MODULES = (
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
    "failover",
    "net_failover",
    "virtio_net",
    "virtio_rng",
    "virtio_console",  # the control port (k4sinit/control/port.py)
    "overlay",
    "llc",
    "stp",
    "bridge",
    "br_netfilter",
    "veth",
)

#: Host binaries copied to the same paths, with their shared libraries
#: (``scripts/vm-deps`` installs them): Debian's iptables.
DEFAULT_BINARIES = ("/usr/sbin/xtables-nft-multi",)

#: iptables (nf_tables backend): the CNI bridge plugin's masquerade and portmap's
#: hostPort rules run it, as kube-proxy does. One multicall binary dispatched by
#: argv[0], linked under the names those programs run; its match and target
#: extensions are dlopened from XTABLES_DIR (ldd does not see them).
IPTABLES = "/usr/sbin/xtables-nft-multi"
IPTABLES_NAMES = (
    "iptables",
    "iptables-save",
    "iptables-restore",
    "ip6tables",
    "ip6tables-save",
    "ip6tables-restore",
)
XTABLES_DIR = Path("/usr/lib/x86_64-linux-gnu/xtables")

#: The node looks for the CNI plugins here (``node.cniBinDir``'s default).
CNI_BIN_DIR = "/opt/cni/bin"
#: The k4s multicall binary, u-root style: ``/bbin/<role>`` links to it, and it
#: dispatches on the name it was run as.
K4S_PATH = "/bbin/k4s"
#: containerd starts ``containerd-shim-runc-v2`` from its PATH, and the shim runs
#: ``runc`` from its own: both are in /usr/bin, on k4sinit's PATH.
SHIM_PATH = "/usr/bin/containerd-shim-runc-v2"
RUNC_PATH = "/usr/bin/runc"
IMAGE_JSON = "/etc/k4sinit/image.json"

#: /etc/containerd/config.toml, for a containerd started without the node's role
#: (``containerd`` alone, as tests/test_vm.py does): containerd 2's format, no CRI
#: plugin (nothing talks CRI there; it is the slowest plugin to start), and no
#: snapshotters that cannot work here. The node's ``containerd`` role writes and
#: uses its own config (k4sinit/services/containerd.py).
CONTAINERD_CONFIG_PATH = "/etc/containerd/config.toml"
CONTAINERD_CONFIG = """\
# containerd 2 for k4sinit without the node's role (written by rootfs/build.py)
version = 3
root = "/var/lib/containerd"
state = "/run/containerd"
disabled_plugins = [
  "io.containerd.cri.v1.images",
  "io.containerd.cri.v1.runtime",
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.snapshotter.v1.erofs",
]

[grpc]
  address = "/run/containerd/containerd.sock"
"""

#: Distributions copied besides k4sinit's own requirements (and theirs):
#: cryptography is for the cluster PKI.
EXTRA_DISTRIBUTIONS = ("cryptography",)

#: Directory names dropped anywhere in the stdlib.
STDLIB_DROP_DIRS = frozenset(
    {
        "__pycache__",
        "test",
        "tests",
        "idle_test",
        "idlelib",
        "tkinter",
        "turtledemo",
        "ensurepip",
        "lib2to3",
        "distutils",
        "pydoc_data",
        "venv",
        "site-packages",
        "dist-packages",
    }
)
#: Directory names dropped anywhere in the copied site-packages.
SITE_DROP_DIRS = frozenset({"__pycache__", "_tests", "tests"})
#: Top-level stdlib entries dropped by name or pattern.
STDLIB_DROP_TOP = re.compile(r"^(config-3\.11-.*|turtle\.py|LICENSE\.txt)$")
#: Extension modules dropped from lib-dynload: test modules, and ones whose shared
#: libraries (ncurses, readline, Berkeley DB, NIS) the node has no use for.
DYNLOAD_DROP = re.compile(
    r"^(_test\w*|_ctypes_test|xxlimited\w*|_xxtestfuzz|_xxsubinterpreters|_curses\w*"
    r"|readline|_dbm|_gdbm|nis|ossaudiodev|_crypt)\."
)

#: What the image must be able to import (checked under chroot before packing).
IMPORT_CHECK = (
    *("k4sinit.cli", "k4sinit.daemon", "trio", "pyroute2", "pyroute2.iproute", "pyroute2.dhcp"),
    *("psutil", "yaml", "structlog", "h11", "cryptography", "cryptography.x509"),
    *("cryptography.hazmat.primitives.asymmetric.ec", "ssl", "sqlite3", "_sqlite3", "ctypes"),
)

LAUNCHER = f"""\
#!{PYTHON} -IS
# k4sinit launcher (made by rootfs/build.py): /init as PID 1, /usr/bin/k4sinit otherwise.
import sys

sys.path.insert(0, "{SITE}")
from k4sinit.cli import entry

entry()
"""

#: What k4sinit, its services, the roles and an operator run by name, and who: each
#: must resolve on k4sinit's PATH in the image to the path given, and run (checked
#: under chroot before the image is written; tests/test_image.py lists them too).
NEEDED_COMMANDS = {
    "sh": (SHELL, "k4sinit's spawns into a cgroup, the images oneshot, the emergency shell"),
    "modprobe": (MODPROBE, "the kernel's own module requests (request_module)"),
    "mount": ("/bbin/mount", "kubelet: tmpfs for secrets and projected volumes"),
    "umount": ("/bbin/umount", "kubelet"),
    "python3.11": (PYTHON, "k4sinit itself"),
    "k4sinit": ("/usr/bin/k4sinit", "services and operators: status, poweroff"),
    **{name: (f"/bbin/{name}", "an operator on the console") for name in ("ls", "cat", "ip")},
    **{name: (f"/bbin/{name}", "an operator on the console") for name in ("ps", "dmesg", "grep")},
}
#: With Debian's iptables among the binaries: what runs it.
NEEDED_WITH_IPTABLES = {
    "iptables": ("/usr/sbin/iptables", "kube-proxy, the CNI bridge's masquerade, portmap"),
    "iptables-restore": ("/usr/sbin/iptables-restore", "kube-proxy"),
    "ip6tables": ("/usr/sbin/ip6tables", "kube-proxy"),
}
#: With a userland: what containerd and the images oneshot run.
NEEDED_WITH_USERLAND = {
    "ctr": ("/bbin/ctr", "the images oneshot"),
    "containerd-shim-runc-v2": ("/usr/bin/containerd-shim-runc-v2", "containerd"),
    "runc": ("/usr/bin/runc", "the shim"),
}

ETC_FILES = {
    "/etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    "/etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "/etc/hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    # kubelet reports PRETTY_NAME as the node's OS image.
    "/etc/os-release": 'NAME="k4sinit"\nID=k4sinit\nPRETTY_NAME="k4sinit diskless node"\n',
}
EMPTY_DIRS = ("/proc", "/sys", "/dev", "/run", "/tmp", "/var", "/root", "/mnt", "/bbin", "/bin")
IMAGES_DIR = "/var/lib/k4sinit/images"  # the node's imagesDir: air-gap archives

ExtraFiles = Mapping[str, "str | bytes | os.PathLike[str]"]


class BuildError(RuntimeError):
    """The image cannot be built; the message says what is missing and how to fix it."""


@dataclass(frozen=True)
class _Plan:
    """One build's inputs, resolved and checked (:func:`_plan`), and where it goes."""

    config: Path
    out: Path
    kver: str
    modules: list[str]  # the caller's and the config's, in that order
    origin: dict[str, str]  # module name -> where the config asked for it
    extra: dict[str, str | bytes | os.PathLike[str]]
    dists: list[importlib.metadata.Distribution]
    binaries: list[str]
    userland: gobuild.Outputs | None
    uroot: urootbuild.Outputs
    busybox_image: bool
    image: Path
    key: str

    @property
    def key_file(self) -> Path:
        return self.image.with_name(self.image.name + ".key")

    @property
    def tree(self) -> Path:
        return self.out / "rootfs"


# --- public entry point -----------------------------------------------------------


def build(
    config_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    modules: Sequence[str] = DEFAULT_MODULES,
    extra_files: ExtraFiles | None = None,
    *,
    userland: gobuild.Outputs | None,
    binaries: Sequence[str] = DEFAULT_BINARIES,
    busybox_image: bool = True,
    kernel_version: str | None = None,
    compress: bool = True,
    force: bool = False,
    quiet: bool = False,
) -> Path:
    """Build the image into ``out_dir`` and return its path.

    ``userland`` is a build of ``rootfs/k4s`` (:func:`gobuild.build`): k4s and its
    role links, the shim, runc, the CNI plugins and the pause image go in; None
    makes an image of k4sinit alone (no Kubernetes, no containerd). u-root's tool
    and commands are built first if out of date (``urootbuild.build``).
    ``modules`` and the config's own ``modules:`` list (read by k4sinit's config
    loader, which also validates the rest) are all in the image, with their
    dependencies. ``extra_files`` maps absolute paths in the image to their
    content: ``str`` or ``bytes`` (mode 0755 if it starts with ``#!``, else 0644)
    or a host path to copy (its mode kept). They are written last, so they may
    replace anything, ``/init`` included. ``compress=False`` writes a plain
    ``k4sinit.cpio``.

    ``binaries`` are host executables copied to the same paths in the image (a
    symlink's target's content), with every shared library they load.
    ``busybox_image`` adds ``k4sinit.local/busybox:1`` to the air-gap images
    (with a userland; see ``oci.py``).

    Raises :class:`BuildError` when an input is missing (run ``scripts/vm-deps``),
    the config is not valid, a module is not in the kernel, or a check in the
    image fails; :class:`gobuild.GoBuildError` when a Go build or the u-root tool
    fails, naming the step. Skips the work when a previous build in ``out_dir``
    had the same inputs, unless ``force``.
    """
    say: Callable[[str], None] = (lambda line: None) if quiet else _say
    started = time.monotonic()
    plan = _plan(
        Path(config_path),
        Path(out_dir),
        modules,
        dict(extra_files or {}),
        userland=userland,
        binaries=list(binaries),
        busybox_image=busybox_image,
        kernel_version=kernel_version,
        compress=compress,
        say=say,
    )
    if not force and (previous := _previous_build(plan)) is not None:
        say(f"build: {plan.image} is up to date: {_sizes(previous, plan.image)}")
        return plan.image
    description, module_files = _stage(plan)
    say(f"build: staged in {time.monotonic() - started:.1f}s, compiling")
    _compile(plan.tree)
    raw = _assemble(plan, say)
    say(f"build: the u-root tool made {raw.name} ({time.monotonic() - started:.1f}s); checking it")
    _check_image(plan)
    raw_size = raw.stat().st_size
    if compress:
        tmp = plan.image.with_name(plan.image.name + ".tmp")
        newc.gzip_file(raw, tmp)
        tmp.replace(plan.image)
        raw.unlink()
    else:
        raw.replace(plan.image)
    plan.key_file.write_text(json.dumps({"key": plan.key, "cpio_bytes": raw_size}))
    versions = description.get("versions") or {}
    assert isinstance(versions, dict)  # _install_userland's, or none
    say(
        f"build: {plan.image} (u-root {plan.uroot.version}, {module_files} modules for "
        f"{plan.kver}; {', '.join(f'{k} {v}' for k, v in versions.items()) or 'no Kubernetes'}"
        f"): {_sizes(raw_size, plan.image)} in {time.monotonic() - started:.1f}s"
    )
    return plan.image


def _plan(
    config: Path,
    out: Path,
    modules: Sequence[str],
    extra: dict[str, str | bytes | os.PathLike[str]],
    *,
    userland: gobuild.Outputs | None,
    binaries: list[str],
    busybox_image: bool,
    kernel_version: str | None,
    compress: bool,
    say: Callable[[str], None],
) -> _Plan:
    """Check the inputs, build u-root's part if out of date, and compute the key."""
    out.mkdir(parents=True, exist_ok=True)
    kver = kernel_version or debian_kernel_version()
    _require_inputs(kver, binaries, userland)
    from_config = config_modules(config)
    uroot = urootbuild.build(say=say)
    plan = _Plan(
        config=config,
        out=out,
        kver=kver,
        modules=list(dict.fromkeys([*modules, *from_config])),
        origin={name: f"{config.name}'s modules" for name in from_config},
        extra=extra,
        dists=distributions(),
        binaries=binaries,
        userland=userland,
        uroot=uroot,
        busybox_image=busybox_image,
        image=out / (IMAGE_NAME if compress else IMAGE_NAME.removesuffix(".gz")),
        key="",
    )
    return dataclasses.replace(plan, key=_input_key(plan))


def _previous_build(plan: _Plan) -> int | None:
    """The cpio size of the image in place, if it was built from the same inputs."""
    if not (plan.image.exists() and plan.key_file.exists()):
        return None
    previous = json.loads(plan.key_file.read_text())
    return int(previous["cpio_bytes"]) if previous.get("key") == plan.key else None


def _stage(plan: _Plan) -> tuple[dict[str, object], int]:
    """Lay out everything of ours in ``plan.tree`` (u-root's part comes with the
    u-root tool); returns image.json's content and the number of module files."""
    tree = plan.tree
    if tree.exists():
        shutil.rmtree(tree)
    tree.mkdir()
    for d in EMPTY_DIRS:
        _mkdir(tree, d)
    (tree / "tmp").chmod(0o1777)
    (tree / "root").chmod(0o700)
    _copy_file(Path(PYTHON), tree / PYTHON[1:])
    copied_stdlib = _copy_stdlib(tree)
    _copy_site_packages(tree, plan.dists)
    for binary in plan.binaries:
        _copy_file(Path(binary).resolve(), tree / binary.lstrip("/"))
    xtables = _install_iptables(tree) if IPTABLES in plan.binaries else []
    _install_shell_and_modprobe(tree)
    loaders = [PYTHON, *copied_stdlib, *_shared_objects(tree / SITE[1:]), *plan.binaries]
    _copy_ldd_closure(tree, [*loaders, *xtables, DASH, KMOD])
    _mkdir(tree, IMAGES_DIR)
    description: dict[str, object] = {
        "builtBy": "rootfs/build.py",
        "k4sinit": importlib.metadata.version("k4sinit"),
        "kernel": plan.kver,
        "uroot": {"version": plan.uroot.version, "commands": plan.uroot.names()},
    }
    if plan.userland is not None:
        description |= _install_userland(tree, plan.userland, busybox_image=plan.busybox_image)
    for path in ("/init", "/usr/bin/k4sinit"):
        _write(tree, path, LAUNCHER, 0o755)
    _write(tree, "/etc/k4sinit/config.yaml", plan.config.read_bytes(), 0o644)
    for path, text in ETC_FILES.items():
        _write(tree, path, text, 0o644)
    installed = _install_modules(tree, plan.kver, plan.modules, plan.origin)
    description |= {"modules": plan.modules, "binaries": plan.binaries}
    _write(tree, IMAGE_JSON, json.dumps(description, indent=2) + "\n", 0o644)
    for path, content in plan.extra.items():
        _write_extra(tree, path, content)
    return description, len(installed)


def _assemble(plan: _Plan, say: Callable[[str], None]) -> Path:
    """Pack the tree as the base archive, have the u-root tool make the image from
    it, and unpack the image into the tree (what the checks see is the image).
    Returns the plain cpio."""
    base = plan.out / "base.cpio"
    raw = plan.out / "image.cpio"
    newc.pack(plan.tree, base, compress=False)
    try:
        urootbuild.make_image(plan.uroot, base, raw, say)
    finally:
        base.unlink()
    shutil.rmtree(plan.tree)
    plan.tree.mkdir()
    newc.unpack(raw, plan.tree)
    return raw


def _sizes(cpio_bytes: int, image: Path) -> str:
    return f"{cpio_bytes / 1e6:.1f} MB cpio, {image.stat().st_size / 1e6:.1f} MB image"


def debian_kernel_version() -> str:
    """The newest Debian kernel with a ``/boot/vmlinuz-*`` and its ``/lib/modules``."""
    versions = sorted(
        (p.name.removeprefix("vmlinuz-") for p in Path("/boot").glob("vmlinuz-*")),
        key=_version_key,
    )
    versions = [v for v in versions if Path("/lib/modules", v, "modules.dep").exists()]
    if not versions:
        raise BuildError("no Debian kernel in /boot; install it with scripts/vm-deps")
    return versions[-1]


def kernel_image(kernel_version: str | None = None) -> Path:
    """``/boot/vmlinuz-VERSION`` of the kernel whose modules the image carries."""
    return Path("/boot", f"vmlinuz-{kernel_version or debian_kernel_version()}")


# --- inputs ----------------------------------------------------------------------


def _version_key(v: str) -> list[int | str]:
    return [int(p) if p.isdigit() else p for p in re.split(r"[.-]", v)]


def _require_inputs(
    kver: str, binaries: Sequence[str] = (), userland: gobuild.Outputs | None = None
) -> None:
    relative = [b for b in binaries if not b.startswith("/")]
    if relative:
        raise BuildError(f"binaries must be absolute paths: {', '.join(relative)}")
    required = [PYTHON, BUSYBOX, DASH, KMOD, str(STDLIB / "os.py"), *binaries]
    if userland is not None:
        required += map(str, _userland_files(userland))
    missing = [p for p in required if not Path(p).exists()]
    if missing:
        raise BuildError(
            f"missing {', '.join(missing)}: run scripts/vm-deps (as root), "
            "and rootfs/k4s/gobuild.py for the userland"
        )
    if not Path("/lib/modules", kver, "modules.dep").exists():
        raise BuildError(f"no /lib/modules/{kver}: run scripts/vm-deps (as root)")
    if os.geteuid() != 0:
        raise BuildError("the build checks the tree under chroot: run it as root")


def distributions() -> list[importlib.metadata.Distribution]:
    """k4sinit's installed requirements and theirs (and cryptography's), without k4sinit."""
    todo = ["k4sinit", *EXTRA_DISTRIBUTIONS]
    seen: dict[str, importlib.metadata.Distribution] = {}
    while todo:
        name = _canonical(todo.pop())
        if name in seen:
            continue
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError as exc:
            raise BuildError(f"{name} is not installed in {sys.prefix}: run scripts/setup") from exc
        seen[name] = dist
        for text in dist.requires or ():
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    del seen["k4sinit"]
    return sorted(seen.values(), key=lambda d: _canonical(d.metadata["Name"]))


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def config_modules(config: Path) -> list[str]:
    """The ``modules:`` list of the k4sinit config at ``config``, read by k4sinit's own
    loader (the one ``k4sinit check`` uses), so an image is never built around a
    config its k4sinit would refuse.

    Raises :class:`BuildError` with the loader's errors (file, line, field).
    """
    try:
        return list(load_config(config).system.modules)
    except ConfigErrors as exc:
        raise BuildError(f"the config is not valid: {exc}") from exc


def _k4sinit_sources() -> Iterator[Path]:
    pkg = ROOT / "k4sinit"
    for path in sorted(pkg.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            yield path


def _input_key(plan: _Plan) -> str:
    """A digest of everything the image is made of: equal keys, equal images."""
    h = hashlib.sha256()

    def add(*parts: object) -> None:
        h.update(repr(parts).encode())

    def add_file(path: Path) -> None:
        st = path.stat()
        add(str(path), st.st_size, st.st_mtime_ns)

    add(Path(__file__).read_bytes(), plan.config.read_bytes(), plan.modules, plan.kver)
    add(Path(oci.__file__).read_bytes(), Path(newc.__file__).read_bytes())
    add(plan.binaries, plan.busybox_image)
    for path in (PYTHON, BUSYBOX, DASH, KMOD, f"/lib/modules/{plan.kver}/modules.dep"):
        add_file(Path(path).resolve())
    binaries = [*plan.binaries, DASH, KMOD]
    for path in (*binaries, *ldd_closure(binaries)):  # a package upgrade changes these
        add_file(Path(path).resolve())
    if plan.userland is not None:
        for file in _userland_files(plan.userland):
            add_file(file)
    for file in (plan.uroot.tool, plan.uroot.archive):
        add_file(file)
    add([(d.metadata["Name"], d.version) for d in plan.dists])
    for src in _k4sinit_sources():
        add_file(src)
    for path, content in sorted(plan.extra.items()):
        add(path, content if isinstance(content, str | bytes) else Path(content).read_bytes())
    return h.hexdigest()


# --- staging ---------------------------------------------------------------------


def _mkdir(tree: Path, path: str) -> Path:
    target = tree / path.lstrip("/")
    target.mkdir(parents=True, exist_ok=True)
    return target


def _write(tree: Path, path: str, content: str | bytes, mode: int) -> None:
    target = tree / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        target.unlink()
    if isinstance(content, str):
        content = content.encode()
    target.write_bytes(content)
    target.chmod(mode)


def _write_extra(tree: Path, path: str, content: str | bytes | os.PathLike[str]) -> None:
    if not path.startswith("/"):
        raise BuildError(f"extra file {path!r}: the path in the image must be absolute")
    if isinstance(content, str | bytes):
        data = content.encode() if isinstance(content, str) else content
        _write(tree, path, data, 0o755 if data.startswith(b"#!") else 0o644)
    else:
        src = Path(content)
        _write(tree, path, src.read_bytes(), stat.S_IMODE(src.stat().st_mode))


def _copy_file(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    shutil.copymode(src, dst)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _userland_files(userland: gobuild.Outputs) -> list[Path]:
    return [
        userland.k4s,
        userland.shim,
        userland.runc,
        userland.pause,
        *userland.cni.values(),
        userland.dir / "versions.json",
    ]


def _install_userland(
    tree: Path, userland: gobuild.Outputs, *, busybox_image: bool
) -> dict[str, object]:
    """The Go userland (see the module docstring); returns image.json's part for it."""
    target = tree / K4S_PATH.lstrip("/")
    _copy_file(userland.k4s, target)
    roles = userland.roles()
    for role in roles:
        (target.parent / role).symlink_to(target.name)
    _copy_file(userland.shim, tree / SHIM_PATH.lstrip("/"))
    _copy_file(userland.runc, tree / RUNC_PATH.lstrip("/"))
    for name, plugin in userland.cni.items():
        _copy_file(plugin, tree / CNI_BIN_DIR.lstrip("/") / name)
    _write(tree, CONTAINERD_CONFIG_PATH, CONTAINERD_CONFIG, 0o644)
    versions = userland.versions
    pause_ref = oci.pause_ref(versions["pause"])
    _write(tree, oci.PAUSE_PATH, oci.pause_archive(userland.pause, pause_ref), 0o644)
    archives = [{"path": oci.PAUSE_PATH, "ref": pause_ref, "source": "Kubernetes' pause.c"}]
    if busybox_image:
        _write(tree, oci.BUSYBOX_PATH, oci.busybox_archive(BUSYBOX), 0o644)
        archives.append({"path": oci.BUSYBOX_PATH, "ref": oci.BUSYBOX_REF})
    return {
        "k4s": {
            "path": K4S_PATH,
            "sha256": _sha256(target),
            "roles": roles,
            "source": "rootfs/k4s (gobuild.py)",
        },
        "versions": versions,
        "userland": [SHIM_PATH, RUNC_PATH, *(f"{CNI_BIN_DIR}/{n}" for n in userland.cni)],
        "images": archives,
    }


def _copy_stdlib(tree: Path) -> list[str]:
    """Copy the trimmed stdlib; returns the host paths of the extension modules kept."""
    dest = tree / str(STDLIB)[1:]
    extensions: list[str] = []
    for dirpath, dirnames, filenames in os.walk(STDLIB):
        rel = Path(dirpath).relative_to(STDLIB)
        top = rel == Path(".")
        dirnames[:] = sorted(
            d
            for d in dirnames
            if d not in STDLIB_DROP_DIRS and not (top and STDLIB_DROP_TOP.match(d))
        )
        for name in filenames:
            if top and STDLIB_DROP_TOP.match(name):
                continue
            if rel == Path("lib-dynload") and DYNLOAD_DROP.match(name):
                continue
            if name.endswith((".pyc", ".exe")):
                continue
            src = Path(dirpath, name)
            if not src.exists():  # a dangling symlink (Debian's sitecustomize.py)
                continue
            _copy_file(src, dest / rel / name)
            if name.endswith(".so"):
                extensions.append(str(src))
    return extensions


def _copy_site_packages(tree: Path, dists: list[importlib.metadata.Distribution]) -> None:
    site = tree / SITE[1:]
    site.mkdir(parents=True, exist_ok=True)
    for dist in dists:
        base = Path(str(dist.locate_file("")))
        for entry in dist.files or ():
            rel = Path(str(entry))
            if rel.parts[0] == ".." or SITE_DROP_DIRS.intersection(rel.parts):
                continue  # console scripts in bin/, bytecode (we make our own), tests
            if rel.suffix in (".pyc", ".pyi"):
                continue
            src = base / rel
            if src.is_file():
                _copy_file(src, site / rel)
    for src in _k4sinit_sources():
        _copy_file(src, site / src.relative_to(ROOT))


def _shared_objects(root: Path) -> list[str]:
    return [str(p) for p in sorted(root.rglob("*.so*")) if p.is_file()]


_LDD_LINE = re.compile(r"^\s*(?:\S+ => )?(/\S+) \(0x[0-9a-f]+\)$")


def ldd_closure(binaries: Iterable[str], tree: Path | None = None) -> list[str]:
    """The shared libraries (host paths, as ldd resolves them) the binaries load,
    sorted; libraries already under ``tree`` are left out. Raises
    :class:`BuildError` for one ldd cannot find."""
    libs: set[str] = set()
    for binary in binaries:
        proc = subprocess.run(["ldd", binary], capture_output=True, text=True, check=False)
        if "not a dynamic executable" in proc.stdout + proc.stderr:
            continue
        for line in proc.stdout.splitlines():
            if "not found" in line:
                raise BuildError(f"ldd {binary}: {line.strip()}")
            m = _LDD_LINE.match(line)
            if m and not (tree and m.group(1).startswith(str(tree))):
                libs.add(m.group(1))
    return sorted(libs)


def _copy_ldd_closure(tree: Path, binaries: Iterable[str]) -> None:
    """Copy every shared library the binaries load, at the path ldd resolves it to
    (``/lib/x86_64-linux-gnu/...``, ``/lib64/ld-linux-x86-64.so.2``), as plain files:
    real directories, not Debian's merged-/usr symlinks, so the image can be laid
    over another initramfs without replacing its /lib."""
    for lib in ldd_closure(binaries, tree):
        _copy_file(Path(lib).resolve(), tree / lib[1:])


def _install_iptables(tree: Path) -> list[str]:
    """iptables & co. as links to :data:`IPTABLES`, and its extensions; returns the
    extensions' host paths (for their shared libraries)."""
    sbin = tree / posixpath.dirname(IPTABLES).lstrip("/")
    for name in IPTABLES_NAMES:
        (sbin / name).symlink_to(posixpath.basename(IPTABLES))
    extensions = sorted(XTABLES_DIR.glob("*.so"))
    for ext in extensions:
        _copy_file(ext, tree / str(ext).lstrip("/"))
    return [str(ext) for ext in extensions]


def _install_shell_and_modprobe(tree: Path) -> None:
    """Debian's dash as ``/bin/sh`` and its kmod with ``/sbin/modprobe`` linked to it
    (the module docstring says why not u-root's)."""
    _copy_file(Path(DASH).resolve(), tree / SHELL.lstrip("/"))
    _copy_file(Path(KMOD).resolve(), tree / KMOD.lstrip("/"))
    # The kernel's own module requests (request_module: a crypto algorithm, an
    # nf_tables expression, an xtables target) run /sbin/modprobe, its built-in
    # modprobe_path, as "modprobe -q -- ALIAS"; kmod resolves the alias through the
    # image's modules.alias and loads what modules.dep says.
    modprobe = tree / MODPROBE.lstrip("/")
    modprobe.parent.mkdir(parents=True, exist_ok=True)
    modprobe.symlink_to(KMOD)


def module_closure(
    kver: str, names: Sequence[str], origin: Mapping[str, str] | None = None
) -> list[str]:
    """The modules.dep paths of ``names`` and everything they depend on, each after
    its dependencies. Soft dependencies (``modules.softdep``) come too, every
    module that provides them (``modules.alias``): ``libcrc32c`` (under nf_tables
    and nf_conntrack) fails to load with ENOENT unless a ``crc32c`` is there.
    Raises :class:`BuildError` naming every module the kernel lacks, with where
    it was asked for (``origin``: name -> "config.yaml's modules")."""
    base = Path("/lib/modules", kver)
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (base / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
        by_name[module_name(path)] = path
    builtin = {module_name(p) for p in (base / "modules.builtin").read_text().split()}
    aliases: dict[str, list[str]] = {}
    for line in _read_lines(base / "modules.alias"):
        parts = line.split()
        if len(parts) == 3 and parts[0] == "alias":
            aliases.setdefault(parts[1], []).append(parts[2])
    softdeps: dict[str, list[str]] = {}
    for line in _read_lines(base / "modules.softdep"):
        parts = line.split()
        if len(parts) > 2 and parts[0] == "softdep":
            wanted = [p for p in parts[2:] if p not in ("pre:", "post:")]
            softdeps.setdefault(parts[1].replace("-", "_"), []).extend(wanted)
    order: list[str] = []
    visiting: set[str] = set()

    def visit(path: str) -> None:
        if path in order or path in visiting:
            return
        visiting.add(path)
        for dep in deps[path]:
            visit(dep)
        for soft in softdeps.get(module_name(path), ()):
            for provider in [soft, *aliases.get(soft, ())]:
                if provider.replace("-", "_") in by_name:
                    visit(by_name[provider.replace("-", "_")])
        order.append(path)

    missing = []
    for name in names:
        key = name.replace("-", "_")
        if key in by_name:
            visit(by_name[key])
        elif key not in builtin:
            where = (origin or {}).get(name)
            missing.append(f"{name!r}" + (f" (from {where})" if where else ""))
    if missing:
        raise BuildError(f"kernel {kver} has no module {', '.join(missing)}")
    return order


def _read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _install_modules(
    tree: Path, kver: str, names: Sequence[str], origin: Mapping[str, str] | None = None
) -> list[str]:
    src = Path("/lib/modules", kver)
    dest = tree / "lib/modules" / kver
    paths = module_closure(kver, names, origin)
    for path in paths:
        _copy_file(src / path, dest / path)
    for name in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        if (src / name).exists():
            _copy_file(src / name, dest / name)
    # modules.dep, and modules.alias for k4sinit's coldplug, of the copied modules only
    subprocess.run(["depmod", "-b", str(tree), kver], check=True)
    return paths


# --- compile and check -----------------------------------------------------------


def _compile(tree: Path) -> None:
    """Compile the stdlib and site-packages with the image's own interpreter (the
    host's identical Debian binary), recording in-image paths in the bytecode."""
    proc = subprocess.run(
        [
            PYTHON,
            "-I",
            "-m",
            "compileall",
            "-q",
            "-j0",
            "--invalidation-mode",
            "unchecked-hash",
            "-s",
            str(tree),
            "-p",
            "/",
            str(tree / str(STDLIB)[1:]),
            str(tree / SITE[1:]),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    # compileall exits 1 for files that do not compile (a few stdlib/lib2to3-style
    # grammar samples); they are dropped when imported, which nothing does.
    if proc.returncode not in (0, 1):
        raise BuildError(f"compileall failed:\n{proc.stdout}{proc.stderr}")


_CHECK = """
import importlib, pkgutil, sys
sys.path[:0] = {paths!r}
import k4sinit
names = list({names!r})
names += [
    m.name for m in pkgutil.walk_packages(k4sinit.__path__, "k4sinit.")
    if not m.name.endswith(".__main__")
]
for name in names:
    importlib.import_module(name)
missing = sorted(
    m.__name__ for m in list(sys.modules.values())
    if getattr(m, "__file__", None) and m.__file__.endswith(".py")
    and getattr(m.__spec__, "origin", None) != "frozen"
    and not m.__name__.startswith("importlib._bootstrap")
    and not (getattr(m, "__cached__", None) and __import__("os").path.exists(m.__cached__))
)
if missing:
    sys.exit("imported without bytecode: " + ", ".join(missing))
print(len(sys.modules), "modules imported")
"""


def _chroot(tree: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in ``tree`` by chroot, with k4sinit's PATH."""
    return subprocess.run(
        [shutil.which("chroot") or "/usr/sbin/chroot", str(tree), *argv],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": DEFAULT_PATH, "HOME": "/"},
    )


def _run_in(tree: Path, *argv: str) -> str:
    """:func:`_chroot`; its output, or :class:`BuildError` naming the command."""
    proc = _chroot(tree, *argv)
    if proc.returncode != 0:
        raise BuildError(
            f"{' '.join(argv)} in the image failed (exit {proc.returncode}):\n"
            f"{proc.stdout}{proc.stderr}"
        )
    return proc.stdout


def _check_image(plan: _Plan) -> None:
    """Everything :func:`_check_imports`, :func:`_check_userland` (with a userland)
    and :func:`_check_commands` check, in the image as the u-root tool wrote it."""
    _check_imports(plan.tree)
    if plan.userland is not None:
        _check_userland(plan.tree)
    needed = NEEDED_COMMANDS | (NEEDED_WITH_USERLAND if plan.userland is not None else {})
    if IPTABLES in plan.binaries:
        needed |= NEEDED_WITH_IPTABLES
    _check_commands(plan.tree, plan.kver, needed)


def _check_imports(tree: Path) -> None:
    """Import k4sinit (every module) and its dependencies inside the tree, by chroot,
    without writing bytecode: proves the stdlib trim, the ldd closure and the .pyc."""
    code = _CHECK.format(paths=[SITE], names=list(IMPORT_CHECK))
    proc = _chroot(tree, PYTHON, "-I", "-S", "-B", "-c", code)
    if proc.returncode != 0:
        raise BuildError(f"import check in the image failed:\n{proc.stdout}{proc.stderr}")


def _check_userland(tree: Path) -> None:
    """Run the userland in the tree, by chroot: ``k4s --list`` through its path and
    ``kubectl version --client`` through a role link, ``runc --version``, the bridge
    plugin's ``version``. Proves the binaries are whole and need nothing from the host."""
    for argv in (
        [K4S_PATH, "--list"],
        ["/bbin/kubectl", "version", "--client"],
        [RUNC_PATH, "--version"],
        [f"{CNI_BIN_DIR}/bridge", "--version"],
    ):
        _run_in(tree, *argv)


#: process.py's way into a cgroup before exec ($0: the cgroup.procs file).
_JOIN = 'echo 0 > "$0" && exec "$@"'


def _check_commands(tree: Path, kver: str, needed: Mapping[str, tuple[str, str]]) -> None:
    """Each command in ``needed`` (name -> (path, who runs it)) resolves on k4sinit's
    PATH to its path, by the image's own ``sh``; then they run: ``sh`` joins "a
    cgroup" (a file here) and execs a u-root command as k4sinit's spawns do, u-root's
    ``ls`` lists ``/bbin``, ``modprobe`` resolves a module alias through the image's
    ``modules.alias``, ``iptables`` says its version. Raises :class:`BuildError`
    naming each command that is wrong."""
    script = 'for c in "$@"; do echo "$c=$(command -v "$c")"; done'
    out = _run_in(tree, SHELL, "-c", script, "sh", *needed)
    found = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
    wrong = [
        f"{name}: {found.get(name) or 'not found'}, expected {path} (for {who})"
        for name, (path, who) in needed.items()
        if found.get(name) != path
    ]
    if wrong:
        raise BuildError("commands in the image:\n" + "\n".join(wrong))
    joined = tree / "tmp/k4sinit-build-check"
    try:
        _run_in(tree, SHELL, "-c", _JOIN, "/" + str(joined.relative_to(tree)), "/bbin/true")
        if joined.read_text() != "0\n":
            raise BuildError(f"{SHELL} -c {_JOIN!r} wrote {joined.read_text()!r}, not '0'")
    finally:
        joined.unlink(missing_ok=True)
    if "bb" not in _run_in(tree, "/bbin/ls", "/bbin").split():
        raise BuildError("/bbin/ls /bbin in the image does not list bb")
    if any((tree / "lib/modules" / kver).rglob("overlay.ko")):
        shown = _run_in(tree, MODPROBE, "-S", kver, "--show-depends", "fs-overlay")
        if "overlay.ko" not in shown:
            raise BuildError(f"modprobe -S {kver} --show-depends fs-overlay said {shown!r}")
    if "iptables" in needed:
        _run_in(tree, "iptables", "--version")


# --- command line ----------------------------------------------------------------


def _say(*args: object) -> None:
    print(*args, file=sys.stderr, flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rootfs/build.py", description="build k4sinit's initramfs (a gzipped newc cpio)"
    )
    parser.add_argument(
        "--config",
        default=str(ROOT / "etc/k4sinit/example.yaml"),
        help="k4sinit config to put at /etc/k4sinit/config.yaml (default: %(default)s)",
    )
    parser.add_argument(
        "--out", default=str(ROOT / "rootfs/out"), help="output directory (default: %(default)s)"
    )
    parser.add_argument(
        "--modules",
        default=",".join(DEFAULT_MODULES),
        help="comma-separated kernel modules, besides the config's modules: list "
        "(dependencies are added); default: %(default)s",
    )
    parser.add_argument(
        "--file",
        action="append",
        default=[],
        metavar="IMAGE_PATH=HOST_PATH",
        help="add a host file to the image (repeatable)",
    )
    parser.add_argument(
        "--binaries",
        default=",".join(DEFAULT_BINARIES),
        help="comma-separated host binaries to add with their shared libraries "
        "(empty: none); default: %(default)s",
    )
    parser.add_argument(
        "--no-userland",
        action="store_true",
        help="leave out the Go userland (k4s, runc, CNI plugins, pause): k4sinit alone",
    )
    parser.add_argument(
        "--userland",
        default=str(gobuild.DEFAULT_OUT),
        metavar="DIR",
        help="where rootfs/k4s/gobuild.py builds the userland (built if out of date; "
        "default: %(default)s)",
    )
    parser.add_argument(
        "--no-busybox-image",
        action="store_true",
        help=f"leave out the debugging image {oci.BUSYBOX_PATH} ({oci.BUSYBOX_REF})",
    )
    parser.add_argument("--kernel-version", help="default: the newest in /boot")
    parser.add_argument("--no-compress", action="store_true", help="write a plain .cpio")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    args = parser.parse_args(argv)
    extra: dict[str, str | bytes | os.PathLike[str]] = {}
    for item in args.file:
        dest, sep, src = item.partition("=")
        if not sep:
            parser.error(f"--file {item!r}: expected IMAGE_PATH=HOST_PATH")
        extra[dest] = Path(src)
    try:
        userland = None if args.no_userland else gobuild.build(args.userland, say=_say)
        image = build(
            args.config,
            args.out,
            modules=[m for m in args.modules.split(",") if m],
            extra_files=extra,
            binaries=[b for b in args.binaries.split(",") if b],
            userland=userland,
            busybox_image=not args.no_busybox_image,
            kernel_version=args.kernel_version,
            compress=not args.no_compress,
            force=args.force,
        )
    except (BuildError, gobuild.GoBuildError) as exc:
        print(f"build: {exc}", file=sys.stderr)
        return 1
    print(image)
    return 0


if __name__ == "__main__":
    sys.exit(main())
