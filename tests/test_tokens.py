"""Bootstrap tokens (k4sinit.node.tokens) and the apiserver client (k4sinit.node.apiclient).

The CA hash and the JWS are checked against vectors made elsewhere: openssl's
pipeline that kubeadm documents for ``--discovery-token-ca-cert-hash``, an
HMAC computed with the ``cryptography`` package, and a signature made by
Kubernetes' own Go code (k8s.io/cluster-bootstrap v0.37.2,
``jws.ComputeDetachedSignature``). The requests run against
:mod:`tests.fakeapi`; tests/test_join_cluster.py runs them against the real apiserver.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, hmac, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from k4sinit.core.jointoken import BootstrapToken
from k4sinit.node import tokens
from k4sinit.node.apiclient import APIClient, APIError
from k4sinit.node.tokens import TokenInfo, ca_hash, jws_problem, jws_sign, token_info

from .certs import CA
from .fakeapi import FakeAPIServer, fake_apiserver

TOKEN = BootstrapToken("abcdef", "0123456789abcdef")
# Made by k8s.io/cluster-bootstrap/token/jws.ComputeDetachedSignature(CONTENT, "abcdef",
# "0123456789abcdef") at v0.37.2 (the module the k4s build's controller-manager uses).
CONTENT = "apiVersion: v1\nkind: Config\nclusters:\n- name: ''\n  cluster:\n    server: https://10.0.0.1:6443\n"
GO_JWS = "eyJhbGciOiJIUzI1NiIsImtpZCI6ImFiY2RlZiJ9..J6xm4W3qQ-rkwq9kVHl32ZEVoo24cFZqc1U7e-RfZq0"
NOW = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)


# --- the CA hash ---------------------------------------------------------------------


def rsa_ca_pem() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rsa ca")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW)
        .not_valid_after(NOW + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
@pytest.mark.parametrize("kind", ["ecdsa", "rsa"])
def test_the_ca_hash_is_kubeadms(kind: str, tmp_path: Path) -> None:
    pem = Path(CA.create(tmp_path).cert_file).read_bytes() if kind == "ecdsa" else rsa_ca_pem()
    pub = subprocess.run(
        ["openssl", "x509", "-pubkey", "-noout"], input=pem, capture_output=True, check=True
    ).stdout
    der = subprocess.run(
        ["openssl", "pkey", "-pubin", "-outform", "der"], input=pub, capture_output=True, check=True
    ).stdout
    assert ca_hash(pem) == "sha256:" + hashlib.sha256(der).hexdigest()


def test_the_ca_hash_of_something_else_is_an_error() -> None:
    with pytest.raises(ValueError):
        ca_hash(b"not a certificate")


# --- JWS ---------------------------------------------------------------------------


def test_jws_sign_makes_the_signature_kubernetes_makes() -> None:
    assert jws_sign(CONTENT, TOKEN) == GO_JWS
    assert jws_problem(GO_JWS, CONTENT, TOKEN) is None


def test_jws_is_hs256_keyed_with_the_secret() -> None:
    header, empty, signature = jws_sign(CONTENT, TOKEN).split(".")
    assert empty == ""
    assert json.loads(base64.urlsafe_b64decode(header + "==")) == {"alg": "HS256", "kid": "abcdef"}
    payload = base64.urlsafe_b64encode(CONTENT.encode()).rstrip(b"=")
    mac = hmac.HMAC(TOKEN.secret.encode(), hashes.SHA256())
    mac.update(header.encode() + b"." + payload)
    assert base64.urlsafe_b64decode(signature + "=") == mac.finalize()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.mark.parametrize(
    ("detached", "content", "token", "problem"),
    [
        (GO_JWS, CONTENT + " ", TOKEN, "the signature does not match the token's secret"),
        (GO_JWS, CONTENT, BootstrapToken("abcdef", "x" * 16), "does not match the token's secret"),
        (GO_JWS, CONTENT, BootstrapToken("zzzzzz", "0123456789abcdef"), "for token 'abcdef'"),
        (GO_JWS.replace("..", ".e30."), CONTENT, TOKEN, "not a detached JWS"),
        ("abc", CONTENT, TOKEN, "not a detached JWS"),
        ("!!!.." + GO_JWS.split("..")[1], CONTENT, TOKEN, "does not decode"),
        (_b64(b'{"alg":"none","kid":"abcdef"}') + "..", CONTENT, TOKEN, "not signed with HS256"),
        (_b64(b"[1]") + "..", CONTENT, TOKEN, "not signed with HS256"),
    ],
)
def test_jws_problems(detached: str, content: str, token: BootstrapToken, problem: str) -> None:
    found = jws_problem(detached, content, token)
    assert found is not None and problem in found


# --- tokens and their Secrets ----------------------------------------------------------


def test_new_tokens_are_random_bootstrap_tokens() -> None:
    made = {str(tokens.new_token()) for _ in range(50)}
    assert len(made) == 50  # BootstrapToken checks each one's form


def stored(token: BootstrapToken, **data: str) -> dict[str, object]:
    fields = {"token-id": token.id, "token-secret": token.secret} | data
    return {
        "type": "bootstrap.kubernetes.io/token",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in fields.items()},
    }


def test_token_info_reads_a_stored_secret_without_its_secret() -> None:
    secret = stored(
        TOKEN,
        expiration="2026-05-02T12:00:00Z",
        **{"usage-bootstrap-signing": "true", "usage-bootstrap-authentication": "true"},
        **{"usage-bootstrap-other": "false", "auth-extra-groups": "a,b", "description": "d"},
    )
    info = token_info(secret)
    assert info == TokenInfo(
        "abcdef",
        dt.datetime(2026, 5, 2, 12, 0, tzinfo=dt.UTC),
        ("authentication", "signing"),
        ("a", "b"),
        "d",
    )
    assert info.ttl(NOW) == dt.timedelta(days=1)
    assert TOKEN.secret not in json.dumps(info.to_json())
    assert info.to_json()["expires"] == "2026-05-02T12:00:00Z"


def test_token_info_of_other_secrets_and_odd_fields() -> None:
    assert token_info({"type": "Opaque", "data": {}}) is None
    assert token_info({"type": "bootstrap.kubernetes.io/token", "data": {}}) is None
    info = token_info(stored(TOKEN, expiration="soon"))
    assert info is not None and info.expires is None and info.ttl(NOW) is None


# --- requests, against the stand-in apiserver -----------------------------------------


def admin(fake: FakeAPIServer) -> APIClient:
    return APIClient(
        fake.url, ca_pem=fake.ca_pem, cert_file=fake.admin.cert, key_file=fake.admin.key
    )


def test_create_list_revoke(tmp_path: Path) -> None:
    with fake_apiserver(tmp_path) as fake:
        client = admin(fake)
        token, info = tokens.create(client, ttl=dt.timedelta(hours=2), now=NOW)
        secret = fake.secrets[f"bootstrap-token-{token.id}"]
        assert secret["type"] == "bootstrap.kubernetes.io/token"
        assert secret["metadata"]["namespace"] == "kube-system"
        assert secret["stringData"] == {
            "description": tokens.DESCRIPTION,
            "token-id": token.id,
            "token-secret": token.secret,
            "usage-bootstrap-authentication": "true",
            "usage-bootstrap-signing": "true",
            "auth-extra-groups": "system:bootstrappers:k4sinit:default-node-token",
            "expiration": "2026-05-01T14:00:00Z",
        }
        forever, _ = tokens.create(client, ttl=None)
        assert "expiration" not in fake.secrets[f"bootstrap-token-{forever.id}"]["stringData"]
        listed = tokens.list_tokens(client)
        assert info in listed
        assert sorted(i.id for i in listed) == sorted([token.id, forever.id])
        tokens.revoke(client, token.id)
        assert [i.id for i in tokens.list_tokens(client)] == [forever.id]
        with pytest.raises(APIError, match=f"no bootstrap token '{token.id}' in the cluster"):
            tokens.revoke(client, token.id)
        assert {cn for _, _, cn in fake.requests} == {"admin"}


def test_an_unauthorized_request_says_so(tmp_path: Path) -> None:
    with fake_apiserver(tmp_path) as fake:
        anonymous = APIClient(fake.url, ca_pem=fake.ca_pem)
        with pytest.raises(APIError, match="401 Unauthorized") as caught:
            tokens.list_tokens(anonymous)
        assert caught.value.status == 401


def test_a_server_of_another_ca_is_not_trusted(tmp_path: Path) -> None:
    other = Path(CA.create(tmp_path, "other").cert_file).read_bytes()
    with (
        fake_apiserver(tmp_path) as fake,
        pytest.raises(APIError, match="the server's certificate: "),
    ):
        APIClient(fake.url, ca_pem=other).get("/")


def test_an_unreachable_server_says_so() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # a port nobody listens on while we hold it
        port = s.getsockname()[1]
        with pytest.raises(
            APIError, match=f"cannot reach https://127.0.0.1:{port}: Connection refused"
        ):
            APIClient(f"https://127.0.0.1:{port}", insecure=True).get("/")


def test_a_client_trusts_one_way() -> None:
    with pytest.raises(ValueError, match="not both"):
        APIClient("https://a", ca_pem=b"x", insecure=True)
    with pytest.raises(ValueError, match="not both"):
        APIClient("https://a")
