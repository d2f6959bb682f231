"""A worker's join (k4sinit.node.join) against the stand-in apiserver of tests/fakeapi.py.

What is tested: each check of discovery and its message, that nothing is
written unless all pass, the files written, and the ``pki`` condition a
worker's kubelet waits for (its reasons, its retries on trio's virtual
clock). tests/test_join_cluster.py joins against the real control plane.
"""

from __future__ import annotations

import base64
import itertools
import random
import textwrap
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio
import yaml

from k4sinit.config import load_config_text
from k4sinit.core.jointoken import BootstrapToken, JoinToken
from k4sinit.core.nodespec import NodeSettings
from k4sinit.core.restart import backoff_delay
from k4sinit.core.spec import Condition
from k4sinit.node import roles
from k4sinit.node.join import (
    RETRY,
    JoinError,
    JoinRequest,
    NodeJoin,
    discover,
    join,
    node_identity,
)
from k4sinit.node.pkicondition import NodePKI
from k4sinit.node.tokens import ca_hash, jws_sign
from k4sinit.services.manifests import bootstrap_token_secret

from .certs import CA
from .fakeapi import FakeAPIServer, fake_apiserver
from .test_pkicondition import StandInNetwork

TOKEN = BootstrapToken("abcdef", "s3cr3tt0k3nvalue")


def add_token(fake: FakeAPIServer, token: BootstrapToken = TOKEN) -> None:
    """As ``k4sinit token create`` would: the token's Secret, which the fake signs for."""
    fake.secrets[f"bootstrap-token-{token.id}"] = bootstrap_token_secret(str(token))


def worker(data: Path, node: str) -> NodeSettings:
    text = f"node:\n  profile: worker\n  name: worker-1\n  dataDir: {data}\n{textwrap.indent(node, '  ')}"
    settings = roles.settings(load_config_text(text, "test.yaml"))
    assert settings is not None
    return settings


def join_token(fake: FakeAPIServer, token: BootstrapToken = TOKEN, ca: bytes | None = None) -> str:
    return str(JoinToken(fake.url, ca_hash(ca or fake.ca_pem), token))


def test_discovery_checks_the_ca_and_the_signature(tmp_path: Path) -> None:
    with fake_apiserver(tmp_path) as fake:
        add_token(fake)
        found = discover(JoinRequest(fake.url, TOKEN, ca_hash(fake.ca_pem)))
        assert found.ca_pem == fake.ca_pem and found.ca_hash == ca_hash(fake.ca_pem)
        # The first fetch trusts nothing; the second is verified by the CA it found.
        assert [(m, cn) for m, _, cn in fake.requests] == [("GET", None), ("GET", None)]


def test_a_join_writes_the_ca_and_the_bootstrap_kubeconfig(tmp_path: Path) -> None:
    with fake_apiserver(tmp_path / "server") as fake:
        add_token(fake)
        node = worker(tmp_path, f"joinToken: {join_token(fake)}")
        done = join(node)
    ca, bootstrap = tmp_path / "pki/ca.crt", tmp_path / "kubeconfigs/bootstrap-kubelet.conf"
    assert done == f"joined {fake.url} (CA {ca_hash(fake.ca_pem)}): {ca}, {bootstrap}"
    assert ca.read_bytes() == fake.ca_pem
    assert (ca.stat().st_mode & 0o777, bootstrap.stat().st_mode & 0o777) == (0o644, 0o600)
    config = yaml.safe_load(bootstrap.read_text())
    assert config["clusters"][0]["cluster"] == {
        "server": fake.url,
        "certificate-authority": str(ca),
    }
    assert config["users"] == [{"name": "kubelet-bootstrap", "user": {"token": str(TOKEN)}}]


def test_a_join_without_a_ca_hash_trusts_the_signature(tmp_path: Path) -> None:
    with fake_apiserver(tmp_path / "server") as fake:
        add_token(fake)
        node = worker(tmp_path, f"server: {fake.url}\ntoken: {TOKEN}")
        assert JoinRequest.of(node) == JoinRequest(fake.url, TOKEN, None)
        assert join(node).startswith(f"joined {fake.url}")
    assert (tmp_path / "pki/ca.crt").read_bytes() == fake.ca_pem


def failed_join(tmp_path: Path, fake: FakeAPIServer, token: str) -> str:
    """The message of the JoinError a join with ``token`` raises; checks nothing was written."""
    node = worker(tmp_path / "node", f"joinToken: {token}")
    with pytest.raises(JoinError) as caught:
        join(node)
    assert not (tmp_path / "node").exists()
    return str(caught.value)


def test_a_wrong_ca_hash_is_refused(tmp_path: Path) -> None:
    other = Path(CA.create(tmp_path, "other").cert_file).read_bytes()
    with fake_apiserver(tmp_path) as fake:
        add_token(fake)
        message = failed_join(tmp_path, fake, join_token(fake, ca=other))
    assert message == (
        f"the CA of {fake.url} is {ca_hash(fake.ca_pem)}, the token's is {ca_hash(other)}: "
        "not the cluster the token was made for (or something in between); nothing written"
    )


