"""The cluster PKI: CAs, the service-account key pair, leaf certificates, kubeconfigs.

``ensure_pki(spec)`` makes the PKI directory hold what the node's roles need,
the way kubeadm lays it out, and is idempotent::

    ensure_pki(spec)
      1. read and check   ca, front-proxy-ca, sa     (unreadable/mismatched -> PKIError)
      2. plan in memory   new CAs and keys; for each leaf: reuse, or issue with a reason
                          (missing, key mismatch, other CA, subject/SANs/usage
                          changed, expiring); each kubeconfig: reuse or rewrite
      3. write            only what changed, each file atomically (tmp + rename)

Nothing is written before the whole plan stands, so an error leaves the directory
exactly as it was. A CA (and ``sa.key``, whose replacement would void every
service-account token) is never replaced: a broken one is a :class:`PKIError`, an
ageing one a warning. A directory supplied from outside (baked into the image, a
persistent disk) is reused as is where valid, byte for byte; its ``ca.key`` may
even be absent, as long as nothing needs signing.

Keys are ECDSA P-256 by default: generating one takes well under a millisecond,
where RSA 2048 takes tens to hundreds under qemu's TCG, at every first boot of a
diskless node; Kubernetes accepts P-256 everywhere, the service-account signing
key included (ES256). ``key_type="rsa-2048"`` is there for tools that insist.

Blocking and CPU-bound: callers run it in a thread (``trio.to_thread.run_sync``).
On a valid tree it parses and verifies signatures, it does not sign.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_address
from pathlib import Path
from typing import Literal, TypeVar

import yaml
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from k4sinit.core.netspec import IPAddress
from k4sinit.core.nodespec import (
    APISERVER_PORT,
    DEFAULT_CLUSTER_DOMAIN,
    DEFAULT_DATA_DIR,
    DEFAULT_SERVICE_CIDR,
    KUBECONFIG_DIR_NAME,
    PKI_DIR_NAME,
)

KeyType = Literal["ecdsa-p256", "rsa-2048"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

_T = TypeVar("_T")

DEFAULT_DIR = Path(DEFAULT_DATA_DIR) / PKI_DIR_NAME
# Certificates start an hour in the past: a diskless node's clock comes from NTP,
# and peers whose clocks lag a little must not see "not yet valid".
BACKDATE = dt.timedelta(hours=1)
KEY_MODE = 0o600
CERT_MODE = 0o644
DIR_MODE = 0o755

SERVER = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT = ExtendedKeyUsageOID.CLIENT_AUTH


class PKIError(Exception):
    """The PKI directory holds material k4sinit must not replace and cannot use."""


@dataclass(frozen=True)
class PKISpec:
    """What the node's PKI must contain.

    ``apiserver_url`` defaults to ``https://<first node address or 127.0.0.1>:6443``
    and ``kubeconfig_dir`` to ``<dir>/../kubeconfigs``; read them through
    :attr:`server_url` and :attr:`kubeconfigs`. Raises ``ValueError`` when invalid.
    """

    node_name: str
    node_addresses: tuple[IPAddress, ...] = ()
    dir: Path = DEFAULT_DIR
    kubeconfig_dir: Path | None = None
    service_cidr: IPv4Network | IPv6Network = DEFAULT_SERVICE_CIDR
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
    apiserver_url: str | None = None
    ca_days: int = 3650
    leaf_days: int = 365
    renew_before_days: int = 30
    key_type: KeyType = "ecdsa-p256"

    def __post_init__(self) -> None:
        if not self.node_name or self.node_name != self.node_name.lower():
            raise ValueError(f"node_name {self.node_name!r}: must be a lowercase DNS name")
        if not 0 <= self.renew_before_days < self.leaf_days <= self.ca_days:
            # Otherwise every fresh leaf would already be due, and reissued on every call.
            raise ValueError("need 0 <= renew_before_days < leaf_days <= ca_days")
        if self.service_cidr.num_addresses < 4:
            raise ValueError(f"service_cidr {self.service_cidr}: too small")
        if self.key_type not in ("ecdsa-p256", "rsa-2048"):
            raise ValueError(f"key_type {self.key_type!r}: use 'ecdsa-p256' or 'rsa-2048'")

    @property
    def server_url(self) -> str:
        """The apiserver URL the kubeconfigs point at."""
        if self.apiserver_url:
            return self.apiserver_url
        host = self.node_addresses[0] if self.node_addresses else ip_address("127.0.0.1")
        shown = f"[{host}]" if host.version == 6 else str(host)
        return f"https://{shown}:{APISERVER_PORT}"

    @property
    def kubeconfigs(self) -> Path:
        """The directory of the kubeconfigs."""
        return self.kubeconfig_dir or self.dir.parent / KUBECONFIG_DIR_NAME

    @property
    def service_ip(self) -> IPAddress:
        """The first IP of the service range: the ``kubernetes`` service's ClusterIP."""
        return self.service_cidr.network_address + 1


