"""What the node image holds: ``/etc/k4sinit/image.json`` as rootfs/build.py writes it,
as k4sinit reads it (k4sinit/core/imageinfo.py), and as ``k4sinit status`` and the daemon show it;
and the node image itself, as the u-root tool made it.

The first parts are pure and fast. The build side is exercised on a scratch tree:
the ``/bbin`` layout and the description it returns, which k4sinit then reads back.
The last part lists the node image ``scripts/run-node`` boots (built by
``rootfs/node.py`` when out of date: minutes; cached after) and a u-root build
that must fail. No VM is booted (tests/test_vm.py and tests/test_e2e.py do that).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

from k4sinit import cli, control
from k4sinit.cli.format import format_image_line
from k4sinit.control import Request
from k4sinit.core import imageinfo
from k4sinit.core.config import Config
from k4sinit.core.log import get_logger
from k4sinit.daemon import Daemon

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "rootfs"))  # build.py and oci.py: scripts, not a package
import build  # noqa: E402
import gobuild  # noqa: E402 (rootfs/k4s/gobuild.py: build.py puts it on the path)
import newc  # noqa: E402
import oci  # noqa: E402
import urootbuild  # noqa: E402 (rootfs/uroot/urootbuild.py)

VERSIONS = {
    "kubernetes": "v1.37.2",
    "containerd": "v2.4.2",
    "kine": "v0.17.5",
    "etcd": "v3.7.3",
    "coredns": "v1.15.0",
    "runc": "v1.5.3",
    "cni-plugins": "v1.10.0",
    "go": "go1.26.8",
    "pause": "3.10.2",
}
DESCRIPTION = {
    "builtBy": "rootfs/build.py",
    "kernel": "6.1.0-57-amd64",
    "k4s": {"path": "/bbin/k4s", "sha256": "ab" * 32, "roles": ["kine", "kubelet"]},
    "versions": VERSIONS,
}
SUMMARY = (
    "kubernetes v1.37.2, containerd v2.4.2, kine v0.17.5, etcd v3.7.3, coredns v1.15.0, "
    "runc v1.5.3, cni-plugins v1.10.0, pause 3.10.2"
)


def write(tmp_path: Path, content: str | bytes) -> str:
    path = tmp_path / "image.json"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return str(path)


# --- k4sinit/core/imageinfo.py ----------------------------------------------------------------


def test_no_file_means_no_description(tmp_path: Path) -> None:
    assert imageinfo.load(str(tmp_path / "absent.json")) is None


def test_the_summary_names_the_versions_inside(tmp_path: Path) -> None:
    info = imageinfo.load(write(tmp_path, json.dumps(DESCRIPTION)))
    assert info is not None and info.error is None and info.notice() is None
    assert info.roles == ["kine", "kubelet"] and info.versions == VERSIONS
    assert info.summary() == SUMMARY  # Kubernetes first, then its parts; not the Go version
    as_json = info.to_json()
    assert as_json["summary"] == SUMMARY and as_json["notice"] is None
    assert as_json["kernel"] == "6.1.0-57-amd64" and as_json["error"] is None
    assert json.loads(json.dumps(as_json)) == as_json


def test_an_image_without_versions_says_so(tmp_path: Path) -> None:
    path = write(tmp_path, json.dumps({"kernel": "6.1.0-57-amd64"}))
    info = imageinfo.load(path)
    assert info is not None and info.notice() is None
    assert info.summary() == f"{path} names no Kubernetes components"


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "not a JSON object but list"),
        ('{"k4s": "standins"}', "k4s is not an object"),
        ('{"versions": ["v1"]}', "versions is not an object"),
        (b"\xff\xfe{}", "not UTF-8"),
    ],
)
def test_a_malformed_file_gives_a_notice_naming_it_never_an_exception(
    tmp_path: Path, content: str | bytes, why: str
) -> None:
    path = write(tmp_path, content)
    info = imageinfo.load(path)
    assert info is not None
    notice = info.notice()
    assert notice is not None and path in notice and why in notice, notice
    assert info.to_json()["notice"] == notice
    assert info.summary() == notice  # the banner says what is wrong instead


def test_an_unreadable_path_gives_a_notice(tmp_path: Path) -> None:
    info = imageinfo.load(str(tmp_path))  # a directory
    assert info is not None
    assert info.notice() == f"image description {tmp_path} is unreadable: Is a directory"


# --- k4sinit status: the daemon's snapshot and the CLI's rendering ----------------------


def status_result(image_json: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "services": [
            {
                "name": "kubelet",
                "state": "running",
                "ready": True,
                "pid": 42,
                "since": 5.0,
                "restarts": 0,
                "last_exit": None,
                "reason": "ready",
            }
        ],
        "network": {"ready": True, "reason": "ready", "interfaces": {}},
        "pki": {"ready": True, "reason": "ready"},
        "preflight": None,
        "image": image_json,
    }


def run_status(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], result: Any, *args: str
) -> tuple[int, str]:
    monkeypatch.setattr(control, "request", lambda path, request, **kw: result)
    code = cli.main(["status", "--socket", "/nonexistent/control.sock", *args])
    return code, capsys.readouterr().out


def test_status_prints_what_the_image_holds_on_its_own_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    info = imageinfo.load(write(tmp_path, json.dumps(DESCRIPTION)))
    assert info is not None
    code, out = run_status(monkeypatch, capsys, status_result(info.to_json()))
    assert code == 0
    assert f"\nimage: {SUMMARY}\n" in out
    code, out = run_status(monkeypatch, capsys, status_result(info.to_json()), "--json")
    assert json.loads(out)["image"]["versions"] == VERSIONS


def test_status_has_no_image_line_without_an_image(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run_status(monkeypatch, capsys, status_result(None))
    assert code == 0 and "image:" not in out
    assert format_image_line(None) is None


async def test_the_daemons_status_snapshot_carries_the_image(tmp_path: Path) -> None:
    info = imageinfo.load(write(tmp_path, json.dumps(DESCRIPTION)))
    replies: list[Any] = []

    async def send(reply: Any) -> None:
        replies.append(reply)

    for given, expected in ((info, info.to_json() if info else None), (None, None)):
        daemon = Daemon(Config("test", {}), str(tmp_path / "sock"), get_logger(), image=given)
        await daemon.handle(Request("status"), send)
        assert replies.pop()["result"]["image"] == expected


# --- the build side: the Go userland in the tree, image.json ----------------------------


def test_the_userland_fills_bbin_like_a_u_root_k4s(tmp_path: Path, userland: Any) -> None:
    tree = tmp_path / "tree"
    description = build._install_userland(tree, userland, busybox_image=True)
    bbin = tree / "bbin"
    roles = userland.roles()
    assert sorted(p.name for p in bbin.iterdir()) == sorted(["k4s", *roles])
    assert all(os.readlink(bbin / role) == "k4s" for role in roles)
    assert (bbin / "k4s").read_bytes() == userland.k4s.read_bytes()
    for path in (build.SHIM_PATH, build.RUNC_PATH, "/opt/cni/bin/bridge", "/opt/cni/bin/loopback"):
        assert os.access(tree / path.lstrip("/"), os.X_OK), path
    assert description["k4s"] == {
        "path": "/bbin/k4s",
        "sha256": hashlib.sha256(userland.k4s.read_bytes()).hexdigest(),
        "roles": roles,
        "source": "rootfs/k4s (gobuild.py)",
    }
    assert description["versions"] == userland.versions
    archives = description["images"]
    assert isinstance(archives, list)
    refs = [archive["ref"] for archive in archives]
    assert refs == [f"k4sinit.local/pause:{userland.versions['pause']}", oci.BUSYBOX_REF]
    info = imageinfo.load(write(tmp_path, json.dumps(description)))
    assert info is not None and info.summary().startswith("kubernetes v1.37.")


def test_k4s_has_every_role_k4sinit_runs_from_bbin(userland: Any) -> None:
    from k4sinit.core import nodespec

    # images is a shell script; manifests and pod-network are k4sinit itself.
    runs = {*nodespec.ALL_ROLES} - {"images", "manifests", "pod-network"}
    assert runs <= set(userland.roles())
    assert {"kubectl", "ctr"} <= set(userland.roles())  # the manifests and images roles run them


def test_the_configs_modules_go_into_the_image(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("modules: [nf_tables, xt_MASQUERADE]\nservices: {}\n")
    assert build.config_modules(config) == ["nf_tables", "xt_MASQUERADE"]
    config.write_text("services: {}\n")
    assert build.config_modules(config) == []


def test_a_config_k4sinit_would_refuse_builds_no_image(tmp_path: Path) -> None:
    """The build reads the config with k4sinit's own loader: the same errors as
    ``k4sinit check`` (file, line, field), before anything is staged."""
    config = tmp_path / "config.yaml"
    config.write_text("modules: nf_tables\nservices: {}\n")
    with pytest.raises(build.BuildError) as caught:
        build.config_modules(config)
    assert str(caught.value) == (
        f"the config is not valid: 1 error in {config}\n"
        f"{config}:1: field modules: expected a list of strings, got a string "
        "('nf_tables'), write a YAML list, one item per argument"
    )


def test_a_module_the_kernel_lacks_is_named(vm_tools: None) -> None:
    kver = build.debian_kernel_version()  # vm_tools installed Debian's kernel
    origin = {"no_such_module": "config.yaml's modules"}
    with pytest.raises(build.BuildError) as caught:
        build.module_closure(kver, ["overlay", "no_such_module"], origin)
    assert str(caught.value) == (
        f"kernel {kver} has no module 'no_such_module' (from config.yaml's modules)"
    )
    paths = build.module_closure(kver, ["xt_MASQUERADE"])
    assert paths[-1].endswith("/xt_MASQUERADE.ko") and any("/nf_nat.ko" in p for p in paths)
    # libcrc32c's soft dependency: every crc32c provider, before libcrc32c itself
    names = [Path(p).name for p in paths]
    assert "crc32c_generic.ko" in names
    assert names.index("crc32c_generic.ko") < names.index("libcrc32c.ko")


# --- the air-gap images (rootfs/oci.py) ----------------------------------------------------


def read_archive(
    archive: bytes,
) -> tuple[dict[str, Any], dict[str, Any], dict[str, tarfile.TarInfo]]:
    """The manifest, the image config and the layer's members of a one-layer archive."""
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:

        def read(name: str) -> bytes:
            file = tar.extractfile(name)
            assert file is not None, f"{name} is no regular file"
            return file.read()

        (manifest,) = json.loads(read("manifest.json"))
        config = json.loads(read(manifest["Config"]))
        (layer_name,) = manifest["Layers"]
        layer = read(layer_name)
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    return manifest, config, members


