"""
Protocol upgrades (WebSocket and any other C{Upgrade}): a raw connection to
the endpoint, then bytes spliced both ways.

Twisted's HTTP client cannot hand over a connection after C{101 Switching
Protocols}, so an upgrade request goes over a connection of its own, made
with the upstream's endpoint factory (same connect timeout and TLS): the
gateway writes the request head itself (headers rewritten as for any
request, with C{Connection: Upgrade} and C{Upgrade} kept) and reads the
response head.  Until then, failures are answered like any other (502, 504)
and may be retried.

Once the head is in, the client's connection is taken from twisted.web's
HTTP channel the way Twisted's own WebSocket support does it
(C{HTTPChannel._protocolUpgradeForWebsockets}, private): the channel's
C{dataReceived} and C{connectionLost} are replaced on the instance, and
bytes the client sent after its request head (buffered by the channel) are
passed on first.  The client connection's transport is then written to
directly; each side is the other's producer, so a slow reader pauses the
other side.  The tunnel closes when either side closes, or when nothing
passes either way for the C{read} timeout (as nginx's C{proxy_read_timeout}
does).

A C{101} answer is passed with C{Connection: Upgrade} and C{Upgrade}; any
other answer is passed as it came (with C{Connection: close}, its body
framed as the upstream framed it) and the connection is closed after it.
"""

from typing import IO, Any, Callable, List, Optional, Tuple

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from infini_gateway.upstream.headers import HOP_BY_HOP, connection_tokens
from infini_gateway.upstream.streams import IdleTimer

MAX_HEAD = 64 * 1024


class HeadTooLarge(Exception):
    """The upstream's response head did not end within L{MAX_HEAD} bytes."""


class BadHead(Exception):
    """The upstream's response head could not be parsed."""


def request_head(method: bytes, target: bytes, headers: Headers) -> bytes:
    """The bytes of a request head."""
    lines = [b"%s %s HTTP/1.1" % (method, target)]
    for name, values in headers.getAllRawHeaders():
        lines.extend(b"%s: %s" % (name, value) for value in values)
    return b"\r\n".join(lines) + b"\r\n\r\n"


