"""
The front door: HTTP/1.1 as the gateway accepts it from clients.

twisted.web's L{HTTPChannel} is lenient in places a gateway cannot be (it
takes a C{Transfer-Encoding: identity} request as having no body, bare line
feeds inside header values on Twisted 25.5, bytes up to 0xB0 in request
targets, header lines folded over several lines, absolute-form targets for
any host), and it answers its own rejections with an empty C{400}.  So a
strict framer stands in front of it: L{RequestFramer} reads the client's
bytes, checks every request head and body framing against RFC 9112 (and the
limits of L{HTTPLimits}), and hands the channel a canonical copy (one
C{Content-Length}, or C{Transfer-Encoding: chunked} re-chunked by the
framer, origin-form targets).  Whatever Twisted then parses is exactly what
the framer understood, so the gateway never forwards a request two HTTP
parsers could read two ways.

Rejected, with a JSON body and C{Connection: close}, and never routed:

  - C{400}: a request line that is not C{METHOD SP target SP HTTP/1.x}, a
    method that is not upper-case letters, C{-} and C{_}; a target outside
    printable ASCII, an absolute-form target naming another host than the
    C{Host} header (the gateway is no open forward proxy), C{CONNECT} unless
    the router has a rule for it, C{*} but for C{OPTIONS}; a header line
    with obsolete folding, a bare CR or LF, a NUL or another control
    character, a name that is not a token (a space before the colon); an
    HTTP/1.1 request without exactly one C{Host}; C{Content-Length} with
    C{Transfer-Encoding}, C{Content-Length} values that differ or are not
    decimal, a C{Transfer-Encoding} other than C{chunked} alone (or any on
    HTTP/1.0); chunk sizes that are not hexadecimal, malformed chunk
    extensions or trailers, a chunk not followed by CRLF;
  - C{431}: a request head (request line and headers, CRLFs included)
    longer than C{max_header_size}, or more than L{MAX_HEADERS} fields;
  - C{413}: a body longer than C{max_request_body_size}, seen on
    C{Content-Length} before any of it is read, and counted while a chunked
    body streams;
  - C{408}: a request head not complete within C{read_timeout}, or a body
    that stalls that long between two reads.

Pipelined requests are framed one after another and answered in order (by
twisted.web, one at a time); an error in a later one is answered after the
earlier ones, then the connection is closed.

L{GatewayChannel} also enforces C{write_timeout}: a response that makes no
progress for that long (the connection's buffer is full, the client is not
reading) is cut.  C{idle_timeout} stays twisted.web's: the time a
keep-alive connection may sit with nothing sent, not counted while a
response is being produced.
"""

import json
import re
import time
from typing import Any, List, Optional, Tuple

import attrs

from twisted.internet.interfaces import ISSLTransport, ITCPTransport
from twisted.logger import Logger
from twisted.web.http import HTTPChannel
from twisted.web.server import Site

log = Logger()

KIB = 1024
MIB = 1024 * KIB

# Header fields in one request head, as twisted.web's own maxHeaders.
MAX_HEADERS = 500

# How long a connection answered with an error may go on sending before it
# is closed anyway.  Closing while request bytes are still unread makes the
# kernel send a reset, which can destroy the answer before the client reads it.
LINGER_SECONDS = 1.0

_REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    413: b"Content Too Large",
    429: b"Too Many Requests",
    431: b"Request Header Fields Too Large",
}
_ERRORS = {
    400: "bad request",
    408: "request timeout",
    413: "request body too large",
    431: "request header fields too large",
}

