"""``k4sinit pod-network``: a host-gateway pod network, the pod-network role's program.

What flannel's host-gw backend does, for the role :mod:`k4sinit.services.pod_network`
describes, in one small process per node::

    list the Nodes (GET /api/v1/nodes, in pages), then watch them from that
    resourceVersion (?watch=1, 60 s at a time, resumed; a 410 Gone lists again)
      this node's spec.podCIDR   -> the CNI conflist for it, written once, atomically
                                    (containerd loads it; kubelet then turns Ready),
                                    and one masquerade rule: pods -> outside the pod range
      every other Node with a podCIDR and an InternalIP
                                 -> ip route replace <podCIDR> via <InternalIP> proto 75
      routes of protocol 75 no Node wants any more
                                 -> deleted
    at the end of every watch (a minute), the routes and the rule are checked again

The routes are marked with their own routing protocol (:data:`PROTOCOL`, 75: ``ip
route show proto 75``), so the program tells its routes from everyone else's and
finds them again after a restart. A route the kernel refuses (the InternalIP is
not on this node's network: host-gw needs one L2 network) is reported, once per
change, and the others still made. The conflist has no masquerade of its own
(:func:`k4sinit.services.containerd.bridge_conflist`): pods reach pods on other
nodes with their own addresses; only traffic from this node's pods to outside
the cluster's pod range is masqueraded (``iptables -t nat ... POSTROUTING``).

Credentials come from a kubeconfig (the kubelet's: ``system:node:<name>``, which
the Node authorizer lets read every Node), read again at every connection, so
a rotated client certificate is picked up. An unreachable or refusing
apiserver is reported and retried (1 s doubling to 30 s): the routes already
made stay, so pods keep talking while the control plane is away (a controller
reboot).

It runs as a process of its own, never inside the daemon: there is no reaper
here, so ``subprocess`` may wait for iptables. It blocks, in one thread: a watch
is one long read, and a change is a few netlink calls. SIGTERM ends it (the
default action); routes and rule stay, as kube-proxy leaves its rules.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import errno
import http.client
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

import yaml

from k4sinit.core.netspec import IPAddress, IPNetwork
from k4sinit.node.apiclient import APIClient, APIError
from k4sinit.services.containerd import bridge_conflist

#: The routes' rtm_protocol ("K"): unassigned in iproute2's rt_protos.
PROTOCOL = 75
MAIN_TABLE = 254
WATCH_SECONDS = 60  # the server ends each watch after this; then everything is checked again
PAGE = 500  # Nodes per list request
MAX_EVENT = 1 << 20  # bytes: one watch event (a Node) is a few KiB
RETRY_FIRST, RETRY_MAX = 1.0, 30.0
COMMENT = "k4sinit pod-network: pods leaving the pod range"

Say = Callable[[str], None]


class KubeconfigError(ValueError):
    """The kubeconfig cannot be used: unreadable, or missing what a client needs."""


class Expired(Exception):
    """The watch's resourceVersion is too old (410 Gone): list again."""


# --- what the Nodes ask for ----------------------------------------------------------


@dataclass(frozen=True)
class NodeRoute:
    """What one Node contributes: its pod range and the address it is reached at."""

    pod_cidr: IPNetwork | None
    address: IPAddress | None


def node_route(node: Mapping[str, Any]) -> NodeRoute:
    """The Node object's ``spec.podCIDR`` (else its first ``podCIDRs``) and its first
    ``InternalIP``, each None when absent or malformed."""
    spec = node.get("spec") or {}
    cidrs = [spec.get("podCIDR"), *(spec.get("podCIDRs") or [])]
    pod_cidr = next((n for n in map(_network, cidrs) if n is not None), None)
    address = None
    for item in (node.get("status") or {}).get("addresses") or []:
        if item.get("type") == "InternalIP":
            with contextlib.suppress(ValueError, TypeError):
                candidate = ipaddress.ip_address(item.get("address"))
                if pod_cidr is None or candidate.version == pod_cidr.version:
                    address = candidate
                    break
    return NodeRoute(pod_cidr, address)


def _network(text: object) -> IPNetwork | None:
    if not isinstance(text, str):
        return None
    try:
        return ipaddress.ip_network(text)
    except ValueError:
        return None


def _inside(inner: IPNetwork, outer: IPNetwork) -> bool:
    return (
        inner.version == outer.version
        and inner.network_address in outer
        and inner.broadcast_address in outer
    )


def wanted_routes(nodes: Mapping[str, NodeRoute], me: str) -> dict[IPNetwork, IPAddress]:
    """podCIDR -> gateway for every Node but ``me`` that has both (sorted by range)."""
    routes = {
        r.pod_cidr: r.address
        for name, r in nodes.items()
        if name != me and r.pod_cidr is not None and r.address is not None
    }
    return dict(sorted(routes.items(), key=lambda item: (item[0].version, item[0])))


