"""
Layer 4: raw TCP connections forwarded to an upstream, bytes spliced both
ways.

An entry with C{protocol: tcp} forwards every connection it accepts to its
one C{upstream}: the upstream's balancer picks an endpoint (skipping those
the health checks marked down), a connect failure moves on to the next
endpoint while the upstream's C{retries} allow, and once connected the
bytes pass both ways unchanged.  On a TLS entry the gateway terminates TLS
first; with C{tls.client_ca_file} the client's identity is known after the
handshake, and the entry's C{intentions} decide whether it is forwarded at
all (a denied client's connection is closed, with a TLS close_notify,
right after the handshake).  Towards the endpoint, C{https://} endpoints
are reached over TLS with the upstream's C{tls} settings (C{ca_file} only:
one-way TLS; with C{cert_file} and C{key_file}: mutual TLS; C{sni}: the
server name) and C{http://} endpoints in plain TCP: the scheme says only
how to reach the endpoint, not what the bytes are.

L{infini_gateway.sni} builds on the same L{L4Connection}: it reads the
ClientHello first, then forwards to the upstream the server name routes to.

The splice: each side is the other's streaming producer, so a slow reader
pauses the other side (memory stays bounded); a side that half-closes
(a TCP FIN) is passed on as a half-close to the other (plain TCP only: TLS
has no half-close); the connection closes when both directions are done,
when either side is lost, or when nothing passes for the entry's
C{idle_timeout}.

Every connection closed before it was forwarded is counted by reason in
the factory's C{counters} (C{denied}, C{no_endpoint}, ...; the SNI
reasons are listed in L{infini_gateway.sni}), and logged at most once in
L{LOG_INTERVAL} seconds per reason.
"""

import collections
from typing import Any, Dict, List, Optional, Set, Tuple

from zope.interface import implementer

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.endpoints import connectProtocol
from twisted.internet.interfaces import IHalfCloseableProtocol, IHandshakeListener
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure

from infini_gateway.config.model import Entry
from infini_gateway.identity import peer_identity
from infini_gateway.intentions import IntentionRules
from infini_gateway.upstream.balancer import EndpointState
from infini_gateway.upstream.streams import IdleTimer
from infini_gateway.upstream.upstreams import Upstream

log = Logger()

# Bytes a client may send before its upstream connection is made; the
# client is paused meanwhile, so only what was already in flight arrives.
MAX_EARLY_BYTES = 256 * 1024

# Closed connections are logged at most once in this many seconds per
# reason, each line with the count since the previous one.
LOG_INTERVAL = 10.0

__all__ = [
    "HalfCloseableWrapper",
    "L4Connection",
    "L4Factory",
    "TCPForwardFactory",
]


@implementer(IHalfCloseableProtocol)
class HalfCloseableWrapper(ProtocolWrapper):
    """
    The accept policy's wrapper for spliced entries: passes a client's
    half-close (its FIN) on to the protocol inside, instead of closing the
    whole connection; when the protocol inside cannot take it (TLS), the
    connection is closed as it would have been.
    """

    def _half_closeable(self) -> bool:
        # The class, not the instance: Twisted's TLS protocol copies its
        # transport's interfaces (this one's too) onto itself, and would
        # hand the call straight back here.
        wrapped = self.wrappedProtocol
        return wrapped is not None and IHalfCloseableProtocol.implementedBy(type(wrapped))

    def readConnectionLost(self) -> None:
        if self._half_closeable():
            self.wrappedProtocol.readConnectionLost()
        else:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        if self._half_closeable():
            self.wrappedProtocol.writeConnectionLost()
        else:
            self.transport.loseConnection()


class _ClosedLog:
    """Counts closed connections by reason, and logs them sparingly."""

    def __init__(self, entry: str, clock: Any) -> None:
        self.entry = entry
        self.clock = clock
        self.counters: Dict[str, int] = collections.Counter()
        self._logged: Dict[str, float] = {}
        self._unlogged: Dict[str, int] = collections.Counter()

    def closed(self, reason: str, detail: str, peer: str) -> None:
        self.counters[reason] += 1
        self._unlogged[reason] += 1
        now = self.clock.seconds()
        last = self._logged.get(reason)
        if last is not None and now - last < LOG_INTERVAL:
            return
        count = self._unlogged.pop(reason)
        self._logged[reason] = now
        if count == 1:
            log.info(
                "entry {entry}: closed a connection from {peer}: {detail}",
                entry=self.entry,
                peer=peer,
                detail=detail,
            )
        else:
            log.info(
                "entry {entry}: closed {count} connections ({reason}) in {seconds:.0f}s,"
                " the latest from {peer}: {detail}",
                entry=self.entry,
                count=count,
                reason=reason,
                seconds=now - last,
                peer=peer,
                detail=detail,
            )


