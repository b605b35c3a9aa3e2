"""
Tests for L{infini_gateway.tls}: entry certificates loaded from files, or
generated under C{path.data} and kept across restarts.
"""

import datetime
import hashlib
import ipaddress
import os
import socket
import ssl
import stat
import subprocess
import sys
from typing import List, Optional, Tuple

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from twisted.internet import threads
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory

from infini_gateway import tls
from infini_gateway.config.model import Entry, EntryTLS, Network
from infini_gateway.tls import TLSConfigError, ca_certificate_path, server_options

HOSTNAME = "gw-host.internal"
ANSWER = b"hello over tls\n"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(autouse=True)
def fixed_hostname(monkeypatch):
    """Generated certificates name this host; make the name predictable."""
    monkeypatch.setattr(tls.socket, "gethostname", lambda: HOSTNAME)


@pytest.fixture
def reactor():
    from twisted.internet import reactor

    return reactor


def make_entry(
    name: str = "api",
    host: str = "0.0.0.0",
    publish: Optional[str] = None,
    cert_file: Optional[str] = None,
    key_file: Optional[str] = None,
) -> Entry:
    return Entry(
        name=name,
        network=Network(host=host, port=8443, publish=publish),
        tls=EntryTLS(enabled=True, cert_file=cert_file, key_file=key_file),
    )


def read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def load_cert(path: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(read(path))


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def der(cert) -> bytes:
    """DER of a certificate given to CertificateOptions, whatever its type."""
    if isinstance(cert, x509.Certificate):
        return cert.public_bytes(serialization.Encoding.DER)
    return cert.to_cryptography().public_bytes(serialization.Encoding.DER)


def sans(cert: x509.Certificate) -> Tuple[List[str], List[object]]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.DNSName), san.get_values_for_type(
        x509.IPAddress
    )


def kept_files(data_dir: str, name: str = "api") -> dict:
    base = os.path.join(data_dir, "tls")
    return {
        f: read(os.path.join(base, f))
        for f in ("ca.crt", "ca.key", f"{name}.crt", f"{name}.key")
    }


def not_before(cert: x509.Certificate) -> datetime.datetime:
    return cert.not_valid_before_utc


def not_after(cert: x509.Certificate) -> datetime.datetime:
    return cert.not_valid_after_utc