@dataclass(frozen=True)
class PKIResult:
    """What :func:`ensure_pki` did. Items are named like their files' stems
    (``ca``, ``sa``, ``apiserver``) or kubeconfigs (``admin.conf``)."""

    created: tuple[str, ...] = ()
    reused: tuple[str, ...] = ()
    reissued: tuple[tuple[str, str], ...] = ()  # (item, reason)
    warnings: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        """Whether anything was written."""
        return bool(self.created or self.reissued)

    def lines(self) -> list[str]:
        """One line per fact, for the boot log."""
        out = []
        if self.created:
            out.append("created: " + ", ".join(self.created))
        out += [f"reissued {item}: {reason}" for item, reason in self.reissued]
        if self.reused:
            out.append("reused: " + ", ".join(self.reused))
        out += [f"warning: {w}" for w in self.warnings]
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


# --- what the node needs -------------------------------------------------------


@dataclass(frozen=True)
class _CADef:
    name: str
    cn: str


@dataclass(frozen=True)
class _LeafDef:
    name: str
    ca: str
    cn: str
    orgs: tuple[str, ...] = ()
    usage: x509.ObjectIdentifier = CLIENT
    dns: tuple[str, ...] = ()
    ips: tuple[IPAddress, ...] = ()


@dataclass(frozen=True)
class _KubeconfigDef:
    name: str  # file name
    leaf: str


CAS = (_CADef("ca", "kubernetes"), _CADef("front-proxy-ca", "front-proxy-ca"))
KUBECONFIGS = (
    _KubeconfigDef("admin.conf", "admin"),
    _KubeconfigDef("scheduler.conf", "scheduler"),
    _KubeconfigDef("controller-manager.conf", "controller-manager"),
    _KubeconfigDef("kubelet.conf", "kubelet-client"),
    _KubeconfigDef("coredns.conf", "coredns"),
)
LOCAL_DNS = ("localhost",)
LOCAL_IPS: tuple[IPAddress, ...] = (ip_address("127.0.0.1"),)


def _leaf_defs(spec: PKISpec) -> tuple[_LeafDef, ...]:
    """The leaf certificates the spec asks for, in issuing order."""
    node = f"system:node:{spec.node_name}"
    svc = ("kubernetes", "kubernetes.default", "kubernetes.default.svc")
    return (
        _LeafDef(
            "apiserver",
            "ca",
            "kube-apiserver",
            usage=SERVER,
            dns=(spec.node_name, *svc, f"kubernetes.default.svc.{spec.cluster_domain}", *LOCAL_DNS),
            ips=(*spec.node_addresses, spec.service_ip, *LOCAL_IPS),
        ),
        _LeafDef(
            "apiserver-kubelet-client", "ca", "kube-apiserver-kubelet-client", ("system:masters",)
        ),
        _LeafDef("front-proxy-client", "front-proxy-ca", "front-proxy-client"),
        _LeafDef("admin", "ca", "k4sinit-admin", ("system:masters",)),
        _LeafDef("scheduler", "ca", "system:kube-scheduler"),
        _LeafDef("controller-manager", "ca", "system:kube-controller-manager"),
        _LeafDef("coredns", "ca", "k4sinit:coredns"),  # bound to system:coredns (manifests role)
        _LeafDef("kubelet-client", "ca", node, ("system:nodes",)),
        _LeafDef(
            "kubelet-server",
            "ca",
            node,
            ("system:nodes",),
            SERVER,
            (spec.node_name,),
            spec.node_addresses,
        ),
        _LeafDef("scheduler-server", "ca", "kube-scheduler", (), SERVER, LOCAL_DNS, LOCAL_IPS),
        _LeafDef(
            "controller-manager-server",
            "ca",
            "kube-controller-manager",
            (),
            SERVER,
            LOCAL_DNS,
            LOCAL_IPS,
        ),
    )


