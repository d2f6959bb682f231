"""A worker joins its cluster: the ``pki`` built-in dependency of a worker node.

A worker makes no PKI of its own: it needs the cluster's CA (kubelet checks
client certificates against it, and trusts the apiserver by it) and a
bootstrap kubeconfig, with which kubelet asks the controller for its client
certificate (TLS bootstrap; the CSR is approved automatically, see
k4sinit.services.manifests). :class:`NodeJoin` gets both before kubelet
starts, the way kubeadm's token discovery does::

    NodeJoin.run()
      wait for the network
      loop:
        discover(request)                     blocking, in a thread
          1. GET cluster-info, anonymously, the server NOT verified
          2. its CA's hash == the token's?     no -> "not the cluster the token was made for"
          3. jws-kubeconfig-<id> signs it       missing -> "expired, revoked or unknown"
             with the token's secret?          wrong   -> "the secret does not match"
          4. GET cluster-info again, the server verified by that CA
        write ca.crt, the bootstrap kubeconfig (atomically; nothing before 1-4 pass)
        -> ready                              on JoinError: the reason, a log line,
                                              again after 2, 4, ... 60 s (±20%)

Step 3 is what proves the controller knows this token (only a holder of its
secret can sign), and so that a bad, revoked or expired token is found here,
with a reason, rather than as kubelet failing to authenticate. Step 2 pins the
CA: without a hash (``node.server`` and ``node.token`` instead of a join
token) the signature alone vouches for it, as kubeadm's
``--discovery-token-unsafe-skip-ca-verification``; the log says so.

With ``node.bootstrapKubeconfig`` there is nothing to discover: the CA is
copied from that kubeconfig into ``ca.crt``.

Why a built-in dependency rather than a oneshot service: the join has no
process to supervise, its reason belongs in ``status`` of what waits for it
(``waiting for pki: cannot join ...``), and it takes the place ``pki`` has on
a controller (a worker's PKI is the cluster's CA; its own certificates come
from TLS bootstrap). Errors never crash the daemon: every failure is a
reason and a retry.
"""

from __future__ import annotations

import base64
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
import yaml

from k4sinit.core.jointoken import BootstrapToken, parse_bootstrap_token
from k4sinit.core.nodespec import NodeSettings, Profile
from k4sinit.core.restart import backoff_delay
from k4sinit.core.spec import PKI, Backoff
from k4sinit.node.apiclient import APIClient, APIError
from k4sinit.node.pki import CERT_MODE, KEY_MODE, write_atomic
from k4sinit.node.pkicondition import BuiltinCondition, NodeNetwork, NodePKI
from k4sinit.node.tokens import ca_hash, jws_problem
from k4sinit.services import kubelet
from k4sinit.services.apiserver import CLUSTER_INFO_PATH

#: Between attempts: 2 s, doubling to 60 s, each spread by ±20% (a fleet of
#: workers booted together does not knock in step).
RETRY = Backoff(initial=2.0, max=60.0, multiplier=2.0, jitter=0.2)
TIMEOUT = 10.0  # seconds, per request


class JoinError(Exception):
    """The join failed; the message says why in words, never with the token's secret."""


@dataclass(frozen=True)
class JoinRequest:
    """Whom to join and with what: ``ca_hash`` None trusts the signature alone."""

    server: str
    token: BootstrapToken
    ca_hash: str | None

    @classmethod
    def of(cls, node: NodeSettings) -> JoinRequest | None:
        """The node's request: from its join token, or its server and token; None without."""
        if node.join_token is not None:
            j = node.join_token
            return cls(j.server, j.token, j.ca_hash)
        if node.server is not None and node.token is not None:
            return cls(node.server, parse_bootstrap_token(node.token), None)
        return None


@dataclass(frozen=True)
class Discovered:
    """What discovery established: the cluster's CA, checked."""

    ca_pem: bytes
    ca_hash: str


def discover(request: JoinRequest, *, timeout: float = TIMEOUT) -> Discovered:
    """Steps 1-4 of the module docstring. Blocking; raises :class:`JoinError`."""
    insecure = APIClient(request.server, insecure=True, timeout=timeout)
    config_map = _fetch(insecure, request.server)
    data = config_map.get("data") if isinstance(config_map, dict) else None
    kubeconfig = data.get("kubeconfig") if isinstance(data, dict) else None
    if not isinstance(kubeconfig, str):
        raise JoinError(f"{request.server}: cluster-info holds no kubeconfig")
    ca_pem = _ca_of(kubeconfig, "cluster-info")
    found = ca_hash(ca_pem)
    if request.ca_hash is not None and found != request.ca_hash:
        raise JoinError(
            f"the CA of {request.server} is {found}, the token's is {request.ca_hash}: "
            "not the cluster the token was made for (or something in between); nothing written"
        )
    signature = data.get(f"jws-kubeconfig-{request.token.id}") if isinstance(data, dict) else None
    if not isinstance(signature, str):
        raise JoinError(
            f"the cluster at {request.server} has no token {request.token.id}: it expired, "
            "was revoked, or was never made there (k4sinit token list, on the controller)"
        )
    problem = jws_problem(signature, kubeconfig, request.token)
    if problem is not None:
        raise JoinError(
            f"cluster-info's signature for token {request.token.id} is not valid: {problem} "
            "(a mistyped token, or not the cluster that made it)"
        )
    verified = APIClient(request.server, ca_pem=ca_pem, timeout=timeout)
    try:
        verified.get(CLUSTER_INFO_PATH)
    except APIError as exc:
        raise JoinError(
            f"the server is not verified by the cluster's CA ({found}): {exc}"
        ) from None
    return Discovered(ca_pem, found)


