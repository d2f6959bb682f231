"""Join by token against the real control plane, natively (k4sinit.node.join, tokens).

One ``k4sinit dev`` container runs the ``controller`` profile (kine, the
apiserver, scheduler, controller-manager, manifests, CoreDNS) from the k4s
build, as tests/test_control_plane.py does, in its own network namespace (10.99.0.1 on
a bridge). ``k4sinit token create`` there makes a bootstrap token; the
worker's side of the join (:func:`k4sinit.node.join.join`: discovery,
the CA pin, the JWS check, the files) runs in a Python process inside that
network namespace, with a worker's config, as a worker's PID 1 would. The
kubelet's own TLS bootstrap needs the VM (tests/test_e2e.py).
"""

from __future__ import annotations

import base64
import calendar
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from k4sinit.core.jointoken import parse_join_token
from k4sinit.node.tokens import ca_hash
from k4sinit.pid1.container import host_cgroup2_mount

from .conftest import Container, wait_until
from .test_control_plane import ADDRESS, _wait_up, config_text, kubectl, nsenter, stop_and_check

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or host_cgroup2_mount() is None,
    reason="a container needs root and a cgroup2 hierarchy on the host",
)

REPO = Path(__file__).resolve().parent.parent
SERVER = f"https://{ADDRESS}:6443"

WORKER = """\
node:
  profile: worker
  name: worker-1
  dataDir: {data}
  joinToken: {token}
"""

JOIN = """\
import sys
from k4sinit.config import load_config
from k4sinit.node import roles
from k4sinit.node.join import JoinError, join
settings = roles.settings(load_config(sys.argv[1]))
try:
    print(join(settings))
except JoinError as exc:
    print(f"JoinError: {exc}")
    sys.exit(3)
"""


@pytest.fixture(scope="module")
def controller(tmp_path_factory: pytest.TempPathFactory, userland: Any) -> Iterator[Container]:
    """A controller node, every role ready; stopped and checked after the module."""
    tmp = tmp_path_factory.mktemp("controller")
    container = Container(tmp, config_text(tmp, userland, profile="controller", datastore="kine"))
    try:
        started = time.monotonic()
        _wait_up(container)
        print(f"\nnative controller: all ready in {time.monotonic() - started:.1f}s")
        yield container
    finally:
        stop_and_check(container)


def create_token(node: Container, *args: str) -> str:
    out = node.cli("token", "create", *args)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout.strip()


def worker_join(node: Container, tmp: Path, token: str) -> subprocess.CompletedProcess[str]:
    """A worker's join with ``token``, run in the controller's network namespace."""
    config = tmp / "worker.yaml"
    config.write_text(WORKER.format(data=tmp / "data", token=token))
    argv = [*nsenter(node), sys.executable, "-c", JOIN, str(config)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO)


def signed(node: Container, token_id: str) -> bool:
    """Whether the bootstrapsigner has signed cluster-info for ``token_id``."""
    out = kubectl(node, "-n", "kube-public", "get", "configmap", "cluster-info", "-o", "json")
    return f"jws-kubeconfig-{token_id}" in json.loads(out.stdout)["data"]


def secret(node: Container, token_id: str) -> dict[str, str] | None:
    """The decoded data of the token's Secret, None when there is none."""
    name = f"bootstrap-token-{token_id}"
    out = kubectl(node, "-n", "kube-system", "get", "secret", name, "-o", "json", check=False)
    if out.returncode != 0:
        assert "NotFound" in out.stderr, out.stderr
        return None
    data = json.loads(out.stdout)
    assert data["type"] == "bootstrap.kubernetes.io/token"
    return {k: base64.b64decode(v).decode() for k, v in data["data"].items()}