def wait_for_handler(pid: int, sig: int, timeout: float = 30) -> None:
    """Until process ``pid`` catches ``sig`` (its SigCgt mask in /proc), so a signal
    sent next meets its handler and not the default action."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = Path(f"/proc/{pid}/status").read_text()
        caught = int(
            next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16
        )
        if caught & (1 << (sig - 1)):
            return
        time.sleep(0.005)
    raise AssertionError(f"pid {pid} did not install a handler for signal {sig} in {timeout}s")


def test_the_pause_image_is_kubernetes_pause_as_upstream_runs_it(userland: Any) -> None:
    ref = oci.pause_ref(userland.versions["pause"])
    archive = oci.pause_archive(userland.pause, ref)
    assert archive == oci.pause_archive(userland.pause, ref), "reproducible"
    manifest, config, members = read_archive(archive)
    assert manifest["RepoTags"] == [ref]
    assert config["config"]["Entrypoint"] == ["/pause"]
    assert config["config"]["User"] == "65535:65535"
    assert list(members) == ["pause"] and members["pause"].mode == 0o755
    # The program itself: Kubernetes' pause.c says its version, and exits 0 on SIGTERM.
    out = subprocess.run([str(userland.pause), "-v"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"pause.c v{userland.versions['pause']}"
    proc = subprocess.Popen([str(userland.pause)])
    try:
        wait_for_handler(proc.pid, signal.SIGTERM)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_busybox_image_has_every_applet_a_debugging_pod_wants() -> None:
    archive = oci.busybox_archive()
    assert archive == oci.busybox_archive(), "reproducible"
    manifest, config, members = read_archive(archive)
    assert manifest["RepoTags"] == ["k4sinit.local/busybox:1"]
    assert config["config"]["Cmd"] == ["sh"]
    for applet in ("sh", "wget", "httpd", "nc", "nslookup"):
        assert members[f"bin/{applet}"].issym() and members[f"bin/{applet}"].linkname == "busybox"
    assert "bin/init" not in members
    assert members["tmp"].isdir() and members["tmp"].mode == 0o1777


# --- the node image, as the u-root tool made it ---------------------------------------------

IMAGES = "var/lib/k4sinit/images/"


@pytest.fixture(scope="module")
def node_image(vm_tools: None, userland: Any) -> dict[str, newc.Entry]:
    """The members of the image ``scripts/run-node`` boots, by path."""
    import node  # rootfs/node.py

    return {entry.path: entry for entry in newc.read(node.build_image(quiet=True))}


def resolve(files: dict[str, newc.Entry], path: str) -> newc.Entry:
    """The member ``path`` names in the image, its symlinks followed."""
    for _ in range(10):
        entry = files[path.lstrip("/")]
        if not entry.is_symlink:
            return entry
        target = entry.data.decode()
        path = target if target.startswith("/") else os.path.join(os.path.dirname(path), target)
        path = os.path.normpath("/" + path.lstrip("/"))
    raise AssertionError(f"{path}: too many symlinks")


def test_bbin_holds_u_roots_core_commands_and_the_roles_beside_them(
    node_image: dict[str, newc.Entry], userland: Any
) -> None:
    bbin = {p.removeprefix("bbin/"): e for p, e in node_image.items() if p.startswith("bbin/")}
    assert bbin["bb"].is_file and bbin["bb"].mode & 0o111
    # every command tools.go names, but bind (its build constraints: plan9 only)
    core = {package.rpartition("/")[2] for package in urootbuild.commands()} - {"bind"}
    to_bb = {name for name, entry in bbin.items() if entry.is_symlink and entry.data == b"bb"}
    assert to_bb == core
    assert {"ls", "cat", "ip", "mount", "umount", "ps", "dmesg", "grep", "gosh"} <= to_bb
    roles = set(userland.roles())
    to_k4s = {name for name, entry in bbin.items() if entry.is_symlink and entry.data == b"k4s"}
    assert to_k4s == roles and not roles & core
    assert bbin["k4s"].data == userland.k4s.read_bytes()
    assert set(bbin) == {"bb", "k4s", *core, *roles}
    description = json.loads(node_image["etc/k4sinit/image.json"].data)
    assert description["uroot"] == {
        "version": urootbuild.required_version(),
        "commands": sorted(core),
    }


def test_no_busybox_is_left_in_the_nodes_userland(node_image: dict[str, newc.Entry]) -> None:
    assert "bin/busybox" not in node_image
    with_busybox = [
        path
        for path, entry in node_image.items()
        if entry.is_file and b"BusyBox v" in entry.data and not path.startswith(IMAGES)
    ]
    assert with_busybox == []
    # the one busybox left is the debugging pod image's layer, not the node's
    assert b"BusyBox v" in node_image[IMAGES + "busybox.tar"].data


def test_everything_k4sinit_and_the_roles_run_is_in_the_image(
    node_image: dict[str, newc.Entry],
) -> None:
    from k4sinit.core import paths
    from k4sinit.core.config import SystemSpec
    from k4sinit.pid1 import boot

    needed = build.NEEDED_COMMANDS | build.NEEDED_WITH_USERLAND | build.NEEDED_WITH_IPTABLES
    for name, (path, who) in needed.items():
        entry = resolve(node_image, path)
        assert entry.is_file and entry.mode & 0o111, (name, path, who)
    init = node_image["init"]  # k4sinit's launcher, kept by -useinit (not u-root's init)
    assert init.is_file and init.data.startswith(b"#!/usr/bin/python3.11 ")
    # the spawns' cgroup join, the images oneshot, the emergency shell: Debian's dash
    assert paths.SHELL == SystemSpec().shell[0] == "/bin/sh"
    assert node_image["bin/sh"].data == Path(build.DASH).resolve().read_bytes()
    # the kernel's request_module runs /sbin/modprobe: Debian's kmod
    assert resolve(node_image, "/sbin/modprobe").data == Path(build.KMOD).resolve().read_bytes()
    # the switch root's copy: no cp on boot.CP_PATH (u-root's cp has no -a) -> in Python
    assert not [d for d in boot.CP_PATH.split(":") if f"{d.lstrip('/')}/cp" in node_image]
    # k4sinit's DHCP is its own (pyroute2): no udhcpc
    assert not [path for path in node_image if path.endswith("/udhcpc")]


def test_a_broken_u_root_build_fails_the_image_build_naming_the_step(
    vm_tools: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A command u-root cannot build: the image build stops there, says so, and writes
    no image (there is nothing to fall back to)."""
    module = tmp_path / "uroot"
    module.mkdir()
    for name in ("go.mod", "go.sum"):
        (module / name).write_bytes((urootbuild.HERE / name).read_bytes())
    (module / "tools.go").write_text(
        "//go:build tools\n\npackage uroot\n\nimport (\n"
        '\t_ "github.com/u-root/u-root/cmds/core/ls"\n'
        '\t_ "github.com/u-root/u-root/cmds/core/nosuchcommand"\n)\n'
    )
    monkeypatch.setattr(urootbuild, "HERE", module)
    monkeypatch.setattr(urootbuild, "DEFAULT_OUT", tmp_path / "uroot-out")
    monkeypatch.setattr(gobuild, "ROOT", Path("/"))  # files_key's paths, outside the repo
    out = tmp_path / "image"
    assert build.main(["--no-userland", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "build: u-root core commands (gobusybox) failed" in err, err
    assert "nosuchcommand" in err, err
    assert not list(out.glob("k4sinit.cpio*"))
