"""
Entry certificates: loaded from the files an entry names, or generated under
C{path.data} and kept.

An entry with C{tls.cert_file} / C{tls.key_file} serves those files (the
certificate file may carry the rest of the chain after the leaf).  An entry
without them serves a certificate issued by a local CA kept next to it::

    <path.data>/tls/            0700
        ca.crt                  the CA clients trust (see ca_certificate_path)
        ca.key                  0600
        <entry name>.crt        the entry's server certificate
        <entry name>.key        0600
        .lock                   serialises generation between processes

Kept files are reused byte for byte on restart.  A server certificate that has
expired (or is about to), no longer covers the names the entry is reached by,
or was not issued by the kept CA is replaced by a new one from the same CA, so
clients that trust C{ca.crt} keep working.

Every problem is reported as one L{TLSConfigError} line naming the file, before
anything is bound.
"""

import datetime
import functools
import ipaddress
import os
import re
import secrets
import socket
import warnings
from contextlib import contextmanager
from typing import Iterator, List, Optional, Sequence, Tuple, Union

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.logger import Logger

from infini_gateway.config.model import Entry

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "TLSConfigError",
    "ca_certificate_path",
    "server_options",
]

log = Logger()

CA_VALIDITY = datetime.timedelta(days=3652)
SERVER_VALIDITY = datetime.timedelta(days=397)
# A kept server certificate this close to its end is replaced at start-up,
# so a gateway restarted now does not stop verifying in the middle of a run.
RENEW_BEFORE = datetime.timedelta(days=30)
# Certificates start a little in the past: clients with a slow clock still
# accept a certificate issued a moment ago.
BACKDATE = datetime.timedelta(hours=1)

_ANY_ADDRESS = ("", "0.0.0.0", "::", "*")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")

_IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
_PrivateKey = PrivateKeyTypes


class TLSConfigError(ValueError):
    """An entry's TLS files are missing, unreadable, malformed or do not match."""


def ca_certificate_path(data_dir: str, base_dir: str = ".") -> str:
    """
    The CA certificate a client must trust to verify generated entry
    certificates.

    @param data_dir: C{path.data}; relative paths are resolved against
        C{base_dir}.
    """
    return os.path.join(_tls_dir(data_dir, base_dir), "ca.crt")


def server_options(
    entry: Entry, data_dir: str, base_dir: str = "."
) -> CertificateOptions:
    """
    Server-side TLS options for C{entry}: TLS 1.2 at least, Twisted's default
    ciphers, ALPN C{http/1.1} offered.

    @param entry: the entry; C{entry.tls.cert_file} / C{key_file} are loaded
        if set, otherwise a kept certificate is loaded or generated.
    @param data_dir: C{path.data}, where generated certificates are kept.
    @param base_dir: the directory relative paths are resolved against (the
        directory of gateway.yml).

    @raise TLSConfigError: with a one-line message naming the file at fault.
    """
    tls = entry.tls
    if tls.cert_file or tls.key_file:
        key, chain = _load_given(entry, base_dir)
    else:
        key, chain = _kept_certificate(entry, _tls_dir(data_dir, base_dir))
    client_cas = None
    if tls.client_ca_file:
        # Here, not at the top: identity imports this module.
        from infini_gateway.identity import load_client_cas

        client_cas = load_client_cas(
            f"entry {entry.name!r}", _resolve(tls.client_ca_file, base_dir)
        )
    options = _certificate_options(
        key,
        chain[0],
        chain[1:],
        # A tcp entry carries any protocol: offering http/1.1 would be wrong.
        alpn=getattr(entry, "protocol", "http") == "http",
        trust_root=client_cas,
    )
    if client_cas is not None:
        # trustRoot= makes Twisted require a certificate; "optional" asks
        # for one and lets a client without one in (still verifying any
        # certificate sent).
        options.requireCertificate = tls.client_auth != "optional"
    return options


# Options


