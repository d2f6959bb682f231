"""The Kubernetes stand-ins (tests/standins): flags, files, TLS and health, as real processes.

Each stand-in runs as a subprocess on free localhost ports; the PKI is a throw-away CA
(tests/certs.py). What is proven here is the interface the k4sinit role modules rely on:
an unknown flag or a missing file is exit 1 naming it, the apiserver only talks to
clients whose certificate the cluster CA signed, and each role's health endpoint turns
200 exactly when its dependency is there.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.certs import CA, CertFiles
from tests.conftest import wait_until

BIN = Path(__file__).resolve().parent / "standins" / "bin"
FLAGS = Path(__file__).resolve().parent / "standins" / "flags"
ROLES = ["kube-apiserver", "kube-scheduler", "kube-controller-manager", "kubelet", "kine"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class StandIn:
    """One stand-in process; its stderr goes to a file for failure messages."""

    def __init__(self, role: str, args: list[str], log: Path) -> None:
        self.role = role
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 (closed in kill())
        # Its scratch files (PEM for ssl) under the test's tmp dir, even if it is killed.
        scratch = log.parent / "tmp"
        scratch.mkdir(exist_ok=True)
        self.proc = subprocess.Popen(
            [str(BIN / role), *args],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "TMPDIR": str(scratch)},
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 10) -> int:
        """SIGTERM and wait; returns the exit code."""
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGTERM (it cleans up), SIGKILL if it is still there after 5 s; by pid."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Any]:
    """``spawn(role, *args) -> StandIn``; every process is killed by pid after the test."""
    started: list[StandIn] = []

    def start(role: str, *args: str) -> StandIn:
        s = StandIn(role, list(args), tmp_path / f"{role}-{len(started)}.log")
        started.append(s)
        return s

    yield start
    for s in started:
        s.kill()


def run(role: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / role), *args], capture_output=True, text=True, timeout=30, check=False
    )


class PKI:
    """A cluster CA with the certificates a single node needs, and a stranger CA."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.ca = CA.create(directory, "cluster-ca")
        self.other = CA.create(directory, "other-ca")
        self.apiserver = self.ca.issue("kube-apiserver", server=True)
        self.admin = self.ca.issue("kubernetes-admin", server=False)
        self.scheduler = self.ca.issue("system:kube-scheduler", server=False)
        self.controller_manager = self.ca.issue("system:kube-controller-manager", server=False)
        self.kubelet = self.ca.issue("system:node:node1", server=False)
        self.stranger = self.other.issue("kubernetes-admin-elsewhere", server=False)
        self.sa_key = directory / "sa.key"
        self.sa_key.write_text(Path(self.admin.key).read_text())

    def kubeconfig(self, name: str, port: int, client: CertFiles, *, embed: bool) -> Path:
        """A kubeconfig for ``client``: embedded ``*-data`` or file paths."""
        if embed:
            cluster = {"certificate-authority-data": _b64(self.ca.cert_file)}
            user = {
                "client-certificate-data": _b64(client.cert),
                "client-key-data": _b64(client.key),
            }
        else:
            cluster = {"certificate-authority": self.ca.cert_file}
            user = {"client-certificate": client.cert, "client-key": client.key}
        doc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "local", "cluster": {"server": f"https://127.0.0.1:{port}", **cluster}}
            ],
            "users": [{"name": name, "user": user}],
            "contexts": [{"name": "default", "context": {"cluster": "local", "user": name}}],
            "current-context": "default",
        }
        path = self.dir / f"{name}.kubeconfig"
        path.write_text(yaml.safe_dump(doc))
        return path


def _b64(path: str) -> str:
    return base64.b64encode(Path(path).read_bytes()).decode()


@pytest.fixture
def pki(tmp_path: Path) -> PKI:
    return PKI(tmp_path)


