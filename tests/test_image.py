"""What the node image holds: ``/etc/k4sinit/image.json`` as rootfs/build.py writes it,
as k4sinit reads it (k4sinit/image.py), and as ``k4sinit status`` and the daemon show it.

Pure and fast: no image is built, no VM booted (tests/test_vm.py does that). The
build side is exercised on a scratch tree: the ``/bbin`` layout and the description
it returns, which k4sinit then reads back.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from k4sinit import cli, control, image
from k4sinit.control import Request
from k4sinit.daemon import Daemon
from k4sinit.log import get_logger
from k4sinit.spec import Config

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "rootfs"))  # build.py and oci.py: scripts, not a package
import build  # noqa: E402
import oci  # noqa: E402

ROLES = ["kine", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet"]
STANDINS = {
    "builtBy": "rootfs/build.py",
    "kernel": "6.1.0-56-amd64",
    "k4s": {"kind": "standins", "path": "/bbin/k4s", "sha256": "ab" * 32, "roles": ROLES},
}


def write(tmp_path: Path, content: str | bytes) -> str:
    path = tmp_path / "image.json"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return str(path)


# --- k4sinit/image.py ----------------------------------------------------------------


def test_no_file_means_no_description(tmp_path: Path) -> None:
    assert image.load(str(tmp_path / "absent.json")) is None


def test_stand_ins_are_named_plainly(tmp_path: Path) -> None:
    info = image.load(write(tmp_path, json.dumps(STANDINS)))
    assert info is not None and info.error is None
    assert info.kind == "standins" and info.roles == ROLES
    assert info.notice() == (
        "kine, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet are "
        "TEST STAND-INS (tests/standins/kube.py in k4sinit's repository), not Kubernetes: "
        "built without a k4s binary (rootfs/build.py --k4s PATH)"
    )


def test_a_supplied_k4s_needs_no_notice(tmp_path: Path) -> None:
    data = {**STANDINS, "k4s": {**STANDINS["k4s"], "kind": "supplied"}}
    info = image.load(write(tmp_path, json.dumps(data)))
    assert info is not None and info.notice() is None
    as_json = info.to_json()
    assert as_json["k4s"]["kind"] == "supplied" and as_json["notice"] is None
    assert as_json["kernel"] == "6.1.0-56-amd64" and as_json["error"] is None
    assert json.loads(json.dumps(as_json)) == as_json


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "not a JSON object but list"),
        ('{"k4s": "standins"}', "k4s is not an object"),
        (b"\xff\xfe{}", "not UTF-8"),
    ],
)
def test_a_malformed_file_gives_a_notice_naming_it_never_an_exception(
    tmp_path: Path, content: str | bytes, why: str
) -> None:
    path = write(tmp_path, content)
    info = image.load(path)
    assert info is not None
    notice = info.notice()
    assert notice is not None and path in notice and why in notice, notice
    assert info.to_json()["notice"] == notice


def test_an_unreadable_path_gives_a_notice(tmp_path: Path) -> None:
    info = image.load(str(tmp_path))  # a directory
    assert info is not None
    assert info.notice() == f"image description {tmp_path} is unreadable: Is a directory"


def test_an_unknown_kind_is_said(tmp_path: Path) -> None:
    data = {"k4s": {"kind": "mystery"}}
    info = image.load(write(tmp_path, json.dumps(data)))
    assert info is not None
    assert (
        info.notice() == f"image description {tmp_path / 'image.json'}: unknown k4s kind 'mystery'"
    )


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


def test_status_prints_the_stand_in_notice_on_its_own_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    info = image.load(write(tmp_path, json.dumps(STANDINS)))
    assert info is not None
    code, out = run_status(monkeypatch, capsys, status_result(info.to_json()))
    assert code == 0
    assert f"\nimage: {info.notice()}\n" in out
    code, out = run_status(monkeypatch, capsys, status_result(info.to_json()), "--json")
    assert json.loads(out)["image"]["notice"] == info.notice()


@pytest.mark.parametrize("image_json", [None, {"k4s": {"kind": "supplied"}, "notice": None}])
def test_status_has_no_image_line_without_a_notice(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    image_json: dict[str, Any] | None,
) -> None:
    code, out = run_status(monkeypatch, capsys, status_result(image_json))
    assert code == 0 and "image:" not in out
    assert cli.format_image_line(image_json) is None


async def test_the_daemons_status_snapshot_carries_the_image(tmp_path: Path) -> None:
    info = image.load(write(tmp_path, json.dumps(STANDINS)))
    replies: list[Any] = []

    async def send(reply: Any) -> None:
        replies.append(reply)

    for given, expected in ((info, info.to_json() if info else None), (None, None)):
        daemon = Daemon(Config("test", {}), str(tmp_path / "sock"), get_logger(), image=given)
        await daemon.handle(Request("status"), send)
        assert replies.pop()["result"]["image"] == expected


# --- the build side: /bbin, the stand-in launcher, image.json ---------------------------


def test_stand_ins_fill_bbin_like_a_u_root_k4s(tmp_path: Path) -> None:
    description = build._install_k4s(tmp_path, None)
    bbin = tmp_path / "bbin"
    assert sorted(p.name for p in bbin.iterdir()) == sorted(["k4s", *ROLES])
    for role in ROLES:
        assert os.readlink(bbin / role) == "k4s"
    launcher = (bbin / "k4s").read_text()
    assert launcher.startswith("#!/usr/bin/python3.11 -IS\n") and "TEST STAND-INS" in launcher
    assert os.access(bbin / "k4s", os.X_OK)
    standins = tmp_path / build.STANDINS_DIR.lstrip("/")
    assert (standins / "kube.py").read_bytes() == (ROOT / "tests/standins/kube.py").read_bytes()
    assert {p.name for p in (standins / "flags").iterdir()} == {f"{r}.txt" for r in ROLES}
    assert description == {
        "kind": "standins",
        "path": "/bbin/k4s",
        "sha256": hashlib.sha256(launcher.encode()).hexdigest(),
        "roles": ROLES,
        "source": "tests/standins/kube.py",
    }
    info = image.load(write(tmp_path, json.dumps({"k4s": description})))
    assert info is not None and "TEST STAND-INS" in (info.notice() or "")


def test_a_supplied_k4s_is_copied_and_linked(tmp_path: Path) -> None:
    k4s = tmp_path / "k4s-binary"
    k4s.write_bytes(b"\x7fELF not really")
    k4s.chmod(0o755)
    tree = tmp_path / "tree"
    description = build._install_k4s(tree, k4s)
    assert (tree / "bbin/k4s").read_bytes() == k4s.read_bytes()
    assert not (tree / build.STANDINS_DIR.lstrip("/")).exists()
    assert description["kind"] == "supplied"
    assert description["sha256"] == hashlib.sha256(k4s.read_bytes()).hexdigest()
    assert all(os.readlink(tree / "bbin" / role) == "k4s" for role in ROLES)


def test_the_roles_linked_are_the_roles_k4sinit_runs_from_bbin() -> None:
    from k4sinit import nodespec

    runs = {nodespec.Datastore.KINE.value, *nodespec.ALL_ROLES} - {"etcd", "containerd", "images"}
    assert sorted(runs) == list(build.K4S_ROLES) == ROLES


def test_the_import_check_covers_what_the_stand_ins_import() -> None:
    imports = dict(build.standin_imports())
    for module in ("ssl", "sqlite3", "http.server", "yaml", "socketserver", "ipaddress"):
        assert module in imports, module
    assert "hashes" in imports["cryptography.hazmat.primitives"]  # a function-level import
    assert "__future__" not in imports


def test_the_configs_modules_go_into_the_image(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("modules: [nf_tables, xt_MASQUERADE]\nservices: {}\n")
    assert build.config_modules(config) == ["nf_tables", "xt_MASQUERADE"]
    config.write_text("services: {}\n")
    assert build.config_modules(config) == []
    config.write_text("modules: nf_tables\n")
    with pytest.raises(build.BuildError, match="modules must be a list"):
        build.config_modules(config)


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


# --- the pause stand-in (rootfs/oci.py) ---------------------------------------------------


def test_the_pause_stand_in_is_busybox_sh_that_traps_and_waits() -> None:
    # busybox-static: scripts/setup installs it
    archive = oci.pause_archive()
    assert archive == oci.pause_archive(), "reproducible"
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        (manifest,) = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
        config = json.load(tar.extractfile(manifest["Config"]))  # type: ignore[arg-type]
        (layer_name,) = manifest["Layers"]
        layer = tar.extractfile(layer_name).read()  # type: ignore[union-attr]
    assert manifest["RepoTags"] == ["k4sinit.local/pause:3.10"]
    assert config["config"]["Cmd"] == ["/bin/sh", "-c", oci.PAUSE_SCRIPT]
    assert "trap 'exit 0' TERM INT" in oci.PAUSE_SCRIPT
    label = config["config"]["Labels"]["org.opencontainers.image.description"]
    assert "stand-in for registry.k8s.io/pause" in label
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    for applet in ("sh", "sleep"):
        assert members[f"bin/{applet}"].issym() and members[f"bin/{applet}"].linkname == "busybox"
