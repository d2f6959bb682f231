"""Bootstrap tokens on the controller: make, list and revoke them; the CA hash; JWS.

``k4sinit token create`` makes a bootstrap token (:func:`create`) the way
``kubeadm token create`` does: a random ``id.secret``, stored by the
apiserver as the Secret ``kube-system/bootstrap-token-<id>`` (type
``bootstrap.kubernetes.io/token``, usable for authentication and signing,
in the group :data:`~k4sinit.services.manifests.BOOTSTRAP_GROUP` that the
manifests role binds to ``system:node-bootstrapper`` and the CSR
auto-approval, expiring after its TTL). It prints a join token
(:mod:`k4sinit.core.jointoken`) that adds the server and the CA hash.

What happens to the token then is Kubernetes' doing: the controller-manager's
bootstrapsigner signs ``kube-public/cluster-info`` with it
(``jws-kubeconfig-<id>``, :func:`jws_sign` computes the same), the apiserver
accepts it as a bearer token until it expires, and the tokencleaner deletes
the Secret once it has expired. :func:`revoke` deletes the Secret at once:
the signature goes with it and the apiserver stops accepting the token.

The requests block (:class:`~k4sinit.node.apiclient.APIClient`); the daemon
runs them in a thread. The rest is pure.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import secrets
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from k4sinit.core.jointoken import BootstrapToken, JoinToken
from k4sinit.core.nodespec import APISERVER, NodeSettings
from k4sinit.node.apiclient import APIClient, APIError
from k4sinit.services.manifests import BOOTSTRAP_GROUP, bootstrap_token_secret

SECRET_TYPE = "bootstrap.kubernetes.io/token"
SECRETS_PATH = "/api/v1/namespaces/kube-system/secrets"
DEFAULT_TTL = dt.timedelta(hours=24)  # kubeadm's default
DESCRIPTION = "k4sinit: joins a worker node (k4sinit token create)"
_ALPHABET = string.ascii_lowercase + string.digits


# --- pure ----------------------------------------------------------------------


def ca_hash(cert_pem: bytes) -> str:
    """``sha256:<hex>`` of the certificate's DER SubjectPublicKeyInfo (kubeadm's CA pin).

    The same as ``openssl x509 -pubkey -noout | openssl pkey -pubin -outform der |
    sha256sum``. Raises ValueError when ``cert_pem`` holds no PEM certificate.
    """
    cert = x509.load_pem_x509_certificate(cert_pem)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(spki).hexdigest()


def new_token() -> BootstrapToken:
    """A random bootstrap token (``secrets``: 16 characters of [a-z0-9], about 82 bits)."""
    return BootstrapToken(
        "".join(secrets.choice(_ALPHABET) for _ in range(6)),
        "".join(secrets.choice(_ALPHABET) for _ in range(16)),
    )


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jws_sign(content: str, token: BootstrapToken) -> str:
    """The detached JWS (``header..signature``) that Kubernetes' bootstrapsigner puts in
    ``cluster-info`` as ``jws-kubeconfig-<id>``: HS256 keyed with the token's secret,
    the protected header ``{"alg":"HS256","kid":"<id>"}`` (k8s.io/cluster-bootstrap/token/jws)."""
    header = _b64url(json.dumps({"alg": "HS256", "kid": token.id}, separators=(",", ":")).encode())
    mac = hmac.new(
        token.secret.encode(), f"{header}.{_b64url(content.encode())}".encode(), "sha256"
    )
    return f"{header}..{_b64url(mac.digest())}"


def jws_problem(detached: str, content: str, token: BootstrapToken) -> str | None:
    """Why ``detached`` is not ``token``'s signature of ``content``, or None when it is.

    Checked as a JWS verifier does (the header read, not re-made): the form
    ``header..signature``, ``alg`` HS256, ``kid`` the token's id, the HMAC
    compared in constant time.
    """
    parts = detached.split(".")
    if len(parts) != 3 or parts[1] != "":
        return "not a detached JWS (header..signature)"
    try:
        header = json.loads(_b64url_decode(parts[0]))
        signature = _b64url_decode(parts[2])
    except ValueError:
        return "a JWS whose header or signature does not decode"
    if not isinstance(header, dict) or header.get("alg") != "HS256":
        return "a JWS not signed with HS256"
    if header.get("kid") != token.id:
        return f"a JWS for token {header.get('kid')!r}, not {token.id!r}"
    signed = f"{parts[0]}.{_b64url(content.encode())}".encode()
    expected = hmac.new(token.secret.encode(), signed, "sha256").digest()
    if not hmac.compare_digest(signature, expected):
        return "the signature does not match the token's secret"
    return None


def rfc3339(when: dt.datetime) -> str:
    """``when`` (aware) as Kubernetes writes times: UTC, seconds, ``Z``."""
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class TokenJSON(TypedDict):
    """A token on the control socket (``token list``): no secret."""

    id: str
    expires: str | None  # RFC 3339; None: never
    usages: list[str]
    groups: list[str]
    description: str


@dataclass(frozen=True)
class TokenInfo:
    """A bootstrap token as ``token list`` shows it: everything but the secret."""

    id: str
    expires: dt.datetime | None  # None: never
    usages: tuple[str, ...]
    groups: tuple[str, ...]
    description: str

    def ttl(self, now: dt.datetime) -> dt.timedelta | None:
        """Time left (negative once expired); None when it never expires."""
        return None if self.expires is None else self.expires - now

    def to_json(self) -> TokenJSON:
        return {
            "id": self.id,
            "expires": None if self.expires is None else rfc3339(self.expires),
            "usages": list(self.usages),
            "groups": list(self.groups),
            "description": self.description,
        }


def token_info(secret: dict[str, Any]) -> TokenInfo | None:
    """The token a Secret of type bootstrap.kubernetes.io/token holds; None for another."""
    if secret.get("type") != SECRET_TYPE:
        return None
    raw = secret.get("data") or {}

    def field(key: str) -> str:
        try:
            return base64.b64decode(raw.get(key, "")).decode()
        except (ValueError, UnicodeDecodeError):
            return ""

    token_id = field("token-id")
    if not token_id:
        return None
    try:
        expires = dt.datetime.fromisoformat(field("expiration")) if field("expiration") else None
    except ValueError:
        expires = None
    usages = tuple(
        sorted(
            key.removeprefix("usage-bootstrap-")
            for key in raw
            if key.startswith("usage-bootstrap-") and field(key) == "true"
        )
    )
    groups = tuple(g for g in field("auth-extra-groups").split(",") if g)
    return TokenInfo(token_id, expires, usages, groups, field("description"))


# --- requests (blocking) -----------------------------------------------------------


def create(
    client: APIClient,
    *,
    ttl: dt.timedelta | None = DEFAULT_TTL,
    description: str = DESCRIPTION,
    now: dt.datetime | None = None,
) -> tuple[BootstrapToken, TokenInfo]:
    """Make a new bootstrap token and store its Secret; ``ttl`` None: it never expires.

    Raises :class:`APIError` (a token id already taken, about one in two
    billion, is one too: the caller may ask again).
    """
    token = new_token()
    expires = None if ttl is None else (now or dt.datetime.now(dt.UTC)) + ttl
    secret = bootstrap_token_secret(
        str(token),
        description=description,
        expiration=None if expires is None else rfc3339(expires),
    )
    client.request("POST", SECRETS_PATH, secret)
    usages = ("authentication", "signing")
    return token, TokenInfo(token.id, expires, usages, (BOOTSTRAP_GROUP,), description)


def list_tokens(client: APIClient) -> list[TokenInfo]:
    """Every bootstrap token the cluster holds (by id). Raises :class:`APIError`."""
    answer = client.get(f"{SECRETS_PATH}?fieldSelector=type%3D{SECRET_TYPE.replace('/', '%2F')}")
    items = answer.get("items", []) if isinstance(answer, dict) else []
    found = [info for item in items if (info := token_info(item)) is not None]
    return sorted(found, key=lambda info: info.id)


def revoke(client: APIClient, token_id: str) -> None:
    """Delete the token's Secret. Raises :class:`APIError` (status 404: no such token)."""
    try:
        client.request("DELETE", f"{SECRETS_PATH}/bootstrap-token-{token_id}")
    except APIError as exc:
        if exc.status == 404:
            raise APIError(f"no bootstrap token {token_id!r} in the cluster", 404) from None
        raise


