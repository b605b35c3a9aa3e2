"""
The proxy's HTTP/1.1 client: one request at a time per connection, idle
connections kept per endpoint.

L{UpstreamAgent} is an C{IAgent}, like Twisted's C{Agent} over an
C{HTTPConnectionPool}, and answers with responses that behave as Twisted's
(C{code}, C{phrase}, C{headers}, C{length}, C{deliverBody}), failing with
the same exceptions (C{ResponseNeverReceived}, C{ResponseFailed},
C{RequestTransmissionFailed}).  It exists because a proxy uses a small part
of Twisted's client and paid for all of it on every request: the URL parsed
again, a pool key, a retrying wrapper, a line-by-line parser feeding a
state machine, and a dozen Deferreds, about a third of the gateway's time
per proxied request.  Here the request head is one write, the response head
is parsed in one piece once its blank line is in, and the body is passed on
as it comes: Content-Length, chunked (decoded), or up to the close.

A connection goes back to its endpoint's idle list once its response ended,
unless the response or the request said C{Connection: close}, the upstream
spoke HTTP/1.0, the body ran to the close, or the request body was not all
sent; at most C{max_idle} per endpoint, each closed after C{idle_timeout}.
A request on an idle connection that the upstream closed meanwhile (nothing
came back) is sent again once on a new connection, when it is idempotent
and has no body, as Twisted's client does.
"""

from typing import Any, Dict, List, Optional, Tuple

