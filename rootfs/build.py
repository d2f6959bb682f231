"""Build the node's initramfs: a gzip-compressed newc cpio with k4sinit as ``/init``.

Run it with the project's venv (``.venv/bin/python rootfs/build.py --help``) or call
:func:`build`. With ``--config etc/k4sinit/node-vm.yaml`` it is a single-node
Kubernetes node image. The image holds:

* Debian's ``/usr/bin/python3.11`` with its ldd closure and a trimmed stdlib;
* k4sinit and its dependencies (copied from the venv by their ``RECORD`` files) in
  ``/usr/lib/k4sinit/site-packages``, everything precompiled to ``unchecked-hash``
  ``.pyc`` files by that same interpreter (so the magic number matches);
* ``/init`` and ``/usr/bin/k4sinit``, two copies of a small launcher that calls
  ``k4sinit.cli.entry()``;
* busybox-static as ``/bin/busybox`` with a symlink per applet in ``/bin``;
* the k4s multicall binary at ``/bbin/k4s``, u-root style, with a symlink
  ``/bbin/<role> -> k4s`` per Kubernetes role (kine, kube-apiserver,
  kube-controller-manager, kube-scheduler, kubelet): the binary given with
  ``--k4s PATH``, or else the TEST STAND-INS of ``tests/standins/kube.py``
  (``/bbin/k4s`` is then a launcher of ``/usr/lib/k4sinit/standins/kube.py``,
  which dispatches on the name it was run as);
* the kernel modules of Debian's kernel that the caller asks for and that the
  config lists under ``modules:``, with their dependencies and a ``depmod``-made
  ``modules.dep`` for just those;
* ``/etc/k4sinit/config.yaml`` (the config given), ``/etc/k4sinit/image.json``
  (what the image holds, read by k4sinit at boot: see ``k4sinit/image.py``),
  ``/etc/passwd``, ``/etc/group``, ``/etc/hosts``, and empty mount points;
* binaries at their host paths with their ldd closures (default: Debian's etcd,
  containerd, its runc v2 shim, ctr, runc, and iptables-nft with its extensions and
  ``iptables``/``ip6tables`` (``-save``, ``-restore``) links), and with containerd
  ``/etc/containerd/config.toml``; the CNI plugins a single node's pod network
  uses (Debian's containernetworking-plugins) in ``/opt/cni/bin``;
* air-gap image archives in ``/var/lib/k4sinit/images``, which the node's
  ``images`` oneshot imports into containerd: ``hello.tar`` (busybox that
  echoes a line) and ``pause.tar``, ``k4sinit.local/pause:3.10``, a stand-in
  for registry.k8s.io/pause (see ``oci.py``).

The tree is staged in ``OUT/rootfs`` (kept, for inspection), checked under
``chroot`` (k4sinit, its dependencies and the stand-ins import from bytecode;
each stand-in role answers ``--version`` through its ``/bbin`` link), and packed
to ``OUT/k4sinit.cpio.gz``. A build whose inputs did not change since the last
one returns at once. Needs root (chroot) and the Debian packages listed in
``scripts/vm-deps``. See ``rootfs/README.md`` for the layout and for putting the
image on top of a u-root initramfs.
"""

from __future__ import annotations

import argparse
import ast
import gzip
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
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

import yaml
from packaging.requirements import Requirement

sys.path.insert(0, str(Path(__file__).resolve().parent))
import oci  # rootfs/ is a directory of scripts, not a package

ROOT = Path(__file__).resolve().parent.parent
IMAGE_NAME = "k4sinit.cpio.gz"

PYTHON = "/usr/bin/python3.11"
STDLIB = Path("/usr/lib/python3.11")
BUSYBOX = "/bin/busybox"
SITE = "/usr/lib/k4sinit/site-packages"  # in the image

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
    "virtio_console",  # the control port (k4sinit/controlport.py)
    "overlay",
    "llc",
    "stp",
    "bridge",
    "br_netfilter",
    "veth",
)

