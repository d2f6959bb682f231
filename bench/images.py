"""The node image before u-root and with it, side by side (issue 13's figures).

Builds the single-node image ``scripts/run-node`` boots twice: **new**, from this
tree (made by the u-root tool: u-root's commands in /bbin, Debian's dash and kmod),
and **old**, from the git revision ``--old`` (default: the commit before
``rootfs/uroot`` was added: the image of Debian's parts, busybox-static as the
userland), checked out into ``rootfs/out/old-tree`` with ``git worktree`` and built
there by its own ``rootfs/node.py`` (with this venv's packages and Go cache). Then
prints, per image:

* the size as cpio and gzipped, and the number of files (cpio members);
* the booted node (``--runs`` boots each, alternating, medians; see
  ``bench/node_boot.py``, whose ``one_run`` this uses): kernel start -> k4sinit's
  first line (guest clock), qemu start -> node Ready (host clock), and memory in
  use at node Ready (MemTotal - MemAvailable);
* for the new image, what the Python runtime costs (interpreter, stdlib,
  site-packages, the shared libraries only it loads) as cpio and gzipped, and what
  trimming it further would save: the stdlib and site-packages modules k4sinit
  never imports (the import check's list: every k4sinit module and its
  dependencies), and the ``.py`` sources beside their ``.pyc``.

``--no-boot`` prints the sizes only (no VM). Run as root from the repo root:
``.venv/bin/python bench/images.py [--runs 1] [--old REV]``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "rootfs"))
sys.path.insert(0, str(ROOT / "bench"))
import build  # noqa: E402 (rootfs/ is a directory of scripts, not a package)
import newc  # noqa: E402
import node  # noqa: E402
from node_boot import one_run  # noqa: E402

OLD_TREE = ROOT / "rootfs/out/old-tree"
OLD_OUT = ROOT / "rootfs/out/old-node"
PYTHON_PARTS = ("usr/bin/python3.11", "usr/lib/python3.11/", build.SITE.lstrip("/") + "/")
#: The shared libraries the image holds only for Python (dash, kmod and iptables
#: need libc, the loader, libzstd, liblzma, libcrypto, libnftnl, libmnl).
PYTHON_ONLY_LIBS = ("libssl", "libsqlite3", "libffi", "libbz2", "libexpat", "libz.", "libm.")


def before_uroot() -> str:
    """The commit before the one that added rootfs/uroot/go.mod."""
    added = subprocess.run(
        ["git", "log", "--diff-filter=A", "--format=%H", "--", "rootfs/uroot/go.mod"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    if not added:
        raise SystemExit("images: no commit adds rootfs/uroot/go.mod: give --old")
    return f"{added[-1]}^"


def build_old(rev: str) -> Path:
    """The old image, built by ``rev``'s own rootfs/node.py in a worktree of it (kept
    between runs, with its Go userland's cache, while it is at ``rev``)."""
    wanted = _commit(ROOT, rev)
    if OLD_TREE.exists() and _commit(OLD_TREE, "HEAD") != wanted:
        subprocess.run(["git", "worktree", "remove", "--force", str(OLD_TREE)], cwd=ROOT)
    if not OLD_TREE.exists():
        add = ["git", "worktree", "add", "--detach", str(OLD_TREE), wanted]
        subprocess.run(add, cwd=ROOT, check=True)
    env = {**os.environ, "PYTHONPATH": str(OLD_TREE)}  # its k4sinit, not this tree's
    out = subprocess.run(
        [sys.executable, "rootfs/node.py", "--build-only", "--out", str(OLD_OUT)],
        cwd=OLD_TREE,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    return Path(out.stdout.strip().splitlines()[-1])


def _commit(tree: Path, rev: str) -> str:
    """The commit ``rev`` names in ``tree``'s repository ("" if none)."""
    out = subprocess.run(
        ["git", "rev-parse", "--verify", f"{rev}^{{commit}}"],
        cwd=tree,
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip()


def gzipped_size(chunks: Iterable[bytes]) -> int:
    """The gzip -6 size of the chunks, one stream."""
    z = zlib.compressobj(6, zlib.DEFLATED, 31)
    return sum(len(z.compress(c)) for c in chunks) + len(z.flush())


def sizes(image: Path) -> dict[str, float]:
    """Size gzipped and as cpio (MB), members, regular files."""
    entries = list(newc.read(image))
    return {
        "gzip MB": image.stat().st_size / 1e6,
        "cpio MB": len(gzip.decompress(image.read_bytes())) / 1e6,
        "files": len(entries),
        "regular files": sum(1 for e in entries if e.is_file),
    }


def _imported_files(tree: Path) -> set[str]:
    """The files the image's import check loads (k4sinit and its dependencies), in-image paths."""
    code = build._CHECK.format(paths=[build.SITE], names=list(build.IMPORT_CHECK)).replace(
        'print(len(sys.modules), "modules imported")',
        "import json; print(json.dumps(sorted({getattr(m, '__file__', None) or '' "
        "for m in list(sys.modules.values())})))",
    )
    out = build._run_in(tree, build.PYTHON, "-I", "-S", "-B", "-c", code)
    return {p.lstrip("/") for p in json.loads(out.splitlines()[-1]) if p}


def python_cost(image: Path, tree: Path) -> dict[str, tuple[float, float]]:
    """(cpio MB, gzip MB) of the Python runtime's parts, and of what could go."""
    entries = [e for e in newc.read(image) if e.is_file]
    imported = _imported_files(tree)

    def python(e: newc.Entry) -> bool:
        lib = e.path.startswith("lib/x86_64-linux-gnu/")
        return e.path.startswith(PYTHON_PARTS) or (
            lib and Path(e.path).name.startswith(PYTHON_ONLY_LIBS)
        )

    def source_of(e: newc.Entry) -> str:
        """``x.py`` for ``__pycache__/x.cpython-311.pyc``, else the path itself."""
        if "/__pycache__/" in e.path:
            head, _, name = e.path.rpartition("/__pycache__/")
            return f"{head}/{name.split('.')[0]}.py"
        return e.path

    def figure(selected: list[newc.Entry]) -> tuple[float, float]:
        return sum(len(e.data) for e in selected) / 1e6, gzipped_size(
            e.data for e in selected
        ) / 1e6

    runtime = [e for e in entries if python(e)]
    modules = [e for e in runtime if e.path.endswith((".py", ".pyc", ".so"))]
    unused = [
        e
        for e in modules
        if e.path.startswith(PYTHON_PARTS[1:])
        and source_of(e) not in imported
        and e.path not in imported
    ]
    unused_paths = {e.path for e in unused}
    sources = [e for e in runtime if e.path.endswith(".py") and e.path not in unused_paths]
    return {
        "the Python runtime, all of it": figure(runtime),
        "  interpreter + stdlib (with .pyc)": figure(
            [e for e in runtime if e.path.startswith(PYTHON_PARTS[:2])]
        ),
        "  site-packages: k4sinit + its dependencies": figure(
            [e for e in runtime if e.path.startswith(PYTHON_PARTS[2])]
        ),
        "  shared libraries only Python loads": figure(
            [e for e in runtime if not e.path.startswith(PYTHON_PARTS)]
        ),
        "trim: modules never imported": figure(unused),
        "trim: .py sources beside their .pyc": figure(sources),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1, help="boots per image")
    parser.add_argument("--old", help="git revision of the old image (default: before u-root)")
    parser.add_argument("--timeout", type=float, default=900, help="per wait, seconds")
    parser.add_argument("--no-boot", action="store_true", help="sizes only")
    args = parser.parse_args(argv)

    userland = node.build_userland()
    images = {"old": build_old(args.old or before_uroot()), "new": node.build_image()}
    print(f"{'':34} {'old (Debian parts)':>20} {'new (u-root)':>20}")
    figures = {name: sizes(path) for name, path in images.items()}
    for key in figures["new"]:
        old, new = figures["old"][key], figures["new"][key]
        print(
            f"{key:34} {old:20,.{1 if key.endswith('MB') else 0}f} {new:20,.{1 if key.endswith('MB') else 0}f}"
        )
    if not args.no_boot:
        runs: dict[str, list[dict[str, Any]]] = {"old": [], "new": []}
        for i in range(args.runs):
            for name, image in images.items():
                log = image.with_name(f"bench-images-{name}-{i + 1}.log")
                runs[name].append(one_run(image, log, args.timeout, userland.k4s))
        rows: dict[str, Callable[[dict[str, Any]], float]] = {
            "kernel start -> k4sinit first line s": lambda r: r["marks"]["k4sinit first line"][1],
            "qemu start -> node Ready s": lambda r: r["node_ready_host"],
            "memory in use at node Ready MiB": lambda r: r["memory"] / 2**20,
            "k4sinit resident MiB": lambda r: r["rss"] / 2**20,
        }
        for label, value in rows.items():
            old, new = (statistics.median(value(r) for r in runs[n]) for n in ("old", "new"))
            print(f"{label:34} {old:20,.1f} {new:20,.1f}")
    print(f"\n{'the new image: the Python runtime':48} cpio MB  gzip MB")
    for label, (raw, packed) in python_cost(images["new"], node.NODE_OUT / "rootfs").items():
        print(f"  {label:46} {raw:7.1f}  {packed:7.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