def test_token_create_stores_a_bootstrap_token_secret(controller: Container) -> None:
    text = create_token(controller, "--ttl", "2h")
    token = parse_join_token(text)
    assert token.server == SERVER
    ca = (controller.config.parent / "data/pki/ca.crt").read_bytes()
    assert token.ca_hash == ca_hash(ca)
    data = secret(controller, token.token.id)
    assert data is not None
    assert data["token-id"] == token.token.id and data["token-secret"] == token.token.secret
    assert data["usage-bootstrap-authentication"] == "true"
    assert data["usage-bootstrap-signing"] == "true"
    assert data["auth-extra-groups"] == "system:bootstrappers:k4sinit:default-node-token"
    left = calendar.timegm(time.strptime(data["expiration"], "%Y-%m-%dT%H:%M:%SZ")) - time.time()
    assert 2 * 3600 - 120 < left <= 2 * 3600
    listed = controller.cli("token", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (row,) = [t for t in json.loads(listed.stdout) if t["id"] == token.token.id]
    assert row["usages"] == ["authentication", "signing"]
    assert token.token.secret not in listed.stdout  # list never shows a secret
    table = controller.cli("token", "list").stdout
    assert token.token.id in table.split()


def test_a_worker_joins_with_a_token_and_gets_the_ca(controller: Container, tmp_path: Path) -> None:
    text = create_token(controller)
    token = parse_join_token(text)
    wait_until(lambda: signed(controller, token.token.id), timeout=60, what="cluster-info signed")
    out = worker_join(controller, tmp_path, text)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"joined {SERVER} (CA {token.ca_hash})" in out.stdout
    ca = tmp_path / "data/pki/ca.crt"
    assert ca.read_bytes() == (controller.config.parent / "data/pki/ca.crt").read_bytes()
    bootstrap = tmp_path / "data/kubeconfigs/bootstrap-kubelet.conf"
    assert bootstrap.stat().st_mode & 0o777 == 0o600
    kubeconfig = yaml.safe_load(bootstrap.read_text())
    assert kubeconfig["clusters"][0]["cluster"] == {
        "server": SERVER,
        "certificate-authority": str(ca),
    }
    assert kubeconfig["users"][0]["user"]["token"] == str(token.token)
    # The bootstrap token authenticates as its group: what kubelet's TLS bootstrap needs.
    who = kubectl(
        controller,
        f"--server={SERVER}",
        f"--certificate-authority={ca}",
        f"--token={token.token}",
        "--kubeconfig=/dev/null",
        "auth",
        "whoami",
        "-o",
        "json",
        check=False,
    )
    assert who.returncode == 0, who.stderr
    groups = json.loads(who.stdout)["status"]["userInfo"]["groups"]
    assert "system:bootstrappers:k4sinit:default-node-token" in groups


def test_a_wrong_ca_hash_is_refused_and_nothing_is_written(
    controller: Container, tmp_path: Path
) -> None:
    token = parse_join_token(create_token(controller))
    wait_until(lambda: signed(controller, token.token.id), timeout=60, what="cluster-info signed")
    wrong = "sha256:" + "0" * 64
    out = worker_join(controller, tmp_path, f"K4S1::{SERVER}::{wrong}::{token.token}")
    assert out.returncode == 3, out.stdout + out.stderr
    assert f"the CA of {SERVER} is {token.ca_hash}, the token's is {wrong}" in out.stdout
    assert "nothing written" in out.stdout
    assert not (tmp_path / "data").exists()


def test_a_revoked_token_is_refused(controller: Container, tmp_path: Path) -> None:
    text = create_token(controller)
    token = parse_join_token(text)
    wait_until(lambda: signed(controller, token.token.id), timeout=60, what="cluster-info signed")
    revoked = controller.cli("token", "revoke", token.token.id)
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    assert secret(controller, token.token.id) is None
    wait_until(lambda: not signed(controller, token.token.id), timeout=60, what="signature gone")
    out = worker_join(controller, tmp_path, text)
    assert out.returncode == 3, out.stdout + out.stderr
    assert f"has no token {token.token.id}: it expired, was revoked" in out.stdout
    again = controller.cli("token", "revoke", token.token.id)
    assert again.returncode == 1
    assert f"no bootstrap token {token.token.id!r}" in again.stderr


def test_an_expired_token_is_refused(controller: Container, tmp_path: Path) -> None:
    text = create_token(controller, "--ttl", "3s")
    token = parse_join_token(text)
    # The tokencleaner deletes the Secret once it has expired; the signature goes with it.
    wait_until(lambda: secret(controller, token.token.id) is None, timeout=90, what="cleaned")
    wait_until(lambda: not signed(controller, token.token.id), timeout=60, what="signature gone")
    out = worker_join(controller, tmp_path, text)
    assert out.returncode == 3, out.stdout + out.stderr
    assert f"has no token {token.token.id}" in out.stdout


def test_a_wrong_secret_is_refused(controller: Container, tmp_path: Path) -> None:
    token = parse_join_token(create_token(controller))
    wait_until(lambda: signed(controller, token.token.id), timeout=60, what="cluster-info signed")
    forged = f"K4S1::{SERVER}::{token.ca_hash}::{token.token.id}.{'x' * 16}"
    out = worker_join(controller, tmp_path, forged)
    assert out.returncode == 3, out.stdout + out.stderr
    assert "the signature does not match the token's secret" in out.stdout
    assert not (tmp_path / "data").exists()


def test_cluster_info_is_anonymous_and_nothing_else_is(controller: Container) -> None:
    def anonymous(path: str) -> int:
        code = (
            "import ssl,sys,urllib.request as u\n"
            "c=ssl._create_unverified_context()\n"
            "try: print(u.urlopen(sys.argv[1], context=c, timeout=30).status)\n"
            "except u.HTTPError as e: print(e.code)\n"
        )
        argv = [*nsenter(controller), sys.executable, "-c", code, SERVER + path]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return int(out.stdout)

    assert anonymous("/api/v1/namespaces/kube-public/configmaps/cluster-info") == 200
    assert anonymous("/api/v1/namespaces/kube-system/secrets") == 401
    assert anonymous("/api/v1/namespaces/kube-public/configmaps") == 401
    assert anonymous("/version") == 401
    # The apiserver took its authentication config as it is: it never restarted.
    assert controller.status()["kube-apiserver"]["restarts"] == 0
