"""
Accept-time policy: what happens to a connection before any byte of it is read.

L{AcceptPolicy} is the outermost factory of an entry (before TLS, so that a
refused connection costs no handshake).  It counts open connections for
C{max_concurrency}: past the limit a new connection is handed to the
overflow factory, which answers a raw C{503} and closes.
"""

from typing import Any, Optional

from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory

log = Logger()

_OVERLOAD_BODY = b'{"error": "too many connections"}\n'
OVERLOAD_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: %d\r\n"
    b"Connection: close\r\n"
    b"\r\n" % len(_OVERLOAD_BODY)
) + _OVERLOAD_BODY

# How long a refused connection may take to send its request before it is
# closed anyway.  Closing while request bytes are still unread makes the
# kernel send a reset, which can destroy the 503 before the client reads it.
LINGER_SECONDS = 1.0


class Overloaded(Protocol):
    """
    Answers C{503 Service Unavailable} at once, then closes when the
    client's request head has arrived (or after L{LINGER_SECONDS}).
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._seen = b""
        self._timer = None

    def connectionMade(self) -> None:
        self.transport.write(OVERLOAD_RESPONSE)
        self._timer = self._reactor.callLater(LINGER_SECONDS, self._close)

    def dataReceived(self, data: bytes) -> None:
        self._seen = (self._seen + data)[-4:]
        if b"\r\n\r\n" in self._seen:
            self._close()

    def _close(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()


class OverloadedFactory(Factory):
    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def buildProtocol(self, addr: IAddress) -> Protocol:
        protocol = Overloaded(self._reactor)
        protocol.factory = self
        return protocol


class AcceptPolicy(WrappingFactory):
    """
    Wraps an entry's factory: counts its open connections and sends those
    past C{max_concurrency} to C{overflow}.

    @ivar refused: how many connections were refused for the limit.
    """

    def __init__(
        self,
        wrapped: Factory,
        max_concurrency: int,
        overflow: Optional[Factory] = None,
    ) -> None:
        super().__init__(wrapped)
        self.max_concurrency = max_concurrency
        self.overflow = overflow
        self.refused = 0

    @property
    def open_connections(self) -> int:
        return len(self.protocols)

    def buildProtocol(self, addr: IAddress) -> Optional[Protocol]:
        if len(self.protocols) >= self.max_concurrency:
            self.refused += 1
            if self.overflow is None:
                return None
            return self.overflow.buildProtocol(addr)
        return super().buildProtocol(addr)