# A small PKI of the test's own, for the "files given" cases.


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def issue(
    cn: str,
    issuer: Optional[Tuple[ec.EllipticCurvePrivateKey, x509.Certificate]] = None,
    ca: bool = False,
    dns: Tuple[str, ...] = (),
    ips: Tuple[str, ...] = (),
    valid_from: Optional[datetime.datetime] = None,
    valid_until: Optional[datetime.datetime] = None,
    key: Optional[ec.EllipticCurvePrivateKey] = None,
) -> Tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = key or ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    signer_key, signer_cert = issuer if issuer else (key, None)
    issuer_name = signer_cert.subject if signer_cert else _name(cn)
    signer_public = signer_key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid_from or now - datetime.timedelta(hours=1))
        .not_valid_after(valid_until or now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_public),
            critical=False,
        )
    )
    if not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
    if dns or ips:
        names = [x509.DNSName(n) for n in dns]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        builder = builder.add_extension(
            x509.SubjectAlternativeName(names), critical=False
        )
    return key, builder.sign(signer_key, hashes.SHA256())


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def key_pem(key, password: Optional[bytes] = None) -> bytes:
    encryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def write(path, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


# Generated and kept certificates


def test_generation_creates_ca_and_entry_files_with_private_modes(tmp_path):
    """
    Without files, a CA and the entry's certificate are written under
    <data>/tls; the directory is 0700 and the keys 0600.
    """
    data = str(tmp_path / "data")
    server_options(make_entry(), data)
    tls_dir = os.path.join(data, "tls")
    assert sorted(f for f in os.listdir(tls_dir) if not f.startswith(".")) == [
        "api.crt",
        "api.key",
        "ca.crt",
        "ca.key",
    ]
    assert mode(data) & 0o077 == 0
    assert mode(tls_dir) & 0o077 == 0
    assert mode(os.path.join(tls_dir, "ca.key")) == 0o600
    assert mode(os.path.join(tls_dir, "api.key")) == 0o600
    assert ca_certificate_path(data) == os.path.join(os.path.abspath(tls_dir), "ca.crt")
    # No temporary files are left behind.
    assert [f for f in os.listdir(tls_dir) if f.startswith(".")] == [".lock"]


def test_ca_is_a_ten_year_p256_certificate_authority(tmp_path):
    """The CA: EC P-256, SHA-256, CA=true, keyCertSign, about ten years."""
    data = str(tmp_path)
    server_options(make_entry(), data)
    ca = load_cert(ca_certificate_path(data))
    key = serialization.load_pem_private_key(
        read(os.path.join(data, "tls", "ca.key")), None
    )
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    assert isinstance(ca.signature_hash_algorithm, hashes.SHA256)
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    assert ca.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    lifetime = not_after(ca) - not_before(ca)
    assert datetime.timedelta(days=3650) <= lifetime <= datetime.timedelta(days=3653)
    ca.verify_directly_issued_by(ca)


def test_server_certificate_is_a_397_day_server_certificate_from_the_ca(tmp_path):
    """
    The entry's certificate: issued by the CA, CA=false, serverAuth, EC P-256
    with SHA-256, valid 397 days starting (about) now.
    """
    data = str(tmp_path)
    options = server_options(make_entry(), data)
    ca = load_cert(ca_certificate_path(data))
    cert = load_cert(os.path.join(data, "tls", "api.crt"))
    assert der(options.certificate) == cert.public_bytes(serialization.Encoding.DER)
    assert options.extraCertChain == []
    cert.verify_directly_issued_by(ca)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert isinstance(cert.public_key().curve, ec.SECP256R1)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not_after(cert) - not_before(cert) == datetime.timedelta(days=397)
    now = datetime.datetime.now(datetime.timezone.utc)
    assert not_before(cert) <= now <= not_before(cert) + datetime.timedelta(hours=2)


def test_server_certificate_names_loopback_host_name_bind_and_publish(tmp_path):
    """
    SANs: localhost, 127.0.0.1, ::1, the host name, a specific bind address
    and the published host (DNS or IP as appropriate).
    """
    server_options(
        make_entry(host="192.0.2.10", publish="gw.example.com:443"), str(tmp_path)
    )
    dns, ips = sans(load_cert(str(tmp_path / "tls" / "api.crt")))
    assert sorted(dns) == sorted(["localhost", HOSTNAME, "gw.example.com"])
    assert sorted(map(str, ips)) == sorted(["127.0.0.1", "::1", "192.0.2.10"])


@pytest.mark.parametrize(
    "publish, expected",
    [
        ("[2001:db8::7]:8443", "2001:db8::7"),
        ("2001:db8::7", "2001:db8::7"),
        ("198.51.100.4:8443", "198.51.100.4"),
        ("https://198.51.100.4:8443/", "198.51.100.4"),
    ],
)
def test_published_ip_becomes_an_ip_san(tmp_path, publish, expected):
    """A published IP address, in any of its spellings, is an IP SAN."""
    server_options(make_entry(host="::", publish=publish), str(tmp_path))
    dns, ips = sans(load_cert(str(tmp_path / "tls" / "api.crt")))
    assert ipaddress.ip_address(expected) in ips
    assert sorted(dns) == sorted(["localhost", HOSTNAME])


def test_wildcard_bind_addresses_are_not_named(tmp_path):
    """0.0.0.0 and :: are not names a client can use; they stay out."""
    for index, host in enumerate(["0.0.0.0", "::"]):
        server_options(make_entry(name=f"e{index}", host=host), str(tmp_path))
        _, ips = sans(load_cert(str(tmp_path / "tls" / f"e{index}.crt")))
        assert sorted(map(str, ips)) == ["127.0.0.1", "::1"]


def test_restart_reuses_the_kept_files_byte_for_byte(tmp_path):
    """A second start serves the same certificate, and rewrites nothing."""
    data = str(tmp_path)
    first = server_options(make_entry(publish="gw.example.com"), data)
    before = kept_files(data)
    stats = {f: os.stat(os.path.join(data, "tls", f)).st_mtime_ns for f in before}
    second = server_options(make_entry(publish="gw.example.com"), data)
    assert kept_files(data) == before
    assert {
        f: os.stat(os.path.join(data, "tls", f)).st_mtime_ns for f in before
    } == stats
    assert der(first.certificate) == der(second.certificate)


def test_relative_data_dir_is_resolved_against_base_dir(tmp_path):
    """path.data relative to gateway.yml's directory, not the working directory."""
    server_options(make_entry(), "data", base_dir=str(tmp_path))
    assert os.path.exists(tmp_path / "data" / "tls" / "api.crt")
    assert ca_certificate_path("data", str(tmp_path)) == str(
        tmp_path / "data" / "tls" / "ca.crt"
    )


def test_changed_publish_host_reissues_from_the_same_ca(tmp_path):
    """
    When the names needed change, a new server certificate is issued by the
    kept CA; the CA files are untouched.
    """
    data = str(tmp_path)
    server_options(make_entry(publish="old.example.com"), data)
    before = kept_files(data)
    options = server_options(make_entry(publish="new.example.com:443"), data)
    after = kept_files(data)
    assert after["ca.crt"] == before["ca.crt"]
    assert after["ca.key"] == before["ca.key"]
    assert after["api.crt"] != before["api.crt"]
    cert = load_cert(os.path.join(data, "tls", "api.crt"))
    assert "new.example.com" in sans(cert)[0]
    cert.verify_directly_issued_by(load_cert(ca_certificate_path(data)))
    assert der(options.certificate) == cert.public_bytes(serialization.Encoding.DER)
    assert mode(os.path.join(data, "tls", "api.key")) == 0o600


def test_kept_certificate_still_covering_names_is_kept(tmp_path):
    """Names are only ever required, never removed: a superset is reused."""
    data = str(tmp_path)
    server_options(make_entry(publish="gw.example.com"), data)
    before = kept_files(data)
    server_options(make_entry(), data)
    assert kept_files(data) == before


def _replace_kept_certificate(data: str, valid_from, valid_until) -> bytes:
    tls_dir = os.path.join(data, "tls")
    ca_key = serialization.load_pem_private_key(
        read(os.path.join(tls_dir, "ca.key")), None
    )
    ca = load_cert(os.path.join(tls_dir, "ca.crt"))
    key = serialization.load_pem_private_key(
        read(os.path.join(tls_dir, "api.key")), None
    )
    _, cert = issue(
        "old",
        issuer=(ca_key, ca),
        dns=("localhost", HOSTNAME),
        ips=("127.0.0.1", "::1"),
        valid_from=valid_from,
        valid_until=valid_until,
        key=key,
    )
    write(os.path.join(tls_dir, "api.crt"), pem(cert))
    return pem(cert)


def test_expired_kept_certificate_is_reissued(tmp_path):
    """A kept certificate past its end is replaced by a valid one from the same CA."""
    data = str(tmp_path)
    server_options(make_entry(), data)
    now = datetime.datetime.now(datetime.timezone.utc)
    expired = _replace_kept_certificate(
        data, now - datetime.timedelta(days=800), now - datetime.timedelta(days=403)
    )
    ca_before = read(ca_certificate_path(data))
    server_options(make_entry(), data)
    fresh = load_cert(os.path.join(data, "tls", "api.crt"))
    assert pem(fresh) != expired
    assert not_after(fresh) > now + datetime.timedelta(days=396)
    assert read(ca_certificate_path(data)) == ca_before
    fresh.verify_directly_issued_by(load_cert(ca_certificate_path(data)))


def test_nearly_expired_kept_certificate_is_reissued(tmp_path):
    """A kept certificate with days left (under 30) is renewed at start-up."""
    data = str(tmp_path)
    server_options(make_entry(), data)
    now = datetime.datetime.now(datetime.timezone.utc)
    ending = _replace_kept_certificate(
        data, now - datetime.timedelta(days=390), now + datetime.timedelta(days=7)
    )
    server_options(make_entry(), data)
    assert read(os.path.join(data, "tls", "api.crt")) != ending


def test_kept_certificate_not_matching_its_key_is_reissued(tmp_path):
    """A half-replaced pair (key and certificate disagree) is issued anew."""
    data = str(tmp_path)
    server_options(make_entry(), data)
    other = ec.generate_private_key(ec.SECP256R1())
    write(os.path.join(data, "tls", "api.key"), key_pem(other))
    options = server_options(make_entry(), data)
    cert = load_cert(os.path.join(data, "tls", "api.crt"))
    key = serialization.load_pem_private_key(
        read(os.path.join(data, "tls", "api.key")), None
    )
    assert key.public_key() == cert.public_key()
    assert der(options.certificate) == cert.public_bytes(serialization.Encoding.DER)


def test_kept_certificate_from_another_ca_is_reissued(tmp_path):
    """A certificate the kept CA did not issue is not served."""
    data = str(tmp_path)
    server_options(make_entry(), data)
    tls_dir = os.path.join(data, "tls")
    stranger = issue("stranger", ca=True)
    key = serialization.load_pem_private_key(
        read(os.path.join(tls_dir, "api.key")), None
    )
    _, foreign = issue(
        "x",
        issuer=stranger,
        dns=("localhost", HOSTNAME),
        ips=("127.0.0.1", "::1"),
        key=key,
    )
    write(os.path.join(tls_dir, "api.crt"), pem(foreign))
    server_options(make_entry(), data)
    load_cert(os.path.join(tls_dir, "api.crt")).verify_directly_issued_by(
        load_cert(ca_certificate_path(data))
    )


def test_entries_share_one_ca(tmp_path):
    """Each entry has its own certificate, all issued by the one CA."""
    data = str(tmp_path)
    server_options(make_entry(name="a"), data)
    server_options(make_entry(name="b"), data)
    ca = load_cert(ca_certificate_path(data))
    for name in ("a", "b"):
        load_cert(os.path.join(data, "tls", f"{name}.crt")).verify_directly_issued_by(
            ca
        )


def test_processes_starting_together_agree_on_one_pair(tmp_path):
    """
    Gateway processes sharing a port start together: all of them end up
    serving the one certificate that is on disk, from the one CA.
    """
    data = str(tmp_path / "data")
    script = (
        "import hashlib, sys\n"
        "from cryptography.hazmat.primitives import serialization\n"
        "from infini_gateway.config.model import Entry, EntryTLS, Network\n"
        "from infini_gateway.tls import server_options\n"
        "entry = Entry(name='api', network=Network(host='0.0.0.0', port=1),"
        " tls=EntryTLS(enabled=True))\n"
        "cert = server_options(entry, sys.argv[1]).certificate\n"
        "if not hasattr(cert, 'public_bytes'):\n"
        "    cert = cert.to_cryptography()\n"
        "der = cert.public_bytes(serialization.Encoding.DER)\n"
        "print(hashlib.sha256(der).hexdigest())\n"
    )
    env = dict(os.environ, PYTHONPATH=ROOT)
    processes = [
        subprocess.Popen(
            [sys.executable, "-W", "error::DeprecationWarning", "-c", script, data],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )
        for _ in range(4)
    ]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=60)
        assert process.returncode == 0, err.decode()
        results.append(out.decode().strip())
    on_disk = load_cert(os.path.join(data, "tls", "api.crt"))
    expected = hashlib.sha256(
        on_disk.public_bytes(serialization.Encoding.DER)
    ).hexdigest()
    assert results == [expected] * 4
    on_disk.verify_directly_issued_by(load_cert(ca_certificate_path(data)))


