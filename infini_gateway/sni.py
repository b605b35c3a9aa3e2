"""
The mesh gateway's L4 routing: read the TLS ClientHello without decrypting
anything, pick an upstream by the server name it asks for, replay the bytes
read to that upstream and splice both directions.

An entry with C{protocol: sni} holds no key and never calls OpenSSL: it
parses the TLS records itself (L{ClientHelloReader}).  The ClientHello may
arrive split over any number of TCP segments, and over several handshake
records; the reader keeps every byte (to replay them), caps the message at
L{MAX_HELLO} bytes and L{MAX_RECORDS} records, and refuses anything that is
not a well-formed ClientHello as soon as it can tell.

Routes (L{SNIRoutes}), from the entry's C{sni_routes}: an exact server name
first, then the longest leftmost wildcard (C{*.dc2.internal.example.org}
is any name below C{dc2.internal.example.org}, at any depth: one route can
send a whole datacenter to another gateway), then C{default}.  Consul's
names, C{<service>.<namespace>.<datacenter>.internal.<trust-domain>}, are
plain names here.  Names are compared in lower case, without a trailing
dot.

The upstream's endpoints are reached in plain TCP whatever their scheme:
the bytes are the client's TLS already, so the upstream's C{tls} settings do
not apply (the client and the endpoint negotiate TLS end to end, through
the gateway).  Its balancer, health and retries on connect failures do.

Connections closed unforwarded are counted in the factory's C{counters}:
C{malformed} (not a ClientHello, or one that breaks the rules),
C{too_large}, C{timeout} (no whole ClientHello within
C{client_hello_timeout}, default 5 s), C{no_server_name} (no SNI, and no
C{default}), C{no_route} (a name no route takes, and no C{default}),
C{no_endpoint} (no endpoint of the upstream could be reached).
"""

from typing import Any, Dict, Mapping, NamedTuple, Optional, Sequence, Tuple

from twisted.internet.interfaces import IDelayedCall

from infini_gateway.config._roles import normalise_server_name
from infini_gateway.config.model import Entry, SNIRoute
from infini_gateway.tcp import L4Connection, L4Factory, log
from infini_gateway.upstream.upstreams import Upstream

__all__ = [
    "ClientHello",
    "ClientHelloReader",
    "MalformedClientHello",
    "SNIPassthroughFactory",
    "SNIRoutes",
]

# The largest ClientHello taken (the message, without its 4-byte header):
# what one TLS record can carry.  Post-quantum key shares make hellos of
# about 1.8 KiB; 16 KiB leaves room for any real client.
MAX_HELLO = 16384
# Records the ClientHello may be split into.
MAX_RECORDS = 64

_HANDSHAKE = 22
_CLIENT_HELLO = 1
_SERVER_NAME = 0
_HOST_NAME = 0
_MAX_RECORD = 16384


class MalformedClientHello(ValueError):
    """
    The bytes are not the beginning of a well-formed TLS ClientHello.

    @ivar reason: C{"malformed"} or C{"too_large"}.
    """

    def __init__(self, message: str, reason: str = "malformed") -> None:
        super().__init__(message)
        self.reason = reason


class ClientHello(NamedTuple):
    """
    What the gateway reads of a ClientHello.

    @ivar server_name: the SNI host name (lower case, no trailing dot), or
        None when the client sent none.
    """

    server_name: Optional[str]
    legacy_version: Tuple[int, int]


