#!/usr/bin/env python3
"""Test stand-ins for kube-apiserver, kube-scheduler, kube-controller-manager, kubelet and kine.

NOT the real binaries. One multicall program, dispatched by the name it is run as
(``tests/standins/bin/<role>`` are symlinks to this file, as u-root/k4s ship role
symlinks to one binary). A script loses ``argv[0]`` when the kernel runs it through its
``#!`` line, so the role is the basename of the path Python was handed; the environment
variable ``K4SINIT_STANDIN_ROLE`` overrides it (for a launcher that execs this file
directly).

Each role accepts exactly the flags listed in ``flags/<role>.txt`` (Kubernetes v1.31,
kine 0.13.x), reads the files it is pointed at, and serves the real role's health
endpoints with the TLS material it was given:

  kube-apiserver           HTTPS --bind-address:--secure-port (0.0.0.0:6443); with
                           --client-ca-file every connection must present a client
                           certificate signed by it (CERT_REQUIRED). /livez, /readyz,
                           /healthz (readyz and healthz: the first --etcd-servers
                           endpoint accepts a connection), /version, /api/v1/nodes
                           (GET lists, POST registers a node: only its own, by the
                           certificate's CN system:node:<name>), /standin/clients (every
                           client certificate seen).
  kube-scheduler           HTTPS :10259 /healthz /livez /readyz: 200 once it reached the
                           apiserver's /readyz with its kubeconfig's client certificate.
  kube-controller-manager  The same on :10257; its signing and service-account key files
                           must exist.
  kubelet                  HTTP healthzBindAddress:healthzPort (127.0.0.1:10248) /healthz:
                           200 once the container runtime socket accepts a connection and
                           the node is registered with the apiserver (kubeconfig's cert).
  kine                     HTTP (HTTPS with --server-cert-file) on --listen-address
                           (0.0.0.0:2379, or unix://PATH): GET /health; creates the sqlite
                           database of --endpoint.

All log to stderr in klog's format, exit 1 on a bad flag or missing file (naming it),
and exit 0 promptly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import http.client
import json
import os
import shutil
import signal
import socket
import socketserver
import sqlite3
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
ROLES = ("kube-apiserver", "kube-scheduler", "kube-controller-manager", "kubelet", "kine")
K8S_VERSION = "v1.31.0-k4sinit-standin"
KINE_VERSION = "v0.13.0-k4sinit-standin"


def _reexec_with_deps() -> None:
    """Run under a Python that has PyYAML: $K4SINIT_STANDIN_PYTHON, else the repo's venv.

    ``#!/usr/bin/env python3`` finds whatever python3 comes first on PATH; a test that
    spawns the stand-in through k4sinit with a narrow PATH may hand us the system one.
    """
    try:
        import yaml  # noqa: F401
    except ImportError:
        pass
    else:
        return
    for candidate in (
        os.environ.get("K4SINIT_STANDIN_PYTHON"),
        str(HERE.parents[1] / ".venv/bin/python"),
    ):
        # A venv's python is a symlink to the system one: compare paths, not real paths,
        # and re-exec at most once.
        if candidate and os.path.exists(candidate) and not os.environ.get("K4SINIT_STANDIN_REEXEC"):
            os.environ["K4SINIT_STANDIN_REEXEC"] = "1"
            os.execv(candidate, [candidate, *sys.argv])
    sys.stderr.write("k4sinit stand-in: PyYAML is missing; set K4SINIT_STANDIN_PYTHON\n")
    sys.exit(1)


_reexec_with_deps()

import yaml  # noqa: E402

# --- logging -----------------------------------------------------------------------


_log_lock = threading.Lock()


def log(msg: str, level: str = "I") -> None:
    """One klog-style line on stderr: ``I1121 22:00:00.000000    1234 kube.py:123] msg``."""
    now = dt.datetime.now()
    line = sys._getframe(1).f_lineno
    text = f"{level}{now:%m%d %H:%M:%S.%f} {os.getpid():7d} kube.py:{line}] {msg}\n"
    with _log_lock:
        sys.stderr.write(text)
        sys.stderr.flush()


class Fatal(Exception):
    """A start-up error: printed as ``Error: <message>``, exit code 1."""


# --- flags -------------------------------------------------------------------------


def load_flag_spec(role: str) -> dict[str, str]:
    """``flags/<role>.txt`` as {name: kind}; kind is "value", "bool" or "optional"."""
    spec: dict[str, str] = {}
    for raw in (HERE / "flags" / f"{role}.txt").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        spec[parts[0].removeprefix("--")] = parts[1] if len(parts) > 1 else "value"
    return spec


class Flags:
    """Parsed flags: the last value of each flag, and every value (for repeated flags)."""

    def __init__(self) -> None:
        self.values: dict[str, list[str]] = {}

    def set(self, name: str, value: str) -> None:
        self.values.setdefault(name, []).append(value)

    def get(self, name: str, default: str = "") -> str:
        values = self.values.get(name)
        return values[-1] if values else default

    def has(self, name: str) -> bool:
        return name in self.values

    def bool(self, name: str, default: bool) -> bool:
        if name not in self.values:
            return default
        return self.get(name).lower() in ("1", "t", "true")

    def list(self, name: str) -> list[str]:
        """A comma-separated or repeated list flag."""
        return [v for value in self.values.get(name, []) for v in value.split(",") if v]


_BOOL_WORDS = {"1", "0", "t", "f", "true", "false", "TRUE", "FALSE", "True", "False", "T", "F"}


def parse_pflag(role: str, argv: list[str], spec: dict[str, str]) -> Flags:
    """Parse like spf13/pflag: --f=v, --f v, bool --f, -v N, -v=N, -h; ``--`` ends flags.

    Raises Fatal with pflag's wording ("unknown flag: --foo", "flag needs an argument").
    """
    shorthands = {"v": "v", "h": "help"}
    flags = Flags()
    positional: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            positional.extend(argv[i:])
            break
        if arg.startswith("--") and len(arg) > 2:
            name, eq, value = arg[2:].partition("=")
            shown = f"--{name}"
        elif arg.startswith("-") and len(arg) > 1:
            letter = arg[1]
            if letter not in shorthands:
                raise Fatal(f"unknown shorthand flag: {letter!r} in {arg}")
            name = shorthands[letter]
            rest = arg[2:]
            eq = "=" if rest else ""
            value = rest.removeprefix("=")
            shown = f"-{letter}"
        else:
            positional.append(arg)
            continue
        kind = spec.get(name)
        if kind is None:
            raise Fatal(f"unknown flag: {shown}")
        if kind in ("bool", "optional"):
            value = value if eq else "true"
            if kind == "bool" and value not in _BOOL_WORDS:
                raise Fatal(
                    f'invalid argument "{value}" for "{shown}" flag: strconv.ParseBool: '
                    f'parsing "{value}": invalid syntax'
                )
        elif not eq:
            if i >= len(argv):
                raise Fatal(f"flag needs an argument: {shown}")
            value = argv[i]
            i += 1
        if name == "v":
            try:
                int(value)
            except ValueError:
                raise Fatal(f'invalid argument "{value}" for "-v, --v" flag') from None
        flags.set(name, value)
    if positional:
        raise Fatal(f"{role!r} does not take any arguments, got {positional!r}")
    return flags


def parse_urfave(argv: list[str], spec: dict[str, str]) -> Flags:
    """Parse like urfave/cli v2 (kine): -flag and --flag alike, =value or next argument."""
    flags = Flags()
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg == "--":
            break
        if not arg.startswith("-"):
            continue  # urfave/cli keeps them as c.Args(); kine ignores them
        name, eq, value = arg.lstrip("-").partition("=")
        name = {"h": "help", "v": "version"}.get(name, name)
        kind = spec.get(name)
        if kind is None:
            raise Fatal(f"flag provided but not defined: -{arg.lstrip('-').partition('=')[0]}")
        if kind == "bool":
            value = value if eq else "true"
        elif not eq:
            if i >= len(argv):
                raise Fatal(f"flag needs an argument: -{name}")
            value = argv[i]
            i += 1
        flags.set(name, value)
    return flags


def require_files(flags: Flags, names: list[str]) -> None:
    """Each given flag's file (or comma list of files) must exist: Fatal names flag and file."""
    for name in names:
        for path in flags.list(name):
            if not os.path.exists(path):
                raise Fatal(f"--{name}: open {path}: no such file or directory")


