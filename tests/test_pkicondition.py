"""The ``pki`` built-in dependency (k4sinit.node.pkicondition), with the real PKI code.

The network is a stand-in (:class:`StandInNetwork`): what is tested is when the
condition becomes ready, what it says until then, and its retry; the network
itself has its own tests with real namespaces (test_network.py).
"""

from __future__ import annotations

import base64
import ipaddress
import textwrap
from pathlib import Path

import structlog
import trio
import yaml

from k4sinit.config import load_config_text
from k4sinit.core.netspec import IPAddress
from k4sinit.core.nodespec import NodeSettings
from k4sinit.core.spec import Condition
from k4sinit.node import roles
from k4sinit.node.pkicondition import RETRY_SECONDS, AlwaysReady, NodePKI

ADDRESS = ipaddress.ip_address("192.0.2.10")


class StandInNetwork:
    """Stand-in for k4sinit.network.Network: readiness and addresses set by the test."""

    def __init__(self) -> None:
        self.ready = False
        self._changed = trio.Event()

    def become_ready(self) -> None:
        self.ready = True
        self._changed.set()
        self._changed = trio.Event()

    async def changed(self) -> None:
        await self._changed.wait()

    def node_addresses(self) -> tuple[IPAddress, ...]:
        return (ADDRESS,)


def node_settings(data_dir: Path) -> NodeSettings:
    text = f"""\
        node:
          profile: controller
          name: node-1
          dataDir: {data_dir}
        """
    settings = roles.settings(load_config_text(textwrap.dedent(text), "test.yaml"))
    assert settings is not None
    return settings


async def wait_until_ready(pki: NodePKI) -> None:
    while not pki.ready:
        await pki.changed()


async def test_the_pki_waits_for_the_network_then_is_made_and_ready(tmp_path: Path) -> None:
    network = StandInNetwork()
    pki = NodePKI(node_settings(tmp_path), network, structlog.get_logger())
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(pki.run)
            await trio.testing.wait_all_tasks_blocked()
            assert not pki.satisfies(Condition.READY)
            assert pki.unmet_reason(Condition.READY) == "waiting for the network"
            assert not (tmp_path / "pki").exists()
            network.become_ready()
            await wait_until_ready(pki)
    assert pki.satisfies(Condition.READY) and pki.satisfies(Condition.STARTED)
    assert not pki.satisfies(Condition.COMPLETED)  # a condition, never a finished oneshot
    assert pki.reason == f"certificates in {tmp_path}/pki, kubeconfigs in {tmp_path}/kubeconfigs"
    assert (tmp_path / "pki" / "ca.crt").is_file()
    assert (tmp_path / "kubeconfigs" / "admin.conf").is_file()
    # For joining workers: the server and the CA, published by the manifests role.
    [config_map] = yaml.safe_load_all(
        (tmp_path / "manifests/k4sinit-cluster-info.yaml").read_text()
    )
    assert config_map["metadata"] == {"name": "cluster-info", "namespace": "kube-public"}
    cluster = yaml.safe_load(config_map["data"]["kubeconfig"])["clusters"][0]["cluster"]
    assert cluster["server"] == f"https://{ADDRESS}:6443"
    ca = base64.b64decode(cluster["certificate-authority-data"])
    assert ca == (tmp_path / "pki" / "ca.crt").read_bytes()


async def test_a_pki_that_cannot_be_made_says_why_and_is_retried(
    tmp_path: Path, autojump_clock: trio.abc.Clock
) -> None:
    (tmp_path / "pki").write_text("a file where the PKI directory goes")
    network = StandInNetwork()
    network.become_ready()
    pki = NodePKI(node_settings(tmp_path), network, structlog.get_logger())
    async with trio.open_nursery() as nursery:
        await nursery.start(pki.run)
        while pki.reason == "waiting for the network":
            await pki.changed()
        failed_at = trio.current_time()
        assert not pki.ready
        assert pki.reason.startswith("cannot make the PKI: ")
        assert str(tmp_path / "pki") in pki.reason
        (tmp_path / "pki").unlink()  # the operator fixes it; no reboot needed
        await wait_until_ready(pki)
        assert trio.current_time() - failed_at >= RETRY_SECONDS


def test_always_ready_holds_at_once_and_never_completes() -> None:
    builtin = AlwaysReady("pki", "this node makes no PKI")
    assert builtin.satisfies(Condition.READY) and builtin.satisfies(Condition.STARTED)
    assert not builtin.satisfies(Condition.COMPLETED)
    assert builtin.unmet_reason(Condition.COMPLETED) == "pki never completes"