def _certificate_options(
    key: _PrivateKey,
    certificate: x509.Certificate,
    extra: Sequence[x509.Certificate],
    alpn: bool = True,
    trust_root: object = None,
) -> CertificateOptions:
    key_arg, cert_arg, extra_arg = _for_pyopenssl(key, certificate, extra)
    more: dict = {}
    if alpn and _alpn_is_clean():
        more["acceptableProtocols"] = [b"http/1.1"]
    if trust_root is not None:
        more["trustRoot"] = trust_root
    return CertificateOptions(
        privateKey=key_arg,
        certificate=cert_arg,
        extraCertChain=extra_arg,
        raiseMinimumTo=TLSVersion.TLSv1_2,
        **more,
    )


@functools.lru_cache(maxsize=None)
def _alpn_is_clean() -> bool:
    """
    Whether ALPN can be offered without a warning.  pyOpenSSL 25.1 warns when a
    context is changed after a connection was made from it, and its
    C{set_cipher_list} makes one, so Twisted's ALPN set-up (which comes after
    the cipher list) warns there; an OpenSSL without ALPN refuses outright.
    ALPN is a courtesy here (a client that gets no ALPN answer speaks
    HTTP/1.1 anyway), so it is left out rather than warn.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        try:
            CertificateOptions(acceptableProtocols=[b"http/1.1"]).getContext()
        except (DeprecationWarning, NotImplementedError):
            return False
    return True


def _pyopenssl_takes_cryptography_objects() -> bool:
    """
    pyOpenSSL 24.3 accepts C{cryptography} keys and certificates in
    C{Context.use_certificate} and friends, and deprecates its own C{X509} and
    C{PKey} there; older releases accept only their own types.
    """
    import OpenSSL

    try:
        major, minor = (int(part) for part in OpenSSL.__version__.split(".")[:2])
    except ValueError:  # pragma: no cover - a development version string
        return True
    return (major, minor) >= (24, 3)


def _for_pyopenssl(
    key: _PrivateKey, certificate: x509.Certificate, extra: Sequence[x509.Certificate]
) -> tuple:
    """
    Hand C{CertificateOptions} what the installed pyOpenSSL takes without a
    warning: C{cryptography} objects on 24.3 and later, pyOpenSSL objects
    before (through PEM, which also works for EC keys before 24.2).
    """
    if _pyopenssl_takes_cryptography_objects():
        return key, certificate, list(extra)
    from OpenSSL import crypto

    def convert(cert: x509.Certificate) -> "crypto.X509":
        pem = cert.public_bytes(serialization.Encoding.PEM)
        return crypto.load_certificate(crypto.FILETYPE_PEM, pem)

    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return (
        crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem),
        convert(certificate),
        [convert(cert) for cert in extra],
    )


# Given files


def _load_given(
    entry: Entry, base_dir: str
) -> Tuple[_PrivateKey, List[x509.Certificate]]:
    tls = entry.tls
    where = f"entry {entry.name!r}"
    if not tls.cert_file:
        raise TLSConfigError(f"{where}: tls.key_file is set but tls.cert_file is not")
    if not tls.key_file:
        raise TLSConfigError(f"{where}: tls.cert_file is set but tls.key_file is not")
    cert_path = _resolve(tls.cert_file, base_dir)
    key_path = _resolve(tls.key_file, base_dir)
    key, chain = load_key_pair(where, cert_path, key_path)
    if _not_after(chain[0]) <= _now():
        log.warn(
            "entry {entry}: the certificate in {path} expired on {date}",
            entry=entry.name,
            path=cert_path,
            date=_not_after(chain[0]).isoformat(),
        )
    return key, chain  # type: ignore[return-value]


def load_key_pair(
    where: str, cert_path: str, key_path: str
) -> Tuple[_PrivateKey, List[x509.Certificate]]:
    """
    Read a PEM certificate file (the leaf, then any chain) and the PEM
    private key that goes with it.

    @param where: who asks, for messages (C{"entry 'web'"}, C{"upstream 'api'"}).
    @return: the key and the certificates, leaf first.
    @raise TLSConfigError: a file is missing or unreadable, holds no PEM
        certificate or unencrypted key, or the key does not match.
    """

    cert_data = read_tls_file(where, "cert_file", cert_path)
    try:
        chain = x509.load_pem_x509_certificates(cert_data)
    except ValueError:
        raise TLSConfigError(
            f"{where}: tls.cert_file {cert_path}: no PEM certificate could be read"
        ) from None

    key_data = read_tls_file(where, "key_file", key_path)
    try:
        key = serialization.load_pem_private_key(key_data, password=None)
    except TypeError:
        raise TLSConfigError(
            f"{where}: tls.key_file {key_path}: the private key is encrypted;"
            " give an unencrypted key"
        ) from None
    except ValueError:
        raise TLSConfigError(
            f"{where}: tls.key_file {key_path}: no PEM private key could be read"
        ) from None
    except UnsupportedAlgorithm as e:
        raise TLSConfigError(
            f"{where}: tls.key_file {key_path}: unsupported private key: {e}"
        ) from None

    if not _same_public_key(key, chain[0]):
        raise TLSConfigError(
            f"{where}: tls.key_file {key_path} does not match the certificate"
            f" in tls.cert_file {cert_path}"
        )
    return key, chain  # type: ignore[return-value]


def read_tls_file(where: str, key: str, path: str) -> bytes:
    """The bytes of the file configured as C{tls.<key>}; L{TLSConfigError} if unreadable."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise TLSConfigError(f"{where}: tls.{key} {path}: no such file") from None
    except IsADirectoryError:
        raise TLSConfigError(f"{where}: tls.{key} {path}: is a directory") from None
    except OSError as e:
        raise TLSConfigError(
            f"{where}: tls.{key} {path}: cannot be read: {e.strerror or e}"
        ) from None


