"""
Client certificates: asking for them on an entry, and the identity a
verified one carries.

An entry with C{tls.client_ca_file} asks every client for a certificate
issued by one of that file's CAs: with C{tls.client_auth: required} (the
default) a client without one, or with one from another CA, fails the
handshake; with C{optional} a client without one is let in as
C{anonymous} (one from another CA still fails).

A client's identity is the first URI SAN of its certificate (a SPIFFE ID
such as C{spiffe://example.org/ns/default/dc/dc1/svc/web}), else its first
DNS SAN, else its subject's CN.  Filters read it as C{ctx.client_identity};
a C{tcp} entry's intentions match it.
"""

from typing import Any, Optional

from cryptography import x509
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from zope.interface import implementer

from twisted.internet._sslverify import IOpenSSLTrustRoot

from infini_gateway.tls import TLSConfigError, read_tls_file

__all__ = [
    "ClientCAs",
    "certificate_identity",
    "load_client_cas",
    "peer_certificate",
    "peer_identity",
    "request_identity",
]


@implementer(IOpenSSLTrustRoot)
class ClientCAs:
    """The CA certificates of one PEM file, trusted for client certificates."""

    def __init__(self, path: str) -> None:
        self.path = path

    def _addCACertsToContext(self, context: SSL.Context) -> None:
        context.load_verify_locations(self.path)


def load_client_cas(where: str, path: str) -> ClientCAs:
    """
    Check that C{path} holds PEM CA certificates.

    @raise TLSConfigError: it is missing, unreadable, or holds none.
    """
    data = read_tls_file(where, "client_ca_file", path)
    try:
        x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TLSConfigError(
            f"{where}: tls.client_ca_file {path}: no PEM certificate could be read"
        ) from None
    return ClientCAs(path)


def certificate_identity(certificate: x509.Certificate) -> Optional[str]:
    """The URI SAN, else the DNS SAN, else the CN of C{certificate}; None if none."""
    try:
        san = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value
    except (x509.ExtensionNotFound, ValueError):
        san = None
    if san is not None:
        for kind in (x509.UniformResourceIdentifier, x509.DNSName):
            values = san.get_values_for_type(kind)
            if values:
                return values[0]
    try:
        names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except ValueError:
        return None
    for name in names:
        value = name.value
        if isinstance(value, bytes):
            value = value.decode("utf-8", "replace")
        if value:
            return value
    return None


def peer_certificate(transport: Any) -> Optional[x509.Certificate]:
    """
    The verified client certificate of a TLS connection, as a
    C{cryptography} certificate; None for a client without one, or a
    connection without TLS.
    """
    get = getattr(transport, "getPeerCertificate", None)
    if get is None:
        return None
    try:
        certificate = get()
    except Exception:
        # Not a TLS connection after all (a plain TCP transport raises).
        return None
    if certificate is None:
        return None
    if isinstance(certificate, x509.Certificate):
        return certificate
    to_cryptography = getattr(certificate, "to_cryptography", None)
    return to_cryptography() if to_cryptography is not None else None


def peer_identity(transport: Any) -> Optional[str]:
    """The identity of the client on C{transport}, or None (no certificate)."""
    certificate = peer_certificate(transport)
    return None if certificate is None else certificate_identity(certificate)


def request_identity(request: Any) -> Optional[str]:
    """The identity of the client of a twisted.web request, or None."""
    channel = getattr(request, "channel", None)
    transport = getattr(channel, "transport", None) or getattr(request, "transport", None)
    return peer_identity(transport)