def https_get(
    port: int, path: str, ca: str | None, client: CertFiles | None = None
) -> tuple[int, str]:
    """GET over HTTPS (``ca`` None: no server verification); raises on TLS failure."""
    ctx = ssl.create_default_context(cafile=ca) if ca else ssl._create_unverified_context()
    if client:
        ctx.load_cert_chain(client.cert, client.key)
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def http_get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def wait_status(get: Any, want: int, what: str, proc: StandIn, timeout: float = 30) -> str:
    """Poll ``get()`` until it returns status ``want``; connection errors count as not yet."""
    body = ""

    def check() -> bool:
        nonlocal body
        if proc.proc.poll() is not None:
            raise AssertionError(f"{proc.role} exited {proc.proc.returncode}:\n{proc.log()}")
        try:
            status, body = get()
        except (OSError, ssl.SSLError):
            return False
        return bool(status == want)

    wait_until(check, timeout=timeout, what=f"{what}; log:\n{proc.log()[-2000:]}")
    return body


def apiserver_args(pki: PKI, port: int, etcd_port: int) -> list[str]:
    """A k0s/k3s-style kube-apiserver command line (v1.31)."""
    return [
        f"--secure-port={port}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        "--allow-privileged=true",
        "--authorization-mode=Node,RBAC",
        f"--client-ca-file={pki.ca.cert_file}",
        "--enable-admission-plugins=NodeRestriction",
        "--enable-bootstrap-token-auth",
        f"--etcd-servers=http://127.0.0.1:{etcd_port}",
        f"--kubelet-client-certificate={pki.admin.cert}",
        f"--kubelet-client-key={pki.admin.key}",
        f"--proxy-client-cert-file={pki.admin.cert}",
        f"--proxy-client-key-file={pki.admin.key}",
        f"--requestheader-client-ca-file={pki.ca.cert_file}",
        "--requestheader-allowed-names=front-proxy-client",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-username-headers=X-Remote-User",
        "--service-account-issuer=https://kubernetes.default.svc",
        f"--service-account-key-file={pki.sa_key}",
        f"--service-account-signing-key-file={pki.sa_key}",
        "--service-cluster-ip-range=10.96.0.0/12",
        f"--tls-cert-file={pki.apiserver.cert}",
        f"--tls-private-key-file={pki.apiserver.key}",
        "--api-audiences=https://kubernetes.default.svc",
        "--anonymous-auth=false",
        "--profiling=false",
        "-v=1",
    ]


def start_control_plane(spawn: Any, pki: PKI, tmp_path: Path) -> tuple[StandIn, int]:
    """kine + kube-apiserver, waited until /readyz is 200; returns the apiserver and its port."""
    etcd, api = free_port(), free_port()
    kine = spawn(
        "kine",
        f"--listen-address=127.0.0.1:{etcd}",
        f"--endpoint=sqlite://{tmp_path}/db/state.db?_journal=WAL&cache=shared",
        "--metrics-bind-address=0",
    )
    wait_status(lambda: http_get(etcd, "/health"), 200, "kine /health", kine)
    apiserver = spawn("kube-apiserver", *apiserver_args(pki, api, etcd))
    wait_status(
        lambda: https_get(api, "/readyz", pki.ca.cert_file, pki.admin), 200, "readyz", apiserver
    )
    return apiserver, api


# --- flags -------------------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_each_role_says_it_is_a_stand_in_and_rejects_an_unknown_flag(role: str) -> None:
    out = run(role, "--foo=1")
    assert out.returncode == 1
    assert f"k4sinit test stand-in for {role}" in out.stderr
    assert "not the real binary" in out.stderr
    if role == "kine":  # urfave/cli's wording, as the real kine prints it
        assert "flag provided but not defined: -foo" in out.stderr
    else:  # cobra/pflag's
        assert "Error: unknown flag: --foo" in out.stderr


@pytest.mark.parametrize("role", ROLES)
def test_flag_lists_name_their_source(role: str) -> None:
    text = (FLAGS / f"{role}.txt").read_text()
    assert "Source:" in text
    flags = [line.split()[0] for line in text.splitlines() if line.startswith("--")]
    assert len(flags) == len(set(flags)) > 20