class ClientHelloReader:
    """
    Reads a ClientHello from bytes fed as they arrive; each byte is looked
    at once (the message is parsed once, when whole).

    @ivar raw: every byte fed, to replay to the upstream.
    """

    def __init__(self, max_hello: int = MAX_HELLO, max_records: int = MAX_RECORDS) -> None:
        self.raw = bytearray()
        self.max_hello = max_hello
        self.max_records = max_records
        self._offset = 0  # start of the next record in raw
        self._message = bytearray()
        self._records = 0
        self.hello: Optional[ClientHello] = None

    def feed(self, data: bytes) -> Optional[ClientHello]:
        """
        Take more bytes.

        @return: the ClientHello once whole (and from then on), else None.
        @raise MalformedClientHello: the bytes cannot be a ClientHello.
        """
        self.raw += data
        while self.hello is None:
            available = len(self.raw) - self._offset
            if available < 5:
                self._check_partial_header()
                return None
            header = bytes(self.raw[self._offset : self._offset + 5])
            self._check_header(header)
            length = int.from_bytes(header[3:5], "big")
            if available < 5 + length:
                return None
            start = self._offset + 5
            self._message += self.raw[start : start + length]
            self._offset = start + length
            self._records += 1
            self._check_message()
        return self.hello

    def _check_partial_header(self) -> None:
        # Refuse early what cannot be a handshake record (an HTTP request
        # sent to a TLS port, say), without waiting for more bytes.
        partial = self.raw[self._offset :]
        if len(partial) >= 1 and partial[0] != _HANDSHAKE:
            raise MalformedClientHello(_not_handshake(partial[0]))
        if len(partial) >= 2 and partial[1] != 3:
            raise MalformedClientHello(f"record version {partial[1]}.x is not TLS")

    def _check_header(self, header: bytes) -> None:
        if header[0] != _HANDSHAKE:
            raise MalformedClientHello(_not_handshake(header[0]))
        if header[1] != 3 or header[2] > 4:
            raise MalformedClientHello(f"record version {header[1]}.{header[2]} is not TLS")
        length = int.from_bytes(header[3:5], "big")
        if length == 0:
            raise MalformedClientHello("an empty handshake record")
        if length > _MAX_RECORD:
            raise MalformedClientHello(f"a record of {length} bytes (at most {_MAX_RECORD})")
        if self._records >= self.max_records:
            raise MalformedClientHello(
                f"the ClientHello spans over {self.max_records} records", "too_large"
            )

    def _check_message(self) -> None:
        message = self._message
        if message[0] != _CLIENT_HELLO:
            raise MalformedClientHello(f"handshake message {message[0]} is not a ClientHello")
        if len(message) < 4:
            return
        length = int.from_bytes(message[1:4], "big")
        if length > self.max_hello:
            raise MalformedClientHello(
                f"a ClientHello of {length} bytes (at most {self.max_hello})", "too_large"
            )
        if len(message) >= 4 + length:
            self.hello = parse_client_hello(bytes(message[4 : 4 + length]))


def _not_handshake(content_type: int) -> str:
    if content_type & 0x80:
        return "an SSLv2 hello, or not TLS"
    return f"record type {content_type} is not a handshake"


class _Cursor:
    """Reads length-prefixed fields of a message, refusing any overrun."""

    def __init__(self, data: bytes, what: str) -> None:
        self.data = data
        self.offset = 0
        self.what = what

    def take(self, size: int, field: str) -> bytes:
        end = self.offset + size
        if end > len(self.data):
            raise MalformedClientHello(f"{self.what}: {field} runs past the end")
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def number(self, size: int, field: str) -> int:
        return int.from_bytes(self.take(size, field), "big")

    def vector(self, length_size: int, field: str) -> bytes:
        return self.take(self.number(length_size, field + " length"), field)

    @property
    def left(self) -> int:
        return len(self.data) - self.offset


def parse_client_hello(body: bytes) -> ClientHello:
    """
    The server name of a ClientHello message's body (without the 4-byte
    handshake header).

    @raise MalformedClientHello: it breaks the rules of RFC 8446 / 5246 /
        6066 the gateway relies on.
    """
    hello = _Cursor(body, "ClientHello")
    major, minor = hello.take(2, "legacy_version")
    if major != 3:
        raise MalformedClientHello(f"ClientHello version {major}.{minor} is not TLS")
    hello.take(32, "random")
    if len(hello.vector(1, "legacy_session_id")) > 32:
        raise MalformedClientHello("ClientHello: a session id over 32 bytes")
    suites = hello.vector(2, "cipher_suites")
    if not suites or len(suites) % 2:
        raise MalformedClientHello("ClientHello: no cipher suites, or an odd length")
    if not hello.vector(1, "compression_methods"):
        raise MalformedClientHello("ClientHello: no compression methods")
    if hello.left == 0:
        return ClientHello(None, (major, minor))  # no extensions at all
    extensions = _Cursor(hello.vector(2, "extensions"), "ClientHello extensions")
    if hello.left:
        raise MalformedClientHello("ClientHello: bytes after the extensions")
    server_name = None
    seen = set()
    while extensions.left:
        kind = extensions.number(2, "extension type")
        data = extensions.vector(2, f"extension {kind}")
        if kind in seen:
            raise MalformedClientHello(f"ClientHello: extension {kind} twice")
        seen.add(kind)
        if kind == _SERVER_NAME:
            server_name = _server_name(data)
    return ClientHello(server_name, (major, minor))