def test_tls_1_2_is_the_minimum(tmp_path):
    """TLS 1.0 and 1.1 are switched off on the context."""
    from OpenSSL import SSL

    options = server_options(make_entry(), str(tmp_path))
    options.getContext()
    # CertificateOptions keeps the SSL_OP_NO_* bits it applies to the context.
    assert options._options & SSL.OP_NO_TLSv1
    assert options._options & SSL.OP_NO_TLSv1_1
    assert not options._options & SSL.OP_NO_TLSv1_2


# Errors


def _error(entry: Entry, data: str, base_dir: str = ".") -> str:
    with pytest.raises(TLSConfigError) as info:
        server_options(entry, data, base_dir)
    message = str(info.value)
    assert "\n" not in message
    assert isinstance(info.value, ValueError)
    return message


@pytest.fixture
def pki(tmp_path):
    """A root, an intermediate and a leaf, with the leaf files written."""
    root = issue("test root", ca=True)
    intermediate = issue("test intermediate", issuer=root, ca=True)
    leaf_key, leaf = issue(
        "leaf", issuer=intermediate, dns=("localhost",), ips=("127.0.0.1", "::1")
    )
    files = tmp_path / "given"
    files.mkdir()
    return {
        "root": root,
        "intermediate": intermediate,
        "leaf": (leaf_key, leaf),
        "root_file": write(files / "root.crt", pem(root[1])),
        "cert_file": write(files / "server.crt", pem(leaf, intermediate[1])),
        "key_file": write(files / "server.key", key_pem(leaf_key)),
        "dir": files,
    }