def test_a_k0s_style_command_line_parses(tmp_path: Path, pki: PKI) -> None:
    # --version answers after parsing, before validation: a parse error would show here.
    out = run("kube-apiserver", *apiserver_args(pki, 6443, 2379), "--version")
    assert out.returncode == 0, out.stderr
    assert "Kubernetes v1.31" in out.stdout


def test_pflag_forms(pki: PKI) -> None:
    assert run("kubelet", "--fail-swap-on=false", "--v", "2", "--version").returncode == 0
    missing = run("kube-scheduler", "--kubeconfig")
    assert missing.returncode == 1
    assert "flag needs an argument: --kubeconfig" in missing.stderr
    stray = run("kube-scheduler", "--leader-elect", "false")  # a bool takes no separate value
    assert stray.returncode == 1
    assert "does not take any arguments" in stray.stderr


def test_missing_tls_file_is_named(pki: PKI, tmp_path: Path) -> None:
    args = apiserver_args(pki, free_port(), free_port())
    missing = tmp_path / "nope.crt"
    args = [
        a if not a.startswith("--tls-cert-file=") else f"--tls-cert-file={missing}" for a in args
    ]
    out = run("kube-apiserver", *args)
    assert out.returncode == 1
    assert str(missing) in out.stderr
    assert "--tls-cert-file" in out.stderr


def test_apiserver_requires_etcd_servers(pki: PKI) -> None:
    args = [a for a in apiserver_args(pki, free_port(), 2379) if not a.startswith("--etcd-servers")]
    out = run("kube-apiserver", *args)
    assert out.returncode == 1
    assert "--etcd-servers must be specified" in out.stderr


# --- kube-apiserver and kine -------------------------------------------------------


def test_apiserver_ready_only_with_kine_and_only_for_cluster_certs(
    spawn: Any, pki: PKI, tmp_path: Path
) -> None:
    etcd, api = free_port(), free_port()
    apiserver = spawn("kube-apiserver", *apiserver_args(pki, api, etcd))

    def readyz() -> tuple[int, str]:
        return https_get(api, "/readyz?verbose", pki.ca.cert_file, pki.admin)

    body = wait_status(readyz, 500, "readyz 500 without a datastore", apiserver)
    assert "[-]etcd failed" in body

    # No client certificate, or one from another CA: the handshake is refused.
    with pytest.raises((ssl.SSLError, ConnectionError)):
        https_get(api, "/livez", pki.ca.cert_file)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        https_get(api, "/livez", pki.ca.cert_file, pki.stranger)
    # And the serving certificate is the one it was given: a client trusting another CA fails.
    with pytest.raises(ssl.SSLCertVerificationError):
        https_get(api, "/livez", pki.other.cert_file, pki.admin)

    db = tmp_path / "kine" / "state.db"
    kine = spawn("kine", f"--listen-address=127.0.0.1:{etcd}", f"--endpoint=sqlite://{db}")
    assert wait_status(lambda: http_get(etcd, "/health"), 200, "kine", kine) == '{"health": "true"}'
    assert db.exists()

    body = wait_status(readyz, 200, "readyz 200 once kine listens", apiserver)
    assert "[+]etcd ok" in body
    status, version = https_get(api, "/version", pki.ca.cert_file, pki.admin)
    assert status == 200
    assert json.loads(version)["minor"] == "31"
    _, clients = https_get(api, "/standin/clients", pki.ca.cert_file, pki.admin)
    assert [c["commonName"] for c in json.loads(clients)] == ["kubernetes-admin"]

    assert apiserver.terminate() == 0
    assert kine.terminate() == 0
    assert "shutting down" in apiserver.log()