# --- the apiserver -------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """A kubeconfig's current context: server, CA, client certificate files."""

    server: str
    ca_pem: bytes
    cert_file: str
    key_file: str


def load_credentials(path: str, scratch: str) -> Credentials:
    """The current context of kubeconfig ``path``; ``*-data`` fields are written into
    the private directory ``scratch`` (ssl loads certificates from files only).
    Relative file names are the kubeconfig's directory's. Raises :class:`KubeconfigError`."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise KubeconfigError(f"kubeconfig {path}: {exc}") from None
    try:
        current = doc["current-context"]
        context = _named(doc, "contexts", current)["context"]
        cluster = _named(doc, "clusters", context["cluster"])["cluster"]
        user = _named(doc, "users", context["user"])["user"]
        base = os.path.dirname(path)
        ca = _material(cluster, "certificate-authority", base, scratch)
        with open(ca, "rb") as f:
            ca_pem = f.read()
        return Credentials(
            server=cluster["server"],
            ca_pem=ca_pem,
            cert_file=_material(user, "client-certificate", base, scratch),
            key_file=_material(user, "client-key", base, scratch),
        )
    except (KeyError, TypeError, ValueError, OSError) as exc:
        raise KubeconfigError(f"kubeconfig {path}: cannot use it ({exc!r})") from None


def _named(doc: Any, section: str, name: str) -> Any:
    return next(item for item in doc[section] if item["name"] == name)


def _material(entry: Mapping[str, Any], key: str, base: str, scratch: str) -> str:
    """The file holding ``key`` (``client-key``): ``<key>-data`` written out, or ``<key>``."""
    data = entry.get(f"{key}-data")
    if data is not None:
        target = os.path.join(scratch, key)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(base64.b64decode(data))
        return target
    return os.path.join(base, entry[key])


class NodeSource(Protocol):
    """Where the Nodes come from (:class:`APINodes`; a fake in tests)."""

    def list(self) -> tuple[list[dict[str, Any]], str]:
        """Every Node and the list's resourceVersion."""
        ...

    def watch(self, resource_version: str) -> Iterator[dict[str, Any]]:
        """Watch events from ``resource_version`` until the server ends the watch."""
        ...


class APINodes:
    """The Nodes from the apiserver, with the credentials of a kubeconfig (re-read each time)."""

    def __init__(self, kubeconfig: str, scratch: str) -> None:
        self.kubeconfig = kubeconfig
        self.scratch = scratch

    def _client(self, timeout: float) -> APIClient:
        c = load_credentials(self.kubeconfig, self.scratch)
        return APIClient(c.server, c.ca_pem, c.cert_file, c.key_file, timeout=timeout)

    def list(self) -> tuple[list[dict[str, Any]], str]:
        client = self._client(30.0)
        items: list[dict[str, Any]] = []
        token = ""
        while True:
            page = client.get(
                f"/api/v1/nodes?limit={PAGE}" + (f"&continue={quote(token)}" if token else "")
            )
            items += page.get("items") or []
            token = (page.get("metadata") or {}).get("continue") or ""
            if not token:
                return items, page["metadata"]["resourceVersion"]

    def watch(self, resource_version: str) -> Iterator[dict[str, Any]]:
        """Raises APIError when the watch cannot start or breaks off."""
        client = self._client(WATCH_SECONDS + 30.0)  # the read timeout: a silent server
        path = (
            f"/api/v1/nodes?watch=1&allowWatchBookmarks=true&timeoutSeconds={WATCH_SECONDS}"
            f"&resourceVersion={quote(resource_version)}"
        )
        parts = urlsplit(client.server)
        conn = http.client.HTTPSConnection(
            parts.hostname or "",
            parts.port or 443,
            timeout=client.timeout,
            context=client.context(),
        )
        try:
            conn.request(
                "GET", path, headers={"Accept": "application/json", "User-Agent": "k4sinit"}
            )
            response = conn.getresponse()
            if response.status != 200:
                body = response.read(MAX_EVENT).decode(errors="replace").strip()
                raise APIError(f"watch nodes: {response.status} {body[:300]}", response.status)
            while line := response.readline(MAX_EVENT):
                yield json.loads(line)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise APIError(f"watch nodes at {client.server}: {exc!r}") from None
        finally:
            conn.close()


# --- the node's side: routes, rule, conflist -------------------------------------------


