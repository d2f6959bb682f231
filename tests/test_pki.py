"""Tests for k4sinit.node.pki: the tree it lays out, idempotence, reissue rules, TLS."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import os
import shutil
import socket
import ssl
import stat
import threading
import time
from collections.abc import Iterator
from ipaddress import ip_address
from pathlib import Path
from typing import cast

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from k4sinit.node.pki import PKIError, PKIResult, PKISpec, ensure_pki

NODE = "node1"
ADDR = ip_address("192.0.2.10")
CAS = ("ca", "front-proxy-ca")
LEAVES = (
    "apiserver",
    "apiserver-kubelet-client",
    "front-proxy-client",
    "admin",
    "scheduler",
    "controller-manager",
    "coredns",
    "kubelet-client",
    "kubelet-server",
    "scheduler-server",
    "controller-manager-server",
)
KUBECONFIGS = {
    "admin.conf": "admin",
    "scheduler.conf": "scheduler",
    "controller-manager.conf": "controller-manager",
    "kubelet.conf": "kubelet-client",
    "coredns.conf": "coredns",
}
SERVER = ExtendedKeyUsageOID.SERVER_AUTH
CLIENT = ExtendedKeyUsageOID.CLIENT_AUTH
LOCAL = {"DNS:localhost", "IP:127.0.0.1"}
# name: (issuer, CN, O, usage, SANs)
EXPECTED = {
    "apiserver": (
        "ca",
        "kube-apiserver",
        set(),
        SERVER,
        {
            "DNS:node1",
            "DNS:kubernetes",
            "DNS:kubernetes.default",
            "DNS:kubernetes.default.svc",
            "DNS:kubernetes.default.svc.cluster.local",
            "IP:192.0.2.10",
            "IP:10.96.0.1",
            *LOCAL,
        },
    ),
    "apiserver-kubelet-client": (
        "ca",
        "kube-apiserver-kubelet-client",
        {"system:masters"},
        CLIENT,
        set(),
    ),
    "front-proxy-client": ("front-proxy-ca", "front-proxy-client", set(), CLIENT, set()),
    "admin": ("ca", "k4sinit-admin", {"system:masters"}, CLIENT, set()),
    "scheduler": ("ca", "system:kube-scheduler", set(), CLIENT, set()),
    "controller-manager": ("ca", "system:kube-controller-manager", set(), CLIENT, set()),
    "coredns": ("ca", "k4sinit:coredns", set(), CLIENT, set()),
    "kubelet-client": ("ca", "system:node:node1", {"system:nodes"}, CLIENT, set()),
    "kubelet-server": (
        "ca",
        "system:node:node1",
        {"system:nodes"},
        SERVER,
        {"DNS:node1", "IP:192.0.2.10"},
    ),
    "scheduler-server": ("ca", "kube-scheduler", set(), SERVER, LOCAL),
    "controller-manager-server": ("ca", "kube-controller-manager", set(), SERVER, LOCAL),
}


@pytest.fixture
def spec(tmp_path: Path) -> PKISpec:
    return PKISpec(node_name=NODE, node_addresses=(ADDR,), dir=tmp_path / "pki")


@pytest.fixture
def tree(spec: PKISpec) -> PKISpec:
    """A spec whose directory already holds a complete PKI."""
    ensure_pki(spec)
    return spec


def cert(spec: PKISpec, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate((spec.dir / f"{name}.crt").read_bytes())


def snapshot(spec: PKISpec) -> dict[Path, tuple[bytes, int, int]]:
    """Every file under the PKI and kubeconfig dirs: bytes, mtime, mode."""
    out = {}
    for d in (spec.dir, spec.kubeconfigs):
        for p in sorted(d.glob("*")) if d.exists() else ():
            st = p.stat()
            out[p] = (p.read_bytes(), st.st_mtime_ns, stat.S_IMODE(st.st_mode))
    return out


def names(c: x509.Certificate) -> set[str]:
    try:
        san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    dns = {f"DNS:{n}" for n in san.get_values_for_type(x509.DNSName)}
    return dns | {f"IP:{ip}" for ip in san.get_values_for_type(x509.IPAddress)}


def reissued(result: PKIResult) -> dict[str, str]:
    return dict(result.reissued)


def reissue_with(spec: PKISpec, name: str, *, days_left: int, signer: str = "ca") -> None:
    """Replace ``name``.crt/.key by a copy of the current cert (same subject,
    extensions) signed by ``signer``'s key, valid for ``days_left`` more days.

    ``signer`` is a CA name in ``spec.dir``, or ``"self"`` for the cert itself when
    it is a CA (same key and subject: leaves it signed still verify)."""
    old = cert(spec, name)
    if signer == "self":
        key_path = spec.dir / f"{name}.key"
        key = serialization.load_pem_private_key(key_path.read_bytes(), None)
        signing_key, issuer = key, old.subject
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        signing_key = serialization.load_pem_private_key(
            (spec.dir / f"{signer}.key").read_bytes(), None
        )
        issuer = cert(spec, signer).subject
        (spec.dir / f"{name}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(signing_key, ec.EllipticCurvePrivateKey)
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(old.subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=days_left, hours=1))
    )
    for ext in old.extensions:
        if not isinstance(ext.value, x509.AuthorityKeyIdentifier):
            builder = builder.add_extension(ext.value, ext.critical)
    new = builder.sign(signing_key, hashes.SHA256())
    (spec.dir / f"{name}.crt").write_bytes(new.public_bytes(serialization.Encoding.PEM))


def make_other_ca(directory: Path) -> None:
    """A second CA, ``other-ca.crt/.key``, in ``directory``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")])  # same name!
    now = dt.datetime.now(dt.UTC)
    ca = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=100))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    (directory / "other-ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (directory / "other-ca.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@pytest.fixture
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


# --- a fresh directory ---------------------------------------------------------


@pytest.mark.parametrize("umask", [0o000, 0o077], indirect=True)
def test_fresh_tree(spec: PKISpec, umask: int) -> None:
    t0 = time.perf_counter()
    result = ensure_pki(spec)
    print(f"fresh tree: {(time.perf_counter() - t0) * 1000:.1f} ms")

    assert set(result.created) == {*CAS, "sa", *LEAVES, *KUBECONFIGS}
    assert result.reused == () and result.reissued == () and result.warnings == ()
    for name in (*CAS, "sa", *LEAVES):
        key = spec.dir / f"{name}.key"
        public = spec.dir / ("sa.pub" if name == "sa" else f"{name}.crt")
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
        assert stat.S_IMODE(public.stat().st_mode) == 0o644, public
    for conf in KUBECONFIGS:
        assert stat.S_IMODE((spec.kubeconfigs / conf).stat().st_mode) == 0o600
    assert spec.kubeconfigs == spec.dir.parent / "kubeconfigs"
    assert not list(spec.dir.glob(".*")), "no temporary files left"

    assert cert(spec, "ca").subject.rfc4514_string() == "CN=kubernetes"
    for ca in CAS:
        c = cert(spec, ca)
        assert c.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        c.verify_directly_issued_by(c)
    sa = serialization.load_pem_private_key((spec.dir / "sa.key").read_bytes(), None)
    assert serialization.load_pem_public_key((spec.dir / "sa.pub").read_bytes()) == sa.public_key()


@pytest.mark.parametrize("name", LEAVES)
def test_fresh_leaf(tree: PKISpec, name: str) -> None:
    issuer, cn, orgs, usage, sans = EXPECTED[name]
    c = cert(tree, name)
    c.verify_directly_issued_by(cert(tree, issuer))
    assert [a.value for a in c.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == [cn]
    assert {a.value for a in c.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)} == orgs
    assert list(c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [usage]
    assert not c.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert names(c) == sans
    key = serialization.load_pem_private_key((tree.dir / f"{name}.key").read_bytes(), None)
    assert key.public_key() == c.public_key()
    left = c.not_valid_after_utc - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=364) < left <= dt.timedelta(days=365)


@pytest.mark.parametrize("conf", KUBECONFIGS)
def test_kubeconfig(tree: PKISpec, conf: str) -> None:
    doc = yaml.safe_load((tree.kubeconfigs / conf).read_bytes())
    leaf = KUBECONFIGS[conf]
    assert doc["apiVersion"] == "v1" and doc["kind"] == "Config"
    [cluster], [user], [context] = doc["clusters"], doc["users"], doc["contexts"]
    assert doc["current-context"] == context["name"]
    assert context["context"] == {"cluster": cluster["name"], "user": user["name"]}
    assert user["name"] == EXPECTED[leaf][1]
    assert cluster["cluster"]["server"] == "https://192.0.2.10:6443"

    def data(d: dict[str, str], key: str) -> bytes:
        return base64.b64decode(d[key])

    assert (
        data(cluster["cluster"], "certificate-authority-data") == (tree.dir / "ca.crt").read_bytes()
    )
    assert data(user["user"], "client-certificate-data") == (tree.dir / f"{leaf}.crt").read_bytes()
    assert data(user["user"], "client-key-data") == (tree.dir / f"{leaf}.key").read_bytes()


def test_second_call_changes_nothing(tree: PKISpec) -> None:
    before = snapshot(tree)
    t0 = time.perf_counter()
    result = ensure_pki(tree)
    print(f"valid tree: {(time.perf_counter() - t0) * 1000:.1f} ms")
    assert snapshot(tree) == before
    assert set(result.reused) == {*CAS, "sa", *LEAVES, *KUBECONFIGS}
    assert result.created == () and result.reissued == () and result.warnings == ()
    assert not result.changed
    assert str(result).startswith("reused: ca, front-proxy-ca, sa, apiserver,")


def test_supplied_tree_is_used_as_is(tmp_path: Path) -> None:
    """A tree made elsewhere (here: RSA keys, other paths) is reused byte for byte,
    even though this spec would make ECDSA keys."""
    made = PKISpec(
        node_name=NODE,
        node_addresses=(ADDR,),
        dir=tmp_path / "made" / "pki",
        kubeconfig_dir=tmp_path / "made" / "kc",
        key_type="rsa-2048",
    )
    ensure_pki(made)
    shutil.copytree(tmp_path / "made", tmp_path / "image", copy_function=shutil.copy2)
    supplied = dataclasses.replace(
        made,
        dir=tmp_path / "image" / "pki",
        kubeconfig_dir=tmp_path / "image" / "kc",
        key_type="ecdsa-p256",
    )
    before = snapshot(supplied)
    result = ensure_pki(supplied)
    assert snapshot(supplied) == before
    assert not result.changed and not result.warnings


# --- reissue rules -------------------------------------------------------------


def test_new_node_address_reissues_the_serving_certs(tree: PKISpec) -> None:
    before = snapshot(tree)
    moved = dataclasses.replace(tree, node_addresses=(ip_address("192.0.2.99"),))
    result = ensure_pki(moved)
    certs = {k: v for k, v in reissued(result).items() if not k.endswith(".conf")}
    assert certs == {"apiserver": "SANs changed", "kubelet-server": "SANs changed"}
    # The kubeconfigs follow the default server URL, the first node address.
    assert {k: v for k, v in reissued(result).items() if k.endswith(".conf")} == dict.fromkeys(
        KUBECONFIGS, "server URL changed"
    )
    after = snapshot(tree)
    changed = {p.name for p in before if before[p] != after[p]}
    assert changed == {
        "apiserver.crt",
        "apiserver.key",
        "kubelet-server.crt",
        "kubelet-server.key",
        *KUBECONFIGS,
    }
    assert "IP:192.0.2.99" in names(cert(tree, "apiserver"))
    cert(tree, "apiserver").verify_directly_issued_by(cert(tree, "ca"))
    assert not ensure_pki(moved).changed


def test_new_service_cidr_and_domain(tree: PKISpec) -> None:
    from ipaddress import ip_network

    result = ensure_pki(
        dataclasses.replace(
            tree, service_cidr=ip_network("10.43.0.0/16"), cluster_domain="example.org"
        )
    )
    assert reissued(result) == {"apiserver": "SANs changed"}
    assert {"IP:10.43.0.1", "DNS:kubernetes.default.svc.example.org"} <= names(
        cert(tree, "apiserver")
    )


def test_new_node_name_changes_subjects(tree: PKISpec) -> None:
    result = ensure_pki(dataclasses.replace(tree, node_name="node2"))
    assert reissued(result) == {
        "apiserver": "SANs changed",
        "kubelet-client": "subject changed",
        "kubelet-server": "subject changed",
        "kubelet.conf": "credentials changed",
    }


def test_near_expiry_reason(tree: PKISpec) -> None:
    reissue_with(tree, "admin", days_left=10)
    result = ensure_pki(tree)
    assert reissued(result) == {"admin": "expires in 10 days", "admin.conf": "credentials changed"}
    reissue_with(tree, "admin", days_left=40)  # outside renew_before_days: kept
    assert reissued(ensure_pki(tree)) == {"admin.conf": "credentials changed"}
    assert not ensure_pki(tree).changed


def test_leaf_signed_by_another_ca_is_reissued(tree: PKISpec) -> None:
    make_other_ca(tree.dir)
    reissue_with(tree, "controller-manager", days_left=100, signer="other-ca")
    with pytest.raises(Exception):  # noqa: B017 (the setup is what it claims)
        cert(tree, "controller-manager").verify_directly_issued_by(cert(tree, "ca"))
    result = ensure_pki(tree)
    assert reissued(result) == {
        "controller-manager": "not signed by the current CA",
        "controller-manager.conf": "credentials changed",
    }
    cert(tree, "controller-manager").verify_directly_issued_by(cert(tree, "ca"))


def test_front_proxy_client_from_the_cluster_ca_is_reissued(tree: PKISpec) -> None:
    reissue_with(tree, "front-proxy-client", days_left=100, signer="ca")
    assert reissued(ensure_pki(tree)) == {"front-proxy-client": "not signed by the current CA"}


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("rm key", "key missing"),
        ("rm crt", "certificate missing"),
        ("garble key", "key unreadable"),
        ("garble crt", "certificate unreadable"),
        ("swap key", "key does not match the certificate"),
    ],
)
def test_damaged_leaf_is_reissued(tree: PKISpec, damage: str, reason: str) -> None:
    crt, key = tree.dir / "kubelet-client.crt", tree.dir / "kubelet-client.key"
    match damage:
        case "rm key":
            key.unlink()
        case "rm crt":
            crt.unlink()
        case "garble key":
            key.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnope\n-----END PRIVATE KEY-----\n")
        case "garble crt":
            crt.write_bytes(b"")
        case "swap key":
            shutil.copy(tree.dir / "admin.key", key)
    result = ensure_pki(tree)
    assert reissued(result) == {"kubelet-client": reason, "kubelet.conf": "credentials changed"}
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    loaded = serialization.load_pem_private_key(key.read_bytes(), None)
    assert loaded.public_key() == cert(tree, "kubelet-client").public_key()


