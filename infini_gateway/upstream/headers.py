"""
The headers of a forwarded request and of the response passed back.

Hop-by-hop headers (RFC 9110 7.6.1: Connection, Keep-Alive, TE, Trailer,
Transfer-Encoding, Upgrade, Proxy-Authenticate, Proxy-Authorization,
Proxy-Connection, and every header named in Connection) are removed both
ways; repeated headers (several Set-Cookie) are kept as they came.
Content-Length and Expect are not copied either: the gateway frames the body
itself, and twisted.web has already answered a client's
C{Expect: 100-continue} and read the whole body.

The request gets C{X-Forwarded-For} (the client appended to what came),
C{X-Forwarded-Proto}, C{X-Forwarded-Host} and C{X-Real-IP}, and a Host
chosen as APISIX's C{pass_host} does: the client's (C{pass}), the
endpoint's (C{node}) or C{upstream_host} (C{rewrite}).
"""

from functools import lru_cache
from typing import FrozenSet, Iterable, Optional, Set

from twisted.web.http_headers import Headers

from infini_gateway.config.model import UpstreamConfig
from infini_gateway.upstream.balancer import EndpointState

HOP_BY_HOP: FrozenSet[bytes] = frozenset(
    [
        b"connection",
        b"keep-alive",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
    ]
)
# Not hop-by-hop, but recomputed by the gateway (see the module docstring).
_NOT_COPIED = frozenset([b"content-length", b"expect", b"host"])
_DEFAULT_PORTS = {"http": 80, "https": 443}


def connection_tokens(headers: Headers) -> Set[bytes]:
    """The options named in every Connection header, lowercase."""
    tokens: Set[bytes] = set()
    for value in headers.getRawHeaders(b"connection", ()):
        tokens.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return tokens


def is_upgrade(headers: Headers) -> bool:
    """Whether the request asks for a protocol upgrade (a WebSocket, say)."""
    return headers.hasHeader(b"upgrade") and b"upgrade" in connection_tokens(headers)


def copy_end_to_end(
    source: Headers, target: Headers, skip: Iterable[bytes] = ()
) -> Headers:
    """
    Set on C{target} every end-to-end header of C{source} (each name's
    values replace C{target}'s), leaving out hop-by-hop headers, the
    headers named in Connection and C{skip}.
    """
    drop = HOP_BY_HOP | connection_tokens(source) | frozenset(skip)
    for name, values in source.getAllRawHeaders():
        if name.lower() not in drop:
            target.setRawHeaders(name, list(values))
    return target


@lru_cache(maxsize=4096)
def encoded_host(host: str) -> bytes:
    """
    C{host} as a URL or a Host header writes it: an IPv6 address in
    brackets, a name IDNA-encoded (which costs more than the rest of a
    header: once per name).
    """
    return (f"[{host}]" if ":" in host else host).encode("idna")


def host_value(endpoint: EndpointState) -> bytes:
    """C{host[:port]} of an endpoint, the port left out when it is the default."""
    host = encoded_host(endpoint.host)
    if _DEFAULT_PORTS.get(endpoint.scheme) != endpoint.port:
        return b"%s:%d" % (host, endpoint.port)
    return host


def request_headers(
    source: Headers,
    config: UpstreamConfig,
    endpoint: EndpointState,
    client_ip: str,
    secure: bool,
    upgrade: bool = False,
) -> Headers:
    """
    The headers to send upstream for a request that came with C{source}.

    @param client_ip: the client's address (C{""} when it has none).
    @param secure: whether the client spoke TLS to the gateway.
    @param upgrade: keep C{Upgrade} and send C{Connection: Upgrade}.
    """
    headers = copy_end_to_end(source, Headers(), _NOT_COPIED)
    original_host = source.getRawHeaders(b"host", [None])[0]
    if config.pass_host == "rewrite" and config.upstream_host:
        host = config.upstream_host.encode("idna")
    elif config.pass_host == "pass" and original_host:
        host = original_host
    else:
        host = host_value(endpoint)
    headers.setRawHeaders(b"Host", [host])
    ip = client_ip.encode("ascii", "replace")
    if ip:
        forwarded = source.getRawHeaders(b"x-forwarded-for", [])
        headers.setRawHeaders(b"X-Forwarded-For", [b", ".join(forwarded + [ip])])
        headers.setRawHeaders(b"X-Real-IP", [ip])
    headers.setRawHeaders(b"X-Forwarded-Proto", [b"https" if secure else b"http"])
    if original_host:
        headers.setRawHeaders(b"X-Forwarded-Host", [original_host])
    for name, value in config.request_headers:
        headers.setRawHeaders(name.encode("latin-1"), [value.encode("latin-1")])
    if upgrade:
        headers.setRawHeaders(b"Connection", [b"Upgrade"])
        headers.setRawHeaders(b"Upgrade", source.getRawHeaders(b"upgrade", []))
    return headers


def response_headers(source: Headers, target: Headers, upgrade: bool = False) -> Headers:
    """
    Copy an upstream's response headers onto C{target} (the client's
    response), end-to-end ones only; for a C{101} answer to an upgrade,
    C{Connection: Upgrade} and C{Upgrade} are kept.
    """
    copy_end_to_end(source, target, (b"content-length",))
    if upgrade:
        target.setRawHeaders(b"Connection", [b"Upgrade"])
        target.setRawHeaders(b"Upgrade", source.getRawHeaders(b"upgrade", []))
    return target


def hash_key(request, config: UpstreamConfig, client_ip: str) -> Optional[str]:
    """
    The C{chash} key of a request, following APISIX's C{hash_on}/C{key}:
    C{vars} with C{remote_addr}, C{uri}, C{request_uri}, C{host},
    C{arg_NAME}, C{http_NAME} or C{cookie_NAME}; C{header} or C{cookie}
    with its name.  A missing value falls back to the client's address.
    """
    if config.balancer != "chash":
        return None
    kind, key = config.hash_on, config.key
    value: Optional[bytes] = None
    if kind == "header":
        value = request.getHeader(key.encode("latin-1"))
    elif kind == "cookie":
        value = request.getCookie(key.encode("latin-1"))
    elif key == "uri":
        value = request.path
    elif key == "request_uri":
        value = request.uri
    elif key == "host":
        value = request.getHeader(b"host")
    elif key.startswith("arg_"):
        values = request.args.get(key[4:].encode("latin-1"))
        value = values[0] if values else None
    elif key.startswith("http_"):
        value = request.getHeader(key[5:].replace("_", "-").encode("latin-1"))
    elif key.startswith("cookie_"):
        value = request.getCookie(key[7:].encode("latin-1"))
    if value is None:
        return client_ip
    return value.decode("latin-1")