def test_given_files_are_loaded_with_their_chain(tmp_path, pki):
    """The leaf is served, the certificates after it as the extra chain."""
    options = server_options(
        make_entry(cert_file=pki["cert_file"], key_file=pki["key_file"]), str(tmp_path)
    )
    assert der(options.certificate) == der(pki["leaf"][1])
    assert [der(c) for c in options.extraCertChain] == [der(pki["intermediate"][1])]
    assert not os.path.exists(tmp_path / "tls")


def test_given_relative_files_are_resolved_against_base_dir(tmp_path, pki):
    """cert_file and key_file relative to gateway.yml's directory."""
    options = server_options(
        make_entry(cert_file="given/server.crt", key_file="given/server.key"),
        "data",
        base_dir=str(tmp_path),
    )
    assert der(options.certificate) == der(pki["leaf"][1])


def test_missing_certificate_file(tmp_path, pki):
    missing = str(tmp_path / "nope.crt")
    message = _error(
        make_entry(cert_file=missing, key_file=pki["key_file"]), str(tmp_path)
    )
    assert missing in message and "no such file" in message and "'api'" in message


def test_missing_key_file(tmp_path, pki):
    missing = str(tmp_path / "nope.key")
    message = _error(
        make_entry(cert_file=pki["cert_file"], key_file=missing), str(tmp_path)
    )
    assert missing in message and "no such file" in message