from zope.interface import implementer

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from twisted.web._newclient import (
    ParseError,
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent

# The response head (status line and headers) may not be longer.
MAX_HEAD = 64 * 1024
# A chunk-size line may not be longer (extensions included).
MAX_CHUNK_LINE = 4096
_RETRY_SAFE = frozenset([b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"])
_NO_BODY = (204, 304)
_DEFAULT_PORTS = {b"http": 80, b"https": 443}
_HEX = frozenset(b"0123456789abcdefABCDEF")

Key = Tuple[str, str, int]


class InvalidResponse(ParseError):
    """The upstream's answer is not HTTP/1.1 the client can read."""

    def __init__(self, reason: str, data: bytes = b"") -> None:
        super().__init__(reason, data[:80])
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


@implementer(IAgent)
class UpstreamAgent:
    """
    Requests to C{scheme://host:port} URLs over C{endpoints} (an
    L{infini_gateway.upstream.pool.EndpointFactory}).

    @ivar idle: the idle connections, by C{(scheme, host, port)}, the most
        recently used last.
    """

    def __init__(
        self, reactor: Any, endpoints: Any, max_idle: int = 10, idle_timeout: float = 240.0
    ) -> None:
        self.reactor = reactor
        self.endpoints = endpoints
        self.max_idle = max_idle
        self.idle_timeout = idle_timeout
        self.idle: Dict[Key, List["UpstreamConnection"]] = {}
        self._keys: Dict[bytes, Key] = {}
        self._closed = False

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Optional[Headers] = None,
        bodyProducer: Any = None,
    ) -> Deferred:
        """
        Send C{method uri}; the Deferred fires with the response once its
        head is in.  Cancelling it before then drops the connection.
        """
        key, target = self._split(uri)
        exchange = _Exchange(self, key, method, target, headers or Headers(), bodyProducer)
        return exchange.start()

    def _split(self, uri: bytes) -> Tuple[Key, bytes]:
        scheme_end = uri.index(b"://")
        slash = uri.find(b"/", scheme_end + 3)
        base, target = (uri, b"/") if slash < 0 else (uri[:slash], uri[slash:])
        key = self._keys.get(base)
        if key is None:
            scheme, authority = base[:scheme_end], base[scheme_end + 3 :]
            if authority.startswith(b"["):
                host, _, rest = authority[1:].partition(b"]")
                port_text = rest[1:]
            else:
                host, _, port_text = authority.partition(b":")
            port = int(port_text) if port_text else _DEFAULT_PORTS[scheme]
            key = (scheme.decode("ascii"), host.decode("idna"), port)
            self._keys[base] = key
        return key, target

    def _take(self, key: Key) -> Optional["UpstreamConnection"]:
        """An idle connection to C{key}, if there is one."""
        idle = self.idle.get(key)
        while idle:
            connection = idle.pop()
            if connection.usable():
                connection.leave_idle()
                return connection
        return None

    def _connect(self, key: Key) -> Deferred:
        endpoint = self.endpoints.endpoint(*key)
        factory = _ConnectionFactory(self, key)
        return endpoint.connect(factory)

    def _release(self, connection: "UpstreamConnection") -> None:
        """C{connection}'s exchange is over and it may carry another."""
        idle = self.idle.setdefault(connection.key, [])
        if self._closed or len(idle) >= self.max_idle:
            connection.transport.loseConnection()
            return
        idle.append(connection)
        connection.enter_idle(self.idle_timeout)

    def _forget(self, connection: "UpstreamConnection") -> None:
        idle = self.idle.get(connection.key)
        if idle and connection in idle:
            idle.remove(connection)

    def closeCachedConnections(self) -> Deferred:
        """
        Close the idle connections, and each busy one once its exchange is
        over; fires when the idle ones are closed.  (The name is
        C{HTTPConnectionPool}'s.)
        """
        self._closed = True
        waiting = []
        for idle in self.idle.values():
            for connection in idle:
                connection.leave_idle()
                waiting.append(connection.closed)
                connection.transport.loseConnection()
        self.idle.clear()
        return DeferredList(waiting)


class _ConnectionFactory(Factory):
    noisy = False

    def __init__(self, agent: UpstreamAgent, key: Key) -> None:
        self.agent = agent
        self.key = key

    def buildProtocol(self, addr: Any) -> "UpstreamConnection":
        return UpstreamConnection(self.agent, self.key)


class _Exchange:
    """One request: a connection (taken or made), a retry on a stale one."""

    def __init__(
        self,
        agent: UpstreamAgent,
        key: Key,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: Any,
    ) -> None:
        self.agent = agent
        self.key = key
        self.method = method
        self.target = target
        self.headers = headers
        self.body = body
        self.result: Deferred = Deferred(self._cancel)
        self.connecting: Optional[Deferred] = None
        self.connection: Optional[UpstreamConnection] = None
        self.cancelled = False

    def start(self) -> Deferred:
        connection = self.agent._take(self.key)
        if connection is not None:
            self._send(connection, reused=True)
        else:
            self._connect()
        return self.result

    def _connect(self) -> None:
        try:
            self.connecting = self.agent._connect(self.key)
        except Exception:
            self.result.errback()
            return
        self.connecting.addCallbacks(self._connected, self._connect_failed)

    def _connected(self, connection: "UpstreamConnection") -> None:
        self.connecting = None
        self._send(connection, reused=False)

    def _connect_failed(self, reason: Failure) -> None:
        self.connecting = None
        if not self.result.called:
            self.result.errback(reason)

    def _send(self, connection: "UpstreamConnection", reused: bool) -> None:
        self.connection = connection
        connection.send(self, reused)

    def stale(self) -> bool:
        """
        The idle connection this went out on was closed by the upstream
        before any answer: send it again on a new connection, if safe.
        """
        if (
            self.cancelled
            or self.result.called
            or self.body is not None
            or self.method not in _RETRY_SAFE
        ):
            return False
        self.connection = None
        self._connect()
        return True

    def _cancel(self, _: Deferred) -> None:
        self.cancelled = True
        if self.connecting is not None:
            self.connecting.cancel()
        elif self.connection is not None:
            self.connection.abort()


@implementer(IPushProducer)
class _BodyTransport:
    """
    What a response body's protocol gets as its transport: flow control of
    the connection while this response's body lasts, nothing after.
    """

    def __init__(self, connection: "UpstreamConnection") -> None:
        self.connection = connection
        self.done = False

    def pauseProducing(self) -> None:
        if not self.done:
            self.connection.transport.pauseProducing()

    def resumeProducing(self) -> None:
        if not self.done:
            self.connection.transport.resumeProducing()

    def stopProducing(self) -> None:
        if not self.done:
            self.connection.abort()

    def getPeer(self) -> Any:
        return self.connection.transport.getPeer()

    def getHost(self) -> Any:
        return self.connection.transport.getHost()


class UpstreamResponse:
    """
    The answer to one request, as Twisted's client gives it.  Its body is
    kept (the part that came) until L{deliverBody} names who gets it.
    """

    def __init__(
        self,
        connection: "UpstreamConnection",
        version: Tuple[bytes, int, int],
        code: int,
        phrase: bytes,
        headers: Headers,
        length: Any,
    ) -> None:
        self.version = version
        self.code = code
        self.phrase = phrase
        self.headers = headers
        self.length = length
        self.request = None
        self.previousResponse = None
        self._transport = _BodyTransport(connection)
        self._protocol: Any = None
        self._pending: List[bytes] = []
        self._ended: Optional[Failure] = None

    def deliverBody(self, protocol: Any) -> None:
        """Give the body to C{protocol} (C{dataReceived}, C{connectionLost})."""
        self._protocol = protocol
        protocol.makeConnection(self._transport)
        pending, self._pending = self._pending, []
        for data in pending:
            protocol.dataReceived(data)
        if self._ended is not None:
            self._protocol = None
            protocol.connectionLost(self._ended)

    def setPreviousResponse(self, response: Any) -> None:
        self.previousResponse = response

    def _data(self, data: bytes) -> None:
        if self._protocol is not None:
            self._protocol.dataReceived(data)
        else:
            self._pending.append(data)

    def _end(self, reason: Failure) -> None:
        if self._ended is not None:
            return
        self._ended = reason
        self._transport.done = True
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            protocol.connectionLost(reason)


class UpstreamConnection(Protocol):
    """
    One connection to an endpoint, carrying one exchange at a time.

    @ivar closed: fires once the connection is closed.
    """

    def __init__(self, agent: UpstreamAgent, key: Key) -> None:
        self.agent = agent
        self.key = key
        self.closed: Deferred = Deferred()
        self._exchange: Optional[_Exchange] = None
        self._reused = False
        self._idle_call: Any = None
        self._lost = False
        self._reset()

    def _reset(self) -> None:
        self._buffer = b""
        self._state = "idle"  # idle, head, body, done
        self._got_bytes = False
        self._body_sent = True
        self._producer: Any = None
        self._response: Optional[UpstreamResponse] = None
        self._remaining = 0
        self._framing = "none"  # none, length, chunked, close
        self._chunk_state = "size"  # size, data, data-end, trailer
        self._keep_alive = True
        self._head_request = False

    # --- the pool ------------------------------------------------------

    def usable(self) -> bool:
        return not self._lost and self._state == "idle"

    def enter_idle(self, timeout: float) -> None:
        if timeout > 0:
            self._idle_call = self.agent.reactor.callLater(timeout, self._idle_expired)

    def leave_idle(self) -> None:
        if self._idle_call is not None:
            if self._idle_call.active():
                self._idle_call.cancel()
            self._idle_call = None

    def _idle_expired(self) -> None:
        self._idle_call = None
        self.agent._forget(self)
        self.transport.loseConnection()

    def abort(self) -> None:
        """Drop the connection now, whatever it is doing."""
        self._keep_alive = False
        if not self._lost:
            self.transport.abortConnection()

    # --- sending -------------------------------------------------------

    def send(self, exchange: _Exchange, reused: bool) -> None:
        self._exchange = exchange
        self._reused = reused
        self._state = "head"
        self._head_request = exchange.method == b"HEAD"
        lines = [b"%s %s HTTP/1.1\r\n" % (exchange.method, exchange.target)]
        for name, values in exchange.headers.getAllRawHeaders():
            if name.lower() == b"connection" and any(
                b"close" in v.lower() for v in values
            ):
                self._keep_alive = False
            for value in values:
                lines.append(b"%s: %s\r\n" % (name, value))
        body = exchange.body
        if body is not None:
            length = body.length
            if length is UNKNOWN_LENGTH:
                lines.append(b"Transfer-Encoding: chunked\r\n")
            else:
                lines.append(b"Content-Length: %d\r\n" % length)
        lines.append(b"\r\n")
        self.transport.write(b"".join(lines))
        if body is not None:
            self._body_sent = False
            consumer = self.transport if body.length is not UNKNOWN_LENGTH else _Chunked(self)
            self._producer = body
            self.transport.registerProducer(body, True)
            d = body.startProducing(consumer)
            d.addCallbacks(self._body_done, self._body_failed)

    def _body_done(self, _: Any) -> None:
        self._producer = None
        if self._lost:
            return
        self.transport.unregisterProducer()
        if self._exchange is not None and self._exchange.body is not None:
            if self._exchange.body.length is UNKNOWN_LENGTH:
                self.transport.write(b"0\r\n\r\n")
        self._body_sent = True
        if self._state == "done":
            self._finish()

    def _body_failed(self, reason: Failure) -> None:
        self._producer = None
        self._keep_alive = False
        exchange = self._exchange
        if exchange is not None and not exchange.result.called:
            exchange.result.errback(RequestTransmissionFailed([reason]))
        if not self._lost:
            self.transport.abortConnection()

    # --- receiving -----------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._state == "idle":
            # Nothing is expected: a broken upstream.  Drop it.
            self._keep_alive = False
            self.agent._forget(self)
            self.leave_idle()
            self.transport.abortConnection()
            return
        self._got_bytes = True
        if self._state == "head":
            self._buffer += data
            self._parse_head()
        elif self._state == "body":
            self._body_data(data)

    def _parse_head(self) -> None:
        while self._state == "head":
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0 or end > MAX_HEAD:
                if len(self._buffer) > MAX_HEAD:
                    self._bad_response("response head too long")
                return
            head, self._buffer = self._buffer[:end], self._buffer[end + 4 :]
            try:
                response = self._read_head(head)
            except InvalidResponse as e:
                self._bad_response(e)
                return
            if response is None:
                continue  # 1xx: interim, the real answer follows
            self._response = response
            exchange = self._exchange
            if self._framing == "none":
                self._state = "done"
            else:
                self._state = "body"
            rest, self._buffer = self._buffer, b""
            if exchange is not None and not exchange.result.called:
                exchange.result.callback(response)
            if self._state == "body":
                if rest:
                    self._body_data(rest)
            elif self._state == "done":
                if rest:
                    self._keep_alive = False  # a body where none may be
                self._body_ended()

    def _read_head(self, head: bytes) -> Optional[UpstreamResponse]:
        lines = head.split(b"\r\n")
        status = lines[0].split(b" ", 2)
        if len(status) < 2 or not status[0].startswith(b"HTTP/1."):
            raise InvalidResponse("bad status line", lines[0])
        minor = status[0][7:]
        if minor not in (b"0", b"1"):
            raise InvalidResponse("bad HTTP version", lines[0])
        code_text = status[1]
        if len(code_text) != 3 or not code_text.isdigit():
            raise InvalidResponse("bad status code", lines[0])
        code = int(code_text)
        phrase = status[2] if len(status) == 3 else b""
        headers = Headers()
        raw: Dict[bytes, List[bytes]] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(b":")
            if not colon or not name or name != name.strip() or b" " in name:
                raise InvalidResponse("bad header line", line)
            value = value.strip(b" \t")
            raw.setdefault(name.lower(), []).append(value)
            headers.addRawHeader(name, value)
        if 100 <= code < 200:
            if code == 101:
                raise InvalidResponse("101 Switching Protocols to a request that asked none")
            return None
        connection = b",".join(raw.get(b"connection", ())).lower()
        if b"close" in connection or minor == b"0":
            self._keep_alive = False
        length: Any = UNKNOWN_LENGTH
        if self._head_request or code in _NO_BODY:
            self._framing = "none"
            length = 0
        elif b"transfer-encoding" in raw:
            codings = b",".join(raw[b"transfer-encoding"]).lower().split(b",")
            if codings[-1].strip() == b"chunked":
                self._framing = "chunked"
            else:
                self._framing = "close"
                self._keep_alive = False
            if b"content-length" in raw:
                self._keep_alive = False
        elif b"content-length" in raw:
            values = {v.strip() for value in raw[b"content-length"] for v in value.split(b",")}
            if len(values) != 1:
                raise InvalidResponse("conflicting Content-Length values")
            text = values.pop()
            if not text.isdigit():
                raise InvalidResponse("bad Content-Length", text)
            length = self._remaining = int(text)
            self._framing = "length" if length else "none"
        else:
            self._framing = "close"
            self._keep_alive = False
        version = (b"HTTP", 1, int(minor))
        return UpstreamResponse(self, version, code, phrase, headers, length)

    def _pass(self, data: bytes) -> None:
        if self._response is not None:
            self._response._data(data)

    def _body_data(self, data: bytes) -> None:
        framing = self._framing
        if framing == "length":
            if len(data) < self._remaining:
                self._remaining -= len(data)
                self._pass(data)
                return
            body, extra = data[: self._remaining], data[self._remaining :]
            self._remaining = 0
            self._pass(body)
            if extra:
                self._keep_alive = False  # more than the upstream announced
            self._body_ended()
        elif framing == "chunked":
            self._buffer += data
            self._chunked()
        else:
            self._pass(data)

    def _chunked(self) -> None:
        while self._state == "body":
            buffer = self._buffer
            if self._chunk_state == "data":
                if not buffer:
                    return
                piece = buffer[: self._remaining]
                self._buffer = buffer[len(piece) :]
                self._remaining -= len(piece)
                self._pass(piece)
                if self._remaining == 0:
                    self._chunk_state = "data-end"
                continue
            end = buffer.find(b"\r\n")
            if end < 0:
                if len(buffer) > MAX_CHUNK_LINE:
                    self._bad_body("chunk line too long")
                return
            line, self._buffer = buffer[:end], buffer[end + 2 :]
            if self._chunk_state == "data-end":
                if line:
                    self._bad_body("no CRLF after chunk data")
                    return
                self._chunk_state = "size"
            elif self._chunk_state == "size":
                size_text = line.split(b";", 1)[0].strip(b" \t")
                if not size_text or not _HEX.issuperset(size_text):
                    self._bad_body("bad chunk size")
                    return
                size = int(size_text, 16)
                if size:
                    self._remaining = size
                    self._chunk_state = "data"
                else:
                    self._chunk_state = "trailer"
            elif line == b"":  # trailer: fields are dropped, the blank line ends it
                if self._buffer:
                    self._keep_alive = False
                self._body_ended()

    def _body_ended(self) -> None:
        self._state = "done"
        self._end_body(Failure(ResponseDone()))
        if self._body_sent:
            self._finish()
        elif self._producer is not None:
            # The answer came before the request body was all sent.  The
            # producer is unregistered too: a transport (TLS) does not close
            # while one is registered.
            producer, self._producer = self._producer, None
            self._keep_alive = False
            self.transport.unregisterProducer()
            producer.stopProducing()
            self._finish()

    def _end_body(self, reason: Failure) -> None:
        if self._response is not None:
            self._response._end(reason)

    def _finish(self) -> None:
        """The exchange is over: back to the idle list, or closed."""
        if self._lost:
            return
        keep = self._keep_alive and self._body_sent
        self._exchange = None
        self._reset()
        if keep:
            self.transport.resumeProducing()
            self.agent._release(self)
        else:
            self.transport.loseConnection()

    def _bad_response(self, reason: Any) -> None:
        error = reason if isinstance(reason, InvalidResponse) else InvalidResponse(reason)
        exchange = self._exchange
        self._keep_alive = False
        if exchange is not None and not exchange.result.called:
            exchange.result.errback(ResponseFailed([Failure(error)]))
        self.transport.abortConnection()

    def _bad_body(self, reason: str) -> None:
        self._keep_alive = False
        self._state = "failed"
        self._end_body(Failure(ResponseFailed([Failure(InvalidResponse(reason))])))
        self.transport.abortConnection()

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:
        self._lost = True
        self.leave_idle()
        self.agent._forget(self)
        if self._producer is not None:
            producer, self._producer = self._producer, None
            producer.stopProducing()
        exchange, state = self._exchange, self._state
        self._exchange = None
        if state == "head" and exchange is not None and not exchange.result.called:
            if self._reused and not self._got_bytes and exchange.stale():
                pass
            else:
                exchange.result.errback(ResponseNeverReceived([reason]))
        elif state == "body":
            if self._framing == "close":
                ending = Failure(PotentialDataLoss())
            else:
                ending = Failure(ResponseFailed([reason]))
            self._end_body(ending)
        self.closed.callback(None)


class _Chunked:
    """A consumer that writes what it gets as chunks, for a body of unknown length."""

    def __init__(self, connection: UpstreamConnection) -> None:
        self.connection = connection

    def write(self, data: bytes) -> None:
        if data:
            self.connection.transport.write(b"%x\r\n%s\r\n" % (len(data), data))

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.connection.transport.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self.connection.transport.unregisterProducer()


__all__ = ["InvalidResponse", "UpstreamAgent", "UpstreamConnection", "UpstreamResponse"]