def test_edited_kubeconfig_is_rewritten(tree: PKISpec) -> None:
    (tree.kubeconfigs / "admin.conf").write_text("garbage")
    assert reissued(ensure_pki(tree)) == {"admin.conf": "content changed"}
    assert yaml.safe_load((tree.kubeconfigs / "admin.conf").read_bytes())["kind"] == "Config"


# --- the CA and sa.key are never replaced --------------------------------------


@pytest.mark.parametrize("victim", ["ca.key", "ca.crt", "front-proxy-ca.key", "sa.key"])
def test_corrupt_ca_or_sa_key_raises_and_writes_nothing(tree: PKISpec, victim: str) -> None:
    (tree.dir / victim).write_bytes(b"-----BEGIN PRIVATE KEY-----\ngarbage\n")
    (tree.dir / "admin.crt").unlink()  # something that would be reissued
    (tree.kubeconfigs / "scheduler.conf").unlink()
    before = snapshot(tree)
    with pytest.raises(PKIError, match=str(tree.dir / victim)):
        ensure_pki(dataclasses.replace(tree, node_addresses=(ip_address("192.0.2.99"),)))
    assert snapshot(tree) == before


def test_mismatched_ca_key_raises(tree: PKISpec) -> None:
    shutil.copy(tree.dir / "front-proxy-ca.key", tree.dir / "ca.key")
    with pytest.raises(PKIError, match=r"ca\.key: does not match ca\.crt"):
        ensure_pki(tree)


