"""Build the node's Go userland from the pinned modules in ``rootfs/k4s``.

``.venv/bin/python rootfs/k4s/gobuild.py [--out DIR] [--force]`` or :func:`build`.
What it makes, in ``OUT`` (default ``rootfs/out/k4s``)::

    k4s                       the multicall binary (module rootfs/k4s): Kubernetes'
                              roles, containerd and ctr, kine, etcd, coredns, kubectl
    containerd-shim-runc-v2   containerd's shim (same module; it re-executes itself
                              through /proc/self/exe, so it cannot be a k4s role)
    runc                      module rootfs/k4s/runc: runc's own pins, cgo, static,
                              with seccomp (libseccomp.a)
    cni/bridge ...            module rootfs/k4s/cni: the CNI plugins a node uses
    pause                     Kubernetes' build/pause/linux/pause.c (from the module
                              cache), gcc -static
    versions.json             the upstream versions inside, read back from the binaries

The Go binaries are built with ``-trimpath``, stripped (``-s -w``) and an empty build
id path: the same sources and toolchain give the same bytes. k4s, the shim and the
CNI plugins are ``CGO_ENABLED=0`` (statically linked, one Go runtime each).

**Cache.** ``OUT/build.json`` records a key over the inputs: this script, every
``go.mod``, ``go.sum`` and ``.go`` file under rootfs/k4s, the Go toolchain's version,
gcc's and libseccomp's. A build with the same key returns at once; Go's own build
cache (``go env GOCACHE``) makes a rebuild after a small change quick too.

**Network.** Only ``go mod download`` (the first step) reaches the Go module proxy;
with the modules in the module cache the build runs offline.

**Go toolchain.** The modules need Go >= :data:`GO_VERSION`. The ``go`` on ``PATH``
(or ``/usr/local/go/bin/go``) is used when it is new enough; otherwise the toolchain
is fetched from the Go module proxy (``golang.org/toolchain``, the zip the go
command itself would fetch for ``GOTOOLCHAIN``), checked against :data:`GO_SHA256`
and unpacked into ``~/.cache/k4sinit``.

Failures raise :class:`GoBuildError` naming the step and, where the compiler says
which package failed, its module. Nothing falls back to anything else.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent  # rootfs/k4s: the main module
ROOT = HERE.parent.parent
DEFAULT_OUT = ROOT / "rootfs/out/k4s"

#: The newest ``go`` directive among the three modules (cni's, from upstream).
GO_VERSION = "1.26.8"
GO_TOOLCHAIN_URL = "https://proxy.golang.org/golang.org/toolchain/@v/v0.0.1-go{v}.linux-amd64.zip"
GO_SHA256 = "30c2b1bf7dcc88d3eb0a1364e47ddd9128edb3110a30e8a0ef61cd5856b31de7"
GO_CACHE = Path.home() / ".cache/k4sinit"

#: containerd's snapshotters that cannot work on a diskless node (and that would
#: link their clients into every role): btrfs (cgo anyway), devmapper, zfs.
K4S_TAGS = "no_btrfs,no_devmapper,no_zfs"
RUNC_TAGS = "seccomp,urfave_cli_no_docs,netgo,osusergo"
CNI_PLUGINS = {
    "bridge": "github.com/containernetworking/plugins/plugins/main/bridge",
    "host-local": "github.com/containernetworking/plugins/plugins/ipam/host-local",
    "loopback": "github.com/containernetworking/plugins/plugins/main/loopback",
    "portmap": "github.com/containernetworking/plugins/plugins/meta/portmap",
}
SHIM = "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2"
RUNC = "github.com/opencontainers/runc"
PAUSE_SOURCE = "build/pause/linux/pause.c"  # in k8s.io/kubernetes
PAUSE_MAKEFILE = "build/pause/Makefile"  # its TAG is the pause image's version
#: ``versions.json`` key -> the module whose version it reports, and the binary
#: that embeds it (read with ``go version -m``).
VERSION_SOURCES = {
    "kubernetes": ("k4s", "k8s.io/kubernetes"),
    "containerd": ("k4s", "github.com/containerd/containerd/v2"),
    "kine": ("k4s", "github.com/k3s-io/kine"),
    "etcd": ("k4s", "go.etcd.io/etcd/server/v3"),
    "coredns": ("k4s", "github.com/coredns/coredns"),
    "runc": ("runc", "github.com/opencontainers/runc"),
    "cni-plugins": ("cni/bridge", "github.com/containernetworking/plugins"),
}


class GoBuildError(RuntimeError):
    """A step failed; the message names the step (and the module, when known)."""


@dataclass(frozen=True)
class Outputs:
    """Where a build put its binaries (see the module docstring)."""

    dir: Path

    @property
    def k4s(self) -> Path:
        return self.dir / "k4s"

    @property
    def shim(self) -> Path:
        return self.dir / "containerd-shim-runc-v2"

    @property
    def runc(self) -> Path:
        return self.dir / "runc"

    @property
    def pause(self) -> Path:
        return self.dir / "pause"

    @property
    def cni(self) -> dict[str, Path]:
        return {name: self.dir / "cni" / name for name in CNI_PLUGINS}

    @property
    def versions(self) -> dict[str, str]:
        """``versions.json``: upstream name -> version, and ``go``."""
        data = json.loads((self.dir / "versions.json").read_text())
        assert isinstance(data, dict)
        return {str(k): str(v) for k, v in data.items()}

    def roles(self) -> list[str]:
        """The roles k4s dispatches (``k4s --list``)."""
        out = subprocess.run([str(self.k4s), "--list"], capture_output=True, text=True, check=True)
        return out.stdout.split()


# --- the Go toolchain ------------------------------------------------------------------


def _version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3])


def _go_version(go: str) -> str | None:
    try:
        out = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, timeout=60)
    except OSError:
        return None
    return out.stdout.strip().removeprefix("go") if out.returncode == 0 else None


def go_command(say: Callable[[str], None] = print) -> str:
    """A ``go`` of at least :data:`GO_VERSION`: the system's, else fetched (see docstring)."""
    for candidate in (shutil.which("go"), "/usr/local/go/bin/go"):
        if candidate and os.access(candidate, os.X_OK):
            version = _go_version(candidate)
            if version and _version_tuple(version) >= _version_tuple(GO_VERSION):
                return candidate
    root = GO_CACHE / f"go{GO_VERSION}"
    go = root / "bin/go"
    if go.exists():
        return str(go)
    url = GO_TOOLCHAIN_URL.format(v=GO_VERSION)
    say(f"gobuild: fetching Go {GO_VERSION} from the Go module proxy ({url})")
    try:
        with urllib.request.urlopen(url, timeout=300) as response:
            data = response.read()
    except OSError as exc:
        raise GoBuildError(f"go toolchain: cannot fetch {url}: {exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != GO_SHA256:
        raise GoBuildError(f"go toolchain: {url} has sha256 {digest}, expected {GO_SHA256}")
    tmp = root.with_name(root.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    prefix = f"golang.org/toolchain@v0.0.1-go{GO_VERSION}.linux-amd64/"
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for info in archive.infolist():
            if not info.filename.startswith(prefix) or info.is_dir():
                continue
            target = tmp / info.filename.removeprefix(prefix)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(info))
            mode = (info.external_attr >> 16) & 0o777
            target.chmod(mode or 0o644)
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    return str(go)


# --- steps -----------------------------------------------------------------------------


def _modules() -> list[Path]:
    """The three module directories: k4s, runc, cni."""
    return [HERE, HERE / "runc", HERE / "cni"]


def _inputs() -> Iterator[Path]:
    yield Path(__file__).resolve()
    for module in _modules():
        for path in sorted(module.iterdir()):
            if path.is_file() and (path.suffix == ".go" or path.name in ("go.mod", "go.sum")):
                yield path


def _tool_version(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=60)
    except OSError:
        return "missing"
    return (out.stdout + out.stderr).strip().splitlines()[0] if out.returncode == 0 else "missing"


def input_key(go: str) -> str:
    """The cache key: every input file, the toolchain, gcc and libseccomp."""
    tools = (
        [go, "env", "GOVERSION"],
        ["gcc", "--version"],
        ["pkg-config", "--modversion", "libseccomp"],
    )
    return files_key(_inputs(), tools, K4S_TAGS, RUNC_TAGS)


def files_key(files: Iterable[Path], tools: Iterable[Sequence[str]], *extra: str) -> str:
    """A build's cache key: each file's path (under the repository) and content, the
    first line each tool prints about its version (``missing`` if it cannot run),
    and ``extra`` (build tags, command lists)."""
    h = hashlib.sha256()
    for path in files:
        h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    for tool in tools:
        h.update(_tool_version(tool).encode() + b"\0")
    for item in extra:
        h.update(item.encode() + b"\0")
    return h.hexdigest()


def up_to_date(record: Path, key: str, *outputs: Path) -> bool:
    """Whether ``record`` (a build's ``build.json``) holds ``key`` and every output exists."""
    if not record.exists():
        return False
    previous = json.loads(record.read_text())
    return bool(previous.get("key") == key and all(path.exists() for path in outputs))


def write_record(record: Path, key: str, steps: Steps) -> None:
    """Record a finished build: its key and how long it took."""
    seconds = round(time.monotonic() - steps.started)
    record.write_text(json.dumps({"key": key, "seconds": seconds}))


class Steps:
    """Runs the build's commands, prints progress (each line starting with ``prefix:``),
    names the step that failed."""

    def __init__(self, go: str, say: Callable[[str], None], prefix: str = "gobuild") -> None:
        self.go = go
        self.say = say
        self.prefix = prefix
        self.started = time.monotonic()
        self.env = {
            **os.environ,
            "GOTOOLCHAIN": "local",  # this toolchain, never a download behind our back
            "GOFLAGS": "-mod=readonly -buildvcs=false",
        }

    def elapsed(self) -> str:
        return _duration(time.monotonic() - self.started)

    def run(
        self,
        step: str,
        argv: Sequence[str],
        *,
        cwd: Path,
        env: dict[str, str] | None = None,
        total: int | None = None,
    ) -> str:
        """Run one command; with ``total`` (packages), print progress from ``go build -v``."""
        step_started = time.monotonic()
        self.say(f"{self.prefix}: {step} ...")
        lines: list[str] = []
        done = threading.Event()

        def report() -> None:
            while not done.wait(30):
                count = sum(1 for line in lines if _is_package_line(line))
                of = f"/{total}" if total else ""
                self.say(
                    f"{self.prefix}: {step}: {count}{of} packages compiled, "
                    f"{_duration(time.monotonic() - step_started)}"
                )

        reporter = threading.Thread(target=report, daemon=True)
        with subprocess.Popen(
            list(argv),
            cwd=cwd,
            env={**self.env, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as proc:
            assert proc.stdout is not None
            if total:
                reporter.start()
            try:
                for line in proc.stdout:
                    lines.append(line.rstrip("\n"))
                code = proc.wait()
            finally:
                done.set()
        if code != 0:
            raise GoBuildError(_failure(step, lines, cwd))
        self.say(f"{self.prefix}: {step}: done in {_duration(time.monotonic() - step_started)}")
        return "\n".join(lines)

    def package_count(self, cwd: Path, packages: Sequence[str], env: dict[str, str]) -> int:
        out = subprocess.run(
            [self.go, "list", "-deps", f"-tags={K4S_TAGS}", *packages],
            cwd=cwd,
            env={**self.env, **env},
            capture_output=True,
            text=True,
        )
        return len(out.stdout.split()) if out.returncode == 0 else 0


def _is_package_line(line: str) -> bool:
    # go build -v prints one import path per package it compiles.
    return bool(line) and " " not in line and not line.startswith(("#", "go:"))


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{seconds:.1f}s"


def _failure(step: str, lines: list[str], cwd: Path) -> str:
    """``step failed``, the failing packages' modules when go names them, the output's tail."""
    packages = [line[2:].split()[0] for line in lines if line.startswith("# ")]
    modules = sorted({_module_of(p, cwd) for p in packages})
    where = f" (in {', '.join(modules)})" if modules else ""
    errors = [line for line in lines if not _is_package_line(line)]
    tail = "\n".join(errors[-25:])
    return f"{step} failed{where}:\n{tail}"


def _module_of(package: str, cwd: Path) -> str:
    """The required module (path@version) that holds ``package``, from go.mod."""
    text = (cwd / "go.mod").read_text()
    owners = [
        (path, version)
        for path, version in re.findall(r"^\s*([\w./~-]+) (v\S+)", text, re.M)
        if package == path or package.startswith(path + "/")
    ]
    if not owners:
        return package
    path, version = max(owners, key=lambda owner: len(owner[0]))
    return f"{path}@{version}"


# --- the build -------------------------------------------------------------------------


def build(
    out_dir: str | os.PathLike[str] = DEFAULT_OUT,
    *,
    force: bool = False,
    say: Callable[[str], None] = print,
) -> Outputs:
    """Build everything into ``out_dir`` (cached); raises :class:`GoBuildError`."""
    out = Outputs(Path(out_dir))
    out.dir.mkdir(parents=True, exist_ok=True)
    go = go_command(say)
    key = input_key(go)
    record = out.dir / "build.json"
    if not force and up_to_date(record, key, out.k4s):
        say(f"gobuild: {out.dir} is up to date (k4s {mib(out.k4s)})")
        return out
    steps = Steps(go, say)
    say(f"gobuild: building into {out.dir} with {_tool_version([go, 'version'])}")
    static = {"CGO_ENABLED": "0"}
    flags = ["-trimpath", "-ldflags=-s -w -buildid="]
    stamped = ["-trimpath", f"-ldflags=-s -w -buildid= {version_flags()}"]
    for module in _modules():
        steps.run(
            f"download modules of {module.relative_to(ROOT)}", [go, "mod", "download"], cwd=module
        )
    total = steps.package_count(HERE, ["."], static)
    steps.run(
        "k4s",
        [go, "build", "-v", *stamped, f"-tags={K4S_TAGS}", "-o", str(out.k4s), "."],
        cwd=HERE,
        env=static,
        total=total,
    )
    steps.run(
        "containerd-shim-runc-v2",
        [go, "build", *stamped, "-o", str(out.shim), SHIM],
        cwd=HERE,
        env=static,
    )
    runc_version = _required_version(HERE / "runc/go.mod", RUNC)
    steps.run(
        "runc",
        [
            go,
            "build",
            "-trimpath",
            f"-tags={RUNC_TAGS}",
            f"-ldflags=-s -w -buildid= -X main.version={runc_version.removeprefix('v')} "
            "-extldflags=-static",
            "-o",
            str(out.runc),
            RUNC,
        ],
        cwd=HERE / "runc",
        env={"CGO_ENABLED": "1"},
    )
    (out.dir / "cni").mkdir(exist_ok=True)
    for name, package in CNI_PLUGINS.items():
        steps.run(
            f"cni plugin {name}",
            [go, "build", *flags, "-o", str(out.cni[name]), package],
            cwd=HERE / "cni",
            env=static,
        )
    pause = _build_pause(steps, out)
    versions = _read_versions(go, out) | {"pause": pause}
    (out.dir / "versions.json").write_text(json.dumps(versions, indent=2) + "\n")
    write_record(record, key, steps)
    say(
        f"gobuild: done in {steps.elapsed()}: k4s {mib(out.k4s)}, shim {mib(out.shim)}, "
        f"runc {mib(out.runc)}; " + ", ".join(f"{k} {v}" for k, v in versions.items())
    )
    return out


def version_flags() -> str:
    """``-X`` linker flags that stamp the upstream versions where upstream's own builds
    do (their Makefiles read them from git, which a module download does not have).

    Kubernetes' matters beyond display: kubelet reports it in its Node, and the
    apiserver and kubectl compare versions (skew, emulation).
    """
    go_mod = HERE / "go.mod"
    kubernetes = _required_version(go_mod, "k8s.io/kubernetes")
    major, minor = kubernetes.removeprefix("v").split(".")[:2]
    stamps: dict[str, str] = {}
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        stamps |= {
            f"{package}.gitVersion": kubernetes,
            f"{package}.gitMajor": major,
            f"{package}.gitMinor": minor,
            f"{package}.gitTreeState": "clean",
            f"{package}.buildDate": "1970-01-01T00:00:00Z",  # reproducible
        }
    containerd = "github.com/containerd/containerd/v2"
    stamps[f"{containerd}/version.Version"] = _required_version(go_mod, containerd)
    kine = "github.com/k3s-io/kine"
    stamps[f"{kine}/pkg/version.Version"] = _required_version(go_mod, kine)
    return " ".join(f"-X {name}={value}" for name, value in stamps.items())


def mib(path: Path) -> str:
    """A file's size in MiB, for progress lines."""
    return f"{path.stat().st_size / 2**20:.1f} MiB"


def _required_version(go_mod: Path, module: str) -> str:
    m = re.search(rf"^\s*(?:require\s+)?{re.escape(module)} (v\S+)", go_mod.read_text(), re.M)
    if m is None:
        raise GoBuildError(f"{go_mod}: does not require {module}")
    return m.group(1)


def _module_dir(go: str, cwd: Path, module: str, env: dict[str, str]) -> Path:
    """Where the module cache holds ``module`` (as required from ``cwd``)."""
    out = subprocess.run(
        [go, "list", "-m", "-f", "{{.Dir}}", module],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0 or not out.stdout.strip():
        raise GoBuildError(f"pause: cannot find {module} in the module cache: {out.stderr.strip()}")
    return Path(out.stdout.strip())


def _build_pause(steps: Steps, out: Outputs) -> str:
    """Kubernetes' pause, compiled as its build/pause Makefile does (static, -Os);
    returns its version (the Makefile's TAG)."""
    kubernetes = _module_dir(steps.go, HERE, "k8s.io/kubernetes", steps.env)
    tag = re.search(r"^TAG \?= (\S+)", (kubernetes / PAUSE_MAKEFILE).read_text(), re.M)
    if tag is None:
        raise GoBuildError(f"pause: no TAG in {kubernetes / PAUSE_MAKEFILE}")
    steps.run(
        "pause",
        [
            "gcc",
            "-Os",
            "-Wall",
            "-Werror",
            "-static",
            f"-DVERSION=v{tag.group(1)}",  # stringified by pause.c
            "-o",
            str(out.pause),
            str(kubernetes / PAUSE_SOURCE),
        ],
        cwd=out.dir,
    )
    steps.run("pause (strip)", ["strip", str(out.pause)], cwd=out.dir)
    return tag.group(1)


def _read_versions(go: str, out: Outputs) -> dict[str, str]:
    """Upstream versions as the binaries embed them (``go version -m``)."""
    versions: dict[str, str] = {}
    cache: dict[str, dict[str, str]] = {}
    for key, (binary, module) in VERSION_SOURCES.items():
        if binary not in cache:
            text = subprocess.run(
                [go, "version", "-m", str(out.dir / binary)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            # The first line is "<file>: go1.26.8"; then path, mod, dep and build lines.
            deps: dict[str, str] = {"go": text.splitlines()[0].rpartition(" ")[2]}
            for line in text.splitlines():
                fields = line.split()
                if len(fields) >= 3 and fields[0] in ("mod", "dep", "=>"):
                    deps[fields[1]] = fields[2]
            cache[binary] = deps
        if module not in cache[binary]:
            raise GoBuildError(f"versions: {binary} embeds no {module}")
        versions[key] = cache[binary][module]
    versions["go"] = cache["k4s"].get("go", "")
    return versions


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rootfs/k4s/gobuild.py", description="build k4s, runc, the shim, CNI plugins, pause"
    )
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="default: %(default)s")
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    parser.add_argument("--go", action="store_true", help="only print the go command to use")
    args = parser.parse_args(argv)

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        if args.go:
            print(go_command(say))
            return 0
        outputs = build(args.out, force=args.force, say=say)
    except GoBuildError as exc:
        print(f"gobuild: {exc}", file=sys.stderr)
        return 1
    print(outputs.dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
