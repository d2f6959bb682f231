"""A stand-in kube-apiserver for unit tests: HTTPS on 127.0.0.1, a few REST paths.

It serves what k4sinit asks of a real one (tests/test_join_cluster.py talks to
the real thing): ``kube-public/cluster-info`` (to anyone, as the apiserver
k4sinit configures), and the bootstrap-token Secrets of ``kube-system``
(create, list, delete) to clients with a certificate of its CA, as the
admin. It signs cluster-info for each token Secret as the controller-manager's
bootstrapsigner does (:func:`k4sinit.node.tokens.jws_sign`). Served from a
thread; every request is recorded.
"""

from __future__ import annotations

import base64
import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from k4sinit.core.jointoken import BootstrapToken
from k4sinit.node.tokens import SECRETS_PATH, jws_sign
from k4sinit.services.apiserver import CLUSTER_INFO_PATH
from k4sinit.services.manifests import cluster_info

from .certs import CA, CertFiles


class FakeAPIServer:
    """See the module docstring; ``url`` once started (:func:`fake_apiserver`)."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.ca = CA.create(directory)
        self.ca_pem = Path(self.ca.cert_file).read_bytes()
        self.serving = self.ca.issue("apiserver", server=True)
        self.admin: CertFiles = self.ca.issue("admin", server=False)
        self.url = ""
        self.secrets: dict[str, dict[str, Any]] = {}  # name -> Secret, as stored
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, client CN
        self.cluster_info_status = 200  # another status: cluster-info answers with it
        self.signed = True  # False: cluster-info carries no signatures (as if not yet signed)
        self.lock = threading.Lock()

    def cluster_info(self) -> dict[str, Any]:
        """The ConfigMap, signed for every token Secret (as the bootstrapsigner does)."""
        config_map = cluster_info(self.url, self.ca_pem)
        content = config_map["data"]["kubeconfig"]
        with self.lock:
            stored = list(self.secrets.values())
        if self.signed:
            for secret in stored:
                data = secret["stringData"]
                token = BootstrapToken(data["token-id"], data["token-secret"])
                config_map["data"][f"jws-kubeconfig-{token.id}"] = jws_sign(content, token)
        return config_map

    def stored(self, secret: dict[str, Any]) -> dict[str, Any]:
        """A Secret as the apiserver lists it: ``stringData`` as base64 ``data``."""
        data = {k: base64.b64encode(v.encode()).decode() for k, v in secret["stringData"].items()}
        return {k: v for k, v in secret.items() if k != "stringData"} | {"data": data}


def _handler(fake: FakeAPIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _client(self) -> str | None:
            cert = self.connection.getpeercert()
            if not cert:
                return None
            return str(dict(x[0] for x in cert["subject"])["commonName"])

        def _answer(self, status: int, body: Any) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _status(self, code: int, message: str) -> None:
            self._answer(code, {"kind": "Status", "status": "Failure", "message": message})

        def _route(self, method: str) -> None:
            client = self._client()
            fake.requests.append((method, self.path, client))
            if method == "GET" and self.path == CLUSTER_INFO_PATH:
                if fake.cluster_info_status != 200:
                    self._status(fake.cluster_info_status, "refused by the test")
                else:
                    self._answer(200, fake.cluster_info())
                return
            if client != "admin":
                self._status(401, "Unauthorized")
                return
            if method == "GET" and self.path.startswith(SECRETS_PATH + "?"):
                with fake.lock:
                    items = [fake.stored(s) for s in fake.secrets.values()]
                self._answer(200, {"kind": "SecretList", "items": items})
            elif method == "POST" and self.path == SECRETS_PATH:
                length = int(self.headers["Content-Length"])
                secret = json.loads(self.rfile.read(length))
                name = secret["metadata"]["name"]
                with fake.lock:
                    taken = name in fake.secrets
                    if not taken:
                        fake.secrets[name] = secret
                if taken:
                    self._status(409, f'secrets "{name}" already exists')
                else:
                    self._answer(201, fake.stored(secret))
            elif method == "DELETE" and self.path.startswith(SECRETS_PATH + "/"):
                name = self.path.rpartition("/")[2]
                with fake.lock:
                    secret = fake.secrets.pop(name, None)
                if secret is None:
                    self._status(404, f'secrets "{name}" not found')
                else:
                    self._answer(200, {"kind": "Status", "status": "Success"})
            else:
                self._status(404, "the server could not find the requested resource")

        def do_GET(self) -> None:
            self._route("GET")

        def do_POST(self) -> None:
            self._route("POST")

        def do_DELETE(self) -> None:
            self._route("DELETE")

    return Handler


@contextmanager
def fake_apiserver(directory: Path) -> Iterator[FakeAPIServer]:
    """A started :class:`FakeAPIServer`; shut down (its thread joined) on exit."""
    fake = FakeAPIServer(directory)
    with https_server(_handler(fake), fake.serving, fake.ca.cert_file) as url:
        fake.url = url
        yield fake


@contextmanager
def https_server(
    handler: type[BaseHTTPRequestHandler], serving: CertFiles, ca_file: str
) -> Iterator[str]:
    """``handler`` served over HTTPS on 127.0.0.1 from a thread; its URL. A client
    certificate of ``ca_file`` is asked for, not required. Shut down on exit."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(serving.cert, serving.key)
    ctx.load_verify_locations(ca_file)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()