# Kept files


def _kept_certificate(
    entry: Entry, tls_dir: str
) -> Tuple[_PrivateKey, List[x509.Certificate]]:
    name = entry.name
    if not _SAFE_NAME.match(name):
        raise TLSConfigError(
            f"entry {name!r}: a generated certificate needs an entry name made of"
            " letters, digits, '.', '_' and '-' (it names files under"
            f" {tls_dir}); or set tls.cert_file and tls.key_file"
        )
    if name.lower() == "ca":
        raise TLSConfigError(
            f"entry {name!r}: a generated certificate cannot be kept for an entry"
            f" named like the CA's files in {tls_dir}; rename the entry or set"
            " tls.cert_file and tls.key_file"
        )
    dns_names, ip_addresses = _wanted_names(entry)
    _make_dirs(tls_dir)
    with _exclusive(os.path.join(tls_dir, ".lock")):
        ca_key, ca_cert = _kept_ca(tls_dir)
        cert_path = os.path.join(tls_dir, name + ".crt")
        key_path = os.path.join(tls_dir, name + ".key")
        kept = _read_kept_pair(key_path, cert_path)
        if kept is not None:
            key, cert = kept
            reason = _reissue_reason(cert, ca_cert, dns_names, ip_addresses)
            if reason is None:
                return key, [cert]
            log.info(
                "entry {entry}: issuing a new certificate ({reason})",
                entry=name,
                reason=reason,
            )
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _issue_server(key, ca_key, ca_cert, name, dns_names, ip_addresses)
        # Key first: a crash between the two writes leaves a pair that does
        # not match, which the next start replaces.
        _write_atomic(key_path, _key_pem(key), 0o600)
        _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        log.info(
            "entry {entry}: certificate {path} issued by {ca}",
            entry=name,
            path=cert_path,
            ca=os.path.join(tls_dir, "ca.crt"),
        )
        return key, [cert]