def test_an_unknown_token_is_refused(tmp_path: Path) -> None:
    with fake_apiserver(tmp_path) as fake:
        add_token(fake, BootstrapToken("zzzzzz", "s3cr3tt0k3nvalue"))  # another one
        message = failed_join(tmp_path, fake, join_token(fake))
    assert message == (
        f"the cluster at {fake.url} has no token abcdef: it expired, was revoked, or was "
        "never made there (k4sinit token list, on the controller)"
    )


def test_a_wrong_secret_is_refused(tmp_path: Path) -> None:
    with fake_apiserver(tmp_path) as fake:
        add_token(fake)
        message = failed_join(tmp_path, fake, join_token(fake, BootstrapToken("abcdef", "x" * 16)))
    assert message == (
        "cluster-info's signature for token abcdef is not valid: the signature does not "
        "match the token's secret (a mistyped token, or not the cluster that made it)"
    )
    assert "x" * 16 not in message


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (401, "refuses to show kube-public/cluster-info to a joining node"),
        (403, "is it a k4sinit controller?"),
        (404, "has no kube-public/cluster-info yet (the controller publishes it once"),
        (500, "500 refused by the test"),
    ],
)
def test_a_server_that_does_not_answer_cluster_info(
    tmp_path: Path, status: int, message: str
) -> None:
    with fake_apiserver(tmp_path) as fake:
        fake.cluster_info_status = status
        assert message in failed_join(tmp_path, fake, join_token(fake))


def test_a_server_that_cluster_info_does_not_vouch_for_is_refused(tmp_path: Path) -> None:
    """Someone in between relays the cluster's signed cluster-info but cannot serve
    with a certificate of the cluster's CA: the second, verified fetch fails."""
    cluster_ca = Path(CA.create(tmp_path, "cluster").cert_file).read_bytes()
    with fake_apiserver(tmp_path) as fake:
        add_token(fake)
        fake.ca_pem = cluster_ca  # what cluster-info says; the server's cert is of another CA
        message = failed_join(tmp_path, fake, join_token(fake))
    assert message.startswith(
        f"the server is not verified by the cluster's CA ({ca_hash(cluster_ca)})"
    )


def test_a_server_nobody_answers_at(tmp_path: Path) -> None:
    with fake_apiserver(tmp_path) as fake:
        token = join_token(fake)
    assert f"cannot reach {fake.url}: Connection refused" in failed_join(tmp_path, fake, token)


def test_cluster_info_that_names_a_ca_file_is_refused(tmp_path: Path) -> None:
    with fake_apiserver(tmp_path) as fake:
        add_token(fake)
        config_map = fake.cluster_info()
        kubeconfig = yaml.safe_load(config_map["data"]["kubeconfig"])
        del kubeconfig["clusters"][0]["cluster"]["certificate-authority-data"]
        kubeconfig["clusters"][0]["cluster"]["certificate-authority"] = str(fake.ca.cert_file)
        content = yaml.safe_dump(kubeconfig)
        fake.cluster_info = lambda: {  # type: ignore[method-assign]
            "data": {"kubeconfig": content, "jws-kubeconfig-abcdef": jws_sign(content, TOKEN)}
        }
        message = failed_join(tmp_path, fake, join_token(fake))
    # A kubeconfig from the network never names a local file to read.
    assert message == "cluster-info: no readable CA certificate in its kubeconfig"


def test_a_given_bootstrap_kubeconfig_gives_its_ca(tmp_path: Path) -> None:
    pem = Path(CA.create(tmp_path).cert_file).read_bytes()
    given = tmp_path / "bootstrap.conf"
    cluster = {
        "server": "https://c:6443",
        "certificate-authority-data": base64.b64encode(pem).decode(),
    }
    given.write_text(yaml.safe_dump({"clusters": [{"name": "c", "cluster": cluster}]}))
    node = worker(tmp_path / "node", f"bootstrapKubeconfig: {given}")
    assert JoinRequest.of(node) is None
    ca = tmp_path / "node/pki/ca.crt"
    assert join(node) == f"the CA {ca_hash(pem)} of {given} in {ca}"
    assert ca.read_bytes() == pem
    # A kubeconfig of the node's own may name its CA by file.
    by_file = {"server": "https://c:6443", "certificate-authority": str(tmp_path / "ca.crt")}
    given.write_text(yaml.safe_dump({"clusters": [{"name": "c", "cluster": by_file}]}))
    assert join(node) == f"the CA {ca_hash(pem)} of {given} in {ca}"
    by_file["certificate-authority"] = "/nonexistent/ca.crt"
    given.write_text(yaml.safe_dump({"clusters": [{"name": "c", "cluster": by_file}]}))
    with pytest.raises(JoinError, match="its CA file: No such file or directory: /nonexistent"):
        join(node)
    given.write_text("clusters: []")
    with pytest.raises(JoinError, match=f"{given}: no readable CA certificate in its kubeconfig"):
        join(node)