def test_directory_instead_of_file(tmp_path, pki):
    message = _error(
        make_entry(cert_file=str(pki["dir"]), key_file=pki["key_file"]), str(tmp_path)
    )
    assert str(pki["dir"]) in message and "directory" in message


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0,
    reason="root reads files whatever their mode",
)
def test_unreadable_key_file(tmp_path, pki):
    os.chmod(pki["key_file"], 0)
    message = _error(
        make_entry(cert_file=pki["cert_file"], key_file=pki["key_file"]), str(tmp_path)
    )
    assert pki["key_file"] in message and "cannot be read" in message


def test_bad_pem_certificate(tmp_path, pki):
    bad = write(tmp_path / "bad.crt", b"-----BEGIN CERTIFICATE-----\nnot base64\n")
    message = _error(make_entry(cert_file=bad, key_file=pki["key_file"]), str(tmp_path))
    assert bad in message and "certificate" in message


def test_key_file_given_as_certificate(tmp_path, pki):
    message = _error(
        make_entry(cert_file=pki["key_file"], key_file=pki["key_file"]), str(tmp_path)
    )
    assert pki["key_file"] in message and "no PEM certificate" in message


def test_bad_pem_key(tmp_path, pki):
    bad = write(tmp_path / "bad.key", b"garbage")
    message = _error(
        make_entry(cert_file=pki["cert_file"], key_file=bad), str(tmp_path)
    )
    assert bad in message and "private key" in message


