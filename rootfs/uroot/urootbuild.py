"""u-root for the node image: the u-root tool and u-root's core commands, from ``rootfs/uroot``.

``.venv/bin/python rootfs/uroot/urootbuild.py [--out DIR] [--force]`` or :func:`build`.
What it makes, in ``OUT`` (default ``rootfs/out/uroot``)::

    u-root      the u-root tool (github.com/u-root/u-root at the version go.mod pins)
    core.cpio   what the u-root tool built from the commands tools.go lists: /bbin/bb,
                one gobusybox binary, and a link /bbin/<command> -> bb per command
    bbin/       core.cpio unpacked: what the image build hands back to the tool

:func:`make_image` then makes the initramfs with that tool: k4sinit's base archive
(``rootfs/build.py``'s) with k4sinit as ``/init`` (``-useinit``) and ``bbin/``
added. The commands are built once per key, not per image: gobusybox rewrites them
in a fresh temporary module every run, which Go's build cache cannot reuse (3-5
minutes on 2 busy cores each time).

The cache key, the toolchain and the progress lines are ``rootfs/k4s/gobuild.py``'s
(its ``files_key``, ``go_command`` and ``Steps``): this script, gobuild.py,
go.mod, go.sum, tools.go and the Go version. Failures raise
:class:`gobuild.GoBuildError` naming the step; nothing falls back to anything.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent  # rootfs/uroot: the module
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "k4s"))
import gobuild  # noqa: E402 (rootfs/ is a directory of scripts, not a package)
import newc  # noqa: E402

ROOT = HERE.parent.parent
DEFAULT_OUT = ROOT / "rootfs/out/uroot"
MODULE = "github.com/u-root/u-root"
#: The command that must be in every build: ``ls`` stands for the rest.
SENTINEL = "ls"


def commands() -> list[str]:
    """The package paths of the commands tools.go imports, in its order."""
    return re.findall(r'^\s*_ "([^"]+)"', (HERE / "tools.go").read_text(), re.M)


@dataclass(frozen=True)
class Outputs:
    """Where a build put the tool and the commands (see the module docstring)."""

    dir: Path

    @property
    def tool(self) -> Path:
        return self.dir / "u-root"

    @property
    def archive(self) -> Path:
        return self.dir / "core.cpio"

    @property
    def bbin(self) -> Path:
        return self.dir / "bbin"

    def names(self) -> list[str]:
        """The command names linked to ``bb``, sorted."""
        return sorted(p.name for p in self.bbin.iterdir() if p.is_symlink())

    @property
    def version(self) -> str:
        """The u-root version go.mod pins."""
        return required_version()


def required_version() -> str:
    m = re.search(rf"^require {re.escape(MODULE)} (v\S+)", (HERE / "go.mod").read_text(), re.M)
    if m is None:
        raise gobuild.GoBuildError(f"{HERE / 'go.mod'}: does not require {MODULE}")
    return m.group(1)


def _inputs() -> list[Path]:
    return [
        Path(__file__).resolve(),
        Path(gobuild.__file__).resolve(),
        *(HERE / name for name in ("go.mod", "go.sum", "tools.go")),
    ]


def _goroot(go: str) -> str:
    """The toolchain's GOROOT: the u-root tool runs ``$GOROOT/bin/go`` and a
    ``-trimpath`` build of it knows no GOROOT of its own."""
    out = subprocess.run([go, "env", "GOROOT"], capture_output=True, text=True, check=False)
    if out.returncode != 0 or not out.stdout.strip():
        raise gobuild.GoBuildError(f"u-root: {go} env GOROOT failed: {out.stderr.strip()}")
    return out.stdout.strip()


def tool_env(go: str) -> dict[str, str]:
    """What the u-root tool runs under: this toolchain, no cgo (gobusybox refuses it),
    the baseline amd64 level (qemu's default CPU may lack v2+ instructions)."""
    return {"GOROOT": _goroot(go), "CGO_ENABLED": "0", "GOAMD64": "v1"}


def build(
    out_dir: str | Path | None = None, *, force: bool = False, say: Callable[[str], None] = print
) -> Outputs:
    """Build the tool and the commands into ``out_dir`` (default :data:`DEFAULT_OUT`;
    cached); raises GoBuildError."""
    out = Outputs(Path(out_dir or DEFAULT_OUT))
    out.dir.mkdir(parents=True, exist_ok=True)
    go = gobuild.go_command(say)
    packages = commands()
    key = gobuild.files_key(_inputs(), [[go, "env", "GOVERSION"]], *packages)
    record = out.dir / "build.json"
    if not force and gobuild.up_to_date(record, key, out.tool, out.archive, out.bbin / "bb"):
        say(f"urootbuild: {out.dir} is up to date (bb {gobuild.mib(out.bbin / 'bb')})")
        return out
    steps = gobuild.Steps(go, say, prefix="urootbuild")
    say(f"urootbuild: u-root {required_version()}, {len(packages)} commands, into {out.dir}")
    steps.run("download modules of rootfs/uroot", [go, "mod", "download"], cwd=HERE)
    steps.run(
        "the u-root tool",
        [go, "build", "-trimpath", "-ldflags=-s -w -buildid=", "-o", str(out.tool), MODULE],
        cwd=HERE,
        env={"CGO_ENABLED": "0"},
    )
    steps.run(
        "u-root core commands (gobusybox)",
        [
            str(out.tool),
            *("-base", "/dev/null", "-initcmd=", "-uinitcmd=", "-defaultsh="),
            *("-o", str(out.archive)),
            *packages,
        ],
        cwd=HERE,
        env=tool_env(go),
    )
    _unpack_bbin(out)
    gobuild.write_record(record, key, steps)
    say(
        f"urootbuild: done in {steps.elapsed()}: bb {gobuild.mib(out.bbin / 'bb')}, "
        f"{len(out.names())} commands"
    )
    return out


def _unpack_bbin(out: Outputs) -> None:
    """``core.cpio`` -> ``bbin/``, checked: bb, and a link to it per command."""
    shutil.rmtree(out.bbin, ignore_errors=True)
    out.bbin.mkdir()
    scratch = out.dir / "unpacked"
    shutil.rmtree(scratch, ignore_errors=True)
    newc.unpack(out.archive, scratch)
    if not (scratch / "bbin/bb").is_file() or not (scratch / "bbin" / SENTINEL).is_symlink():
        found = sorted(str(p.relative_to(scratch)) for p in scratch.rglob("*"))[:20]
        raise gobuild.GoBuildError(
            f"u-root core commands: {out.archive} has no bbin/bb with a {SENTINEL} link "
            f"(it holds {found})"
        )
    extra = sorted(p.name for p in scratch.iterdir() if p.name != "bbin")
    if extra:
        raise gobuild.GoBuildError(f"u-root core commands: unexpected files {extra} beside bbin")
    shutil.rmtree(out.bbin)
    (scratch / "bbin").rename(out.bbin)
    shutil.rmtree(scratch)


def make_image(uroot: Outputs, base: Path, image: Path, say: Callable[[str], None]) -> None:
    """The initramfs at ``image`` (plain newc cpio), made by the u-root tool: the
    ``base`` archive, its ``/init`` kept (``-useinit``), no ``/bin/sh`` link of
    u-root's (``-defaultsh=``: the base has its shell), and u-root's ``bbin/``
    added (``-files``; the commands were built by :func:`build`, ``-nocmd`` here).

    Raises GoBuildError naming the step."""
    go = gobuild.go_command(say)
    steps = gobuild.Steps(go, say, prefix="build")
    steps.run(
        "u-root: the initramfs from the base archive",
        [
            str(uroot.tool),
            *("-base", str(base), "-useinit", "-initcmd=", "-uinitcmd=", "-defaultsh="),
            *("-nocmd", "-skip-ldd", "-files", f"{uroot.bbin}:bbin"),
            *("-o", str(image)),
        ],
        cwd=HERE,
        env=tool_env(go),
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rootfs/uroot/urootbuild.py",
        description="build the u-root tool and u-root's core commands (/bbin/bb)",
    )
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="default: %(default)s")
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = parser.parse_args(argv)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        outputs = build(args.out, force=args.force, say=say)
    except gobuild.GoBuildError as exc:
        print(f"urootbuild: {exc}", file=sys.stderr)
        return 1
    print(outputs.dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
