"""``k4sinit pod-network`` (k4sinit/node/routes.py): what the Nodes ask for, and how it is kept.

The loop runs against a scripted Node source and a recording host; the apiserver
side against a small HTTPS stand-in (list in pages, a chunked watch); the netlink
side in a network namespace of the test's own.
"""

from __future__ import annotations

import base64
import ctypes
import errno
import ipaddress
import json
import os
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml

from k4sinit.core.netspec import IPAddress, IPNetwork
from k4sinit.node import routes
from k4sinit.node.apiclient import APIError
from k4sinit.node.routes import NodeRoute, PodNetwork

from .certs import CA
from .fakeapi import https_server

CLUSTER = ipaddress.ip_network("10.244.0.0/16")
_T = TypeVar("_T")


def a_node(name: str, cidr: str | None, address: str | None, rv: str = "1") -> dict[str, Any]:
    node: dict[str, Any] = {
        "metadata": {"name": name, "resourceVersion": rv},
        "spec": {} if cidr is None else {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {"addresses": [{"type": "Hostname", "address": name}]},
    }
    if address is not None:
        node["status"]["addresses"].insert(0, {"type": "InternalIP", "address": address})
    return node


def net(text: str) -> IPNetwork:
    return ipaddress.ip_network(text)


def addr(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


# --- what the Nodes ask for ----------------------------------------------------------


def test_a_node_gives_its_pod_range_and_internal_address() -> None:
    assert routes.node_route(a_node("w1", "10.244.1.0/24", "192.168.44.11")) == NodeRoute(
        net("10.244.1.0/24"), addr("192.168.44.11")
    )
    assert routes.node_route(a_node("w1", None, None)) == NodeRoute(None, None)
    # Only podCIDRs (dual-stack order), garbage, and an address of the other family.
    only_list = {"spec": {"podCIDRs": ["nonsense", "fd00:10::/64"]}, "status": {}}
    assert routes.node_route(only_list) == NodeRoute(net("fd00:10::/64"), None)
    mixed = a_node("w1", "10.244.1.0/24", "fd00::11")
    mixed["status"]["addresses"].append({"type": "InternalIP", "address": "192.168.44.11"})
    assert routes.node_route(mixed).address == addr("192.168.44.11")


def test_routes_go_to_every_other_node_that_has_a_range_and_an_address() -> None:
    nodes = {
        "controller": NodeRoute(net("10.244.0.0/24"), addr("192.168.44.10")),
        "worker-1": NodeRoute(net("10.244.1.0/24"), addr("192.168.44.11")),
        "worker-2": NodeRoute(None, addr("192.168.44.12")),  # not given a range yet
        "worker-3": NodeRoute(net("10.244.3.0/24"), None),  # no address yet
    }
    assert routes.wanted_routes(nodes, "worker-1") == {net("10.244.0.0/24"): addr("192.168.44.10")}
    assert list(routes.wanted_routes(nodes, "worker-2")) == [
        net("10.244.0.0/24"),
        net("10.244.1.0/24"),
    ]


# --- the loop, with a scripted source and a recording host ----------------------------------


class RecordingHost:
    """The node's side, in memory; ``fail`` maps a destination to the errno its route gets."""

    def __init__(self) -> None:
        self.table: dict[IPNetwork, IPAddress | None] = {}
        self.conflist: str | None = None
        self.rules: list[tuple[IPNetwork, IPNetwork]] = []
        self.calls: list[str] = []
        self.fail: dict[IPNetwork, int] = {}

    def routes(self) -> dict[IPNetwork, IPAddress | None]:
        return dict(self.table)

    def set_route(self, destination: IPNetwork, gateway: IPAddress) -> None:
        if destination in self.fail:
            code = self.fail[destination]
            raise OSError(code, os.strerror(code))
        self.calls.append(f"set {destination} {gateway}")
        self.table[destination] = gateway

    def delete_route(self, destination: IPNetwork) -> None:
        self.calls.append(f"del {destination}")
        del self.table[destination]

    def masquerade(self, pods: IPNetwork, cluster: IPNetwork) -> None:
        if (pods, cluster) not in self.rules:
            self.rules.append((pods, cluster))

    def write_conflist(self, text: str) -> bool:
        if text == self.conflist:
            return False
        self.conflist = text
        self.calls.append("conflist")
        return True


class ScriptedSource:
    """A list, then one scripted watch per round (an exception ends a round with it)."""

    def __init__(self, items: list[dict[str, Any]], watches: list[list[Any]]) -> None:
        self.items = items
        self.watches = watches
        self.lists = 0
        self.watched_from: list[str] = []

    def list(self) -> tuple[list[dict[str, Any]], str]:
        self.lists += 1
        return self.items, "100"

    def watch(self, resource_version: str) -> Iterator[dict[str, Any]]:
        self.watched_from.append(resource_version)
        for event in self.watches.pop(0) if self.watches else []:
            if isinstance(event, Exception):
                raise event
            yield event


def pod_network(source: ScriptedSource, host: RecordingHost, me: str = "worker-1") -> Any:
    said: list[str] = []
    slept: list[float] = []
    network = PodNetwork(
        node=me, cluster_cidr=CLUSTER, source=source, host=host, say=said.append, sleep=slept.append
    )
    return network, said, slept


def test_the_own_range_gives_the_conflist_and_the_rule_and_others_get_routes() -> None:
    host = RecordingHost()
    items = [
        a_node("controller", "10.244.0.0/24", "192.168.44.10"),
        a_node("worker-1", None, "192.168.44.11"),
    ]
    given = a_node("worker-1", "10.244.1.0/24", "192.168.44.11", rv="101")
    source = ScriptedSource(items, [[{"type": "MODIFIED", "object": given}]])
    network, said, _ = pod_network(source, host)
    network.run(rounds=1)
    assert host.table == {net("10.244.0.0/24"): addr("192.168.44.10")}
    assert said[:2] == [
        "waiting for node worker-1 to be given a podCIDR",
        "route to 10.244.0.0/24 via 192.168.44.10 (node controller)",
    ]
    assert "this node's podCIDR is 10.244.1.0/24: CNI conflist written" in said
    assert host.conflist is not None
    conflist = json.loads(host.conflist)
    bridge = conflist["plugins"][0]
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.244.1.0/24"}]]
    assert bridge["ipMasq"] is False  # pods reach pods elsewhere by their own addresses
    assert host.rules == [(net("10.244.1.0/24"), CLUSTER)]
    assert source.watched_from == ["100"]


def test_a_change_that_does_not_matter_touches_nothing() -> None:
    host = RecordingHost()
    items = [
        a_node("controller", "10.244.0.0/24", "192.168.44.10"),
        a_node("worker-1", "10.244.1.0/24", "192.168.44.11"),
    ]
    heartbeat = a_node("controller", "10.244.0.0/24", "192.168.44.10", rv="102")
    source = ScriptedSource(items, [[{"type": "MODIFIED", "object": heartbeat}] * 3])
    network, _, _ = pod_network(source, host)
    network.run(rounds=1)
    assert host.calls == ["conflist", "set 10.244.0.0/24 192.168.44.10"]


def test_a_node_gone_takes_its_route_and_stale_routes_of_ours_go_too() -> None:
    host = RecordingHost()
    host.table[net("10.244.9.0/24")] = addr("192.168.44.19")  # left by an earlier run
    items = [
        a_node("worker-1", "10.244.1.0/24", "192.168.44.11"),
        a_node("worker-2", "10.244.2.0/24", "192.168.44.12"),
    ]
    source = ScriptedSource(items, [[{"type": "DELETED", "object": items[1]}]])
    network, said, _ = pod_network(source, host)
    network.run(rounds=1)
    assert host.table == {}
    assert "del 10.244.9.0/24" in host.calls
    assert host.calls[-1] == "del 10.244.2.0/24"
    assert said[-1] == "route to 10.244.2.0/24 removed: no node has that podCIDR any more"


def test_a_refused_route_is_said_once_and_the_others_are_still_made() -> None:
    host = RecordingHost()
    host.fail[net("10.244.0.0/24")] = errno.ENETUNREACH
    items = [
        a_node("controller", "10.244.0.0/24", "10.9.9.9"),  # not on this node's network
        a_node("worker-1", "10.244.1.0/24", "192.168.44.11"),
        a_node("worker-2", "10.244.2.0/24", "192.168.44.12"),
    ]
    source = ScriptedSource(items, [[], []])
    network, said, _ = pod_network(source, host)
    network.run(rounds=2)  # the second round checks everything again
    assert host.table == {net("10.244.2.0/24"): addr("192.168.44.12")}
    refused = [line for line in said if line.startswith("no route to 10.244.0.0/24")]
    assert refused == [
        "no route to 10.244.0.0/24 via 10.9.9.9 (node controller): Network is unreachable:"
        " host-gw needs the nodes on one L2 network"
    ]


def test_a_range_outside_the_cluster_is_refused() -> None:
    host = RecordingHost()
    source = ScriptedSource([a_node("worker-1", "10.1.0.0/24", "192.168.44.11")], [[]])
    network, said, _ = pod_network(source, host)
    network.run(rounds=1)
    assert host.conflist is None and host.rules == []
    assert said == ["node worker-1's podCIDR 10.1.0.0/24 is not in 10.244.0.0/16"]


def test_an_expired_watch_lists_again_and_errors_back_off() -> None:
    host = RecordingHost()
    items = [a_node("worker-1", "10.244.1.0/24", "192.168.44.11")]
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}
    bookmark = {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "150"}}}
    source = ScriptedSource(
        items,
        [
            [gone],
            [APIError("cannot reach https://192.168.44.10:6443: Connection refused")],
            [APIError("cannot reach https://192.168.44.10:6443: Connection refused")],
            [bookmark],
            [],
        ],
    )
    network, said, slept = pod_network(source, host)
    network.run(rounds=5)
    assert source.lists == 4  # the first, after the 410, after each error
    assert source.watched_from == ["100", "100", "100", "100", "150"]  # resumed at the bookmark
    assert slept == [1.0, 2.0]
    errors = [line for line in said if "Connection refused" in line]
    assert len(errors) == 1  # the same problem is said once


