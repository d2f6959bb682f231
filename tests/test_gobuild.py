"""rootfs/k4s/gobuild.py's own logic: which Go it uses, what a failure says, the stamps.

Fast and offline: the Go toolchain download is faked at ``urlopen`` (the real one is
71 MB), and failures are fed as ``go build`` prints them. The real build is the
``userland`` fixture's (tests/conftest.py), used by the image, node and VM tests.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import sys
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "rootfs" / "k4s"))
import gobuild  # noqa: E402 (rootfs/k4s is a directory of scripts, not a package)


def fake_go(directory: Path, version: str) -> Path:
    """A ``go`` that answers ``go env GOVERSION`` with ``version``."""
    go = directory / "go"
    go.write_text(f"#!/bin/sh\necho {version}\n")
    go.chmod(0o755)
    return go


def toolchain_zip() -> bytes:
    prefix = f"golang.org/toolchain@v0.0.1-go{gobuild.GO_VERSION}.linux-amd64/"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        info = zipfile.ZipInfo(prefix + "bin/go")
        info.external_attr = 0o100755 << 16
        archive.writestr(info, "#!/bin/sh\necho fetched\n")
        archive.writestr(prefix + "VERSION", f"go{gobuild.GO_VERSION}\n")
    return buf.getvalue()


@pytest.fixture
def no_system_go(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The machine's go is 1.19 (Debian 12's), and the cache is empty."""
    old = fake_go(tmp_path, "go1.19.8")
    monkeypatch.setattr(shutil, "which", lambda name: str(old))  # the modules gobuild calls
    monkeypatch.setattr(os, "access", lambda path, mode: str(path) == str(old))
    monkeypatch.setattr(gobuild, "GO_CACHE", tmp_path / "cache")
    return tmp_path


def serve(monkeypatch: pytest.MonkeyPatch, data: bytes) -> list[str]:
    fetched: list[str] = []

    def urlopen(url: str, timeout: float) -> Any:
        fetched.append(url)
        return io.BytesIO(data)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)  # the module gobuild calls
    return fetched


def test_a_new_enough_go_of_the_machine_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    go = fake_go(tmp_path, f"go{gobuild.GO_VERSION}")
    monkeypatch.setattr(shutil, "which", lambda name: str(go))
    assert gobuild.go_command(say=lambda line: None) == str(go)


def test_a_too_old_go_brings_the_pinned_toolchain_from_the_proxy(
    no_system_go: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = toolchain_zip()
    monkeypatch.setattr(gobuild, "GO_SHA256", hashlib.sha256(data).hexdigest())
    fetched = serve(monkeypatch, data)
    said: list[str] = []
    go = gobuild.go_command(say=said.append)
    assert go == str(no_system_go / f"cache/go{gobuild.GO_VERSION}/bin/go")
    assert fetched == [gobuild.GO_TOOLCHAIN_URL.format(v=gobuild.GO_VERSION)]
    assert os.stat(go).st_mode & 0o111  # its mode from the zip
    assert "from the Go module proxy" in said[0]
    assert gobuild.go_command(say=said.append) == go and len(fetched) == 1  # cached


def test_a_toolchain_with_another_checksum_is_refused(
    no_system_go: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = toolchain_zip()
    serve(monkeypatch, data)
    with pytest.raises(gobuild.GoBuildError) as caught:
        gobuild.go_command(say=lambda line: None)
    digest = hashlib.sha256(data).hexdigest()
    assert f"has sha256 {digest}, expected {gobuild.GO_SHA256}" in str(caught.value)
    assert not (no_system_go / f"cache/go{gobuild.GO_VERSION}").exists()


def test_a_failed_step_names_the_module_of_the_failing_package() -> None:
    lines = [
        "k8s.io/apimachinery/pkg/util/sets",
        "# k8s.io/kubernetes/pkg/kubelet/cm",
        "pkg/kubelet/cm/container_manager_linux.go:42:2: undefined: cgroups.Manager",
    ]
    message = gobuild._failure("k4s", lines, gobuild.HERE)
    kubernetes = gobuild._required_version(gobuild.HERE / "go.mod", "k8s.io/kubernetes")
    assert message.startswith(f"k4s failed (in k8s.io/kubernetes@{kubernetes}):")
    assert "undefined: cgroups.Manager" in message
    assert "k8s.io/apimachinery/pkg/util/sets" not in message  # progress, not the error
    # The longest module path wins: k8s.io/api, not k8s.io/kubernetes, holds k8s.io/api/...
    assert gobuild._module_of("k8s.io/api/core/v1", gobuild.HERE).startswith("k8s.io/api@")


def test_the_version_stamps_are_the_pinned_versions() -> None:
    flags = gobuild.version_flags().split()
    stamps = dict(flag.split("=", 1) for flag in flags if flag != "-X")
    kubernetes = gobuild._required_version(gobuild.HERE / "go.mod", "k8s.io/kubernetes")
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        assert stamps[f"{package}.gitVersion"] == kubernetes
        major, minor = kubernetes.removeprefix("v").split(".")[:2]
        assert (stamps[f"{package}.gitMajor"], stamps[f"{package}.gitMinor"]) == (major, minor)
    containerd = gobuild._required_version(
        gobuild.HERE / "go.mod", "github.com/containerd/containerd/v2"
    )
    assert stamps["github.com/containerd/containerd/v2/version.Version"] == containerd


def test_the_key_changes_with_any_go_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    go = fake_go(tmp_path, f"go{gobuild.GO_VERSION}")
    monkeypatch.setattr(gobuild, "ROOT", Path("/"))  # relative_to() for the tmp file below
    before = gobuild.input_key(str(go))
    assert gobuild.input_key(str(go)) == before
    real = gobuild._inputs

    def with_one_more() -> Any:
        yield from real()
        extra = tmp_path / "extra.go"
        extra.write_text("package main\n")
        yield extra

    monkeypatch.setattr(gobuild, "_inputs", with_one_more)
    assert gobuild.input_key(str(go)) != before