# --- the one entry point -------------------------------------------------------


@dataclass
class _Pair:
    """A certificate and its key, as objects and as the PEM bytes on disk."""

    cert: x509.Certificate
    key: PrivateKey | None
    cert_pem: bytes
    key_pem: bytes


@dataclass
class _Plan:
    spec: PKISpec
    now: dt.datetime
    writes: list[tuple[Path, bytes, int]] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    reissued: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def write_pair(self, name: str, pair: _Pair) -> None:
        self.writes.append((self.spec.dir / f"{name}.key", pair.key_pem, KEY_MODE))
        self.writes.append((self.spec.dir / f"{name}.crt", pair.cert_pem, CERT_MODE))


def ensure_pki(spec: PKISpec, *, now: dt.datetime | None = None) -> PKIResult:
    """Create what is missing under ``spec.dir`` and ``spec.kubeconfigs``, reuse what
    is valid, reissue leaves and rewrite kubeconfigs that no longer fit the spec.

    ``now`` (aware) is for tests; the default is the wall clock. Raises
    :class:`PKIError` (naming the file) for an unreadable or mismatched CA or
    ``sa.key``, or when a leaf must be signed by a CA whose key is absent; nothing
    is written then. Raises ``OSError`` when the directory cannot be written.
    """
    plan = _Plan(spec, now or dt.datetime.now(dt.UTC))
    cas = {d.name: _ensure_ca(plan, d) for d in CAS}
    _ensure_sa(plan)
    pairs = {d.name: _ensure_leaf(plan, d, cas[d.ca]) for d in _leaf_defs(spec)}
    for kc in KUBECONFIGS:
        _ensure_kubeconfig(plan, kc, cas["ca"], pairs[kc.leaf])
    for path, data, mode in plan.writes:
        write_atomic(path, data, mode)
    for directory in {path.parent for path, _, _ in plan.writes}:
        _fsync_dir(directory)
    return PKIResult(
        tuple(plan.created), tuple(plan.reused), tuple(plan.reissued), tuple(plan.warnings)
    )


def _ensure_ca(plan: _Plan, d: _CADef) -> _Pair:
    crt, key = plan.spec.dir / f"{d.name}.crt", plan.spec.dir / f"{d.name}.key"
    if not crt.exists() and not key.exists():
        pair = _new_ca(plan, d.cn)
        plan.write_pair(d.name, pair)
        plan.created.append(d.name)
        return pair
    never = f"k4sinit never replaces a CA: restore it, or remove both {crt.name} and {key.name} to start a new one"
    if not crt.exists():
        raise PKIError(f"{crt}: missing while {key.name} exists; {never}")
    cert_pem = crt.read_bytes()
    cert = _load_cert(cert_pem)
    if cert is None:
        raise PKIError(f"{crt}: not a readable PEM certificate; {never}")
    if not _is_ca(cert):
        raise PKIError(f"{crt}: not a CA certificate (basicConstraints CA:FALSE); {never}")
    pair = _Pair(cert, None, cert_pem, b"")
    if key.exists():  # without it: a CA supplied from outside that signs nothing here
        pair.key_pem = key.read_bytes()
        pair.key = _load_key(pair.key_pem)
        if pair.key is None:
            raise PKIError(f"{key}: not a readable unencrypted PEM private key; {never}")
        if pair.key.public_key() != cert.public_key():
            raise PKIError(f"{key}: does not match {crt.name}; {never}")
    plan.reused.append(d.name)
    left = cert.not_valid_after_utc - plan.now
    if left < dt.timedelta(days=plan.spec.leaf_days):
        when = f"in {left.days} days" if left.days >= 0 else f"{-left.days} days ago"
        plan.warnings.append(
            f"{crt}: the CA expires {when} ({cert.not_valid_after_utc:%Y-%m-%d}), before the "
            "certificates it signs now; k4sinit never replaces a CA: rotate it by hand"
        )
    if plan.now < cert.not_valid_before_utc:
        plan.warnings.append(
            f"{crt}: the clock ({plan.now:%Y-%m-%d %H:%M}) is before the CA's start "
            f"({cert.not_valid_before_utc:%Y-%m-%d %H:%M}); is the time set?"
        )
    return pair