# --- the apiserver side ----------------------------------------------------------------


class FakeNodes:
    """An HTTPS stand-in for /api/v1/nodes: pages of ``page`` items, one scripted watch."""

    def __init__(self, directory: Path, nodes: list[dict[str, Any]]) -> None:
        self.ca = CA.create(directory)
        self.serving = self.ca.issue("apiserver", server=True)
        self.client = self.ca.issue("system:node:worker-1", server=False)
        self.nodes = nodes
        self.events: list[dict[str, Any]] = []
        self.watch_status = 200
        self.requests: list[tuple[str, str | None]] = []
        self.url = ""


def _nodes_handler(fake: FakeNodes) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            cert = self.connection.getpeercert()
            client = dict(x[0] for x in cert["subject"])["commonName"] if cert else None
            fake.requests.append((self.path, client))
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            if client is None:
                self._json(401, {"kind": "Status", "code": 401, "message": "Unauthorized"})
            elif query.get("watch") == "1":
                self._watch()
            else:
                limit = int(query.get("limit", "500"))
                start = int(query.get("continue", "0"))
                page = fake.nodes[start : start + limit]
                more = start + limit < len(fake.nodes)
                meta = {"resourceVersion": "100", "continue": str(start + limit) if more else ""}
                self._json(200, {"kind": "NodeList", "metadata": meta, "items": page})

        def _json(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _watch(self) -> None:
            if fake.watch_status != 200:
                self._json(
                    fake.watch_status, {"kind": "Status", "message": "forbidden by the test"}
                )
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for event in fake.events:
                line = json.dumps(event).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.write(b"0\r\n\r\n")

    return Handler


@pytest.fixture
def fake_nodes(tmp_path: Path) -> Iterator[FakeNodes]:
    nodes = [a_node(f"n{i}", f"10.244.{i}.0/24", f"192.168.44.{10 + i}") for i in range(5)]
    (tmp_path / "pki").mkdir()
    fake = FakeNodes(tmp_path / "pki", nodes)
    with https_server(_nodes_handler(fake), fake.serving, fake.ca.cert_file) as url:
        fake.url = url
        yield fake


def kubeconfig(fake: FakeNodes, path: Path, *, embedded: bool) -> Path:
    """The node's kubeconfig: the certificates embedded (k4sinit's PKI) or as files
    relative to it (kubelet's after its TLS bootstrap)."""

    def b64(name: str) -> str:
        return base64.b64encode(Path(name).read_bytes()).decode()

    if embedded:
        cluster = {"server": fake.url, "certificate-authority-data": b64(fake.ca.cert_file)}
        user = {
            "client-certificate-data": b64(fake.client.cert),
            "client-key-data": b64(fake.client.key),
        }
    else:
        base = path.parent
        cluster = {
            "server": fake.url,
            "certificate-authority": os.path.relpath(fake.ca.cert_file, base),
        }
        user = {"client-certificate": fake.client.cert, "client-key": fake.client.key}
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "k", "cluster": cluster}],
        "users": [{"name": "u", "user": user}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
        "current-context": "c",
    }
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize("embedded", [True, False])
def test_the_nodes_are_listed_in_pages_with_the_kubeconfigs_identity(
    fake_nodes: FakeNodes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, embedded: bool
) -> None:
    monkeypatch.setattr(routes, "PAGE", 2)
    scratch = tmp_path / "scratch"
    scratch.mkdir(mode=0o700)
    source = routes.APINodes(
        str(kubeconfig(fake_nodes, tmp_path / "k.conf", embedded=embedded)), str(scratch)
    )
    items, version = source.list()
    assert [i["metadata"]["name"] for i in items] == ["n0", "n1", "n2", "n3", "n4"]
    assert version == "100"
    assert [path for path, _ in fake_nodes.requests] == [
        "/api/v1/nodes?limit=2",
        "/api/v1/nodes?limit=2&continue=2",
        "/api/v1/nodes?limit=2&continue=4",
    ]
    assert {client for _, client in fake_nodes.requests} == {"system:node:worker-1"}
    if embedded:
        assert sorted(os.listdir(scratch)) == [
            "certificate-authority",
            "client-certificate",
            "client-key",
        ]
        assert (scratch / "client-key").stat().st_mode & 0o777 == 0o600


