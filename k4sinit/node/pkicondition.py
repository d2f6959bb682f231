"""The node's cluster identity at boot: the ``pki`` built-in dependency.

Once the network is ready, the node's addresses are known, so the PKI can be
made or checked (:func:`k4sinit.node.pki.ensure_pki`, in a worker thread: keys and
signatures are CPU work). Then ``pki`` is ready and the apiserver, which
``dependsOn: {pki: Ready}``, may start. A failure (an unreadable CA, say) is
the reason shown for ``pki`` and retried every 30 s: an operator can fix the
files without rebooting the node. A controller then publishes the server and
its CA as ``kube-public/cluster-info`` for joining workers. On a worker,
``pki`` is the join instead (:class:`k4sinit.node.join.NodeJoin`).

``AlwaysReady`` stands in where a node has no PKI to make (no ``node:``
section): the condition then holds at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import trio

from k4sinit.core.netspec import IPAddress
from k4sinit.core.nodespec import MANIFESTS, NodeSettings
from k4sinit.core.spec import PKI, Condition
from k4sinit.node.pki import CERT_MODE, PKIError, PKIResult, PKISpec, ensure_pki, write_atomic
from k4sinit.services import manifests
from k4sinit.supervision.builtin import AlwaysReady as AlwaysReady

RETRY_SECONDS = 30.0


class NodeNetwork(Protocol):
    """What the PKI needs of the network (:class:`k4sinit.network.Network` has it)."""

    @property
    def ready(self) -> bool: ...

    async def changed(self) -> None: ...

    def node_addresses(self) -> tuple[IPAddress, ...]:
        """The node's own addresses, for the apiserver certificate's SANs."""
        ...


class BuiltinCondition:
    """A built-in dependency that becomes ready once, with a reason at each step.

    Subclasses call :meth:`_set`; whoever waits (the supervisor's runners) is
    woken at each change and reads :attr:`ready` and :attr:`reason`.
    """

    name: str

    def __init__(self, reason: str) -> None:
        self.ready = False
        self.reason = reason
        self._changed = trio.Event()

    def _set(self, ready: bool, reason: str) -> None:
        self.ready, self.reason = ready, reason
        self._changed.set()
        self._changed = trio.Event()

    def satisfies(self, condition: Condition) -> bool:
        return condition is not Condition.COMPLETED and self.ready

    def unmet_reason(self, condition: Condition) -> str:
        return self.reason

    async def changed(self) -> None:
        await self._changed.wait()


class NodePKI(BuiltinCondition):
    """Ensures the PKI once the network is ready; a :class:`~k4sinit.core.spec.Dependency`.

    On a node with the manifests role it then writes ``kube-public/cluster-info``
    (the server and the CA, :func:`k4sinit.services.manifests.cluster_info`) into
    the manifests directory, for joining workers.
    """

    name = PKI

    def __init__(self, settings: NodeSettings, network: NodeNetwork, log: Any) -> None:
        super().__init__("waiting for the network")
        self._settings = settings
        self._network = network
        self._log = log.bind(service=PKI)

    def spec(self, addresses: tuple[IPAddress, ...]) -> PKISpec:
        """What :func:`~k4sinit.node.pki.ensure_pki` must make for this node at ``addresses``."""
        node = self._settings
        return PKISpec(
            node_name=node.name,
            node_addresses=addresses,
            dir=Path(node.pki_dir),
            kubeconfig_dir=Path(node.kubeconfig_dir),
            service_cidr=node.service_cidr,
            cluster_domain=node.cluster_domain,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Wait for the network, ensure the PKI (retrying on failure), then stay ready."""
        task_status.started()
        while not self._network.ready:
            await self._network.changed()
        while True:
            spec = self.spec(self._network.node_addresses())
            try:
                result = await trio.to_thread.run_sync(self._make, spec)
            except (PKIError, OSError, ValueError) as exc:
                self._set(False, f"cannot make the PKI: {exc}")
                self._log.error(PKI, error=str(exc))
                await trio.sleep(RETRY_SECONDS)
                continue
            for line in result.lines():
                self._log.info("pki: " + line)
            self._set(True, f"certificates in {spec.dir}, kubeconfigs in {spec.kubeconfig_dir}")
            return

    def _make(self, spec: PKISpec) -> PKIResult:
        """ensure_pki, then cluster-info for the manifests role (blocking)."""
        result = ensure_pki(spec)
        node = self._settings
        if MANIFESTS in node.roles:
            ca_pem = (spec.dir / "ca.crt").read_bytes()
            text = manifests.dump([manifests.cluster_info(spec.server_url, ca_pem)])
            write_atomic(Path(manifests.cluster_info_file(node)), text.encode(), CERT_MODE)
        return result