_TCHAR = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]"
_TOKEN = re.compile(_TCHAR + rb"+\Z")
_METHOD = re.compile(rb"[A-Z_-]{1,32}\Z")
# Printable ASCII, no space.
_TARGET = re.compile(rb"[\x21-\x7e]+\Z")
# Field values: HTAB, SP, VCHAR and obs-text; no other control character.
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*\Z")
_DIGITS = re.compile(rb"[0-9]{1,19}\Z")
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_CHUNK_EXT = (
    rb"(?:[ \t]*;[ \t]*"
    + _TCHAR
    + rb"+(?:[ \t]*=[ \t]*(?:"
    + _TCHAR
    + rb"+|"
    + _QUOTED
    + rb"))?)*"
)
_CHUNK_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})" + _CHUNK_EXT + rb"\Z")
# Longest chunk-size line read (twisted.web's own limit).
_MAX_CHUNK_LINE = 1024
_ABSOLUTE = re.compile(rb"(?i:(https?))://([^/?#]*)([^#]*)\Z")
_HOST = re.compile(
    rb"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._~!$&'()*+,;=%-]*)(?::([0-9]{0,5}))?\Z"
)
_DEFAULT_PORT = {b"http": b"80", b"https": b"443"}


@attrs.frozen
class HTTPLimits:
    """
    An entry's limits on what its clients send (seconds and bytes).

    @ivar allow_connect: whether C{CONNECT} is accepted (a rule asks for it).
    """

    read_timeout: float = 30.0
    write_timeout: float = 30.0
    max_header_size: int = 64 * KIB
    max_request_body_size: int = 200 * MIB
    allow_connect: bool = False