def test_ca_cert_without_key_is_an_error_only_when_signing(tree: PKISpec) -> None:
    """A CA supplied without its key: fine while every leaf is valid."""
    (tree.dir / "ca.key").unlink()
    assert not ensure_pki(tree).changed
    before = snapshot(tree)
    with pytest.raises(PKIError, match=r"ca\.key: missing, and apiserver must be signed"):
        ensure_pki(dataclasses.replace(tree, node_addresses=(ip_address("192.0.2.99"),)))
    assert snapshot(tree) == before


def test_ca_key_without_cert_raises(tree: PKISpec) -> None:
    (tree.dir / "ca.crt").unlink()
    with pytest.raises(PKIError, match=r"ca\.crt: missing while ca\.key exists"):
        ensure_pki(tree)


def test_ca_near_expiry_is_a_warning_only(tree: PKISpec) -> None:
    reissue_with(tree, "ca", days_left=10, signer="self")
    before = snapshot(tree)
    result = ensure_pki(tree)
    [warning] = result.warnings
    assert "ca.crt: the CA expires in 10 days" in warning
    # The CA kept its key and name, so every leaf still verifies: nothing to do.
    assert reissued(result) == {kc: "credentials changed" for kc in KUBECONFIGS}
    assert {p: v for p, v in snapshot(tree).items() if p.suffix != ".conf"} == {
        p: v for p, v in before.items() if p.suffix != ".conf"
    }
    assert "warning: " + warning in result.lines()