# --- TLS ---------------------------------------------------------------------------


class Scratch:
    """A private temp directory for PEM data that ssl wants as files; removed at exit."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="k4sinit-standin-"))

    def write(self, name: str, data: bytes) -> str:
        path = self.path / name
        path.write_bytes(data)
        path.chmod(0o600)
        return str(path)

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def self_signed(scratch: Scratch, host: str) -> tuple[str, str]:
    """A self-signed serving cert for ``host`` (what the real components make without one)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{host}@{int(time.time())}")])
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_file = scratch.write("serving.crt", cert.public_bytes(serialization.Encoding.PEM))
    key_file = scratch.write(
        "serving.key",
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    return cert_file, key_file


def server_context(
    cert: str, key: str, client_ca: str = "", *, require: bool = False
) -> ssl.SSLContext:
    """A TLS 1.2+ server context; ``require``: a client cert signed by ``client_ca``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as e:
        raise Fatal(f"unable to load server certificate {cert} / key {key}: {e}") from None
    if client_ca:
        try:
            ctx.load_verify_locations(cafile=client_ca)
        except (OSError, ssl.SSLError) as e:
            raise Fatal(f"unable to load client CA file {client_ca}: {e}") from None
        ctx.verify_mode = ssl.CERT_REQUIRED if require else ssl.CERT_OPTIONAL
    return ctx


def peer_identity(sock: Any) -> tuple[str, list[str]] | None:
    """(CN, [O...]) of a verified client certificate, or None."""
    getpeercert = getattr(sock, "getpeercert", None)
    cert = getpeercert() if getpeercert else None
    if not cert:
        return None
    cn, orgs = "", []
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                cn = value
            elif key == "organizationName":
                orgs.append(value)
    return cn, orgs


# --- kubeconfig --------------------------------------------------------------------


class Kubeconfig:
    """The parts of a kubeconfig a client needs: server URL and TLS client material."""

    def __init__(self, path: str, scratch: Scratch) -> None:
        try:
            doc = yaml.safe_load(Path(path).read_text())
        except OSError as e:
            raise Fatal(f"invalid kubeconfig {path}: {e}") from None
        except yaml.YAMLError as e:
            raise Fatal(f"invalid kubeconfig {path}: {e}") from None
        if not isinstance(doc, dict) or doc.get("kind", "Config") != "Config":
            raise Fatal(f"invalid kubeconfig {path}: not a kind: Config document")
        base = Path(path).resolve().parent

        def pick(section: str, name: str) -> dict[str, Any]:
            for item in doc.get(section) or []:
                if item.get("name") == name:
                    value = item.get(section[:-1]) or {}
                    assert isinstance(value, dict)
                    return value
            raise Fatal(f"invalid kubeconfig {path}: no {section[:-1]} named {name!r}")

        current = doc.get("current-context") or ""
        contexts = doc.get("contexts") or []
        if not current and len(contexts) == 1:
            current = contexts[0].get("name", "")
        if not current:
            raise Fatal(f"invalid kubeconfig {path}: no current-context")
        context = pick("contexts", current)
        cluster = pick("clusters", context.get("cluster", ""))
        user = pick("users", context.get("user", ""))
        self.server: str = cluster.get("server", "")
        if not self.server.startswith("https://"):
            raise Fatal(f"invalid kubeconfig {path}: server {self.server!r} is not https://")

        def material(section: dict[str, Any], field: str, tag: str) -> str:
            """Embedded ``<field>-data`` (to a scratch file) or ``<field>`` relative to the file."""
            import base64

            data = section.get(f"{field}-data")
            if data:
                return scratch.write(f"{tag}.pem", base64.b64decode(data))
            file = section.get(field)
            if not file:
                return ""
            resolved = str(base / file)
            if not os.path.exists(resolved):
                raise Fatal(
                    f"kubeconfig {path}: {field}: open {resolved}: no such file or directory"
                )
            return resolved

        self.ca = material(cluster, "certificate-authority", "ca")
        self.cert = material(user, "client-certificate", "client-cert")
        self.key = material(user, "client-key", "client-key")
        self.insecure = bool(cluster.get("insecure-skip-tls-verify"))
        if bool(self.cert) != bool(self.key):
            raise Fatal(f"kubeconfig {path}: client-certificate and client-key go together")
        if not self.cert:
            raise Fatal(
                f"kubeconfig {path}: user {context.get('user')!r} has no client certificate "
                "(the stand-in authenticates with client certificates only)"
            )
        self.context = ssl.create_default_context(cafile=self.ca or None)
        if self.insecure:
            self.context.check_hostname = False
            self.context.verify_mode = ssl.CERT_NONE
        try:
            self.context.load_cert_chain(self.cert, self.key)
        except (OSError, ssl.SSLError) as e:
            raise Fatal(f"kubeconfig {path}: unable to load client certificate: {e}") from None

    def request(self, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
        """One HTTPS request to the apiserver; raises OSError/ssl.SSLError on failure."""
        url = urlsplit(self.server)
        conn = http.client.HTTPSConnection(
            url.hostname or "", url.port or 443, context=self.context, timeout=5
        )
        try:
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Content-Type": "application/json"} if payload else {}
            conn.request(method, url.path.rstrip("/") + path, body=payload, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()


# --- HTTP serving ------------------------------------------------------------------


Handler = Callable[["Request"], tuple[int, Any]]


class Request(BaseHTTPRequestHandler):
    """Routes to ``server.routes[(method, path)]``; the handler returns (status, body)."""

    server: Server
    protocol_version = "HTTP/1.1"

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self.query = url.query
        self.identity = peer_identity(self.connection)
        if self.identity:
            self.server.seen(self.identity)
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""
        handler = self.server.routes.get((method, url.path))
        if handler is None:
            status, body = (
                404,
                {"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404},
            )
        else:
            status, body = handler(self)
        if isinstance(body, (dict, list)):
            data, ctype = json.dumps(body).encode(), "application/json"
        else:
            data, ctype = str(body).encode(), "text/plain; charset=utf-8"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Server(ThreadingHTTPServer):
    """A threaded HTTP(S) server; the TLS handshake runs in the connection's own thread."""

    daemon_threads = True
    block_on_close = False

    def __init__(
        self,
        address: tuple[str, int] | str,
        routes: dict[tuple[str, str], Handler],
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.routes = routes
        self.tls = tls
        self.clients: dict[str, dict[str, Any]] = {}
        self._clients_lock = threading.Lock()
        if isinstance(address, str):  # a unix socket path
            self.address_family = socket.AF_UNIX
            with contextlib.suppress(FileNotFoundError):
                os.unlink(address)
        elif ":" in address[0]:
            self.address_family = socket.AF_INET6
        try:
            super().__init__(address, Request)  # type: ignore[arg-type]
        except OSError as e:
            raise Fatal(f"failed to listen on {address}: {e}") from None

    def server_bind(self) -> None:
        # Not HTTPServer.server_bind: its socket.getfqdn() is a reverse DNS lookup that can
        # stall start-up for seconds on a machine without DNS.
        if self.address_family == socket.AF_UNIX:
            self.socket.bind(self.server_address)
            self.server_name, self.server_port = "localhost", 0
        else:
            socketserver.TCPServer.server_bind(self)
            self.server_name, self.server_port = (
                str(self.server_address[0]),
                int(self.server_address[1]),
            )

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.tls is not None:
            request.settimeout(10)
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError) as e:
                log(f"http: TLS handshake error from {client_address}: {e}", "E")
                request.close()
                return
        if self.address_family == socket.AF_UNIX:
            client_address = ("unix", 0)
        super().finish_request(request, client_address)

    def seen(self, identity: tuple[str, list[str]]) -> None:
        cn, orgs = identity
        with self._clients_lock:
            entry = self.clients.setdefault(
                cn, {"commonName": cn, "organizations": orgs, "requests": 0}
            )
            entry["requests"] += 1

    def start(self) -> None:
        threading.Thread(target=self.serve_forever, name="serve", daemon=True).start()


def host_port(address: str, default_port: int) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host:
        return address, default_port
    return host.strip("[]"), int(port)


def listen_address(bind: str, port: str, default_port: int) -> tuple[str, int]:
    try:
        number = int(port) if port else default_port
    except ValueError:
        raise Fatal(f"invalid port {port!r}") from None
    return bind or "0.0.0.0", number


def health(ok: Callable[[], tuple[bool, str]], name: str) -> Handler:
    """A /healthz-style handler over one check, verbose with ``?verbose``."""

    def handle(req: Request) -> tuple[int, str]:
        good, check = ok()
        if good:
            if "verbose" in req.query:
                return 200, f"[+]ping ok\n[+]log ok\n[+]{check} ok\n{name} check passed\n"
            return 200, "ok"
        return (
            500,
            f"[+]ping ok\n[+]log ok\n[-]{check} failed: reason withheld\n{name} check failed\n",
        )

    return handle


def health_routes(ok: Callable[[], tuple[bool, str]]) -> dict[tuple[str, str], Handler]:
    return {("GET", f"/{name}"): health(ok, name) for name in ("healthz", "readyz")} | {
        ("GET", "/livez"): health(lambda: (True, "ping"), "livez")
    }


def can_connect(endpoint: str, timeout: float = 1.0) -> bool:
    """True if ``endpoint`` (scheme://host:port, unix://path or a socket path) accepts."""
    if endpoint.startswith("unix://") or endpoint.startswith("/"):
        family, target = socket.AF_UNIX, endpoint.removeprefix("unix://")
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            try:
                s.connect(target)
            except OSError:
                return False
            return True
    url = urlsplit(endpoint if "://" in endpoint else f"tcp://{endpoint}")
    try:
        with socket.create_connection((url.hostname or "127.0.0.1", url.port or 2379), timeout):
            return True
    except OSError:
        return False


# --- the roles ---------------------------------------------------------------------


class Role:
    """One stand-in: ``setup`` validates and binds (raising Fatal), then it runs until told to stop."""

    name = ""

    def __init__(self, flags: Flags, stop: threading.Event, scratch: Scratch) -> None:
        self.flags = flags
        self.stop = stop
        self.scratch = scratch

    def setup(self) -> None:
        raise NotImplementedError

    def retry(self, what: str, attempt: Callable[[], bool]) -> None:
        """Call ``attempt`` every second in a thread until it returns True or we stop."""

        def loop() -> None:
            while not self.stop.is_set():
                try:
                    if attempt():
                        log(f"{what}: done")
                        return
                except (OSError, ssl.SSLError, ValueError) as e:
                    log(f"{what}: {e}", "E")
                self.stop.wait(1.0)

        threading.Thread(target=loop, name=what, daemon=True).start()


class APIServer(Role):
    name = "kube-apiserver"

    def setup(self) -> None:
        f = self.flags
        if not f.list("etcd-servers"):
            raise Fatal("[--etcd-servers must be specified]")
        if not f.list("service-account-issuer"):
            raise Fatal("service-account-issuer is a required flag")
        if not f.get("service-account-signing-key-file"):
            raise Fatal(
                "service-account-signing-key-file and service-account-issuer are required flags"
            )
        require_files(
            f,
            [
                "tls-cert-file",
                "tls-private-key-file",
                "client-ca-file",
                "service-account-key-file",
                "service-account-signing-key-file",
                "kubelet-client-certificate",
                "kubelet-client-key",
                "kubelet-certificate-authority",
                "proxy-client-cert-file",
                "proxy-client-key-file",
                "requestheader-client-ca-file",
                "egress-selector-config-file",
                "encryption-provider-config",
                "admission-control-config-file",
                "authorization-config",
                "authentication-config",
                "audit-policy-file",
                "token-auth-file",
                "etcd-cafile",
                "etcd-certfile",
                "etcd-keyfile",
            ],
        )
        if f.has("tls-cert-file") != f.has("tls-private-key-file"):
            raise Fatal("--tls-cert-file and --tls-private-key-file must be given together")
        cert, key = f.get("tls-cert-file"), f.get("tls-private-key-file")
        if not cert:
            cert, key = self_signed(self.scratch, "localhost")
            log("Generated self-signed cert (no --tls-cert-file given)")
        client_ca = f.get("client-ca-file")
        self.anonymous = f.bool("anonymous-auth", True)
        self.etcd = f.list("etcd-servers")[0]
        self.nodes: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        tls = server_context(cert, key, client_ca, require=bool(client_ca))
        address = listen_address(f.get("bind-address"), f.get("secure-port"), 6443)
        routes: dict[tuple[str, str], Handler] = {}
        for path, handler in health_routes(self.etcd_ok).items():
            routes[path] = self.anonymous_ok(handler)
        routes[("GET", "/version")] = self.authenticated(self.version)
        routes[("GET", "/api/v1/nodes")] = self.authenticated(self.list_nodes)
        routes[("POST", "/api/v1/nodes")] = self.authenticated(self.create_node)
        routes[("GET", "/standin/clients")] = self.authenticated(self.clients)
        self.server = Server(address, routes, tls)
        log(f"Serving securely on {address[0]}:{self.server.server_address[1]}")
        log(
            f"client certificates: {'required, signed by ' + client_ca if client_ca else 'not checked'}"
        )

    def etcd_ok(self) -> tuple[bool, str]:
        return can_connect(self.etcd), "etcd"

    def anonymous_ok(self, handler: Handler) -> Handler:
        def handle(req: Request) -> tuple[int, Any]:
            if req.identity is None and not self.anonymous:
                return 401, _status(401, "Unauthorized", "Unauthorized")
            return handler(req)

        return handle

    def authenticated(self, handler: Handler) -> Handler:
        def handle(req: Request) -> tuple[int, Any]:
            if req.identity is None:
                if not self.anonymous:
                    return 401, _status(401, "Unauthorized", "Unauthorized")
                return 403, _status(
                    403, "Forbidden", 'User "system:anonymous" cannot access this path'
                )
            return handler(req)

        return handle

    def version(self, req: Request) -> tuple[int, Any]:
        return 200, {
            "major": "1",
            "minor": "31",
            "gitVersion": K8S_VERSION,
            "gitCommit": "0000000000000000000000000000000000000000",
            "gitTreeState": "clean",
            "platform": f"linux/{os.uname().machine}",
        }

    def list_nodes(self, req: Request) -> tuple[int, Any]:
        with self.lock:
            items = list(self.nodes.values())
        return 200, {"kind": "NodeList", "apiVersion": "v1", "items": items}

    def create_node(self, req: Request) -> tuple[int, Any]:
        assert req.identity is not None
        cn, orgs = req.identity
        try:
            node = json.loads(req.body)
            name = node["metadata"]["name"]
        except (ValueError, KeyError, TypeError):
            return 400, _status(400, "BadRequest", "a Node with metadata.name is required")
        # The Node authorizer + NodeRestriction: a node may create only its own object.
        if cn != f"system:node:{name}" and "system:masters" not in orgs:
            return 403, _status(403, "Forbidden", f'User "{cn}" cannot create node "{name}"')
        node.setdefault("apiVersion", "v1")
        node.setdefault("kind", "Node")
        node["metadata"].setdefault("annotations", {})["standin.k4sinit.invalid/registered-by"] = cn
        with self.lock:
            if name in self.nodes:
                return 409, _status(409, "AlreadyExists", f'nodes "{name}" already exists')
            self.nodes[name] = node
        log(f"registered node {name!r} (client certificate CN={cn!r}, O={orgs!r})")
        return 201, node

    def clients(self, req: Request) -> tuple[int, Any]:
        with self.server._clients_lock:
            return 200, [dict(c) for c in self.server.clients.values()]


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class ControlPlaneClient(Role):
    """kube-scheduler / kube-controller-manager: a kubeconfig client and an HTTPS health port."""

    default_port = 0
    required_files: list[str] = []

    def kubeconfig_path(self) -> str:
        f = self.flags
        return (
            f.get("kubeconfig")
            or f.get("authentication-kubeconfig")
            or f.get("authorization-kubeconfig")
        )

    def setup(self) -> None:
        f = self.flags
        require_files(
            f,
            [
                "kubeconfig",
                "authentication-kubeconfig",
                "authorization-kubeconfig",
                "tls-cert-file",
                "tls-private-key-file",
                "client-ca-file",
                "requestheader-client-ca-file",
                *self.required_files,
            ],
        )
        path = self.kubeconfig_path()
        if not path:
            raise Fatal("no kubeconfig: give --kubeconfig (or --authentication-kubeconfig)")
        self.kubeconfig = Kubeconfig(path, self.scratch)
        self.reached = threading.Event()
        cert, key = f.get("tls-cert-file"), f.get("tls-private-key-file")
        if not cert:
            cert, key = self_signed(self.scratch, "localhost")
            log("Generated self-signed cert in-memory")
        tls = server_context(cert, key, f.get("client-ca-file"))
        address = listen_address(f.get("bind-address"), f.get("secure-port"), self.default_port)
        self.server = Server(address, health_routes(self.apiserver_ok), tls)
        log(f"Serving securely on {address[0]}:{self.server.server_address[1]}")
        self.retry(f"reach the apiserver at {self.kubeconfig.server}", self.probe_apiserver)

    def apiserver_ok(self) -> tuple[bool, str]:
        return self.reached.is_set(), "apiserver"

    def probe_apiserver(self) -> bool:
        status, body = self.kubeconfig.request("GET", "/readyz")
        if status != 200:
            raise ValueError(f"apiserver /readyz: {status} {body[:200]!r}")
        self.reached.set()
        return True


class Scheduler(ControlPlaneClient):
    name = "kube-scheduler"
    default_port = 10259

    def kubeconfig_path(self) -> str:
        config = self.flags.get("config")
        if config:
            require_files(self.flags, ["config"])
            doc = _load_yaml(config)
            if (
                doc.get("kind") != "KubeSchedulerConfiguration"
                or doc.get("apiVersion") != "kubescheduler.config.k8s.io/v1"
            ):
                raise Fatal(
                    f"{config}: want apiVersion kubescheduler.config.k8s.io/v1, kind "
                    f"KubeSchedulerConfiguration; got {doc.get('apiVersion')!r}, {doc.get('kind')!r}"
                )
            from_config = (doc.get("clientConnection") or {}).get("kubeconfig")
            if from_config and not self.flags.get("kubeconfig"):
                return str(from_config)
        return super().kubeconfig_path()


class ControllerManager(ControlPlaneClient):
    name = "kube-controller-manager"
    default_port = 10257
    required_files = [
        "service-account-private-key-file",
        "root-ca-file",
        "cluster-signing-cert-file",
        "cluster-signing-key-file",
        "cluster-signing-kubelet-serving-cert-file",
        "cluster-signing-kubelet-serving-key-file",
        "cluster-signing-kubelet-client-cert-file",
        "cluster-signing-kubelet-client-key-file",
        "cluster-signing-kube-apiserver-client-cert-file",
        "cluster-signing-kube-apiserver-client-key-file",
        "cluster-signing-legacy-unknown-cert-file",
        "cluster-signing-legacy-unknown-key-file",
    ]

    def setup(self) -> None:
        if self.flags.has("cluster-signing-cert-file") != self.flags.has(
            "cluster-signing-key-file"
        ):
            raise Fatal(
                "--cluster-signing-cert-file and --cluster-signing-key-file must be given together"
            )
        super().setup()


def _load_yaml(path: str) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise Fatal(f"failed to load {path}: {e}") from None
    if not isinstance(doc, dict):
        raise Fatal(f"failed to load {path}: not a YAML mapping")
    return doc


class Kubelet(Role):
    name = "kubelet"

    def setup(self) -> None:
        f = self.flags
        require_files(f, ["config", "client-ca-file", "tls-cert-file", "tls-private-key-file"])
        config: dict[str, Any] = {}
        if f.get("config"):
            config = _load_yaml(f.get("config"))
            if (
                config.get("apiVersion") != "kubelet.config.k8s.io/v1beta1"
                or config.get("kind") != "KubeletConfiguration"
            ):
                raise Fatal(
                    f"failed to load Kubelet config file {f.get('config')}: want apiVersion "
                    f"kubelet.config.k8s.io/v1beta1, kind KubeletConfiguration; got "
                    f"{config.get('apiVersion')!r}, {config.get('kind')!r}"
                )
            x509 = ((config.get("authentication") or {}).get("x509") or {}).get("clientCAFile")
            for field, value in (
                ("authentication.x509.clientCAFile", x509),
                ("tlsCertFile", config.get("tlsCertFile")),
                ("tlsPrivateKeyFile", config.get("tlsPrivateKeyFile")),
            ):
                if value and not os.path.exists(value):
                    raise Fatal(
                        f"{f.get('config')}: {field}: open {value}: no such file or directory"
                    )
        self.runtime = (
            f.get("container-runtime-endpoint") or config.get("containerRuntimeEndpoint") or ""
        )
        if not self.runtime:
            raise Fatal("--container-runtime-endpoint is required (there is no dockershim)")
        self.node_name = (f.get("hostname-override") or socket.gethostname()).lower()
        self.node_ip = f.get("node-ip")
        self.kubeconfig: Kubeconfig | None = None
        self.kubeconfig_file = f.get("kubeconfig")
        if self.kubeconfig_file and os.path.exists(self.kubeconfig_file):
            self.kubeconfig = Kubeconfig(self.kubeconfig_file, self.scratch)
        elif self.kubeconfig_file and not f.get("bootstrap-kubeconfig"):
            raise Fatal(f"--kubeconfig: open {self.kubeconfig_file}: no such file or directory")
        elif self.kubeconfig_file:
            require_files(f, ["bootstrap-kubeconfig"])
            log("no kubeconfig yet: the stand-in does no TLS bootstrap; waiting for the file", "W")
        self.runtime_up = threading.Event()
        self.registered = threading.Event()
        if not self.kubeconfig_file:
            log("No API server defined - no node status update will be sent (standalone mode)")
            self.registered.set()
        port = int(f.get("healthz-port") or config.get("healthzPort", 10248))
        bind = f.get("healthz-bind-address") or config.get("healthzBindAddress", "127.0.0.1")
        if config.get("staticPodPath"):
            log(f"Adding static pod path {config['staticPodPath']}")
        if port:
            self.server = Server(
                (bind, port), {("GET", "/healthz"): health(self.healthy, "healthz")}
            )
            log(f"Starting healthz server on {bind}:{self.server.server_address[1]}")
        self.retry(f"connect to the container runtime at {self.runtime}", self.probe_runtime)
        if not self.registered.is_set():
            self.retry(f"register node {self.node_name!r}", self.register)

    def healthy(self) -> tuple[bool, str]:
        if not self.runtime_up.is_set():
            return False, "container-runtime"
        return self.registered.is_set(), "node-registration"

    def probe_runtime(self) -> bool:
        if not can_connect(self.runtime):
            raise OSError(f"connection error: dial {self.runtime}: connect failed")
        self.runtime_up.set()
        return True

    def register(self) -> bool:
        if self.kubeconfig is None:
            if not os.path.exists(self.kubeconfig_file):
                raise OSError(f"waiting for {self.kubeconfig_file}")
            self.kubeconfig = Kubeconfig(self.kubeconfig_file, self.scratch)
        node: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.node_name},
        }
        if self.node_ip:
            node["status"] = {"addresses": [{"type": "InternalIP", "address": self.node_ip}]}
        status, body = self.kubeconfig.request("POST", "/api/v1/nodes", node)
        if status not in (200, 201, 409):
            raise ValueError(f"Unable to register node with API server: {status} {body[:200]!r}")
        self.registered.set()
        return True