class Host(Protocol):
    """What the program changes on the node (:class:`NodeHost`; a recording fake in tests)."""

    def routes(self) -> dict[IPNetwork, IPAddress | None]:
        """The routes of :data:`PROTOCOL` in the main table: destination -> gateway."""
        ...

    def set_route(self, destination: IPNetwork, gateway: IPAddress) -> None: ...

    def delete_route(self, destination: IPNetwork) -> None: ...

    def masquerade(self, pods: IPNetwork, cluster: IPNetwork) -> None:
        """Make sure the masquerade rule for ``pods`` leaving ``cluster`` is there."""
        ...

    def write_conflist(self, text: str) -> bool:
        """Write the CNI conflist unless it already says ``text``; True if written."""
        ...


@contextlib.contextmanager
def _netlink() -> Iterator[Any]:
    """A pyroute2 IPRoute for one batch; its NetlinkError as OSError (errno, message)."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        with IPRoute() as ipr:
            yield ipr
    except NetlinkError as exc:
        raise OSError(exc.code, os.strerror(exc.code)) from None


class NodeHost:
    """The node itself: netlink (pyroute2, a socket per batch), iptables, the conflist."""

    def __init__(self, conflist: str, run: Callable[..., Any] = subprocess.run) -> None:
        self.conflist = Path(conflist)
        self._run = run

    def routes(self) -> dict[IPNetwork, IPAddress | None]:
        found: dict[IPNetwork, IPAddress | None] = {}
        with _netlink() as ipr:
            for family in (socket.AF_INET, socket.AF_INET6):
                for r in ipr.get_routes(family=family):
                    if r["proto"] != PROTOCOL or r.get_attr("RTA_TABLE") != MAIN_TABLE:
                        continue
                    dst = ipaddress.ip_network(f"{r.get_attr('RTA_DST')}/{r['dst_len']}")
                    gateway = r.get_attr("RTA_GATEWAY")
                    found[dst] = None if gateway is None else ipaddress.ip_address(gateway)
        return found

    def set_route(self, destination: IPNetwork, gateway: IPAddress) -> None:
        with _netlink() as ipr:
            ipr.route("replace", dst=str(destination), gateway=str(gateway), proto=PROTOCOL)

    def delete_route(self, destination: IPNetwork) -> None:
        with _netlink() as ipr:
            ipr.route("del", dst=str(destination), proto=PROTOCOL)

    def masquerade(self, pods: IPNetwork, cluster: IPNetwork) -> None:
        iptables = "iptables" if pods.version == 4 else "ip6tables"
        rule = ["-s", str(pods), "!", "-d", str(cluster)]
        rule += ["-m", "comment", "--comment", COMMENT, "-j", "MASQUERADE"]
        base = [iptables, "-w", "5", "-t", "nat"]
        check = self._run([*base, "-C", "POSTROUTING", *rule], capture_output=True, text=True)
        if check.returncode == 0:
            return
        added = self._run([*base, "-A", "POSTROUTING", *rule], capture_output=True, text=True)
        if added.returncode != 0:
            raise OSError(f"{iptables} -A POSTROUTING: {(added.stderr or '').strip()}")

    def write_conflist(self, text: str) -> bool:
        with contextlib.suppress(OSError):
            if self.conflist.read_text() == text:
                return False
        self.conflist.parent.mkdir(parents=True, exist_ok=True)
        # Not *.conflist until complete: containerd watches the directory.
        tmp = self.conflist.with_name(f".{self.conflist.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, self.conflist)
        return True


# --- the loop ------------------------------------------------------------------------


class PodNetwork:
    """Keeps the node's conflist, rule and routes as the Nodes say (see the module docstring).

    :meth:`apply` reconciles once from the Nodes it knows; :meth:`run` lists,
    watches and retries forever (``sleep`` is injectable for tests).
    """

    def __init__(
        self,
        *,
        node: str,
        cluster_cidr: IPNetwork,
        source: NodeSource,
        host: Host,
        say: Say,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.node = node
        self.cluster_cidr = cluster_cidr
        self.source = source
        self.host = host
        self.say = say
        self.sleep = sleep
        self.nodes: dict[str, NodeRoute] = {}
        self._applied: tuple[NodeRoute | None, dict[IPNetwork, IPAddress]] | None = None
        self._reported: dict[str, str] = {}  # a problem's key -> its message, said once

    def apply(self, *, force: bool = False) -> None:
        """Bring the node in line with :attr:`nodes`; skipped when nothing that matters
        changed since the last time, unless ``force``. Never raises for one bad route."""
        mine = self.nodes.get(self.node)
        wanted = wanted_routes(self.nodes, self.node)
        if not force and self._applied == (mine, wanted):
            return
        self._own_range(mine)
        self._routes(wanted)
        self._applied = (mine, wanted)

    def _own_range(self, mine: NodeRoute | None) -> None:
        if mine is None or mine.pod_cidr is None:
            self._report("own", f"waiting for node {self.node} to be given a podCIDR")
            return
        if not _inside(mine.pod_cidr, self.cluster_cidr):
            message = f"node {self.node}'s podCIDR {mine.pod_cidr} is not in {self.cluster_cidr}"
            self._report("own", message)
            return
        if self.host.write_conflist(bridge_conflist(mine.pod_cidr, masquerade=False)):
            self.say(f"this node's podCIDR is {mine.pod_cidr}: CNI conflist written")
        self._reported.pop("own", None)
        try:
            self.host.masquerade(mine.pod_cidr, self.cluster_cidr)
            self._reported.pop("masquerade", None)
        except OSError as exc:
            self._report("masquerade", f"masquerade rule: {exc}")

    def _routes(self, wanted: dict[IPNetwork, IPAddress]) -> None:
        have = self.host.routes()
        for destination in have.keys() - wanted.keys():
            try:
                self.host.delete_route(destination)
                self.say(f"route to {destination} removed: no node has that podCIDR any more")
            except OSError as exc:
                self._report(f"del {destination}", f"removing the route to {destination}: {exc}")
        owners = {r.pod_cidr: name for name, r in self.nodes.items()}
        for destination, gateway in wanted.items():
            if have.get(destination) == gateway:
                continue
            owner = owners.get(destination)
            try:
                self.host.set_route(destination, gateway)
                self.say(f"route to {destination} via {gateway} (node {owner})")
                self._reported.pop(f"route {destination}", None)
            except OSError as exc:
                why = exc.strerror or str(exc)
                if exc.errno == errno.ENETUNREACH:
                    why += ": host-gw needs the nodes on one L2 network"
                self._report(
                    f"route {destination}",
                    f"no route to {destination} via {gateway} (node {owner}): {why}",
                )

    def _report(self, key: str, message: str) -> None:
        if self._reported.get(key) != message:
            self._reported[key] = message
            self.say(message)

    def handle(self, event: Mapping[str, Any]) -> str | None:
        """Take one watch event into :attr:`nodes`; the resourceVersion it carries.
        Raises :class:`Expired` on a 410 ERROR, APIError on any other ERROR."""
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise Expired(obj.get("message", "410 Gone"))
            raise APIError(f"watch nodes: {obj.get('message', obj)}", obj.get("code"))
        meta = obj.get("metadata") or {}
        name = meta.get("name")
        if kind in ("ADDED", "MODIFIED") and name:
            self.nodes[name] = node_route(obj)
        elif kind == "DELETED" and name:
            self.nodes.pop(name, None)
        version = meta.get("resourceVersion")
        return version if isinstance(version, str) else None

    def run(self, rounds: int | None = None) -> None:
        """List, watch, apply; forever (or ``rounds`` watches, for tests)."""
        version: str | None = None
        delay = RETRY_FIRST
        done = 0
        while rounds is None or done < rounds:
            done += 1
            try:
                if version is None:
                    items, version = self.source.list()
                    self.nodes = {i["metadata"]["name"]: node_route(i) for i in items}
                self.apply(force=True)
                for event in self.source.watch(version):
                    version = self.handle(event) or version
                    self.apply()
                delay = RETRY_FIRST
                self._reported.pop("api", None)
            except Expired:
                version = None  # the next round lists again
            except (APIError, KubeconfigError, OSError) as exc:
                self._report("api", f"{exc}; trying again (every {RETRY_MAX:g} s at most)")
                version = None
                self.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)


def main(argv: Sequence[str] | None = None) -> int:
    """``k4sinit pod-network ...``: runs until SIGTERM; 2 on bad arguments."""
    parser = argparse.ArgumentParser(
        prog="k4sinit pod-network",
        description="a host-gateway pod network: the node's CNI config and routes to the others' pods",
    )
    parser.add_argument("--kubeconfig", required=True, help="the node's (kubelet's)")
    parser.add_argument("--node", required=True, help="this node's name")
    parser.add_argument(
        "--cluster-cidr", required=True, type=ipaddress.ip_network, help="the pod range"
    )
    parser.add_argument("--cni-conf", required=True, help="the conflist to write")
    args = parser.parse_args(argv)

    def say(line: str) -> None:
        print(line, flush=True)

    # SIGTERM as an exit, so the scratch directory (key material) is removed.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    with tempfile.TemporaryDirectory(prefix="k4sinit-pod-network-") as scratch:
        network = PodNetwork(
            node=args.node,
            cluster_cidr=args.cluster_cidr,
            source=APINodes(args.kubeconfig, scratch),
            host=NodeHost(args.cni_conf),
            say=say,
        )
        try:
            network.run()
        except KeyboardInterrupt:
            return 130
    return 0  # not reached: run() never returns


if __name__ == "__main__":
    sys.exit(main())
