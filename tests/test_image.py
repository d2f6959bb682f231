"""What the node image holds: ``/etc/k4sinit/image.json`` as rootfs/build.py writes it,
as k4sinit reads it (k4sinit/core/imageinfo.py), and as ``k4sinit status`` and the daemon show it.

Pure and fast: no image is built, no VM booted (tests/test_vm.py does that). The
build side is exercised on a scratch tree: the ``/bbin`` layout and the description
it returns, which k4sinit then reads back.
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
import oci  # noqa: E402

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
        time.sleep(0.2)
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