def test_apiserver_without_client_ca_serves_anonymous_health(
    spawn: Any, pki: PKI, tmp_path: Path
) -> None:
    etcd, api = free_port(), free_port()
    args = [
        a
        for a in apiserver_args(pki, api, etcd)
        if not a.startswith(("--client-ca-file", "--anonymous-auth"))
    ]
    apiserver = spawn("kube-apiserver", *args)
    wait_status(lambda: https_get(api, "/livez", pki.ca.cert_file), 200, "livez", apiserver)
    status, _ = https_get(api, "/api/v1/nodes", pki.ca.cert_file)
    assert status == 403  # system:anonymous


# --- kube-scheduler and kube-controller-manager ------------------------------------


def test_scheduler_healthy_only_after_it_reached_the_apiserver(
    spawn: Any, pki: PKI, tmp_path: Path
) -> None:
    # The scheduler starts first, pointing at where the apiserver will be.
    etcd, api, port = free_port(), free_port(), free_port()
    kubeconfig = pki.kubeconfig("scheduler", api, pki.scheduler, embed=True)
    scheduler = spawn(
        "kube-scheduler",
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        "--leader-elect=false",
        "--profiling=false",
    )
    body = wait_status(
        lambda: https_get(port, "/healthz?verbose", None), 500, "healthz 500", scheduler
    )
    assert "[-]apiserver failed" in body

    kine = spawn(
        "kine", f"--listen-address=127.0.0.1:{etcd}", f"--endpoint=sqlite://{tmp_path}/s.db"
    )
    apiserver = spawn("kube-apiserver", *apiserver_args(pki, api, etcd))
    wait_status(lambda: https_get(port, "/healthz", None), 200, "scheduler healthz", scheduler)
    assert https_get(port, "/livez", None)[0] == 200

    _, clients = https_get(api, "/standin/clients", pki.ca.cert_file, pki.admin)
    assert "system:kube-scheduler" in [c["commonName"] for c in json.loads(clients)]
    for proc in (scheduler, apiserver, kine):
        assert proc.terminate() == 0


def test_controller_manager_checks_its_key_files_and_connects(
    spawn: Any, pki: PKI, tmp_path: Path
) -> None:
    _, api = start_control_plane(spawn, pki, tmp_path)
    port = free_port()
    kubeconfig = pki.kubeconfig("controller-manager", api, pki.controller_manager, embed=False)
    args = [
        f"--kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--cluster-signing-cert-file={pki.ca.cert_file}",
        f"--cluster-signing-key-file={pki.admin.key}",
        f"--root-ca-file={pki.ca.cert_file}",
        "--use-service-account-credentials=true",
        "--controllers=*,bootstrapsigner,tokencleaner",
        "--leader-elect=false",
    ]
    missing = tmp_path / "sa-missing.key"
    out = run("kube-controller-manager", *args, f"--service-account-private-key-file={missing}")
    assert out.returncode == 1
    assert str(missing) in out.stderr

    cm = spawn("kube-controller-manager", *args, f"--service-account-private-key-file={pki.sa_key}")
    wait_status(lambda: https_get(port, "/healthz", None), 200, "controller-manager healthz", cm)
    _, clients = https_get(api, "/standin/clients", pki.ca.cert_file, pki.admin)
    assert "system:kube-controller-manager" in [c["commonName"] for c in json.loads(clients)]
    assert cm.terminate() == 0


def test_scheduler_with_a_stranger_certificate_never_gets_healthy(
    spawn: Any, pki: PKI, tmp_path: Path
) -> None:
    _, api = start_control_plane(spawn, pki, tmp_path)
    port = free_port()
    kubeconfig = pki.kubeconfig("stranger", api, pki.stranger, embed=True)
    scheduler = spawn(
        "kube-scheduler",
        f"--kubeconfig={kubeconfig}",
        f"--secure-port={port}",
        "--bind-address=127.0.0.1",
    )
    wait_status(lambda: https_get(port, "/healthz", None), 500, "healthz 500", scheduler)
    # It keeps retrying (once a second) and logging the refused handshake.
    wait_until(
        lambda: scheduler.log().count("reach the apiserver") >= 2, timeout=30, what="retries"
    )
    assert https_get(port, "/healthz", None)[0] == 500