def parse_head(head: bytes) -> Tuple[int, bytes, Headers]:
    """C{(status, reason, headers)} of a response head (without the blank line)."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise BadHead(f"invalid status line {lines[0][:80]!r}")
    headers = Headers()
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise BadHead(f"invalid header line {line[:80]!r}")
        headers.addRawHeader(name, value.strip())
    return int(parts[1]), parts[2] if len(parts) > 2 else b"", headers


def response_head(status: int, reason: bytes, headers: Headers) -> bytes:
    lines = [b"HTTP/1.1 %d %s" % (status, reason)]
    for name, values in headers.getAllRawHeaders():
        lines.extend(b"%s: %s" % (name, value) for value in values)
    return b"\r\n".join(lines) + b"\r\n\r\n"


class UpstreamSide(Protocol):
    """
    The raw upstream connection: sends the request, reads the response
    head (C{head} fires with C{(status, reason, headers, rest)}), then
    passes everything to the L{Splice}.
    """

    def __init__(self, head: bytes, body: Optional[IO[bytes]]) -> None:
        self._request = head
        self._body = body
        self._buffer = b""
        self.head: Deferred = Deferred(lambda _: self.abort())
        self.splice: Optional["Splice"] = None
        self.sent = False

    def connectionMade(self) -> None:
        self.transport.write(self._request)
        if self._body is not None:
            self._body.seek(0)
            # Upgrade requests rarely carry a body; it is in memory or a file.
            for chunk in iter(lambda: self._body.read(65536), b""):
                self.transport.write(chunk)
        self.sent = True

    def dataReceived(self, data: bytes) -> None:
        if self.splice is not None:
            self.splice.from_upstream(data)
            return
        if self.head.called:
            return
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD:
                self._fail(HeadTooLarge(f"response head over {MAX_HEAD} bytes"))
            return
        head, rest = self._buffer[:end], self._buffer[end + 4 :]
        self._buffer = b""
        try:
            status, reason, headers = parse_head(head)
        except BadHead as e:
            self._fail(e)
            return
        self.head.callback((status, reason, headers, rest))

    def _fail(self, reason: Exception) -> None:
        self.head.errback(reason)
        self.abort()

    def connectionLost(self, reason: Failure = None) -> None:
        if not self.head.called:
            self.head.errback(reason)
        elif self.splice is not None:
            self.splice.upstream_lost()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abortConnection()


def upgrade_response_head(status: int, reason: bytes, source: Headers, draft: Any) -> bytes:
    """The head the client gets: hop-by-hop headers handled as the module says."""
    headers = Headers()
    drop = HOP_BY_HOP | connection_tokens(source)
    if status != 101:
        # The body is passed as framed: its framing headers stay.
        drop = drop - {b"transfer-encoding"}
    for name, values in source.getAllRawHeaders():
        if name.lower() not in drop:
            headers.setRawHeaders(name, list(values))
    if status == 101:
        headers.setRawHeaders(b"Connection", [b"Upgrade"])
        headers.setRawHeaders(b"Upgrade", source.getRawHeaders(b"upgrade", []))
    else:
        headers.setRawHeaders(b"Connection", [b"close"])
    draft.apply_headers(headers)
    return response_head(status, reason, headers)


class Splice:
    """
    Bytes both ways between the client's connection (taken from its HTTP
    channel) and the upstream's, until one closes or both idle too long.

    @param remaining: for a non-101 answer with a Content-Length, the body
        bytes still to pass before closing; None: until the upstream closes.
    """

    def __init__(
        self,
        channel: Any,
        upstream: UpstreamSide,
        clock: Any,
        idle_timeout: float,
        remaining: Optional[int] = None,
        closed: Optional[Callable[[], None]] = None,
    ) -> None:
        self.channel = channel
        self.client = channel.transport
        self.upstream = upstream
        self.remaining = remaining
        self._closed = closed
        self._timer = IdleTimer(clock, idle_timeout, self.close)
        self._client_lost = channel.connectionLost
        self.done = False

    def start(self, head: bytes, rest: bytes) -> None:
        """Answer the client with C{head}, and splice from now on."""
        channel = self.channel
        # The channel buffered what the client sent after its request head.
        buffered: List[bytes] = getattr(channel, "_dataBuffer", [])
        early = b"".join(buffered)
        del buffered[:]
        channel.setTimeout(None)
        channel.dataReceived = self.from_client
        channel.connectionLost = self.client_lost
        self.upstream.splice = self
        self.client.write(head)
        channel.registerProducer(self.upstream.transport, True)
        client_producer = IPushProducer(self.client, None)
        if client_producer is not None:
            self.upstream.transport.registerProducer(client_producer, True)
            # The channel stops reading while a request is handled.
            client_producer.resumeProducing()
        self._timer.start()
        if rest:
            self.from_upstream(rest)
        if early and not self.done:
            self.from_client(early)

    def from_client(self, data: bytes) -> None:
        if self.done:
            return
        self._timer.start()
        self.upstream.transport.write(data)

    def from_upstream(self, data: bytes) -> None:
        if self.done:
            return
        self._timer.start()
        if self.remaining is not None:
            data = data[: self.remaining]
            self.remaining -= len(data)
        self.client.write(data)
        if self.remaining == 0:
            self.close()

    def upstream_lost(self) -> None:
        self.close()

    def client_lost(self, reason: Failure = None) -> None:
        self.close()
        # Let the channel and its request see the end too (notifyFinish).
        self._client_lost(reason)

    def close(self) -> None:
        if self.done:
            return
        self.done = True
        self._timer.stop()
        self.upstream.transport.loseConnection()
        self.client.loseConnection()
        if self._closed is not None:
            self._closed()