def _fetch(client: APIClient, server: str) -> Any:
    try:
        return client.get(CLUSTER_INFO_PATH)
    except APIError as exc:
        if exc.status in (401, 403):
            raise JoinError(
                f"{server} refuses to show kube-public/cluster-info to a joining node "
                f"({exc}): is it a k4sinit controller?"
            ) from None
        if exc.status == 404:
            raise JoinError(
                f"{server} has no kube-public/cluster-info yet (the controller publishes "
                "it once its manifests role is ready)"
            ) from None
        raise JoinError(str(exc)) from None


def _ca_of(kubeconfig: str, where: str, *, files: bool = False) -> bytes:
    """The CA certificate (PEM) of a kubeconfig's first cluster; JoinError if none.

    Only ``certificate-authority-data``, unless ``files``: a kubeconfig from
    the network must not make k4sinit read a local file of its choosing.
    """
    try:
        cluster = yaml.safe_load(kubeconfig)["clusters"][0]["cluster"]
        if "certificate-authority-data" in cluster or not files:
            ca_pem = base64.b64decode(cluster["certificate-authority-data"], validate=True)
        else:
            ca_pem = Path(cluster["certificate-authority"]).read_bytes()
        ca_hash(ca_pem)  # is it a certificate?
    except OSError as exc:
        raise JoinError(f"{where}: its CA file: {exc.strerror}: {exc.filename}") from None
    except (yaml.YAMLError, LookupError, TypeError, ValueError):
        raise JoinError(f"{where}: no readable CA certificate in its kubeconfig") from None
    return ca_pem


def write_join_files(node: NodeSettings, request: JoinRequest, ca_pem: bytes) -> list[str]:
    """Write ``ca.crt`` (0644) and the bootstrap kubeconfig (0600, it holds the token).

    Each file atomically. Returns the paths. Raises OSError.
    """
    paths = [node.pki("ca.crt"), node.kubeconfig(kubelet.BOOTSTRAP_KUBECONFIG)]
    write_atomic(Path(paths[0]), ca_pem, CERT_MODE)
    text = kubelet.bootstrap_kubeconfig_text(node, request.server, str(request.token))
    write_atomic(Path(paths[1]), text.encode(), KEY_MODE)
    return paths


def join(node: NodeSettings) -> str:
    """Join as the node's settings say (blocking); returns what was done, for the reason.

    Raises :class:`JoinError` (also for a file that cannot be written or read).
    """
    request = JoinRequest.of(node)
    try:
        if request is None:
            assert node.bootstrap_kubeconfig is not None  # checked by the config
            source = node.bootstrap_kubeconfig
            ca_pem = _ca_of(_read(source), source, files=True)
            write_atomic(Path(node.pki("ca.crt")), ca_pem, CERT_MODE)
            return f"the CA {ca_hash(ca_pem)} of {source} in {node.pki('ca.crt')}"
        discovered = discover(request)
        paths = write_join_files(node, request, discovered.ca_pem)
    except OSError as exc:
        raise JoinError(f"cannot write {exc.filename}: {exc.strerror}") from None
    return f"joined {request.server} (CA {discovered.ca_hash}): {', '.join(paths)}"


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError as exc:
        raise JoinError(f"cannot read {path}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise JoinError(f"{path}: not a text file") from None


class NodeJoin(BuiltinCondition):
    """A worker's ``pki``: the join, once the network is ready; a :class:`~k4sinit.core.spec.Dependency`."""

    name = PKI

    def __init__(
        self,
        settings: NodeSettings,
        network: NodeNetwork,
        log: Any,
        *,
        rng: random.Random | None = None,
        attempt: Callable[[NodeSettings], str] | None = None,
    ) -> None:
        """``attempt`` (tests) stands in for :func:`join`; ``rng`` spreads the retries."""
        super().__init__("waiting for the network")
        self._settings = settings
        self._network = network
        self._log = log.bind(service=PKI)
        self._rng = rng or random.Random()
        self._attempt = attempt or join
        self.attempts = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Wait for the network, then join, retrying with backoff until it succeeds.

        Cancellation (the node stopping) ends the wait or the sleep; a request
        in flight in its thread is abandoned (it ends by its own timeout).
        """
        task_status.started()
        while not self._network.ready:
            await self._network.changed()
        request = JoinRequest.of(self._settings)
        if request is not None and request.ca_hash is None:
            self._log.warning(
                "joining without a CA hash: the token's signature alone vouches for the CA",
                server=request.server,
                hint="a join token (k4sinit token create) pins the CA",
            )
        while True:
            self.attempts += 1
            try:
                done = await trio.to_thread.run_sync(
                    self._attempt, self._settings, abandon_on_cancel=True
                )
            except JoinError as exc:
                delay = backoff_delay(RETRY, self.attempts + 1, self._rng.random())
                reason = f"cannot join: {exc} (attempt {self.attempts}, again in {delay:.0f} s)"
                self._set(False, reason)
                self._log.error(
                    "join failed", error=str(exc), attempt=self.attempts, retry_in=round(delay, 1)
                )
                await trio.sleep(delay)
                continue
            self._log.info("join: " + done)
            self._set(True, done)
            return


def node_identity(settings: NodeSettings, network: NodeNetwork, log: Any) -> NodePKI | NodeJoin:
    """The node's ``pki`` built-in: a worker joins, every other profile makes the PKI."""
    if settings.profile is Profile.WORKER:
        return NodeJoin(settings, network, log)
    return NodePKI(settings, network, log)