# --- kubelet -----------------------------------------------------------------------


@contextlib.contextmanager
def runtime_socket(path: Path) -> Iterator[None]:
    """A listening unix socket standing in for containerd's."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))
        s.listen(16)
        yield


def kubelet_config(tmp_path: Path, healthz_port: int, pki: PKI) -> Path:
    path = tmp_path / "kubelet.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kubelet.config.k8s.io/v1beta1",
                "kind": "KubeletConfiguration",
                "healthzPort": healthz_port,
                "healthzBindAddress": "127.0.0.1",
                "staticPodPath": str(tmp_path / "manifests"),
                "cgroupDriver": "cgroupfs",
                "authentication": {"x509": {"clientCAFile": pki.ca.cert_file}},
            }
        )
    )
    return path


def test_kubelet_healthy_after_runtime_and_registration(
    spawn: Any, pki: PKI, tmp_path: Path
) -> None:
    _, api = start_control_plane(spawn, pki, tmp_path)
    healthz = free_port()
    sock = tmp_path / "containerd.sock"
    kubeconfig = pki.kubeconfig("kubelet", api, pki.kubelet, embed=False)
    kubelet = spawn(
        "kubelet",
        f"--config={kubelet_config(tmp_path, healthz, pki)}",
        f"--kubeconfig={kubeconfig}",
        f"--container-runtime-endpoint=unix://{sock}",
        "--hostname-override=node1",
        "--node-ip=127.0.0.1",
    )
    body = wait_status(lambda: http_get(healthz, "/healthz"), 500, "healthz 500", kubelet)
    assert "container-runtime" in body
    with runtime_socket(sock):
        wait_status(lambda: http_get(healthz, "/healthz"), 200, "kubelet healthz", kubelet)
        _, nodes = https_get(api, "/api/v1/nodes", pki.ca.cert_file, pki.admin)
        [node] = json.loads(nodes)["items"]
        assert node["metadata"]["name"] == "node1"
        annotations = node["metadata"]["annotations"]
        assert annotations["standin.k4sinit.invalid/registered-by"] == "system:node:node1"
        assert kubelet.terminate() == 0


def test_kubelet_may_register_only_its_own_node(spawn: Any, pki: PKI, tmp_path: Path) -> None:
    _, api = start_control_plane(spawn, pki, tmp_path)
    healthz = free_port()
    sock = tmp_path / "containerd.sock"
    kubeconfig = pki.kubeconfig("kubelet", api, pki.kubelet, embed=True)
    with runtime_socket(sock):
        kubelet = spawn(
            "kubelet",
            f"--config={kubelet_config(tmp_path, healthz, pki)}",
            f"--kubeconfig={kubeconfig}",
            f"--container-runtime-endpoint=unix://{sock}",
            "--hostname-override=node2",  # the certificate says system:node:node1
        )
        wait_until(lambda: "403" in kubelet.log(), timeout=30, what=f"403:\n{kubelet.log()}")
        assert http_get(healthz, "/healthz")[0] == 500


def test_kubelet_rejects_a_foreign_config(pki: PKI, tmp_path: Path) -> None:
    config = tmp_path / "kubelet.yaml"
    config.write_text("apiVersion: v1\nkind: ConfigMap\n")
    out = run("kubelet", f"--config={config}", "--container-runtime-endpoint=unix:///x.sock")
    assert out.returncode == 1
    assert "KubeletConfiguration" in out.stderr


def test_sigterm_ends_a_starting_stand_in_promptly(spawn: Any, tmp_path: Path) -> None:
    kine = spawn(
        "kine",
        f"--listen-address=unix://{tmp_path}/kine.sock",
        f"--endpoint=sqlite://{tmp_path}/k.db",
    )
    wait_until(lambda: (tmp_path / "kine.sock").exists(), timeout=30, what="kine socket")
    assert kine.terminate(timeout=10) == 0
    assert "shutting down" in kine.log()