def test_encrypted_key(tmp_path, pki):
    locked = write(tmp_path / "locked.key", key_pem(pki["leaf"][0], b"secret"))
    message = _error(
        make_entry(cert_file=pki["cert_file"], key_file=locked), str(tmp_path)
    )
    assert locked in message and "encrypted" in message


def test_key_not_matching_certificate(tmp_path, pki):
    other = write(
        tmp_path / "other.key", key_pem(ec.generate_private_key(ec.SECP256R1()))
    )
    message = _error(
        make_entry(cert_file=pki["cert_file"], key_file=other), str(tmp_path)
    )
    assert (
        other in message and pki["cert_file"] in message and "does not match" in message
    )


def test_certificate_without_key_file(tmp_path, pki):
    message = _error(make_entry(cert_file=pki["cert_file"]), str(tmp_path))
    assert "tls.key_file" in message


def test_key_without_certificate_file(tmp_path, pki):
    message = _error(make_entry(key_file=pki["key_file"]), str(tmp_path))
    assert "tls.cert_file" in message


def test_ca_key_without_its_certificate_gets_one(tmp_path):
    """
    The CA key is written first; a start that stopped before the certificate
    was written leaves a key alone, which the next start completes.
    """
    data = str(tmp_path)
    server_options(make_entry(), data)
    ca_key = read(os.path.join(data, "tls", "ca.key"))
    os.unlink(ca_certificate_path(data))
    server_options(make_entry(), data)
    assert read(os.path.join(data, "tls", "ca.key")) == ca_key
    ca = load_cert(ca_certificate_path(data))
    load_cert(os.path.join(data, "tls", "api.crt")).verify_directly_issued_by(ca)


def test_ca_certificate_without_its_key_is_an_error(tmp_path):
    """A CA whose key is gone cannot issue, and is not silently replaced."""
    data = str(tmp_path)
    server_options(make_entry(), data)
    ca_before = read(ca_certificate_path(data))
    os.unlink(os.path.join(data, "tls", "ca.key"))
    message = _error(make_entry(), data)
    assert os.path.join(data, "tls", "ca.key") in message
    assert read(ca_certificate_path(data)) == ca_before


def test_corrupt_kept_ca_is_an_error(tmp_path):
    data = str(tmp_path)
    server_options(make_entry(), data)
    write(ca_certificate_path(data), b"garbage")
    message = _error(make_entry(), data)
    assert ca_certificate_path(data) in message


def test_entry_name_unfit_for_a_file_name(tmp_path):
    message = _error(make_entry(name="../escape"), str(tmp_path))
    assert "'../escape'" in message
    assert not os.path.exists(tmp_path / "escape.crt")


def test_entry_named_like_the_ca_is_refused(tmp_path):
    """An entry called "ca" would overwrite the CA's own files."""
    data = str(tmp_path)
    server_options(make_entry(), data)
    ca_before = read(ca_certificate_path(data))
    message = _error(make_entry(name="CA"), data)
    assert "'CA'" in message
    assert read(ca_certificate_path(data)) == ca_before