@implementer(IHalfCloseableProtocol)
class _UpstreamSide(Protocol):
    """The connection to the endpoint: everything goes to its L{L4Connection}."""

    def __init__(self, owner: "L4Connection") -> None:
        self.owner = owner

    def dataReceived(self, data: bytes) -> None:
        self.owner.from_upstream(data)

    def readConnectionLost(self) -> None:
        self.owner.upstream_read_closed()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = None) -> None:
        self.owner.upstream_lost()


class L4Factory(Factory):
    """
    What L{L4Connection}s share: the entry, the reactor, the idle timeout,
    and the counters of connections closed before being forwarded.

    @ivar counters: closed connections by reason (a C{Counter}).
    @ivar forwarded: connections forwarded to an endpoint.
    """

    def __init__(self, entry: Entry, reactor: Any) -> None:
        self.entry = entry
        self.reactor = reactor
        self.idle_timeout = entry.idle_timeout
        self.tls = entry.tls.enabled
        self.forwarded = 0
        self._closed = _ClosedLog(entry.name, reactor)

    @property
    def counters(self) -> Dict[str, int]:
        return self._closed.counters

    def closed(self, reason: str, detail: str, peer: str) -> None:
        self._closed.closed(reason, detail, peer)

    def stats(self) -> Dict[str, Any]:
        """Plain data for the admin API."""
        return {"forwarded": self.forwarded, "closed": dict(self.counters)}