def _ensure_sa(plan: _Plan) -> None:
    key_path, pub_path = plan.spec.dir / "sa.key", plan.spec.dir / "sa.pub"
    if not key_path.exists():
        if pub_path.exists():
            raise PKIError(
                f"{key_path}: missing while sa.pub exists; a new key would void every "
                "service-account token: restore it, or remove sa.pub too"
            )
        key = _new_key(plan.spec.key_type)
        plan.writes.append((key_path, _key_pem(key), KEY_MODE))
        plan.writes.append((pub_path, _pub_pem(key), CERT_MODE))
        plan.created.append("sa")
        return
    loaded = _load_key(key_path.read_bytes())
    if loaded is None:
        raise PKIError(f"{key_path}: not a readable unencrypted PEM private key")
    pub = _pub_pem(loaded)
    if not pub_path.exists():
        plan.writes.append((pub_path, pub, CERT_MODE))
        plan.reissued.append(("sa", "sa.pub missing, derived from sa.key"))
        return
    try:  # compare keys, not bytes: a supplied sa.pub may be encoded differently
        same = serialization.load_pem_public_key(pub_path.read_bytes()) == loaded.public_key()
    except ValueError:
        same = False
    if same:
        plan.reused.append("sa")
    else:
        plan.writes.append((pub_path, pub, CERT_MODE))
        plan.reissued.append(("sa", "sa.pub did not match sa.key, derived again"))


def _ensure_leaf(plan: _Plan, d: _LeafDef, ca: _Pair) -> _Pair:
    crt, key = plan.spec.dir / f"{d.name}.crt", plan.spec.dir / f"{d.name}.key"
    if not crt.exists() and not key.exists():
        reason = None
    else:
        current, reason = _check_leaf(plan, d, ca, crt, key)
        if current is not None:
            plan.reused.append(d.name)
            return current
    if ca.key is None:
        raise PKIError(
            f"{plan.spec.dir / (d.ca + '.key')}: missing, and {d.name} must be signed "
            f"({reason or 'missing'}); supply the CA key or a valid {crt.name}"
        )
    pair = _new_leaf(plan, d, ca)
    plan.write_pair(d.name, pair)
    if reason is None:
        plan.created.append(d.name)
    else:
        plan.reissued.append((d.name, reason))
    return pair


def _check_leaf(
    plan: _Plan, d: _LeafDef, ca: _Pair, crt: Path, key_path: Path
) -> tuple[_Pair | None, str]:
    """The existing pair if it still fits, else ``None`` and why not."""
    if not crt.exists():
        return None, "certificate missing"
    if not key_path.exists():
        return None, "key missing"
    cert_pem, key_pem = crt.read_bytes(), key_path.read_bytes()
    cert, key = _load_cert(cert_pem), _load_key(key_pem)
    if cert is None:
        return None, "certificate unreadable"
    if key is None:
        return None, "key unreadable"
    if key.public_key() != cert.public_key():
        return None, "key does not match the certificate"
    try:
        cert.verify_directly_issued_by(ca.cert)
    except (ValueError, TypeError, InvalidSignature):
        return None, "not signed by the current CA"
    if _subject(cert) != (d.cn, frozenset(d.orgs)):
        return None, "subject changed"
    if _sans(cert) != _names(d.dns, d.ips):
        return None, "SANs changed"
    if _usages(cert) != {d.usage}:
        return None, "usage changed"
    left = cert.not_valid_after_utc - plan.now
    if left < dt.timedelta(days=plan.spec.renew_before_days):
        return None, f"expires in {left.days} days" if left.days >= 0 else "expired"
    return _Pair(cert, key, cert_pem, key_pem), ""


def _ensure_kubeconfig(plan: _Plan, kc: _KubeconfigDef, ca: _Pair, user: _Pair) -> None:
    path = plan.spec.kubeconfigs / kc.name
    want = kubeconfig(plan.spec.server_url, ca.cert_pem, user.cert_pem, user.key_pem, user.cert)
    try:
        have: bytes | None = path.read_bytes()
    except FileNotFoundError:
        have = None
    if have == want:
        plan.reused.append(kc.name)
        return
    plan.writes.append((path, want, KEY_MODE))
    if have is None:
        plan.created.append(kc.name)
        return
    server = _kubeconfig_server(have)
    if server is None:
        plan.reissued.append((kc.name, "content changed"))
    elif server != plan.spec.server_url:
        plan.reissued.append((kc.name, "server URL changed"))
    else:
        plan.reissued.append((kc.name, "credentials changed"))


# --- kubeconfigs ---------------------------------------------------------------


