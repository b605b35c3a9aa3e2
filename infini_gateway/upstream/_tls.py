"""
TLS towards C{https} endpoints: one client connection creator per upstream
and endpoint host.

Verification is on by default, against the system's roots or the
upstream's C{ca_file}, for the name in C{sni} (default: the endpoint's
host).  A client certificate (C{cert_file} + C{key_file}) makes it mutual
TLS.  Certificates are loaded as C{cryptography} objects and handed to
Twisted the way L{infini_gateway.tls} does it, without a deprecation warning
on either supported pyOpenSSL.
"""

import ipaddress
from typing import Any, Dict

from cryptography import x509
from OpenSSL import SSL
from zope.interface import implementer

from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet._sslverify import IOpenSSLTrustRoot
from twisted.internet.ssl import (
    CertificateOptions,
    TLSVersion,
    optionsForClientTLS,
    platformTrust,
)

from infini_gateway.config.model import UpstreamTLS
from infini_gateway.tls import TLSConfigError, _for_pyopenssl, load_key_pair, read_tls_file


class UpstreamTLSError(TLSConfigError):
    """An upstream's TLS files are missing, unreadable or do not match."""


@implementer(IOpenSSLTrustRoot)
class _CAFile:
    """Trust exactly the CA certificates of one PEM file."""

    def __init__(self, path: str) -> None:
        self.path = path

    def _addCACertsToContext(self, context: SSL.Context) -> None:
        context.load_verify_locations(self.path)


@implementer(IOpenSSLClientConnectionCreator)
class _Unverified:
    """
    TLS without verifying the server (C{skip_insecure_verify}); the server
    name is still sent, and the client certificate, if any, presented.
    """

    def __init__(self, options: CertificateOptions, sni: str) -> None:
        self._context = options.getContext()
        self._sni = None if _is_ip(sni) else sni.encode("idna")

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._context, None)
        connection.set_app_data(tlsProtocol)
        if self._sni is not None:
            connection.set_tlsext_host_name(self._sni)
        connection.set_connect_state()
        return connection


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class ClientTLS:
    """
    The TLS identity of one upstream: its trust roots and client certificate,
    loaded once; L{creator} makes the connection creator for one host.

    @param resolve: turns a configured path into one relative to the
        configuration file's directory.
    @raise UpstreamTLSError: a file is missing, unreadable or malformed.
    """

    def __init__(self, upstream: str, config: UpstreamTLS, resolve: Any) -> None:
        where = f"upstream {upstream!r}"
        self.config = config
        self._creators: Dict[str, Any] = {}
        self._extra: Dict[str, Any] = {"raiseMinimumTo": TLSVersion.TLSv1_2}
        if config.cert_file and config.key_file:
            cert_path, key_path = resolve(config.cert_file), resolve(config.key_file)
            key, chain = load_key_pair(where, cert_path, key_path)
            key_arg, cert_arg, extra_arg = _for_pyopenssl(key, chain[0], chain[1:])
            self._extra.update(
                privateKey=key_arg, certificate=cert_arg, extraCertChain=extra_arg
            )
        self._trust: Any = platformTrust()
        if config.ca_file:
            path = resolve(config.ca_file)
            ca_data = read_tls_file(where, "ca_file", path)
            try:
                x509.load_pem_x509_certificates(ca_data)
            except ValueError:
                raise UpstreamTLSError(
                    f"{where}: tls.ca_file {path}: no PEM certificate could be read"
                ) from None
            self._trust = _CAFile(path)

    def creator(self, host: str) -> Any:
        """The client connection creator for an endpoint on C{host}."""
        sni = self.config.sni or host
        creator = self._creators.get(sni)
        if creator is None:
            if self.config.verify:
                creator = optionsForClientTLS(
                    sni, trustRoot=self._trust, extraCertificateOptions=dict(self._extra)
                )
            else:
                creator = _Unverified(CertificateOptions(verify=False, **self._extra), sni)
            self._creators[sni] = creator
        return creator