@implementer(IHalfCloseableProtocol)
class L4Connection(Protocol):
    """
    One client connection of a spliced entry: held (the client paused)
    until L{forward} has an endpoint connection, then spliced to it.
    """

    factory: L4Factory

    def __init__(self) -> None:
        self.early: List[bytes] = []
        self.early_size = 0
        self.upstream: Optional[_UpstreamSide] = None
        self.done = False
        self._connecting: Optional[Deferred] = None
        self._client_eof = False
        self._upstream_eof = False
        self._plain_upstream = True
        self._endpoint: Optional[Tuple[Upstream, EndpointState, float]] = None
        self._timer: Optional[IdleTimer] = None

    # Client side

    @property
    def peer(self) -> str:
        peer = self.transport.getPeer() if self.transport is not None else None
        host = getattr(peer, "host", None)
        return f"{host}:{peer.port}" if host else repr(peer)

    def dataReceived(self, data: bytes) -> None:
        if self.done:
            return
        if self.upstream is not None:
            self._timer.start()
            self.upstream.transport.write(data)
            return
        self.hold(data)

    def hold(self, data: bytes) -> None:
        """Keep C{data} for the endpoint, once connected."""
        self.early.append(data)
        self.early_size += len(data)
        if self.early_size > MAX_EARLY_BYTES:
            self.refuse("too_much_early_data", f"over {MAX_EARLY_BYTES} bytes sent early")

    def readConnectionLost(self) -> None:
        self._client_eof = True
        if self.upstream is not None:
            self._half_close(self.upstream.transport, self._plain_upstream)
            self._both_done()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = None) -> None:
        self.done = True
        if self._connecting is not None:
            self._connecting.cancel()
        self._close_upstream()

    def refuse(self, reason: str, detail: str) -> None:
        """Close the client's connection without forwarding it, and count it."""
        if self.done:
            return
        self.done = True
        self.factory.closed(reason, detail, self.peer)
        self.transport.loseConnection()

    # Forwarding

    def forward(self, upstream: Upstream, key: Optional[str], plain: bool = False) -> Deferred:
        """
        Connect to an endpoint of C{upstream} and splice; the client is
        paused meanwhile.

        @param key: the hash key for a C{chash} balancer.
        @param plain: plain TCP whatever the endpoint's scheme (SNI
            passthrough: the bytes are TLS already).
        """
        self.transport.pauseProducing()
        return ensureDeferred(self._forward(upstream, key, plain))

    async def _forward(self, upstream: Upstream, key: Optional[str], plain: bool) -> None:
        balancer = upstream.balancer
        clock = self.factory.reactor
        tried: Set[EndpointState] = set()
        reason = "no endpoint available"
        for _ in range(upstream.config.max_retries + 1):
            endpoint = balancer.pick(key, exclude=frozenset(tried))
            if endpoint is None:
                break
            tried.add(endpoint)
            scheme = "http" if plain else endpoint.scheme
            side = _UpstreamSide(self)
            balancer.on_request_start(endpoint)
            started = clock.seconds()
            try:
                client_endpoint = upstream.client.endpoints.endpoint(
                    scheme, endpoint.host, endpoint.port
                )
                self._connecting = connectProtocol(client_endpoint, side)
                await self._connecting
            except CancelledError:
                balancer.on_request_end(endpoint, clock.seconds() - started, False)
                return
            except Exception as e:
                balancer.on_request_end(endpoint, clock.seconds() - started, True)
                if self.done:
                    return
                reason = f"{endpoint.url}: {_reason(e)}"
                log.warn(
                    "entry {entry}: upstream {upstream}: cannot connect to {endpoint}:"
                    " {reason}",
                    entry=self.factory.entry.name,
                    upstream=upstream.name,
                    endpoint=endpoint.url,
                    reason=_reason(e),
                )
                continue
            finally:
                self._connecting = None
            if self.done:
                side.transport.loseConnection()
                balancer.on_request_end(endpoint, clock.seconds() - started, False)
                return
            self._endpoint = (upstream, endpoint, clock.seconds() - started)
            self._plain_upstream = scheme == "http"
            self._splice(side)
            return
        self.refuse("no_endpoint", f"upstream {upstream.name}: {reason}")

    def _splice(self, side: _UpstreamSide) -> None:
        self.factory.forwarded += 1
        self.upstream = side
        self._timer = IdleTimer(self.factory.reactor, self.factory.idle_timeout, self._idle)
        self._timer.start()
        upstream_transport = side.transport
        early, self.early = b"".join(self.early), []
        if early:
            upstream_transport.write(early)
        # Each side is the other's producer: a full write buffer on one
        # pauses reading on the other.
        upstream_transport.registerProducer(self.transport, True)
        self.transport.registerProducer(upstream_transport, True)
        self.transport.resumeProducing()
        if self._client_eof:
            self._half_close(upstream_transport, self._plain_upstream)

    def from_upstream(self, data: bytes) -> None:
        if self.done:
            return
        self._timer.start()
        self.transport.write(data)

    def upstream_read_closed(self) -> None:
        self._upstream_eof = True
        if self.done:
            return
        if self.factory.tls:
            # The client cannot be half-closed over TLS: the endpoint is
            # done, so is the connection (what it sent is flushed first).
            self._client_eof = True
        else:
            self._half_close(self.transport, True)
        self._both_done()

    def upstream_lost(self) -> None:
        if self.upstream is None:
            return
        self._release()
        if not self.done:
            self.done = True
            self._timer.stop()
            self.transport.loseConnection()

    # Closing

    def _half_close(self, transport: Any, plain: bool) -> None:
        if plain and hasattr(transport, "loseWriteConnection"):
            transport.loseWriteConnection()
        # Over TLS there is no half-close: the other direction goes on until
        # one side closes or the idle timeout passes.

    def _both_done(self) -> None:
        if self._client_eof and self._upstream_eof:
            self.done = True
            self.transport.loseConnection()
            self._close_upstream()

    def _idle(self) -> None:
        log.info(
            "entry {entry}: closing the connection from {peer}: idle for {seconds}s",
            entry=self.factory.entry.name,
            peer=self.peer,
            seconds=self.factory.idle_timeout,
        )
        self.done = True
        self.transport.loseConnection()
        self._close_upstream()

    def _close_upstream(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.loseConnection()

    def _release(self) -> None:
        if self._endpoint is not None:
            upstream, endpoint, elapsed = self._endpoint
            self._endpoint = None
            upstream.balancer.on_request_end(endpoint, elapsed, False)


def _reason(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text.splitlines()[0] if text else type(error).__name__


@implementer(IHandshakeListener)
class TCPForward(L4Connection):
    """A connection of a C{tcp} entry: forwarded once accepted (or once its
    TLS handshake is done, and its intentions allow it)."""

    factory: "TCPForwardFactory"

    def connectionMade(self) -> None:
        if not self.factory.tls:
            self._start()

    def handshakeCompleted(self) -> None:
        rules = self.factory.intentions
        if rules is not None:
            decision = rules.decide(peer_identity(self.transport))
            if not decision.allowed:
                self.refuse(
                    "denied",
                    f"{decision.identity} denied by intention {decision.describe()}",
                )
                return
        self._start()

    def _start(self) -> None:
        peer = self.transport.getPeer()
        d = self.forward(self.factory.upstream, getattr(peer, "host", None))
        d.addErrback(self._failed)

    def _failed(self, failure: Failure) -> None:
        log.failure("entry {entry}: forwarding failed", failure, entry=self.factory.entry.name)
        if not self.done:
            self.done = True
            self.transport.abortConnection()


class TCPForwardFactory(L4Factory):
    """The factory of a C{tcp} entry: every connection goes to C{upstream}."""

    protocol = TCPForward

    def __init__(self, entry: Entry, upstream: Upstream, reactor: Any) -> None:
        super().__init__(entry, reactor)
        self.upstream = upstream
        self.intentions: Optional[IntentionRules] = (
            IntentionRules(entry.intentions) if entry.intentions is not None else None
        )
