#!/usr/bin/env python3
"""
Certificates for the gateway-role examples (terminating.yml, mesh.yml) and
their tests: one CA for the trust domain example.org, and what it issues.

    python3 examples/make-certs.py [DIRECTORY]      (default: examples/data/certs)

Files written (PEM; keys unencrypted, mode 0600), NAME.crt and NAME.key each:

  ca                  the CA (clients and the gateway trust ca.crt)
  web, db             client certificates of services web and db, whose
                      identity is their URI SAN:
                      spiffe://example.org/ns/default/dc/dc1/svc/<name>
  gateway             the gateway's server certificate (localhost, 127.0.0.1)
  gateway-client      the gateway's client certificate towards mTLS upstreams
                      (spiffe://example.org/ns/default/dc/dc1/svc/terminating-gateway)
  backend             a server certificate for upstreams on 127.0.0.1 / localhost
  web-dc1, api-dc2    two servers behind the mesh gateway, for
                      web.default.dc1.internal.example.org and
                      api.default.dc2.internal.example.org (and localhost)

Existing files are replaced.  Needs only the cryptography package (which the
gateway depends on).
"""

import datetime
import ipaddress
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TRUST_DOMAIN = "example.org"
VALIDITY = datetime.timedelta(days=30)


def spiffe(service: str) -> str:
    return f"spiffe://{TRUST_DOMAIN}/ns/default/dc/dc1/svc/{service}"


def _write(directory: Path, stem: str, key, cert) -> None:
    key_path = directory / f"{stem}.key"
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    (directory / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_certs(directory: Path) -> Path:
    """Write the files listed above into C{directory}; return it."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name(f"{TRUST_DOMAIN} mesh CA")
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write(directory, "ca", ca_key, ca_cert)

    def issue(stem, common_name, usage, dns=(), uris=(), ips=()):
        key = ec.generate_private_key(ec.SECP256R1())
        san = [x509.UniformResourceIdentifier(uri) for uri in uris]
        san += [x509.DNSName(d) for d in dns]
        san += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(common_name))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + VALIDITY)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        _write(directory, stem, key, builder.sign(ca_key, hashes.SHA256()))

    client, server = ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH
    loopback = {"dns": ("localhost",), "ips": ("127.0.0.1", "::1")}
    issue("web", "web", client, uris=(spiffe("web"),))
    issue("db", "db", client, uris=(spiffe("db"),))
    issue("gateway-client", "terminating-gateway", client, uris=(spiffe("terminating-gateway"),))
    issue("gateway", "gateway", server, **loopback)
    issue("backend", "backend", server, **loopback)
    issue(
        "web-dc1",
        "web.default.dc1.internal.example.org",
        server,
        dns=("web.default.dc1.internal.example.org", "localhost"),
    )
    issue(
        "api-dc2",
        "api.default.dc2.internal.example.org",
        server,
        dns=("api.default.dc2.internal.example.org", "localhost"),
    )
    return directory


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    default = Path(__file__).resolve().parent / "data" / "certs"
    directory = make_certs(Path(argv[0]) if argv else default)
    print(f"certificates written to {directory}")


if __name__ == "__main__":
    main()