def _kept_ca(tls_dir: str) -> Tuple[_PrivateKey, x509.Certificate]:
    cert_path = os.path.join(tls_dir, "ca.crt")
    key_path = os.path.join(tls_dir, "ca.key")
    have_cert = os.path.exists(cert_path)
    have_key = os.path.exists(key_path)
    if have_cert and have_key:
        pair = _read_kept_pair(key_path, cert_path, strict=True)
        assert pair is not None
        key, cert = pair
        if _not_after(cert) <= _now():
            raise TLSConfigError(
                f"{cert_path}: the CA certificate expired on"
                f" {_not_after(cert).isoformat()}; remove ca.crt and ca.key to"
                " generate a new CA (clients must then trust the new one)"
            )
        return key, cert
    if have_cert:
        raise TLSConfigError(
            f"{key_path}: no such file, but {cert_path} exists; restore the"
            " key, or remove both to generate a new CA (clients must then"
            " trust the new one)"
        )
    if have_key:
        # The key is written first, so this is a first start that stopped in
        # between: no client can trust a certificate that was never written.
        key = _read_kept_key(key_path)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        _write_atomic(key_path, _key_pem(key), 0o600)
    cert = _issue_ca(key)
    _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    log.info("generated the local CA {path}", path=cert_path)
    return key, cert


def _read_kept_key(key_path: str) -> _PrivateKey:
    try:
        with open(key_path, "rb") as f:
            return serialization.load_pem_private_key(f.read(), password=None)
    except OSError as e:
        raise TLSConfigError(f"{key_path}: cannot be read: {e.strerror or e}") from None
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise TLSConfigError(
            f"{key_path}: not an unencrypted PEM private key"
        ) from None


def _read_kept_pair(
    key_path: str, cert_path: str, strict: bool = False
) -> Optional[Tuple[_PrivateKey, x509.Certificate]]:
    """
    Read a kept key and certificate.  A missing, unreadable or mismatched pair
    is C{None}, to be replaced; with C{strict} (the CA, which must not be
    replaced behind the clients' back) it is a L{TLSConfigError}.
    """

    def fail(message: str) -> None:
        if strict:
            raise TLSConfigError(message)

    try:
        with open(cert_path, "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
    except OSError as e:
        fail(f"{cert_path}: cannot be read: {e.strerror or e}")
        return None
    except ValueError:
        fail(f"{cert_path}: not a PEM certificate")
        return None
    try:
        with open(key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
    except OSError as e:
        fail(f"{key_path}: cannot be read: {e.strerror or e}")
        return None
    except (ValueError, TypeError, UnsupportedAlgorithm):
        fail(f"{key_path}: not an unencrypted PEM private key")
        return None
    if not _same_public_key(key, cert):
        fail(f"{key_path} does not match {cert_path}")
        return None
    return key, cert


def _reissue_reason(
    cert: x509.Certificate,
    ca_cert: x509.Certificate,
    dns_names: Sequence[str],
    ip_addresses: Sequence[_IPAddress],
) -> Optional[str]:
    """Why a kept server certificate cannot be served as it is, or C{None}."""
    if _not_after(cert) - RENEW_BEFORE <= _now():
        return f"the kept one expires on {_not_after(cert).isoformat()}"
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return "the kept one was not issued by the kept CA"
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return "the kept one has no subjectAltName"
    have_dns = {name.lower() for name in san.get_values_for_type(x509.DNSName)}
    have_ip = set(san.get_values_for_type(x509.IPAddress))
    missing = [n for n in dns_names if n.lower() not in have_dns] + [
        str(ip) for ip in ip_addresses if ip not in have_ip
    ]
    if missing:
        return "the kept one does not cover " + ", ".join(missing)
    return None


def _wanted_names(entry: Entry) -> Tuple[List[str], List[_IPAddress]]:
    """
    The names a client may reach the entry by: localhost, the loopback
    addresses, this machine's host name, the bind address when it is a
    specific one, and the published host.
    """
    dns_names: List[str] = []
    ip_addresses: List[_IPAddress] = []

    def add(host: Optional[str]) -> None:
        if not host:
            return
        host = host.strip().strip("[]")
        if host in _ANY_ADDRESS:
            return
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            pass
        else:
            if ip not in ip_addresses and not ip.is_unspecified:
                ip_addresses.append(ip)
            return
        try:
            name = host.rstrip(".").encode("idna").decode("ascii").lower()
        except UnicodeError:
            log.warn("not a usable DNS name for a certificate: {host!r}", host=host)
            return
        if name and name not in dns_names:
            dns_names.append(name)

    add("localhost")
    add("127.0.0.1")
    add("::1")
    add(socket.gethostname())
    add(entry.network.host)
    add(_publish_host(entry.network.publish))
    return dns_names, ip_addresses


def _publish_host(publish: Optional[str]) -> Optional[str]:
    """
    The host of a published address: C{host}, C{host:port}, C{[v6]:port},
    a bare IPv6 address, or a URL.
    """
    if not publish:
        return None
    value = publish.strip()
    if "://" in value:
        value = value.split("://", 1)[1]
    value = value.split("/", 1)[0].rsplit("@", 1)[-1]
    if value.startswith("["):
        return value[1:].split("]", 1)[0]
    if value.count(":") == 1:
        return value.split(":", 1)[0]
    return value


# Issuing


def _issue_ca(key: _PrivateKey) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "infini-gateway"),
            x509.NameAttribute(
                NameOID.COMMON_NAME,
                f"infini-gateway local CA {secrets.token_hex(4)}",
            ),
        ]
    )
    not_before = _now() - BACKDATE
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + CA_VALIDITY)
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
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )


