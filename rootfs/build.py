"""Build the node's initramfs: a gzip-compressed newc cpio with k4sinit as ``/init``.

Run it with the project's venv (``.venv/bin/python rootfs/build.py --help``) or call
:func:`build`. The image holds:

* Debian's ``/usr/bin/python3.11`` with its ldd closure and a trimmed stdlib;
* k4sinit and its dependencies (copied from the venv by their ``RECORD`` files) in
  ``/usr/lib/k4sinit/site-packages``, everything precompiled to ``unchecked-hash``
  ``.pyc`` files by that same interpreter (so the magic number matches);
* ``/init`` and ``/usr/bin/k4sinit``, two copies of a small launcher that calls
  ``k4sinit.cli.entry()``;
* busybox-static as ``/bin/busybox`` with a symlink per applet in ``/bin``, and an
  empty ``/bbin`` (reserved for u-root);
* the requested kernel modules of Debian's kernel, with their dependencies and a
  ``depmod``-made ``modules.dep`` for just those;
* ``/etc/k4sinit/config.yaml`` (the config given), ``/etc/passwd``, ``/etc/group``,
  ``/etc/hosts``, and empty mount points;
* extra binaries at their host paths with their ldd closures (default: Debian's
  containerd, its runc v2 shim, ctr and runc), and with containerd
  ``/etc/containerd/config.toml``;
* ``/var/lib/k4sinit/images/hello.tar``: a tiny docker-archive image for
  ``ctr images import`` (busybox-static that echoes a line; see ``oci.py``).

The tree is staged in ``OUT/rootfs`` (kept, for inspection), checked by importing
k4sinit and its dependencies in it under ``chroot``, and packed to
``OUT/k4sinit.cpio.gz``. A build whose inputs did not change since the last one
returns at once. Needs root (chroot) and the Debian packages listed in
``scripts/vm-deps``. See ``rootfs/README.md`` for the layout and for putting the
image on top of a u-root initramfs.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path

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
    "overlay",
    "llc",
    "stp",
    "bridge",
    "br_netfilter",
    "veth",
)

#: Host binaries copied to the same paths, with their shared libraries (Debian's
#: containerd 1.6 and runc 1.1 are dynamically linked: ``scripts/vm-deps`` installs them).
DEFAULT_BINARIES = (
    "/usr/bin/containerd",
    "/usr/bin/containerd-shim-runc-v2",
    "/usr/bin/ctr",
    "/usr/sbin/runc",
)

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

#: Applets not linked: busybox itself, and its init, which the kernel would run
#: (from /bin/init) if /init failed; then it falls back to /bin/sh on the console.
BUSYBOX_SKIP = frozenset({"busybox", "init", "linuxrc"})

ETC_FILES = {
    "/etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    "/etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "/etc/hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
}
EMPTY_DIRS = ("/proc", "/sys", "/dev", "/run", "/tmp", "/var", "/root", "/mnt", "/bbin")

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
    hello_image: bool = True,
    kernel_version: str | None = None,
    compress: bool = True,
    force: bool = False,
    quiet: bool = False,
) -> Path:
    """Build the image into ``out_dir`` and return its path.

    ``extra_files`` maps absolute paths in the image to their content: ``str`` or
    ``bytes`` (mode 0755 if it starts with ``#!``, else 0644) or a host path to copy
    (its mode kept). They are written last, so they may replace anything, ``/init``
    included. ``compress=False`` writes a plain ``k4sinit.cpio``.

    ``binaries`` are host executables copied to the same paths in the image (a
    symlink's target's content), with every shared library they load; when
    ``/usr/bin/containerd`` is one of them, ``/etc/containerd/config.toml`` is
    :data:`CONTAINERD_CONFIG`. ``hello_image`` adds the ``k4sinit.local/hello:1``
    docker archive at ``/var/lib/k4sinit/images/hello.tar`` (see ``oci.py``).

    Raises :class:`BuildError` when an input is missing (run ``scripts/vm-deps``) or
    the import check in the built tree fails. Skips the work when a previous build
    in ``out_dir`` had the same inputs, unless ``force``.
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

    _require_inputs(kver, binaries)
    dists = distributions()
    key = _input_key(config, modules, extra, kver, dists, binaries, hello_image)
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
    _copy_ldd_closure(tree, [PYTHON, *copied_stdlib, *_shared_objects(tree / SITE[1:]), *binaries])
    _install_busybox(tree)
    if "/usr/bin/containerd" in binaries:
        _write(tree, CONTAINERD_CONFIG_PATH, CONTAINERD_CONFIG, 0o644)
    if hello_image:
        _write(tree, oci.HELLO_PATH, oci.hello_archive(BUSYBOX), 0o644)
    for path in ("/init", "/usr/bin/k4sinit"):
        _write(tree, path, LAUNCHER, 0o755)
    _write(tree, "/etc/k4sinit/config.yaml", config.read_bytes(), 0o644)
    for path, text in ETC_FILES.items():
        _write(tree, path, text, 0o644)
    installed = _install_modules(tree, kver, modules)
    for path, content in extra.items():
        _write_extra(tree, path, content)
    say(f"build: staged in {time.monotonic() - started:.1f}s, compiling")

    _compile(tree)
    _check_imports(tree)
    say(f"build: import check passed ({time.monotonic() - started:.1f}s); packing")

    tmp = image.with_name(image.name + ".tmp")
    raw_size = pack(tree, tmp, compress=compress)
    tmp.replace(image)
    key_file.write_text(json.dumps({"key": key, "cpio_bytes": raw_size}))
    say(
        f"build: {image} ({len(installed)} modules for {kver}): {_sizes(raw_size, image)} "
        f"in {time.monotonic() - started:.1f}s"
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


def _require_inputs(kver: str, binaries: Sequence[str] = ()) -> None:
    relative = [b for b in binaries if not b.startswith("/")]
    if relative:
        raise BuildError(f"binaries must be absolute paths: {', '.join(relative)}")
    required = (PYTHON, BUSYBOX, str(STDLIB / "os.py"), *binaries)
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
    binaries: Sequence[str] = (),
    hello_image: bool = False,
) -> str:
    h = hashlib.sha256()

    def add(*parts: object) -> None:
        h.update(repr(parts).encode())

    def add_file(path: Path) -> None:
        st = path.stat()
        add(str(path), st.st_size, st.st_mtime_ns)

    add(Path(__file__).read_bytes(), config.read_bytes(), list(modules), kver)
    add(Path(oci.__file__).read_bytes(), list(binaries), hello_image)
    for path in (PYTHON, BUSYBOX, f"/lib/modules/{kver}/modules.dep"):
        add_file(Path(path))
    for path in (*binaries, *ldd_closure(binaries)):  # a package upgrade changes these
        add_file(Path(path).resolve())
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


def module_closure(kver: str, names: Sequence[str]) -> list[str]:
    """The modules.dep paths of ``names`` and everything they depend on, each after
    its dependencies. Raises :class:`BuildError` for a module the kernel lacks."""
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in Path("/lib/modules", kver, "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
        by_name[_module_name(path)] = path
    builtin = {
        _module_name(p) for p in Path("/lib/modules", kver, "modules.builtin").read_text().split()
    }
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for dep in deps[path]:
            visit(dep)
        order.append(path)

    for name in names:
        key = name.replace("-", "_")
        if key in by_name:
            visit(by_name[key])
        elif key not in builtin:
            raise BuildError(f"kernel {kver} has no module {name!r}")
    return order


def _module_name(path: str) -> str:
    return Path(path).name.split(".ko")[0].replace("-", "_")


def _install_modules(tree: Path, kver: str, names: Sequence[str]) -> list[str]:
    src = Path("/lib/modules", kver)
    dest = tree / "lib/modules" / kver
    paths = module_closure(kver, names)
    for path in paths:
        _copy_file(src / path, dest / path)
    for name in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        if (src / name).exists():
            _copy_file(src / name, dest / name)
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
sys.path.insert(0, {site!r})
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


def _check_imports(tree: Path) -> None:
    """Import k4sinit (every module) and its dependencies inside the tree, by chroot,
    without writing bytecode: proves the stdlib trim, the ldd closure and the .pyc."""
    code = _CHECK.format(site=SITE, names=IMPORT_CHECK)
    proc = subprocess.run(
        [
            shutil.which("chroot") or "/usr/sbin/chroot",
            str(tree),
            PYTHON,
            "-I",
            "-S",
            "-B",
            "-c",
            code,
        ],
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": "/bin:/usr/bin", "HOME": "/"},
    )
    if proc.returncode != 0:
        raise BuildError(f"import check in the image failed:\n{proc.stdout}{proc.stderr}")


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
        help="comma-separated kernel modules (dependencies are added); default: %(default)s",
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
        "--no-hello-image",
        action="store_true",
        help=f"leave out the test container image {oci.HELLO_PATH}",
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
            hello_image=not args.no_hello_image,
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