# --- the controller's side of ``k4sinit token`` (blocking) ---------------------------


class TokenError(Exception):
    """A token request this node cannot serve; the message says why."""


def admin_client(node: NodeSettings) -> APIClient:
    """A client of this node's apiserver as its admin (the admin kubeconfig's server,
    the PKI's CA and admin certificate). Raises :class:`TokenError`."""
    if APISERVER not in node.roles:
        raise TokenError(
            f"this node runs no {APISERVER} (profile {node.profile.value}): "
            "make tokens on a controller"
        )
    path = node.kubeconfig("admin")
    try:
        server = yaml.safe_load(Path(path).read_text())["clusters"][0]["cluster"]["server"]
        ca_pem = Path(node.pki("ca.crt")).read_bytes()
    except FileNotFoundError as exc:
        raise TokenError(f"{exc.filename} does not exist yet: is the PKI made?") from None
    except (OSError, yaml.YAMLError, LookupError, TypeError) as exc:
        raise TokenError(f"cannot read {path}: {exc}") from None
    return APIClient(
        str(server), ca_pem=ca_pem, cert_file=node.pki("admin.crt"), key_file=node.pki("admin.key")
    )


def create_join_token(
    node: NodeSettings, *, ttl: dt.timedelta | None = DEFAULT_TTL, server: str | None = None
) -> tuple[JoinToken, TokenInfo]:
    """A new bootstrap token in the cluster, and the join token that carries it to a
    worker: ``server`` (default: the admin kubeconfig's, the node's own address) and
    the CA's hash. Raises :class:`TokenError`, :class:`APIError`."""
    client = admin_client(node)
    assert client.ca_pem is not None
    token, info = create(client, ttl=ttl)
    return JoinToken(server or client.server, ca_hash(client.ca_pem), token), info