#: Host binaries copied to the same paths, with their shared libraries (Debian's
#: containerd 1.6, runc 1.1 and etcd 3.4 are dynamically linked: ``scripts/vm-deps``
#: installs them).
DEFAULT_BINARIES = (
    "/usr/bin/containerd",
    "/usr/bin/containerd-shim-runc-v2",
    "/usr/bin/ctr",
    "/usr/sbin/runc",
    "/usr/bin/etcd",
    "/usr/sbin/xtables-nft-multi",
)

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

#: Debian's containernetworking-plugins keeps the plugins here ...
CNI_SOURCE = Path("/usr/lib/cni")
#: ... and the node looks for them here (``node.cniBinDir``'s default).
CNI_BIN_DIR = "/opt/cni/bin"
#: The plugins of the single node's pod network (``k4sinit/services/containerd.py``
#: writes a conflist of ``bridge`` with ``host-local`` IPAM, and ``portmap``), and
#: ``loopback``, which containerd's CRI runs for every pod by itself.
DEFAULT_CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")

#: The k4s multicall binary, u-root style: ``/bbin/<role>`` links to it, and it
#: dispatches on the name it was run as.
K4S_PATH = "/bbin/k4s"
K4S_ROLES = ("kine", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet")
#: Without a k4s binary: the test stand-ins (kube.py and flags/) go here in the
#: image, and /bbin/k4s is :data:`STANDIN_LAUNCHER`.
STANDINS = ROOT / "tests/standins"
STANDINS_DIR = "/usr/lib/k4sinit/standins"  # in the image
IMAGE_JSON = "/etc/k4sinit/image.json"

#: Written to /etc/containerd/config.toml when containerd is among the binaries.
#: No CRI plugin (nothing talks CRI yet; it is the slowest plugin to start), and no
#: snapshotters that cannot work here (aufs, btrfs, zfs, devmapper): overlayfs
#: (the default; it works on the tmpfs root) and native remain.
#:
#: The CRI section records the runc options the node wants once the CRI plugin is
#: enabled. It is inert now: only the CRI plugin reads it; ``ctr`` sends no
#: ShimCgroup (containerd 1.6 has no other place for it), so a ``ctr``-started
#: shim stays in containerd's cgroup (``/services/containerd``) and its container
#: goes to ``/<namespace>/<id>``. Note that ``/shims`` as k4sinit makes it has
#: controllers enabled for its children, so the kernel refuses a process in it
#: (EBUSY, seen in the VM): the shim would fail to join until k4sinit makes it
#: joinable (no controllers in its ``subtree_control``) or a leaf below it
#: exists for shims.
CONTAINERD_CONFIG_PATH = "/etc/containerd/config.toml"
CONTAINERD_CONFIG = """\
# containerd 1.6 for k4sinit (written by rootfs/build.py)
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
disabled_plugins = [
  "io.containerd.grpc.v1.cri",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins."io.containerd.grpc.v1.cri".containerd]
  default_runtime_name = "runc"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  SystemdCgroup = false
  ShimCgroup = "/shims"
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

#: /bbin/k4s of an image built without a k4s binary. The kernel runs it as
#: ``python3.11 -IS /bbin/<role> ARGS`` through a role's link, so ``sys.argv[0]``
#: is the link's path and kube.py's ``role_of`` finds the role in its basename;
#: kube.py, imported from its own directory, finds ``flags/<role>.txt`` next to
#: itself and PyYAML in k4sinit's site-packages (so it never re-executes itself).
STANDIN_LAUNCHER = f"""\
#!{PYTHON} -IS
# /bbin/k4s of a k4sinit node image built WITHOUT a k4s binary (rootfs/build.py):
# TEST STAND-INS (tests/standins/kube.py in k4sinit's repository), NOT Kubernetes,
# for {", ".join(K4S_ROLES)}.
# /bbin/<role> links here; the role is the name it was run as.
import sys

sys.path[:0] = ["{STANDINS_DIR}", "{SITE}"]
import kube

sys.exit(kube.main(sys.argv))
"""

#: Applets not linked: busybox itself, and its init, which the kernel would run
#: (from /bin/init) if /init failed; then it falls back to /bin/sh on the console.
BUSYBOX_SKIP = frozenset({"busybox", "init", "linuxrc"})

ETC_FILES = {
    "/etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    "/etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "/etc/hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
}
EMPTY_DIRS = ("/proc", "/sys", "/dev", "/run", "/tmp", "/var", "/root", "/mnt", "/bbin")
IMAGES_DIR = "/var/lib/k4sinit/images"  # the node's imagesDir: air-gap archives

ExtraFiles = Mapping[str, "str | bytes | os.PathLike[str]"]


class BuildError(RuntimeError):
    """The image cannot be built; the message says what is missing and how to fix it."""


# --- public entry point -----------------------------------------------------------


def build(
    config_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    modules: Sequence[str] = DEFAULT_MODULES,
    extra_files: ExtraFiles | None = None,
    *,
    binaries: Sequence[str] = DEFAULT_BINARIES,
    k4s: str | os.PathLike[str] | None = None,
    cni_plugins: Sequence[str] = DEFAULT_CNI_PLUGINS,
    hello_image: bool = True,
    pause_image: bool = True,
    kernel_version: str | None = None,
    compress: bool = True,
    force: bool = False,
    quiet: bool = False,
) -> Path:
    """Build the image into ``out_dir`` and return its path.

    ``modules`` and the config's own ``modules:`` list (read from the file) are
    all in the image, with their dependencies. ``extra_files`` maps absolute
    paths in the image to their content: ``str`` or ``bytes`` (mode 0755 if it
    starts with ``#!``, else 0644) or a host path to copy (its mode kept). They
    are written last, so they may replace anything, ``/init`` included.
    ``compress=False`` writes a plain ``k4sinit.cpio``.

    ``binaries`` are host executables copied to the same paths in the image (a
    symlink's target's content), with every shared library they load; when
    ``/usr/bin/containerd`` is one of them, ``/etc/containerd/config.toml`` is
    :data:`CONTAINERD_CONFIG`. ``cni_plugins`` are copied from
    :data:`CNI_SOURCE` to :data:`CNI_BIN_DIR`. ``k4s`` is a host k4s multicall
    binary for ``/bbin/k4s``; without one, the test stand-ins take its place
    (and ``/etc/k4sinit/image.json`` says so). ``hello_image`` and
    ``pause_image`` add the ``k4sinit.local/hello:1`` and
    ``k4sinit.local/pause:3.10`` docker archives to ``/var/lib/k4sinit/images``
    (see ``oci.py``).

    Raises :class:`BuildError` when an input is missing (run ``scripts/vm-deps``),
    a module is not in the kernel, or a check in the built tree fails. Skips the
    work when a previous build in ``out_dir`` had the same inputs, unless ``force``.
    """
    say = (lambda *a: None) if quiet else _say
    started = time.monotonic()
    config = Path(config_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    extra = dict(extra_files or {})
    kver = kernel_version or debian_kernel_version()
    image = out / (IMAGE_NAME if compress else IMAGE_NAME.removesuffix(".gz"))
    key_file = image.with_name(image.name + ".key")
    k4s_file = Path(k4s) if k4s is not None else None
    plugins = [CNI_SOURCE / name for name in cni_plugins]

    _require_inputs(kver, binaries, [str(p) for p in plugins], k4s_file)
    from_config = config_modules(config)
    wanted_modules = list(dict.fromkeys([*modules, *from_config]))
    dists = distributions()
    key = _input_key(
        config,
        wanted_modules,
        extra,
        kver,
        dists,
        binaries=binaries,
        plugins=plugins,
        k4s=k4s_file,
        images=(hello_image, pause_image),
    )
    if not force and image.exists() and key_file.exists():
        previous = json.loads(key_file.read_text())
        if previous.get("key") == key:
            say(f"build: {image} is up to date: {_sizes(previous['cpio_bytes'], image)}")
            return image

    tree = out / "rootfs"
    if tree.exists():
        shutil.rmtree(tree)
    tree.mkdir()
    for d in EMPTY_DIRS:
        _mkdir(tree, d)
    (tree / "tmp").chmod(0o1777)
    (tree / "root").chmod(0o700)

    _copy_file(Path(PYTHON), tree / PYTHON[1:])
    copied_stdlib = _copy_stdlib(tree)
    _copy_site_packages(tree, dists)
    for binary in binaries:
        _copy_file(Path(binary).resolve(), tree / binary.lstrip("/"))
    for plugin in plugins:
        _copy_file(plugin.resolve(), tree / CNI_BIN_DIR.lstrip("/") / plugin.name)
    k4s_info = _install_k4s(tree, k4s_file)
    xtables = _install_iptables(tree) if IPTABLES in binaries else []
    _copy_ldd_closure(
        tree,
        [
            PYTHON,
            *copied_stdlib,
            *_shared_objects(tree / SITE[1:]),
            *binaries,
            *map(str, plugins),
            *([str(k4s_file)] if k4s_file else []),
            *xtables,
        ],
    )
    _install_busybox(tree)
    if "/usr/bin/containerd" in binaries:
        _write(tree, CONTAINERD_CONFIG_PATH, CONTAINERD_CONFIG, 0o644)
    archives = []
    if hello_image:
        _write(tree, oci.HELLO_PATH, oci.hello_archive(BUSYBOX), 0o644)
        archives.append({"path": oci.HELLO_PATH, "ref": oci.HELLO_REF})
    if pause_image:
        _write(tree, oci.PAUSE_PATH, oci.pause_archive(BUSYBOX), 0o644)
        archives.append(
            {
                "path": oci.PAUSE_PATH,
                "ref": oci.PAUSE_REF,
                "standInFor": "registry.k8s.io/pause:3.10",
            }
        )
    _mkdir(tree, IMAGES_DIR)
    for path in ("/init", "/usr/bin/k4sinit"):
        _write(tree, path, LAUNCHER, 0o755)
    _write(tree, "/etc/k4sinit/config.yaml", config.read_bytes(), 0o644)
    for path, text in ETC_FILES.items():
        _write(tree, path, text, 0o644)
    origin = {name: f"{config.name}'s modules" for name in from_config}
    installed = _install_modules(tree, kver, wanted_modules, origin)
    description = {
        "builtBy": "rootfs/build.py",
        "k4sinit": importlib.metadata.version("k4sinit"),
        "kernel": kver,
        "k4s": k4s_info,
        "modules": wanted_modules,
        "binaries": list(binaries),
        "cniPlugins": [f"{CNI_BIN_DIR}/{p.name}" for p in plugins],
        "images": archives,
    }
    _write(tree, IMAGE_JSON, json.dumps(description, indent=2) + "\n", 0o644)
    for path, content in extra.items():
        _write_extra(tree, path, content)
    say(f"build: staged in {time.monotonic() - started:.1f}s, compiling")

    _compile(tree)
    _check_imports(tree, standins=k4s_file is None)
    if k4s_file is None:
        _check_standins(tree)
    say(f"build: checks in the tree passed ({time.monotonic() - started:.1f}s); packing")

    tmp = image.with_name(image.name + ".tmp")
    raw_size = pack(tree, tmp, compress=compress)
    tmp.replace(image)
    key_file.write_text(json.dumps({"key": key, "cpio_bytes": raw_size}))
    say(
        f"build: {image} ({len(installed)} modules for {kver}, k4s: {k4s_info['kind']}): "
        f"{_sizes(raw_size, image)} in {time.monotonic() - started:.1f}s"
    )
    return image


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
    kver: str,
    binaries: Sequence[str] = (),
    plugins: Sequence[str] = (),
    k4s: Path | None = None,
) -> None:
    relative = [b for b in binaries if not b.startswith("/")]
    if relative:
        raise BuildError(f"binaries must be absolute paths: {', '.join(relative)}")
    if k4s is not None and not (k4s.is_file() and os.access(k4s, os.X_OK)):
        raise BuildError(f"--k4s {k4s}: not an executable file")
    standins = [] if k4s is not None else [str(STANDINS / "kube.py")]
    required = (PYTHON, BUSYBOX, str(STDLIB / "os.py"), *binaries, *plugins, *standins)
    missing = [p for p in required if not Path(p).exists()]
    if missing:
        raise BuildError(f"missing {', '.join(missing)}: run scripts/vm-deps (as root)")
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
    """The ``modules:`` list of the k4sinit config at ``config`` (empty without one).

    Raises :class:`BuildError` when the file is not YAML or the list is not a
    list of names; the rest of the config is k4sinit's to validate.
    """
    try:
        doc = yaml.safe_load(config.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise BuildError(f"config {config}: {exc}") from exc
    names = doc.get("modules") if isinstance(doc, dict) else None
    if names is None:
        return []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise BuildError(f"config {config}: modules must be a list of module names")
    return names


def _standin_files() -> list[Path]:
    """kube.py and its flags files: what the image's stand-ins are made of."""
    return [STANDINS / "kube.py", *sorted((STANDINS / "flags").glob("*.txt"))]


def _k4sinit_sources() -> Iterator[Path]:
    pkg = ROOT / "k4sinit"
    for path in sorted(pkg.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            yield path


def _input_key(
    config: Path,
    modules: Sequence[str],
    extra: dict[str, str | bytes | os.PathLike[str]],
    kver: str,
    dists: list[importlib.metadata.Distribution],
    *,
    binaries: Sequence[str] = (),
    plugins: Sequence[Path] = (),
    k4s: Path | None = None,
    images: tuple[bool, ...] = (),
) -> str:
    """A digest of everything the image is made of: equal keys, equal images."""
    h = hashlib.sha256()

    def add(*parts: object) -> None:
        h.update(repr(parts).encode())

    def add_file(path: Path) -> None:
        st = path.stat()
        add(str(path), st.st_size, st.st_mtime_ns)

    add(Path(__file__).read_bytes(), config.read_bytes(), list(modules), kver)
    add(Path(oci.__file__).read_bytes(), list(binaries), [str(p) for p in plugins], images)
    for path in (PYTHON, BUSYBOX, f"/lib/modules/{kver}/modules.dep"):
        add_file(Path(path))
    executables = [*binaries, *map(str, plugins), *([str(k4s)] if k4s else [])]
    for path in (*executables, *ldd_closure(executables)):  # a package upgrade changes these
        add_file(Path(path).resolve())
    if k4s is not None:
        add("k4s", str(k4s), _sha256(k4s))
    else:
        for standin in _standin_files():
            add(str(standin.relative_to(ROOT)), standin.read_bytes())
    add([(d.metadata["Name"], d.version) for d in dists])
    for src in _k4sinit_sources():
        add_file(src)
    for path, content in sorted(extra.items()):
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


def _install_k4s(tree: Path, k4s: Path | None) -> dict[str, object]:
    """``/bbin/k4s`` and a ``/bbin/<role> -> k4s`` link per role; returns the
    ``k4s`` object of image.json.

    ``k4s`` is copied as it is; without it the stand-ins go to
    :data:`STANDINS_DIR` and ``/bbin/k4s`` is :data:`STANDIN_LAUNCHER`.
    """
    target = tree / K4S_PATH.lstrip("/")
    if k4s is not None:
        _copy_file(k4s.resolve(), target)
        kind = "supplied"
        source = str(k4s)
    else:
        dest = tree / STANDINS_DIR.lstrip("/")
        for path in _standin_files():
            _copy_file(path, dest / path.relative_to(STANDINS))
        (dest / "kube.py").chmod(0o644)  # imported by the launcher, never executed
        _write(tree, K4S_PATH, STANDIN_LAUNCHER, 0o755)
        kind = "standins"
        source = str((STANDINS / "kube.py").relative_to(ROOT))
    for role in K4S_ROLES:
        (target.parent / role).symlink_to(target.name)
    return {
        "kind": kind,
        "path": K4S_PATH,
        "sha256": _sha256(target),
        "roles": list(K4S_ROLES),
        "source": source,
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


def _install_busybox(tree: Path) -> None:
    _copy_file(Path(BUSYBOX), tree / "bin/busybox")
    applets = subprocess.run(
        [BUSYBOX, "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for name in applets:
        link = tree / "bin" / name
        if name not in BUSYBOX_SKIP and not link.exists():
            link.symlink_to("busybox")
    env = tree / "usr/bin/env"
    env.parent.mkdir(parents=True, exist_ok=True)
    env.symlink_to("/bin/busybox")
    # The kernel's own module requests (request_module: a crypto algorithm, an
    # nf_tables expression, an xtables target) run /sbin/modprobe, its built-in
    # modprobe_path; busybox's reads the image's modules.dep and modules.alias.
    modprobe = tree / "sbin/modprobe"
    modprobe.parent.mkdir(parents=True, exist_ok=True)
    modprobe.symlink_to("/bin/busybox")


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
        by_name[_module_name(path)] = path
    builtin = {_module_name(p) for p in (base / "modules.builtin").read_text().split()}
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
        for soft in softdeps.get(_module_name(path), ()):
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


def _module_name(path: str) -> str:
    return Path(path).name.split(".ko")[0].replace("-", "_")


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
            *([str(standins)] if (standins := tree / STANDINS_DIR[1:]).is_dir() else []),
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
for module, attributes in {from_imports!r}:
    imported = __import__(module, fromlist=attributes)
    for attribute in attributes:
        getattr(imported, attribute)
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


def standin_imports(source: Path = STANDINS / "kube.py") -> list[tuple[str, list[str]]]:
    """Every absolute import in ``source``, function-level ones included, as
    ``(module, [names imported from it])``: what the stand-ins need of the image."""
    imports: dict[str, list[str]] = {}
    for node in ast.walk(ast.parse(source.read_text(), str(source))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                imports.setdefault(alias.name, [])
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "__future__":
                continue
            imports.setdefault(node.module, []).extend(a.name for a in node.names)
    return sorted(imports.items())


def _chroot(tree: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [shutil.which("chroot") or "/usr/sbin/chroot", str(tree), *argv],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/bin:/usr/bin", "HOME": "/"},
    )


def _check_imports(tree: Path, *, standins: bool = False) -> None:
    """Import k4sinit (every module) and its dependencies inside the tree, by chroot,
    without writing bytecode: proves the stdlib trim, the ldd closure and the .pyc.
    With ``standins``, also the stand-ins' ``kube`` module and everything it imports
    (function-level imports included: they run only once a role serves)."""
    paths = [STANDINS_DIR, SITE] if standins else [SITE]
    names = [*IMPORT_CHECK, "kube"] if standins else list(IMPORT_CHECK)
    code = _CHECK.format(
        paths=paths, names=names, from_imports=standin_imports() if standins else []
    )
    proc = _chroot(tree, PYTHON, "-I", "-S", "-B", "-c", code)
    if proc.returncode != 0:
        raise BuildError(f"import check in the image failed:\n{proc.stdout}{proc.stderr}")


def _check_standins(tree: Path) -> None:
    """Run each role's link in the tree, by chroot: ``/bbin/<role> --version`` must
    exit 0 with the stand-in's version. Proves the launcher's ``#!`` line, the
    dispatch on the link's name and that ``flags/<role>.txt`` is found."""
    for role in K4S_ROLES:
        proc = _chroot(tree, f"/bbin/{role}", "--version")
        if proc.returncode != 0 or "k4sinit-standin" not in proc.stdout:
            raise BuildError(
                f"stand-in /bbin/{role} --version in the image failed "
                f"(exit {proc.returncode}):\n{proc.stdout}{proc.stderr}"
            )


# --- cpio ------------------------------------------------------------------------


def _cpio_header(ino: int, mode: int, size: int, nlink: int, name: bytes) -> bytes:
    fields = (ino, mode, 0, 0, nlink, 0, size, 0, 0, 0, 0, len(name) + 1, 0)
    head = b"070701" + b"".join(b"%08X" % f for f in fields) + name + b"\0"
    return head + b"\0" * (-len(head) % 4)


def cpio_entries(tree: Path) -> Iterator[tuple[str, int, bytes]]:
    """``(path, mode, data)`` for everything under ``tree``, parents first, sorted;
    symlinks carry their target as data."""
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames.sort()
        rel = Path(dirpath).relative_to(tree)
        if rel != Path("."):
            st = os.lstat(dirpath)
            yield str(rel), st.st_mode, b""
        for name in sorted(filenames + [d for d in dirnames if Path(dirpath, d).is_symlink()]):
            path = Path(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                data = os.readlink(path).encode()
            elif stat.S_ISREG(st.st_mode):
                data = path.read_bytes()
            else:
                continue
            yield str(rel / name), st.st_mode, data


def pack(tree: Path, out: Path, *, compress: bool = True) -> int:
    """Write ``tree`` as a newc cpio (gzip level 6 if ``compress``), owned by root,
    mtime 0, so equal trees give equal images. Returns the uncompressed size."""
    size = 0
    with open(out, "wb") as raw:
        f = gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) if compress else raw
        with f:
            ino = 1
            for path, mode, data in cpio_entries(tree):
                nlink = 2 if stat.S_ISDIR(mode) else 1
                chunk = _cpio_header(ino, mode, len(data), nlink, path.encode())
                chunk += data + b"\0" * (-len(data) % 4)
                f.write(chunk)
                size += len(chunk)
                ino += 1
            trailer = _cpio_header(0, 0, 0, 1, b"TRAILER!!!")
            f.write(trailer)
            size += len(trailer)
    return size


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
        "--k4s",
        metavar="PATH",
        help=f"a k4s multicall binary for {K4S_PATH} (default: the test stand-ins "
        "of tests/standins, NOT Kubernetes)",
    )
    parser.add_argument(
        "--cni-plugins",
        default=",".join(DEFAULT_CNI_PLUGINS),
        help=f"comma-separated plugins of {CNI_SOURCE} to put in {CNI_BIN_DIR}; "
        "default: %(default)s",
    )
    parser.add_argument(
        "--no-hello-image",
        action="store_true",
        help=f"leave out the test container image {oci.HELLO_PATH}",
    )
    parser.add_argument(
        "--no-pause-image",
        action="store_true",
        help=f"leave out the pause stand-in {oci.PAUSE_PATH} ({oci.PAUSE_REF})",
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
        image = build(
            args.config,
            args.out,
            modules=[m for m in args.modules.split(",") if m],
            extra_files=extra,
            binaries=[b for b in args.binaries.split(",") if b],
            k4s=args.k4s,
            cni_plugins=[p for p in args.cni_plugins.split(",") if p],
            hello_image=not args.no_hello_image,
            pause_image=not args.no_pause_image,
            kernel_version=args.kernel_version,
            compress=not args.no_compress,
            force=args.force,
        )
    except BuildError as exc:
        print(f"build: {exc}", file=sys.stderr)
        return 1
    print(image)
    return 0


if __name__ == "__main__":
    sys.exit(main())