# --- the worker's pki condition -------------------------------------------------------


def test_a_worker_joins_and_every_other_node_makes_its_pki(tmp_path: Path) -> None:
    log = structlog.get_logger()
    node = worker(tmp_path, f"joinToken: K4S1::https://c:6443::sha256:{'0' * 64}::{TOKEN}")
    assert isinstance(node_identity(node, StandInNetwork(), log), NodeJoin)
    text = f"node: {{profile: controller, name: c, dataDir: {tmp_path}}}"
    controller = roles.settings(load_config_text(text, "test.yaml"))
    assert controller is not None
    assert isinstance(node_identity(controller, StandInNetwork(), log), NodePKI)


async def test_the_join_is_ready_once_it_has_joined(tmp_path: Path) -> None:
    network = StandInNetwork()
    with fake_apiserver(tmp_path / "server") as fake:
        add_token(fake)
        node = worker(tmp_path, f"joinToken: {join_token(fake)}")
        joining = NodeJoin(node, network, structlog.get_logger())
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                await nursery.start(joining.run)
                await trio.testing.wait_all_tasks_blocked()
                assert joining.unmet_reason(Condition.READY) == "waiting for the network"
                assert not fake.requests
                network.become_ready()
                while not joining.ready:
                    await joining.changed()
    assert joining.satisfies(Condition.READY) and not joining.satisfies(Condition.COMPLETED)
    assert joining.reason.startswith(f"joined {fake.url} (CA {ca_hash(fake.ca_pem)})")


async def test_a_failed_join_says_why_and_is_retried_with_backoff(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    node = worker(tmp_path, f"joinToken: K4S1::https://c:6443::sha256:{'0' * 64}::{TOKEN}")
    outcomes: list[str | None] = [None, None, None, "joined"]
    times: list[float] = []

    def attempt(settings: NodeSettings) -> str:
        times.append(trio.from_thread.run_sync(trio.current_time))  # in a worker thread
        outcome = outcomes.pop(0)
        if outcome is None:
            raise JoinError("the cluster at https://c:6443 has no token abcdef: it expired")
        return outcome

    network = StandInNetwork()
    network.become_ready()
    joining = NodeJoin(node, network, structlog.get_logger(), rng=random.Random(7), attempt=attempt)
    reasons = []
    async with trio.open_nursery() as nursery:
        await nursery.start(joining.run)
        while not joining.ready:
            await joining.changed()
            reasons.append(joining.reason)
    rng = random.Random(7)
    delays = [backoff_delay(RETRY, n + 1, rng.random()) for n in (1, 2, 3)]
    assert [round(b - a, 6) for a, b in itertools.pairwise(times)] == [round(d, 6) for d in delays]
    assert 1.6 <= delays[0] <= 2.4 and 3.2 <= delays[1] <= 4.8 and 6.4 <= delays[2] <= 9.6
    assert reasons == [
        "cannot join: the cluster at https://c:6443 has no token abcdef: it expired "
        f"(attempt {n}, again in {delays[n - 1]:.0f} s)"
        for n in (1, 2, 3)
    ] + ["joined"]
    assert joining.attempts == 4


# --- in a daemon: what an operator sees ------------------------------------------------

WORKER_RUN = """\
node:
  profile: worker
  name: worker-1
  dataDir: {data}
  binPath: [{bin}, /usr/bin, /bin]
  joinToken: {token}
  roles:
    containerd: {{disabled: true}}
    images: {{disabled: true}}
    kube-proxy: {{disabled: true}}
services: {{}}
"""


def test_kubelet_waits_for_the_join_and_status_says_why(tmp_path: Path, start_daemon: Any) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "kubelet").write_text("#!/bin/sh\nexec sleep 600\n")
    (bin_dir / "kubelet").chmod(0o755)
    with fake_apiserver(tmp_path / "server") as fake:
        config = WORKER_RUN.format(data=tmp_path / "data", bin=bin_dir, token=join_token(fake))
        daemon = start_daemon(config)
        why = f"waiting for pki: cannot join: the cluster at {fake.url} has no token abcdef"
        waiting = daemon.wait_for(
            lambda s: s["kubelet"]["reason"].startswith(why), what="kubelet waiting for the join"
        )
        assert waiting["kubelet"]["state"] == "waiting"
        assert "(attempt 1, again in 2 s)" in waiting["kubelet"]["reason"]
        pki = daemon.cli("status", "pki")
        assert pki.returncode == 1
        assert pki.stdout.startswith(f"pki: not ready: cannot join: the cluster at {fake.url}")
        assert any(e.get("event") == "join failed" for e in daemon.log_events())
        add_token(fake)  # k4sinit token create, on the controller
        daemon.wait_for(lambda s: s["kubelet"]["state"] == "running", what="kubelet started")
    assert daemon.cli("status", "pki").stdout.startswith(f"pki: ready (joined {fake.url}")
    assert (tmp_path / "data/pki/ca.crt").read_bytes() == fake.ca_pem
