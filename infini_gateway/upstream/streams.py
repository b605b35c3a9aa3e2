"""
Bodies in motion: the request body sent upstream and the response body
relayed to the client, both with flow control and idle timeouts.

L{RequestBody} writes the client's body (twisted.web has already read it
into C{request.content}: memory up to 100 KB, a temporary file beyond) to
the upstream connection in chunks, pausing while the connection's buffer is
full; the C{send} timeout is the longest such pause.

L{ResponseRelay} receives the upstream's response body and writes it to the
client as it comes.  It is registered as the client connection's producer,
so a slow client pauses the upstream connection (and TCP pushes back on the
upstream): memory stays bounded whatever the size of the body.  The C{read}
timeout is the longest wait for the next bytes from the upstream, not
counted while the client is the one holding things up.
"""

from typing import IO, Any, Callable, Optional

from zope.interface import implementer

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IBodyProducer

CHUNK = 64 * 1024


class IdleTimer:
    """
    A timeout re-armed by each sign of progress; 0 seconds means none.
    """

    def __init__(self, clock: Any, seconds: float, expired: Callable[[], None]) -> None:
        self.clock = clock
        self.seconds = seconds
        self.expired = expired
        self._call: Optional[IDelayedCall] = None

    def start(self, seconds: Optional[float] = None) -> None:
        """(Re)start the countdown, from C{seconds} if given."""
        seconds = self.seconds if seconds is None else seconds
        call = self._call
        if seconds <= 0:
            self.stop()
        elif call is not None and call.active():
            # Moving a pending call later is cheaper than a new one (it is
            # restarted for every piece of a body).
            call.reset(seconds)
        else:
            self._call = self.clock.callLater(seconds, self._fire)

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def _fire(self) -> None:
        self._call = None
        self.expired()


@implementer(IBodyProducer)
class RequestBody:
    """
    A request body read from a file and written in chunks.

    @ivar started: whether any of it was handed to a connection (after
        which a non-idempotent request is not retried).
    @ivar finished: whether all of it was.
    """

    def __init__(
        self,
        content: IO[bytes],
        length: int,
        clock: Any,
        send_timeout: float,
        timed_out: Callable[[], None],
        sent: Callable[[], None],
    ) -> None:
        self.length = length
        self.started = False
        self.finished = False
        self._content = content
        self._timer = IdleTimer(clock, send_timeout, timed_out)
        self._sent = sent
        self._paused = False
        self._stopped = False
        self._producing = False

    def startProducing(self, consumer: Any) -> Deferred:
        self.started = True
        self._consumer = consumer
        self._done: Deferred = Deferred()
        self._content.seek(0)
        self._produce()
        return self._done

    def _produce(self) -> None:
        if self._producing:
            return
        self._producing = True
        try:
            while not (self._paused or self._stopped or self.finished):
                chunk = self._content.read(CHUNK)
                if not chunk:
                    self.finished = True
                    self._timer.stop()
                    self._sent()
                    self._done.callback(None)
                    return
                self._consumer.write(chunk)
        finally:
            self._producing = False

    def pauseProducing(self) -> None:
        self._paused = True
        self._timer.start()

    def resumeProducing(self) -> None:
        self._paused = False
        self._timer.stop()
        self._produce()

    def stopProducing(self) -> None:
        # The Deferred of startProducing must then never fire (IBodyProducer).
        self._stopped = True
        self._timer.stop()


@implementer(IPushProducer)
class ResponseRelay(Protocol):
    """
    Writes an upstream response body to a twisted.web request as it comes.

    C{done} fires with None when the body ended, or fails with the reason
    it did not (the upstream's, or L{ReadTimeout}).  Cancelling C{done}
    (the client went away) drops the upstream connection.
    """

    def __init__(self, request: Any, clock: Any, read_timeout: float) -> None:
        self.request = request
        self.received = 0
        self.timed_out = False
        self._timer = IdleTimer(clock, read_timeout, self._expired)
        self.done: Deferred = Deferred(lambda _: self.abort())

    def connectionMade(self) -> None:
        self.request.registerProducer(self, True)
        self._timer.start()

    def dataReceived(self, data: bytes) -> None:
        self._timer.start()
        self.received += len(data)
        self.request.write(data)

    def connectionLost(self, reason: Failure = None) -> None:
        self._timer.stop()
        self.request.unregisterProducer()
        if self.done.called:
            return
        if self.timed_out:
            self.done.errback(ReadTimeout())
        elif reason is None or reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(None)
        else:
            self.done.errback(reason)

    def pauseProducing(self) -> None:
        # The client is slow: not the upstream's fault, so no read timeout.
        self._timer.stop()
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        self._timer.start()
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        self.abort()

    def abort(self) -> None:
        """Drop the upstream connection (its body is not wanted any more)."""
        self._timer.stop()
        if self.transport is not None:
            self.transport.stopProducing()

    def _expired(self) -> None:
        self.timed_out = True
        self.abort()


class ReadTimeout(Exception):
    """The upstream sent nothing for the read timeout."""


class Discard(Protocol):
    """
    Reads and forgets a response body that is not wanted (a status retried
    elsewhere), so the connection may be reused; past C{limit} bytes the
    connection is dropped instead.
    """

    def __init__(self, limit: int = 64 * 1024) -> None:
        self.limit = limit
        self.received = 0

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if self.received > self.limit:
            self.transport.stopProducing()