class RequestRejected(Exception):
    """A request the gateway refuses; C{status} and C{reason} say why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(status, reason)
        self.status = status
        self.reason = reason


def error_response(status: int, reason: str) -> bytes:
    """A complete C{HTTP/1.1} error answer, JSON body, C{Connection: close}."""
    body = (
        json.dumps({"error": _ERRORS.get(status, "error"), "reason": reason}).encode(
            "ascii", "backslashreplace"
        )
        + b"\n"
    )
    return (
        b"HTTP/1.1 %d %s\r\n"
        b"Content-Type: application/json\r\n"
        b"Content-Length: %d\r\n"
        b"Connection: close\r\n"
        b"\r\n" % (status, _REASONS.get(status, b"Error"), len(body))
    ) + body


def _bad(reason: str) -> RequestRejected:
    return RequestRejected(400, reason)


def _tokens(values: List[bytes]) -> List[bytes]:
    """The comma-separated list elements of header values, lower-case."""
    found = []
    for value in values:
        for item in value.split(b","):
            item = item.strip(b" \t")
            if item:
                found.append(item.lower())
    return found


def _authority(host: bytes, scheme: bytes) -> Tuple[bytes, bytes]:
    """(name, port) of a C{Host} value or URI authority, lower-case."""
    match = _HOST.match(host)
    if match is None:
        raise _bad("invalid host")
    name, port = match.group(1), match.group(2)
    return name.lower(), port or _DEFAULT_PORT.get(scheme, b"")


@attrs.define
class Head:
    """What the framer made of a request head."""

    method: bytes
    target: bytes
    version: bytes
    headers: List[Tuple[bytes, bytes]]
    length: Optional[int] = None
    chunked: bool = False
    persistent: bool = True
    tunnel: bool = False

    def canonical(self) -> bytes:
        """The head as the channel is given it: one framing header, CRLFs."""
        lines = [b"%s %s %s" % (self.method, self.target, self.version)]
        for name, value in self.headers:
            lines.append(name + b": " + value)
        if self.chunked:
            lines.append(b"Transfer-Encoding: chunked")
        elif self.length is not None:
            lines.append(b"Content-Length: %d" % self.length)
        return b"\r\n".join(lines) + b"\r\n\r\n"


def parse_head(lines: List[bytes], limits: HTTPLimits) -> Head:
    """
    Check a request head (its lines without CRLF, the request line first)
    and decide the body's framing.

    @raise RequestRejected: for anything ambiguous or malformed.
    """
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise _bad("the request line is not METHOD SP target SP version")
    method, target, version = parts
    if not _METHOD.match(method):
        raise _bad("invalid method")
    if version not in (b"HTTP/1.1", b"HTTP/1.0"):
        raise _bad("unsupported HTTP version")
    if not _TARGET.match(target):
        raise _bad("invalid request target")
    headers: List[Tuple[bytes, bytes]] = []
    for line in lines[1:]:
        if line[:1] in (b" ", b"\t"):
            raise _bad("obsolete line folding")
        name, colon, value = line.partition(b":")
        if not colon:
            raise _bad("a header line without a colon")
        if not _TOKEN.match(name):
            raise _bad("invalid header name")
        value = value.strip(b" \t")
        if not _FIELD_VALUE.match(value):
            raise _bad("a control character in a header value")
        headers.append((name, value))
    if len(headers) > MAX_HEADERS:
        raise RequestRejected(431, f"more than {MAX_HEADERS} header fields")

    def values(wanted: bytes) -> List[bytes]:
        return [v for n, v in headers if n.lower() == wanted]

    hosts = values(b"host")
    if len(hosts) > 1:
        raise _bad("more than one Host header")
    if not hosts and version == b"HTTP/1.1":
        raise _bad("an HTTP/1.1 request without a Host header")
    host = hosts[0] if hosts else None
    if host is not None:
        _authority(host, b"http")

    if method == b"CONNECT":
        if not limits.allow_connect:
            raise _bad("CONNECT is not accepted here")
        if target.startswith(b"/") or not _HOST.match(target):
            raise _bad("CONNECT needs a HOST:PORT target")
    elif target == b"*":
        if method != b"OPTIONS":
            raise _bad("the * target is only for OPTIONS")
    elif not target.startswith(b"/"):
        absolute = _ABSOLUTE.match(target)
        if absolute is None:
            raise _bad("invalid request target")
        scheme, authority, rest = absolute.groups()
        scheme = scheme.lower()
        if b"@" in authority or not authority:
            raise _bad("invalid authority in the request target")
        if host is None or _authority(authority, scheme) != _authority(host, scheme):
            raise _bad("an absolute-form target for another host (not a forward proxy)")
        if rest[:1] not in (b"/", b"?", b""):
            raise _bad("invalid request target")
        target = rest if rest.startswith(b"/") else b"/" + rest

    encodings = values(b"transfer-encoding")
    lengths = values(b"content-length")
    head = Head(method, target, version, [])
    if encodings:
        if version != b"HTTP/1.1":
            raise _bad("Transfer-Encoding on HTTP/1.0")
        if lengths:
            raise _bad("both Content-Length and Transfer-Encoding")
        if _tokens(encodings) != [b"chunked"]:
            raise _bad("a Transfer-Encoding other than chunked")
        head.chunked = True
    elif lengths:
        found = set()
        for value in lengths:
            for item in value.split(b","):
                item = item.strip(b" \t")
                if not _DIGITS.match(item):
                    raise _bad("invalid Content-Length")
                found.add(int(item))
        if len(found) != 1:
            raise _bad("several different Content-Length values")
        head.length = found.pop()
        if head.length > limits.max_request_body_size:
            raise RequestRejected(
                413, f"the body is larger than {limits.max_request_body_size} bytes"
            )
    head.headers = [
        (n, v)
        for n, v in headers
        if n.lower() not in (b"content-length", b"transfer-encoding")
    ]
    connection = _tokens(values(b"connection"))
    head.persistent = version == b"HTTP/1.1" and b"close" not in connection
    head.tunnel = method == b"CONNECT" or (
        bool(values(b"upgrade")) and b"upgrade" in connection
    )
    return head


class Framed:
    """
    What one L{RequestFramer.feed} gave: C{output} for the channel,
    C{completed} requests whose last byte is in it, and C{error} when the
    input broke off there (nothing after it is read).
    """

    __slots__ = ("output", "completed", "error")

    def __init__(self) -> None:
        self.output: List[bytes] = []
        self.completed = 0
        self.error: Optional[RequestRejected] = None


class RequestFramer:
    """
    Reads the bytes a client sends, request after request, and gives back a
    canonical copy of the well-formed ones (sans I/O: fed bytes, never
    calling out).

    @ivar waiting: C{"head"} while part of a request head has arrived,
        C{"body"} while a body is being read, else None.
    """

    def __init__(self, limits: HTTPLimits) -> None:
        self.limits = limits
        self.waiting: Optional[str] = None
        self._buffer = bytearray()
        self._scan = 0
        self._lines: List[bytes] = []
        self._head_size = 0
        self._state = "head"
        self._remaining = 0
        self._body_size = 0
        self._trailer_size = 0
        self._after = "head"

    @property
    def done(self) -> bool:
        """Whether nothing more is read (an error, or the last request)."""
        return self._state in ("error", "closed")

    def feed(self, data: bytes) -> Framed:
        result = Framed()
        if self._state == "error":
            return result
        if self._state == "closed":
            return result
        if self._state == "tunnel":
            if data:
                result.output.append(bytes(data))
            return result
        self._buffer += data
        try:
            while self._step(result):
                pass
        except RequestRejected as e:
            result.error = e
            self._state = "error"
            self.waiting = None
            self._buffer = bytearray()
        return result

    def _step(self, result: Framed) -> bool:
        """One piece of progress; False when more input is needed."""
        state = self._state
        if state == "head":
            return self._read_head(result)
        if state == "length":
            return self._read_length(result)
        if state == "chunk-size":
            return self._read_chunk_size(result)
        if state == "chunk-data":
            return self._read_chunk_data(result)
        if state == "chunk-crlf":
            return self._read_chunk_crlf(result)
        if state == "trailer":
            return self._read_trailer(result)
        if state == "tunnel":
            if self._buffer:
                result.output.append(bytes(self._buffer))
                self._buffer = bytearray()
            return False
        # closed: the last request was answered with Connection: close.
        self._buffer = bytearray()
        return False

    def _line(self, limit: int, what: str, status: int = 400) -> Optional[bytes]:
        """The next CRLF-ended line, None if incomplete; no bare CR or LF."""
        buffer = self._buffer
        # Resume the search where the last one stopped (a head trickling in
        # byte by byte costs linear time), one byte back for a CR at the end.
        start = self._scan
        end = buffer.find(b"\r\n", start)
        if end < 0:
            if (
                buffer.find(b"\n", start) >= 0
                or buffer.find(b"\r", start, len(buffer) - 1) >= 0
            ):
                raise _bad(f"a bare CR or LF in the {what}")
            if len(buffer) > limit:
                raise RequestRejected(status, f"the {what} is too long")
            self._scan = max(len(buffer) - 1, 0)
            return None
        self._scan = 0
        if buffer.find(b"\n", start, end) >= 0 or buffer.find(b"\r", start, end) >= 0:
            raise _bad(f"a bare CR or LF in the {what}")
        if end > limit:
            raise RequestRejected(status, f"the {what} is too long")
        line = bytes(buffer[:end])
        del buffer[: end + 2]
        return line

    def _read_head(self, result: Framed) -> bool:
        if not self._buffer:
            return False
        self.waiting = "head"
        limit = self.limits.max_header_size
        left = limit - self._head_size
        line = self._line(max(left - 2, 0), "request head", 431)
        if line is None:
            if self._head_size + len(self._buffer) > limit:
                raise RequestRejected(
                    431, f"the request head is larger than {limit} bytes"
                )
            return False
        self._head_size += len(line) + 2
        if self._head_size > limit:
            raise RequestRejected(431, f"the request head is larger than {limit} bytes")
        if not self._lines and not line:
            # An empty line before the request line (RFC 9112 2.2).
            return True
        if line:
            self._lines.append(line)
            if len(self._lines) > MAX_HEADERS + 1:
                raise RequestRejected(431, f"more than {MAX_HEADERS} header fields")
            return True
        head = parse_head(self._lines, self.limits)
        self._lines = []
        self._head_size = 0
        result.output.append(head.canonical())
        self._after = (
            "tunnel" if head.tunnel else ("head" if head.persistent else "closed")
        )
        self._body_size = 0
        if head.chunked:
            self._state = "chunk-size"
            self.waiting = "body"
        elif head.length:
            self._state = "length"
            self._remaining = head.length
            self.waiting = "body"
        else:
            self._complete(result)
        return True

    def _complete(self, result: Framed) -> None:
        result.completed += 1
        self._state = self._after
        self.waiting = None

    def _read_length(self, result: Framed) -> bool:
        if not self._buffer:
            return False
        piece = bytes(self._buffer[: self._remaining])
        del self._buffer[: len(piece)]
        self._remaining -= len(piece)
        result.output.append(piece)
        if self._remaining == 0:
            self._complete(result)
        return True

    def _read_chunk_size(self, result: Framed) -> bool:
        line = self._line(_MAX_CHUNK_LINE, "chunk size line")
        if line is None:
            return False
        match = _CHUNK_SIZE_LINE.match(line)
        if match is None:
            raise _bad("invalid chunk size or extension")
        size = int(match.group(1), 16)
        if self._body_size + size > self.limits.max_request_body_size:
            raise RequestRejected(
                413,
                f"the body is larger than {self.limits.max_request_body_size} bytes",
            )
        if size == 0:
            self._state = "trailer"
            self._trailer_size = 0
        else:
            self._remaining = size
            self._state = "chunk-data"
            result.output.append(b"%x\r\n" % size)
        return True

    def _read_chunk_data(self, result: Framed) -> bool:
        if not self._buffer:
            return False
        piece = bytes(self._buffer[: self._remaining])
        del self._buffer[: len(piece)]
        self._remaining -= len(piece)
        self._body_size += len(piece)
        result.output.append(piece)
        if self._remaining == 0:
            self._state = "chunk-crlf"
        return True

    def _read_chunk_crlf(self, result: Framed) -> bool:
        if len(self._buffer) < 2:
            if self._buffer and self._buffer != b"\r":
                raise _bad("a chunk not followed by CRLF")
            return False
        if self._buffer[:2] != b"\r\n":
            raise _bad("a chunk not followed by CRLF")
        del self._buffer[:2]
        result.output.append(b"\r\n")
        self._state = "chunk-size"
        return True

    def _read_trailer(self, result: Framed) -> bool:
        limit = self.limits.max_header_size
        line = self._line(max(limit - self._trailer_size, 0), "trailer section", 431)
        if line is None:
            return False
        self._trailer_size += len(line) + 2
        if self._trailer_size > limit:
            raise RequestRejected(431, "the trailer section is too large")
        if line:
            # Trailers are checked, then dropped: none is forwarded.
            name, colon, value = line.partition(b":")
            if not colon or not _TOKEN.match(name):
                raise _bad("invalid trailer field")
            if not _FIELD_VALUE.match(value.strip(b" \t")):
                raise _bad("a control character in a trailer field")
            return True
        result.output.append(b"0\r\n\r\n")
        self._complete(result)
        return True


class GatewayChannel(HTTPChannel):
    """
    twisted.web's channel behind a L{RequestFramer}, with the read and
    write timeouts of L{HTTPLimits} (C{limits}, set by L{GatewaySite}).

    @ivar rejected: how many requests were refused (this connection).
    """

    limits = HTTPLimits()
    # The framer enforces the limits; twisted.web's own must not trip first
    # (they answer an empty 400, or close without a word on long lines).
    maxHeaders = MAX_HEADERS + 10

    def __init__(self) -> None:
        super().__init__()
        self._framer: Optional[RequestFramer] = None
        self._completed = 0
        self._answered = 0
        self._replaying = 0
        self._pending: Optional[RequestRejected] = None
        self._closing = False
        self._read_call: Any = None
        self._read_kind: Optional[str] = None
        self._write_call: Any = None
        self._write_pending: Optional[int] = None
        self._linger_call: Any = None
        self._lost = False
        self.rejected = 0

    # Connection life

    def connectionMade(self) -> None:
        limits = self.limits
        self._framer = RequestFramer(limits)
        self.MAX_LENGTH = limits.max_header_size + 1024
        self.totalHeadersSize = limits.max_header_size + 1024
        super().connectionMade()

    def connectionLost(self, reason: Any) -> None:
        self._lost = True
        self._stop_read_timer()
        self._stop_write_timer()
        if self._linger_call is not None and self._linger_call.active():
            self._linger_call.cancel()
        self._linger_call = None
        super().connectionLost(reason)

    # Reading

    def dataReceived(self, data: bytes) -> None:
        if self._replaying:
            # twisted.web replaying its own buffer of canonical bytes.
            return HTTPChannel.dataReceived(self, data)
        if self._closing or self._framer is None:
            return None
        self.resetTimeout()
        framed = self._framer.feed(data)
        self._completed += framed.completed
        if framed.error is not None:
            self._pending = framed.error
        if framed.output:
            HTTPChannel.dataReceived(self, b"".join(framed.output))
        if self._pending is not None:
            self._maybe_reject()
        else:
            self._update_read_timer(fresh=framed.completed > 0 or framed.output != [])
        return None

    def requestDone(self, request: Any) -> None:
        self._answered += 1
        self._replaying += 1
        try:
            super().requestDone(request)
        finally:
            self._replaying -= 1
        if self._pending is not None:
            self._maybe_reject()
        else:
            self._update_read_timer(fresh=True)

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        # Connection is a comma-separated list (twisted.web splits on spaces).
        tokens = _tokens(request.requestHeaders.getRawHeaders(b"connection", []))
        if version == b"HTTP/1.1" and b"close" not in tokens:
            return True
        if version == b"HTTP/1.1":
            request.responseHeaders.setRawHeaders(b"Connection", [b"close"])
        return False

    def _outstanding(self) -> int:
        return self._completed - self._answered

    # Rejections

    def _maybe_reject(self) -> None:
        """Answer the pending rejection once the earlier requests are."""
        if self._pending is None or self._closing or self._outstanding() > 0:
            return
        error, self._pending = self._pending, None
        self.reject(error.status, error.reason)

    def reject(self, status: int, reason: str) -> None:
        """Answer C{status} and close, reading (and dropping) for a moment."""
        if self._closing or self._lost or self.transport is None:
            return
        self._closing = True
        self.rejected += 1
        self._stop_read_timer()
        _rejections.note(f"{_peer(self.transport)}: {status} {reason}")
        self.transport.write(error_response(status, reason))
        # The linger below closes the connection, not the idle timeout.
        self.setTimeout(None)
        if ITCPTransport.providedBy(self.transport) and not ISSLTransport.providedBy(
            self.transport
        ):
            self.transport.loseWriteConnection()
        self._linger_call = self.callLater(LINGER_SECONDS, self._end_linger)
        self._start_write_timer()

    def _end_linger(self) -> None:
        self._linger_call = None
        self.transport.loseConnection()

    # Timeouts

    def _update_read_timer(self, fresh: bool) -> None:
        framer = self._framer
        kind = framer.waiting if framer is not None and not framer.done else None
        if self._outstanding() > 0 or self._closing or self._lost or kind is None:
            self._stop_read_timer()
            return
        # A head has read_timeout in all; a body that much between reads.
        if (
            self._read_call is not None
            and kind == "head"
            and self._read_kind == "head"
            and not fresh
        ):
            return
        self._stop_read_timer()
        self._read_kind = kind
        self._read_call = self.callLater(self.limits.read_timeout, self._read_timed_out)

    def _stop_read_timer(self) -> None:
        if self._read_call is not None and self._read_call.active():
            self._read_call.cancel()
        self._read_call = None
        self._read_kind = None

    def _read_timed_out(self) -> None:
        self._read_call = None
        what = "request head" if self._read_kind == "head" else "request body"
        self._read_kind = None
        if self._outstanding() > 0:
            self.transport.abortConnection()
            return
        self.reject(408, f"the {what} did not arrive within the read timeout")

    def pauseProducing(self) -> None:
        # The connection's buffer is full: the client is not reading.
        self._start_write_timer()
        super().pauseProducing()

    def resumeProducing(self) -> None:
        self._stop_write_timer()
        super().resumeProducing()

    def loseConnection(self) -> None:
        # A graceful close waits for the buffer to drain: not forever.
        self._start_write_timer()
        return super().loseConnection()

    def _start_write_timer(self) -> None:
        if self._write_call is not None or self._lost:
            return
        self._write_pending = _pending_bytes(self.transport)
        self._write_call = self.callLater(self.limits.write_timeout, self._write_check)

    def _stop_write_timer(self) -> None:
        if self._write_call is not None and self._write_call.active():
            self._write_call.cancel()
        self._write_call = None

    def _write_check(self) -> None:
        self._write_call = None
        before, now = self._write_pending, _pending_bytes(self.transport)
        if before is not None and now is not None and now < before:
            # Draining, slowly: progress, so wait another write_timeout.
            self._start_write_timer()
            return
        _rejections.note(f"{_peer(self.transport)}: write timeout, connection cut")
        self.transport.abortConnection()


class _RateLimitedLog:
    """
    One log line at once, then at most one every C{interval} seconds with
    the count since: hostile clients cannot flood the log.
    """

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._last: Optional[float] = None
        self._unlogged = 0

    def note(self, what: str) -> None:
        self._unlogged += 1
        now = time.monotonic()
        if self._last is not None and now - self._last < self.interval:
            return
        count, self._unlogged = self._unlogged, 0
        self._last = now
        if count == 1:
            log.info("refused a request: {what}", what=what)
        else:
            log.info(
                "refused {count} requests in {seconds:.0f}s, the latest: {what}",
                count=count,
                seconds=self.interval,
                what=what,
            )


_rejections = _RateLimitedLog()


def _pending_bytes(transport: Any) -> Optional[int]:
    """Bytes waiting in the socket's buffer below C{transport}, if known."""
    for _ in range(4):
        if transport is None:
            return None
        buffered = getattr(type(transport), "dataBuffer", None)
        if buffered is not None and hasattr(transport, "_tempDataLen"):
            return len(transport.dataBuffer) - transport.offset + transport._tempDataLen
        transport = getattr(transport, "transport", None)
    return None


