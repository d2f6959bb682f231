"""Join tokens: what a worker needs to join a cluster, in one line of text.

A join token holds the apiserver's URL, the hash of the cluster CA and a
bootstrap token, as ``k4sinit token create`` prints it (k3s-like)::

    K4S1::https://10.0.0.1:6443::sha256:<64 hex digits>::<id>.<secret>

* ``K4S1`` names the format (version 1);
* the server is an ``https://`` URL with a host and an optional port, no path;
* ``sha256:<hex>`` is the SHA-256 of the CA certificate's DER
  SubjectPublicKeyInfo, as kubeadm's ``--discovery-token-ca-cert-hash``
  (:func:`k4sinit.node.tokens.ca_hash`): the worker trusts exactly that CA;
* ``<id>.<secret>`` is a Kubernetes bootstrap token: ``[a-z0-9]{6}`` then
  ``[a-z0-9]{16}``. The id is public (it names the Secret
  ``kube-system/bootstrap-token-<id>``); the secret is a password.

Fields are separated by ``::`` and the last two never contain it, so the
token is split from the right: an IPv6 server (``https://[fd00::1]:6443``)
needs no escaping.

Pure: no I/O. Nothing here puts a token's secret into an error message or a
``repr``; :func:`str` of a token is the only way to get it back as text.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from k4sinit.core.names import is_dns_subdomain

PREFIX = "K4S1"
SEPARATOR = "::"
FORMAT = "K4S1::<server URL>::sha256:<64 hex digits>::<id>.<secret>"
BOOTSTRAP_FORMAT = "abcdef.0123456789abcdef ([a-z0-9]{6}.[a-z0-9]{16})"
TOKEN_ID = re.compile(r"[a-z0-9]{6}")
TOKEN_SECRET = re.compile(r"[a-z0-9]{16}")
BOOTSTRAP_TOKEN = re.compile(r"([a-z0-9]{6})\.([a-z0-9]{16})")
CA_HASH = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True, slots=True)
class BootstrapToken:
    """A Kubernetes bootstrap token ``id.secret``; ``repr`` shows the id only."""

    id: str
    secret: str = field(repr=False)

    def __post_init__(self) -> None:
        if not TOKEN_ID.fullmatch(self.id) or not TOKEN_SECRET.fullmatch(self.secret):
            raise ValueError(f"not a bootstrap token: expected {BOOTSTRAP_FORMAT}")

    def __str__(self) -> str:
        return f"{self.id}.{self.secret}"


@dataclass(frozen=True, slots=True)
class JoinToken:
    """A parsed join token (see the module docstring); ``str()`` formats it back."""

    server: str
    ca_hash: str
    token: BootstrapToken

    def __post_init__(self) -> None:
        problem = server_problem(self.server)
        if problem is not None:
            raise ValueError(f"the join token's server: {problem}")
        if not CA_HASH.fullmatch(self.ca_hash):
            raise ValueError("the join token's CA hash: expected sha256:<64 hex digits>")

    def __str__(self) -> str:
        return SEPARATOR.join((PREFIX, self.server, self.ca_hash, str(self.token)))


def parse_bootstrap_token(text: str) -> BootstrapToken:
    """``id.secret`` as a :class:`BootstrapToken`; ValueError says what is wrong (not the text)."""
    match = BOOTSTRAP_TOKEN.fullmatch(text)
    if match is None:
        raise ValueError(f"not a bootstrap token: expected {BOOTSTRAP_FORMAT}")
    return BootstrapToken(match.group(1), match.group(2))


def parse_join_token(text: str) -> JoinToken:
    """Parse a join token; ValueError names the part that is wrong, never the secret."""
    text = text.strip()
    if not text.startswith(PREFIX + SEPARATOR):
        if BOOTSTRAP_TOKEN.fullmatch(text):
            raise ValueError(
                "a bare bootstrap token, not a join token: a join token also holds the "
                "server and the CA hash (k4sinit token create on the controller prints one)"
            )
        if text.startswith("K4S") and SEPARATOR in text:
            raise ValueError(
                f"join token format {text.split(SEPARATOR)[0]!r}: this k4sinit reads {PREFIX}"
            )
        raise ValueError(f"not a join token: expected {FORMAT}")
    parts = text[len(PREFIX + SEPARATOR) :].rsplit(SEPARATOR, 2)
    if len(parts) != 3:
        raise ValueError(f"not a join token: expected {FORMAT}")
    server, ca_hash, token = parts
    if not CA_HASH.fullmatch(ca_hash):
        raise ValueError("the join token's CA hash: expected sha256:<64 hex digits>")
    try:
        bootstrap = parse_bootstrap_token(token)
    except ValueError as exc:
        raise ValueError(f"the join token's last part: {exc}") from None
    return JoinToken(server, ca_hash, bootstrap)


def server_problem(url: str) -> str | None:
    """What is wrong with ``url`` as an apiserver address, or None.

    It must be ``https://HOST[:PORT]``: HOST a DNS name, an IPv4 address or a
    bracketed IPv6 address; nothing after the port but an optional ``/``.
    """
    example = "like https://10.0.0.1:6443"
    if not url.startswith("https://"):
        return f"expected an https:// URL, {example}"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        return f"{exc}, {example}"
    if parts.path not in ("", "/") or parts.query or parts.fragment or "@" in parts.netloc:
        return f"only a host and a port, {example}"
    host = parts.hostname or ""  # lowercased, an IPv6 address without its brackets
    if port == 0:
        return "port 0"
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"invalid IPv6 address {host!r}"
    elif not is_dns_subdomain(host):
        return f"invalid host {host!r}, {example}"
    return None