def test_sa_pub_is_derived_from_sa_key(tree: PKISpec) -> None:
    (tree.dir / "sa.pub").unlink()
    assert reissued(ensure_pki(tree)) == {"sa": "sa.pub missing, derived from sa.key"}
    (tree.dir / "sa.key").unlink()
    with pytest.raises(PKIError, match=r"sa\.key: missing while sa\.pub exists"):
        ensure_pki(tree)


def test_spec_validation() -> None:
    with pytest.raises(ValueError, match="renew_before_days"):
        PKISpec(node_name=NODE, leaf_days=10, renew_before_days=30)
    with pytest.raises(ValueError, match="node_name"):
        PKISpec(node_name="Node1")
    assert PKISpec(node_name=NODE).server_url == "https://127.0.0.1:6443"
    v6 = PKISpec(node_name=NODE, node_addresses=(ip_address("2001:db8::1"),))
    assert v6.server_url == "https://[2001:db8::1]:6443"
    assert PKISpec(node_name=NODE, apiserver_url="https://k.example:6443").server_url == (
        "https://k.example:6443"
    )


# --- a real TLS handshake ------------------------------------------------------


def handshake(spec: PKISpec, client: str) -> tuple[bytes | Exception, Exception | None]:
    """Serve one connection with apiserver.crt, client certs required against ca.crt;
    connect with ``client``.crt/key. Returns (what the client read, server error)."""
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(spec.dir / "apiserver.crt", spec.dir / "apiserver.key")
    server_ctx.load_verify_locations(spec.dir / "ca.crt")
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.create_default_context(cafile=spec.dir / "ca.crt")
    client_ctx.load_cert_chain(spec.dir / f"{client}.crt", spec.dir / f"{client}.key")

    errors: list[Exception] = []
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            conn.settimeout(10)
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                peer = tls.getpeercert()
                assert peer is not None
                # typeshed types every field of a peer certificate as one union
                subject = cast("tuple[tuple[tuple[str, str], ...], ...]", peer["subject"])
                tls.sendall(b"hello " + dict(x[0] for x in subject)["commonName"].encode())
        except Exception as e:
            errors.append(e)
        finally:
            listener.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with (
            socket.create_connection(listener.getsockname(), timeout=10) as raw,
            client_ctx.wrap_socket(raw, server_hostname="kubernetes.default.svc") as tls,
        ):
            got: bytes | Exception = tls.recv(100)
    except (ssl.SSLError, OSError) as e:
        got = e
    thread.join(timeout=10)
    assert not thread.is_alive()
    return got, errors[0] if errors else None


def test_tls_handshake_with_admin_cert(tree: PKISpec) -> None:
    got, server_error = handshake(tree, "admin")
    assert server_error is None
    assert got == b"hello k4sinit-admin"


def test_tls_handshake_rejects_front_proxy_client(tree: PKISpec) -> None:
    got, server_error = handshake(tree, "front-proxy-client")
    assert isinstance(server_error, ssl.SSLError)
    assert "certificate verify failed" in str(server_error)
    assert got == b"" or isinstance(got, ssl.SSLError | OSError)


def test_clock_before_the_ca_is_a_warning_and_changes_nothing(tree: PKISpec) -> None:
    """A diskless node without a battery-backed clock boots in 1970 until NTP."""
    before = snapshot(tree)
    result = ensure_pki(tree, now=dt.datetime(1970, 1, 1, tzinfo=dt.UTC))
    assert len(result.warnings) == 2
    assert all("is the time set?" in w for w in result.warnings)
    assert not result.changed
    assert snapshot(tree) == before