def _peer(transport: Any) -> str:
    peer = transport.getPeer() if transport is not None else None
    host = getattr(peer, "host", None)
    return f"{host}:{peer.port}" if host is not None else str(peer)


class GatewaySite(Site):
    """
    A twisted.web Site whose channels are L{GatewayChannel}s.

    C{CONNECT} is accepted when the resource is a router with a rule naming
    it (checked again when the resource is swapped), or when C{limits} says.
    It writes no access log of its own (see L{log}).
    """

    protocol = GatewayChannel

    def __init__(
        self, resource: Any, limits: HTTPLimits = HTTPLimits(), **kwargs: Any
    ) -> None:
        super().__init__(resource, **kwargs)
        self.limits = limits
        self._limits_for: Any = None
        self._channel_limits = limits

    def channel_limits(self) -> HTTPLimits:
        """The limits for a new connection, given the resource now served."""
        # Either may be replaced (a configuration reload): the cache follows.
        resource, limits = self.resource, self.limits
        if (
            self._limits_for is None
            or self._limits_for[0] is not resource
            or self._limits_for[1] != limits
        ):
            self._limits_for = (resource, limits)
            rules = getattr(getattr(resource, "config", None), "rules", ())
            asks = any("CONNECT" in getattr(rule, "methods", ()) for rule in rules)
            self._channel_limits = attrs.evolve(
                self.limits, allow_connect=self.limits.allow_connect or asks
            )
        return self._channel_limits

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        channel.limits = self.channel_limits()
        return channel

    def log(self, request: Any) -> None:
        """
        Write nothing: the access log is the C{logging} filter (run as a
        router's C{tracing_flow}).  twisted.web's own line per request, in
        the twistd log, repeated it at about a tenth of the gateway's time.
        """


def entry_limits(entry: Any) -> HTTPLimits:
    """The L{HTTPLimits} of a configured entry."""
    return HTTPLimits(
        read_timeout=entry.read_timeout,
        write_timeout=entry.write_timeout,
        max_header_size=entry.max_header_size,
        max_request_body_size=entry.max_request_body_size,
    )


__all__ = [
    "GatewayChannel",
    "GatewaySite",
    "HTTPLimits",
    "RequestFramer",
    "RequestRejected",
    "entry_limits",
    "error_response",
    "parse_head",
]