def test_a_watch_streams_events_until_the_server_ends_it(
    fake_nodes: FakeNodes, tmp_path: Path
) -> None:
    fake_nodes.events = [
        {"type": "ADDED", "object": a_node("n9", "10.244.9.0/24", "192.168.44.19", rv="120")},
        {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "130"}}},
    ]
    source = routes.APINodes(
        str(kubeconfig(fake_nodes, tmp_path / "k.conf", embedded=True)), str(tmp_path)
    )
    events = list(source.watch("100"))
    assert [e["type"] for e in events] == ["ADDED", "BOOKMARK"]
    path = fake_nodes.requests[-1][0]
    assert path.startswith("/api/v1/nodes?watch=1&allowWatchBookmarks=true&timeoutSeconds=60")
    assert path.endswith("&resourceVersion=100")
    fake_nodes.watch_status = 403
    with pytest.raises(APIError, match=r"watch nodes: 403 .*forbidden by the test") as caught:
        list(source.watch("100"))
    assert caught.value.status == 403


def test_an_unusable_kubeconfig_is_named(tmp_path: Path) -> None:
    with pytest.raises(routes.KubeconfigError, match=r"kubeconfig .*missing\.conf"):
        routes.load_credentials(str(tmp_path / "missing.conf"), str(tmp_path))
    (tmp_path / "empty.conf").write_text("apiVersion: v1\nkind: Config\n")
    with pytest.raises(routes.KubeconfigError, match="cannot use it"):
        routes.load_credentials(str(tmp_path / "empty.conf"), str(tmp_path))