def _issue_server(
    key: _PrivateKey,
    ca_key: _PrivateKey,
    ca_cert: x509.Certificate,
    entry_name: str,
    dns_names: Sequence[str],
    ip_addresses: Sequence[_IPAddress],
) -> x509.Certificate:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "infini-gateway"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"infini-gateway {entry_name}"),
        ]
    )
    san: List[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    san += [x509.IPAddress(ip) for ip in ip_addresses]
    not_before = _now() - BACKDATE
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + SERVER_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                ca_ski.value
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


# Files


def _tls_dir(data_dir: str, base_dir: str) -> str:
    return os.path.join(_resolve(data_dir, base_dir), "tls")


def _resolve(path: str, base_dir: str) -> str:
    path = os.path.expanduser(path)
    if not os.path.isabs(path):
        path = os.path.join(base_dir, path)
    return os.path.abspath(path)


def _make_dirs(tls_dir: str) -> None:
    try:
        os.makedirs(os.path.dirname(tls_dir), mode=0o700, exist_ok=True)
        os.makedirs(tls_dir, mode=0o700, exist_ok=True)
    except OSError as e:
        raise TLSConfigError(
            f"{tls_dir}: cannot create the directory for generated certificates:"
            f" {e.strerror or e}"
        ) from None


@contextmanager
def _exclusive(lock_path: str) -> Iterator[None]:
    """
    Hold an exclusive lock on C{lock_path}, so that gateway processes starting
    together (sharing a port) generate one CA and one certificate, not one
    each.  Without a writable directory there is nothing to generate and
    nothing to lock.
    """
    if fcntl is None:  # pragma: no cover - not POSIX
        yield
        return
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _write_atomic(path: str, data: bytes, mode: int) -> None:
    """
    Write C{data} to a new file created with C{mode}, then rename it over
    C{path}: a reader sees the old file or the whole new one.
    """
    directory, name = os.path.split(path)
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise TLSConfigError(f"{path}: cannot be written: {e.strerror or e}") from None
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(dir_fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(dir_fd)


def _key_pem(key: _PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


# Small helpers


def _same_public_key(key: _PrivateKey, cert: x509.Certificate) -> bool:
    def spki(public_key: object) -> bytes:
        return public_key.public_bytes(  # type: ignore[attr-defined]
            serialization.Encoding.DER,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )

    return spki(key.public_key()) == spki(cert.public_key())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _not_after(cert: x509.Certificate) -> datetime.datetime:
    # not_valid_after_utc arrived in cryptography 42; before it, naive UTC.
    value = getattr(cert, "not_valid_after_utc", None)
    if value is None:  # pragma: no cover - cryptography < 42
        value = cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)
    return value