def _server_name(data: bytes) -> Optional[str]:
    extension = _Cursor(data, "server_name extension")
    names = _Cursor(extension.vector(2, "server_name_list"), "server_name_list")
    if extension.left or not names.left:
        raise MalformedClientHello("server_name extension: an empty or overlong list")
    host_name = None
    while names.left:
        name_type = names.number(1, "name_type")
        name = names.vector(2, "name")
        if name_type != _HOST_NAME:
            continue  # no other type is defined; ignored, as OpenSSL does
        if host_name is not None:
            raise MalformedClientHello("server_name extension: two host names")
        try:
            host_name = normalise_server_name(name.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise MalformedClientHello(
                f"server_name extension: {name[:64]!r} is not a DNS name"
            ) from None
    return host_name


class SNIRoutes:
    """
    Server name -> upstream name: exact names, then the longest matching
    C{*.suffix} (any depth below the suffix), then the default.
    """

    def __init__(self, routes: Sequence[SNIRoute], default: Optional[str] = None) -> None:
        self.exact: Dict[str, str] = {}
        self.wildcard: Dict[str, str] = {}
        for route in routes:
            name = route.server_name.lower().rstrip(".")
            if name.startswith("*."):
                self.wildcard.setdefault(name[2:], route.upstream)
            else:
                self.exact.setdefault(name, route.upstream)
        self.default = default

    def lookup(self, server_name: Optional[str]) -> Optional[str]:
        """The upstream for C{server_name} (None: no SNI), or None."""
        if server_name is None:
            return self.default
        name = server_name.lower().rstrip(".")
        found = self.exact.get(name)
        if found is not None:
            return found
        labels = name.split(".")
        for i in range(1, len(labels)):
            found = self.wildcard.get(".".join(labels[i:]))
            if found is not None:
                return found
        return self.default


class SNIPassthrough(L4Connection):
    """One client connection of an C{sni} entry."""

    factory: "SNIPassthroughFactory"

    def connectionMade(self) -> None:
        self.reader = ClientHelloReader()
        self._hello_timer: Optional[IDelayedCall] = self.factory.reactor.callLater(
            self.factory.client_hello_timeout, self._too_slow
        )

    def dataReceived(self, data: bytes) -> None:
        if self.done or self.reader is None:
            super().dataReceived(data)
            return
        try:
            hello = self.reader.feed(data)
        except MalformedClientHello as e:
            self._stop_timer()
            self.refuse(e.reason, str(e))
            return
        if hello is None:
            return
        self._stop_timer()
        raw, self.reader = bytes(self.reader.raw), None
        self.route(hello, raw)

    def route(self, hello: ClientHello, raw: bytes) -> None:
        routes = self.factory.routes
        name = routes.lookup(hello.server_name)
        if name is None:
            if hello.server_name is None:
                self.refuse("no_server_name", "no server name (SNI), and no default route")
            else:
                self.refuse("no_route", f"no route for server name {hello.server_name!r}")
            return
        self.hold(raw)
        peer = self.transport.getPeer()
        d = self.forward(self.factory.upstreams[name], getattr(peer, "host", None), plain=True)
        d.addErrback(self._failed)

    def _failed(self, failure: Any) -> None:
        log.failure("entry {entry}: forwarding failed", failure, entry=self.factory.entry.name)
        if not self.done:
            self.done = True
            self.transport.abortConnection()

    def readConnectionLost(self) -> None:
        if self.reader is not None:
            # A half-closed client will never finish its ClientHello.
            self._stop_timer()
            self.refuse("malformed", "the client closed before its ClientHello was whole")
            return
        super().readConnectionLost()

    def _too_slow(self) -> None:
        self._hello_timer = None
        if self.reader is not None:
            self.refuse(
                "timeout",
                f"no whole ClientHello within {self.factory.client_hello_timeout:g}s"
                f" ({len(self.reader.raw)} bytes read)",
            )

    def _stop_timer(self) -> None:
        if self._hello_timer is not None and self._hello_timer.active():
            self._hello_timer.cancel()
        self._hello_timer = None

    def connectionLost(self, reason: Any = None) -> None:
        self._stop_timer()
        super().connectionLost(reason)


class SNIPassthroughFactory(L4Factory):
    """
    The factory of an C{sni} entry.

    @param upstreams: the upstreams by name (the gateway's C{UpstreamSet}).
    """

    protocol = SNIPassthrough

    def __init__(self, entry: Entry, upstreams: Mapping[str, Upstream], reactor: Any) -> None:
        super().__init__(entry, reactor)
        self.upstreams = upstreams
        self.routes = SNIRoutes(entry.sni_routes, entry.sni_default)
        self.client_hello_timeout = entry.client_hello_timeout