def kubeconfig(
    server: str, ca_pem: bytes, cert_pem: bytes, key_pem: bytes, cert: x509.Certificate
) -> bytes:
    """A kubeconfig (YAML) with one cluster, one user (credentials embedded) and one
    context; the user is named after the certificate's CN. Deterministic."""
    user = _subject(cert)[0]

    def b64(pem: bytes) -> str:
        return base64.b64encode(pem).decode()

    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "kubernetes",
                "cluster": {"certificate-authority-data": b64(ca_pem), "server": server},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": b64(cert_pem),
                    "client-key-data": b64(key_pem),
                },
            }
        ],
        "contexts": [
            {"name": f"{user}@kubernetes", "context": {"cluster": "kubernetes", "user": user}}
        ],
        "current-context": f"{user}@kubernetes",
        "preferences": {},
    }
    return yaml.safe_dump(doc, sort_keys=False, width=1 << 20).encode()


def _kubeconfig_server(data: bytes) -> str | None:
    try:
        return str(yaml.safe_load(data)["clusters"][0]["cluster"]["server"])
    except (yaml.YAMLError, LookupError, TypeError):
        return None


# --- issuing -------------------------------------------------------------------


def _new_key(key_type: KeyType) -> PrivateKey:
    if key_type == "rsa-2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def _new_ca(plan: _Plan, cn: str) -> _Pair:
    key = _new_key(plan.spec.key_type)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    cert = (
        _builder(plan.now, plan.spec.ca_days, name, name, key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(key, ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return _Pair(cert, key, cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _new_leaf(plan: _Plan, d: _LeafDef, ca: _Pair) -> _Pair:
    assert ca.key is not None
    key = _new_key(plan.spec.key_type)
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in d.orgs]
    subject = x509.Name([*attrs, x509.NameAttribute(NameOID.COMMON_NAME, d.cn)])
    builder = (
        _builder(plan.now, plan.spec.leaf_days, subject, ca.cert.subject, key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(key, ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([d.usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), False
        )
    )
    names = _names(d.dns, d.ips)
    if names:
        sans: list[x509.GeneralName] = [x509.DNSName(n) for n in _unique(d.dns)]
        sans += [x509.IPAddress(ip) for ip in _unique(d.ips)]
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca.key, hashes.SHA256())
    return _Pair(cert, key, cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _builder(
    now: dt.datetime, days: int, subject: x509.Name, issuer: x509.Name, key: PrivateKey
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
    )


def _key_usage(key: PrivateKey, *, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=isinstance(key, rsa.RSAPrivateKey),  # RSA key exchange in TLS 1.2
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


# --- reading -------------------------------------------------------------------


def _load_cert(pem: bytes) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None


def _load_key(pem: bytes) -> PrivateKey | None:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):  # TypeError: encrypted
        return None
    return key if isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) else None


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _subject(cert: x509.Certificate) -> tuple[str, frozenset[str]]:
    def values(oid: x509.ObjectIdentifier) -> list[str]:
        return [str(a.value) for a in cert.subject.get_attributes_for_oid(oid)]

    cns = values(NameOID.COMMON_NAME)
    return (cns[0] if cns else "", frozenset(values(NameOID.ORGANIZATION_NAME)))


def _names(dns: Iterable[str], ips: Iterable[IPAddress]) -> frozenset[str | IPAddress]:
    return frozenset([*(n.lower() for n in dns), *ips])


def _sans(cert: x509.Certificate) -> frozenset[str | IPAddress]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return frozenset()
    ips = [
        ip
        for ip in san.get_values_for_type(x509.IPAddress)
        if not isinstance(ip, IPv4Network | IPv6Network)
    ]
    return _names(san.get_values_for_type(x509.DNSName), ips)


def _usages(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    try:
        return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)
    except x509.ExtensionNotFound:
        return set()


def _unique(items: Iterable[_T]) -> list[_T]:
    return list(dict.fromkeys(items))


# --- writing -------------------------------------------------------------------


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pub_pem(key: PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``path`` with exactly ``mode`` (whatever the umask), all or nothing."""
    path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)  # a leftover could carry a looser mode
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with open(fd, "wb", closefd=True) as f:
            os.fchmod(fd, mode)  # open() applied the umask; a key is 0600, a cert 0644
            f.write(data)
            f.flush()
            os.fsync(fd)  # on a persistent PKI dir, a crash must not leave an empty key
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