class Kine(Role):
    name = "kine"

    def setup(self) -> None:
        f = self.flags
        require_files(
            f, ["ca-file", "cert-file", "key-file", "server-cert-file", "server-key-file"]
        )
        self.create_database(f.get("endpoint") or "sqlite://")
        tls = None
        if f.get("server-cert-file"):
            tls = server_context(
                f.get("server-cert-file"), f.get("server-key-file"), f.get("ca-file")
            )
        listen = f.get("listen-address") or "0.0.0.0:2379"
        address: tuple[str, int] | str
        if listen.startswith("unix://"):
            address = listen.removeprefix("unix://")
        else:
            address = host_port(listen.split("://", 1)[-1], 2379)
        self.server = Server(
            address, {("GET", "/health"): lambda req: (200, {"health": "true"})}, tls
        )
        log(f"Kine available at {'https' if tls else 'http'}://{listen.split('://', 1)[-1]}")

    def create_database(self, endpoint: str) -> None:
        if not endpoint.startswith("sqlite://"):
            raise Fatal(f"endpoint {endpoint!r}: the stand-in supports sqlite:// only")
        path = endpoint.removeprefix("sqlite://").partition("?")[0] or "./db/state.db"
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            with contextlib.closing(sqlite3.connect(path)) as db:
                db.execute(
                    "CREATE TABLE IF NOT EXISTS kine (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                    "name TEXT, created INTEGER, deleted INTEGER, create_revision INTEGER, "
                    "prev_revision INTEGER, lease INTEGER, value BLOB, old_value BLOB)"
                )
                db.commit()
        except sqlite3.Error as e:
            raise Fatal(f"sqlite {path}: {e}") from None
        log(f"Configuring sqlite3 database connection pooling: {path}")