# --- the node's side -------------------------------------------------------------------


def in_netns(name: str, work: Callable[[], _T]) -> _T:
    """``work()`` in a thread moved into network namespace ``name``; its result or error."""
    result: list[Any] = []

    def run() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
        try:
            assert libc.setns(fd, 0x40000000) == 0, os.strerror(ctypes.get_errno())
        finally:
            os.close(fd)
        try:
            result.append(work())
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=60)
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]  # type: ignore[no-any-return]


@pytest.fixture
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root (ip netns)")
    name = f"k4sinit-test-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for cmd in (
            "link add v0 type veth peer name v1",
            "addr add 192.168.44.11/24 dev v0",
            "link set v0 up",
            "link set v1 up",
        ):
            subprocess.run(["ip", "-n", name, *cmd.split()], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)


def test_routes_are_made_found_and_removed_by_their_protocol(netns: str, tmp_path: Path) -> None:
    host = routes.NodeHost(str(tmp_path / "net.d" / "10-k4sinit.conflist"))
    destination, gateway = net("10.244.0.0/24"), addr("192.168.44.10")
    in_netns(netns, lambda: host.set_route(destination, gateway))
    subprocess.run(
        ["ip", "-n", netns, "route", "add", "10.1.0.0/16", "via", "192.168.44.1"], check=True
    )
    assert in_netns(netns, host.routes) == {destination: gateway}  # not the other route
    shown = subprocess.run(
        ["ip", "-n", netns, "route", "show", "proto", str(routes.PROTOCOL)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert shown.split()[:3] == ["10.244.0.0/24", "via", "192.168.44.10"]
    with pytest.raises(OSError) as caught:
        in_netns(netns, lambda: host.set_route(net("10.244.2.0/24"), addr("10.9.9.9")))
    assert caught.value.errno == errno.ENETUNREACH
    in_netns(netns, lambda: host.delete_route(destination))
    assert in_netns(netns, host.routes) == {}


def test_the_conflist_is_written_once_and_atomically(tmp_path: Path) -> None:
    host = routes.NodeHost(str(tmp_path / "net.d" / "10-k4sinit.conflist"))
    assert host.write_conflist("{}\n")
    assert not host.write_conflist("{}\n")
    assert os.listdir(tmp_path / "net.d") == ["10-k4sinit.conflist"]


def test_the_masquerade_rule_is_added_only_when_missing() -> None:
    calls: list[list[str]] = []

    def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        missing = "-C" in argv and len(calls) == 1
        return subprocess.CompletedProcess(argv, 1 if missing else 0, "", "")

    host = routes.NodeHost("/nonexistent/conflist", run=run)
    host.masquerade(net("10.244.1.0/24"), CLUSTER)
    host.masquerade(net("10.244.1.0/24"), CLUSTER)
    rule = [
        "-s",
        "10.244.1.0/24",
        "!",
        "-d",
        "10.244.0.0/16",
        "-m",
        "comment",
        "--comment",
        routes.COMMENT,
        "-j",
        "MASQUERADE",
    ]
    base = ["iptables", "-w", "5", "-t", "nat"]
    assert calls == [
        [*base, "-C", "POSTROUTING", *rule],
        [*base, "-A", "POSTROUTING", *rule],
        [*base, "-C", "POSTROUTING", *rule],
    ]