def test_unwritable_data_dir(tmp_path):
    blocker = write(tmp_path / "file", b"")
    message = _error(make_entry(), os.path.join(blocker, "data"))
    assert blocker in message


# Real handshakes on loopback


class _Answer(Protocol):
    def connectionMade(self) -> None:
        self.transport.write(ANSWER)
        self.transport.loseConnection()


def _listen(reactor, options, interface: str):
    factory = TLSMemoryBIOFactory(options, False, Factory.forProtocol(_Answer))
    return reactor.listenTCP(0, factory, interface=interface)


def _fetch(host: str, port: int, cafile: str, server_hostname: str) -> dict:
    """A blocking client: verify against C{cafile}, read until the server closes."""
    context = ssl.create_default_context(cafile=cafile)
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    context.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection((host, port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=server_hostname) as conn:
            received = b""
            while True:
                chunk = conn.recv(1024)
                if not chunk:
                    break
                received += chunk
            return {
                "data": received,
                "alpn": conn.selected_alpn_protocol(),
                "version": conn.version(),
                "peer": conn.getpeercert(binary_form=True),
            }


def _in_thread(reactor, *args):
    return threads.deferToThreadPool(reactor, reactor.getThreadPool(), _fetch, *args)


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest_twisted.inlineCallbacks
def test_handshake_verifies_against_the_kept_ca(reactor, tmp_path):
    """
    A client trusting ca.crt verifies the generated certificate by the name
    localhost and by the addresses 127.0.0.1 and ::1, negotiates TLS 1.2+,
    and reads the answer.
    """
    data = str(tmp_path)
    options = server_options(make_entry(), data)
    cafile = ca_certificate_path(data)
    served = load_cert(os.path.join(data, "tls", "api.crt"))
    ports = [_listen(reactor, options, "127.0.0.1")]
    try:
        if _ipv6_loopback():
            ports.append(_listen(reactor, options, "::1"))
        v4 = ports[0].getHost().port
        attempts = [("127.0.0.1", v4, "localhost"), ("127.0.0.1", v4, "127.0.0.1")]
        if len(ports) > 1:
            attempts.append(("::1", ports[1].getHost().port, "::1"))
        for host, port, name in attempts:
            result = yield _in_thread(reactor, host, port, cafile, name)
            assert result["data"] == ANSWER
            assert result["version"] in ("TLSv1.2", "TLSv1.3")
            assert result["peer"] == served.public_bytes(serialization.Encoding.DER)
            if tls._alpn_is_clean():
                assert result["alpn"] == "http/1.1"
    finally:
        for port in ports:
            yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_handshake_fails_for_a_client_trusting_another_ca(reactor, tmp_path):
    """A client that trusts some other CA refuses the generated certificate."""
    options = server_options(make_entry(), str(tmp_path / "one"))
    server_options(make_entry(), str(tmp_path / "other"))
    other_ca = ca_certificate_path(str(tmp_path / "other"))
    port = _listen(reactor, options, "127.0.0.1")
    try:
        with pytest.raises(ssl.SSLCertVerificationError):
            yield _in_thread(
                reactor, "127.0.0.1", port.getHost().port, other_ca, "localhost"
            )
    finally:
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_handshake_sends_the_given_chain(reactor, tmp_path, pki):
    """
    With given files, the intermediate after the leaf is sent: a client that
    trusts only the root verifies the leaf.
    """
    options = server_options(
        make_entry(cert_file=pki["cert_file"], key_file=pki["key_file"]), str(tmp_path)
    )
    port = _listen(reactor, options, "127.0.0.1")
    try:
        result = yield _in_thread(
            reactor, "127.0.0.1", port.getHost().port, pki["root_file"], "localhost"
        )
        assert result["data"] == ANSWER
        assert result["peer"] == der(pki["leaf"][1])
    finally:
        yield port.stopListening()