ROLE_CLASSES: dict[str, type[Role]] = {
    "kube-apiserver": APIServer,
    "kube-scheduler": Scheduler,
    "kube-controller-manager": ControllerManager,
    "kubelet": Kubelet,
    "kine": Kine,
}


# --- main --------------------------------------------------------------------------


def role_of(argv0: str) -> str:
    return os.environ.get("K4SINIT_STANDIN_ROLE") or os.path.basename(argv0)


def main(argv: list[str]) -> int:
    """Run the role named by argv[0] (or $K4SINIT_STANDIN_ROLE); returns the exit code."""
    role = role_of(argv[0])
    if role not in ROLES:
        sys.stderr.write(
            f"k4sinit stand-in: unknown role {role!r}; run as one of {', '.join(ROLES)}\n"
        )
        return 1
    version = KINE_VERSION if role == "kine" else "v1.31"
    sys.stderr.write(f"k4sinit test stand-in for {role} {version}: not the real binary\n")
    spec = load_flag_spec(role)
    try:
        if role == "kine":
            flags = parse_urfave(argv[1:], spec)
        else:
            flags = parse_pflag(role, argv[1:], spec)
    except Fatal as e:
        if role == "kine":
            sys.stderr.write(f"Incorrect Usage: {e}\n")
        else:
            sys.stderr.write(f"Error: {e}\n")
        return 1
    if flags.bool("help", False):
        print(f"Usage of {role} (k4sinit stand-in):")
        for name in spec:
            print(f"      --{name}")
        return 0
    if flags.has("version") and flags.get("version") != "false":
        print(f"kine version {KINE_VERSION}" if role == "kine" else f"Kubernetes {K8S_VERSION}")
        return 0

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    scratch = Scratch()
    try:
        instance = ROLE_CLASSES[role](flags, stop, scratch)
        try:
            instance.setup()
        except Fatal as e:
            log(f'"command failed" err="{e}"', "E")
            sys.stderr.write(f"Error: {e}\n")
            return 1
        server: Server | None = getattr(instance, "server", None)
        if server is not None:
            server.start()
        while not stop.wait(0.2):
            pass
        log("shutting down: received SIGTERM")
        if server is not None:
            server.shutdown()
            server.server_close()
        return 0
    finally:
        scratch.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
