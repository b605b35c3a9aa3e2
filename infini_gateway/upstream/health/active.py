"""
Active health checks: the probes, and the services that send them on a
timer.

A L{Prober} probes one endpoint of an upstream and tells what it found as a
L{ProbeResult}: C{http} and C{https} probes are a C{GET} of C{http_path}
over a connection of their own (never one of the proxy's pooled ones, so a
probe always connects), with the upstream's TLS settings; C{tcp} probes
only connect.  Each probe has C{timeout} for everything.

A L{HealthChecker} is the TimerService of one upstream: every
C{min(healthy.interval, unhealthy.interval)} it probes each endpoint whose
turn it is (each is probed every C{healthy.interval} while healthy,
C{unhealthy.interval} while not; never twice at once), and feeds the results
to the upstream's L{UpstreamHealth}.  It probes from the moment it starts,
whether or not any request came, and an exception never stops it.
L{HealthService} holds the checkers of every upstream in the service tree.
"""

from typing import Any, Callable, Dict, Optional

import attrs
from zope.interface import implementer

from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet import error
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.endpoints import connectProtocol, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import URI, Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgentEndpointFactory

from infini_gateway.config.model import Timeouts, UpstreamConfig
from infini_gateway.upstream._tls import ClientTLS
from infini_gateway.upstream.balancer import EndpointState
from infini_gateway.upstream.failures import classify
from infini_gateway.upstream.health.state import (
    HTTP_FAILURE,
    NEUTRAL,
    SUCCESS,
    TCP_FAILURE,
    TIMEOUT,
    EndpointHealth,
    ProbeResult,
    UpstreamHealth,
)
from infini_gateway.upstream.pool import EndpointFactory, QuietEndpoint

log = Logger()

USER_AGENT = b"infini-gateway health check"

Probe = Callable[[EndpointState], "Deferred[ProbeResult]"]


class _DropBody(Protocol):
    """Only the status matters: the connection is closed at once."""

    def connectionMade(self) -> None:
        self.transport.stopProducing()


@implementer(IAgentEndpointFactory)
class _ProbeEndpoints:
    """TCP with the probe's timeout, in TLS for C{https} (SNI: C{host} if set)."""

    def __init__(self, tcp: EndpointFactory, tls: Optional[ClientTLS], host: Optional[str]):
        self.tcp = tcp
        self.tls = tls
        self.host = host

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        host = uri.host.decode("idna")
        endpoint = self.tcp.endpoint("http", host, uri.port)
        if uri.scheme == b"https" and self.tls is not None:
            endpoint = wrapClientTLS(self.tls.creator(self.host or host), endpoint)
        # A probe is a new connection: no "Starting factory" line for each.
        return QuietEndpoint(endpoint)


class Prober:
    """
    Probes the endpoints of one upstream as its C{health_check.active}
    says; calling it with an endpoint gives a Deferred L{ProbeResult}, never
    a failure (but for cancellation).

    @param resolve: turns the paths of TLS files into ones relative to the
        configuration file's directory.
    @raise infini_gateway.tls.TLSConfigError: for C{https}, the upstream's
        TLS files cannot be used.
    """

    def __init__(
        self, reactor: Any, upstream: UpstreamConfig, resolve: Callable[[str], str]
    ) -> None:
        active = upstream.health_check.active
        if active is None:
            raise ValueError(f"upstream {upstream.name!r} has no active health check")
        self.reactor = reactor
        self.active = active
        tls = None
        if active.type == "https":
            verify = upstream.tls.verify and active.https_verify_certificate
            tls = ClientTLS(upstream.name, attrs.evolve(upstream.tls, verify=verify), resolve)
        self.tcp = EndpointFactory(
            reactor, attrs.evolve(upstream, timeout=Timeouts(connect=active.timeout)), None
        )
        self.pool = HTTPConnectionPool(reactor, persistent=False)
        self.agent = Agent.usingEndpointFactory(
            reactor, _ProbeEndpoints(self.tcp, tls, active.host), pool=self.pool
        )
        self.headers = Headers({b"User-Agent": [USER_AGENT]})
        for name, value in active.req_headers:
            self.headers.addRawHeader(name.encode("latin-1"), value.encode("utf-8"))
        if active.host:
            self.headers.setRawHeaders(b"Host", [active.host.encode("idna")])

    def __call__(self, endpoint: EndpointState) -> "Deferred[ProbeResult]":
        port = self.active.port or endpoint.port
        if self.active.type == "tcp":
            d = connectProtocol(self.tcp.endpoint("http", endpoint.host, port), Protocol())
            d.addCallback(self._connected)
        else:
            host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
            url = b"%s://%s:%d%s" % (
                self.active.type.encode("ascii"),
                host.encode("idna"),
                port,
                self.active.http_path.encode("utf-8"),
            )
            d = self.agent.request(b"GET", url, self.headers.copy())
            d.addCallback(self._answered)
        expired = []

        def expire() -> None:
            expired.append(True)
            d.cancel()

        timer = self.reactor.callLater(self.active.timeout, expire)

        def failed(failure: Failure) -> Any:
            if expired or failure.check(error.TimeoutError, error.TCPTimedOutError):
                return ProbeResult(TIMEOUT, f"timed out after {self.active.timeout:g}s")
            return ProbeResult(TCP_FAILURE, classify(failure).reason)

        def done(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        d.addErrback(failed)
        d.addBoth(done)
        return d

    def _connected(self, protocol: Protocol) -> ProbeResult:
        protocol.transport.loseConnection()
        return ProbeResult(SUCCESS, "connected")

    def _answered(self, response: Any) -> ProbeResult:
        response.deliverBody(_DropBody())
        code = response.code
        if code in self.active.healthy.http_statuses:
            result = SUCCESS
        elif code in self.active.unhealthy.http_statuses:
            result = HTTP_FAILURE
        else:
            result = NEUTRAL
        return ProbeResult(result, f"status {code}")


class HealthChecker(TimerService):
    """
    The active health check of one upstream, a TimerService.

    @ivar health: the upstream's L{UpstreamHealth} (which has C{active}).
    @ivar probe: a L{Prober}, or any callable of the same shape (tests).
    @ivar clock: the reactor its timers and probes use.
    """

    def __init__(self, health: UpstreamHealth, probe: Probe, clock: Any) -> None:
        active = health.active
        if active is None:
            raise ValueError(f"upstream {health.name!r} has no active health check")
        self.intervals = (active.healthy.interval, active.unhealthy.interval)
        super().__init__(min(self.intervals), self.tick)
        self.health = health
        self.probe = probe
        self.clock = clock
        # Per checker, not per endpoint: during a reload the old and the new
        # gateway's checkers of a kept upstream do not step on each other.
        self.probes: Dict[EndpointHealth, Deferred] = {}
        self.next_probe: Dict[EndpointHealth, float] = {}

    def tick(self) -> None:
        """Probe every endpoint whose turn it is; exceptions are logged."""
        try:
            now = self.clock.seconds()
            for health in self.health.endpoints:
                # Half a step early is on time: ticks drift a little.
                due = self.next_probe.get(health, now) - self.step / 2 <= now
                if due and health not in self.probes:
                    self._probe(health, now)
        except Exception:
            log.failure("upstream {upstream}: health check failed", upstream=self.health.name)

    def _probe(self, health: EndpointHealth, now: float) -> None:
        d = maybeDeferred(self.probe, health.endpoint)
        # Before the callbacks: done() removes it even if d has fired already.
        self.probes[health] = d

        def result(probe: ProbeResult) -> None:
            if self.running:
                self.health.probe_result(health.endpoint, probe)

        def failed(failure: Failure) -> None:
            if self.running:
                log.failure(
                    "upstream {upstream}: probing {endpoint} failed",
                    failure,
                    upstream=self.health.name,
                    endpoint=health.endpoint.url,
                )

        def done(_: Any) -> None:
            self.probes.pop(health, None)
            healthy, unhealthy = self.intervals
            self.next_probe[health] = now + (healthy if health.active_healthy else unhealthy)

        d.addCallback(result)
        d.addErrback(failed)
        d.addBoth(done)
        d.addErrback(lambda failure: log.failure("health check", failure))

    def stopService(self) -> Deferred:
        d = super().stopService()
        for probe in list(self.probes.values()):
            probe.cancel()
        return d


class HealthService(MultiService):
    """
    The health checks of every upstream of an L{UpstreamSet}: a
    L{HealthChecker} child for each upstream with active checks (used by a
    filter or not), and the passive checks' re-admission timers, armed while
    it runs.

    @param probe_for: makes the probe of an upstream (default: a L{Prober}).
    """

    def __init__(
        self,
        upstreams: Any,
        reactor: Any,
        resolve: Callable[[str], str] = lambda path: path,
        probe_for: Optional[Callable[[Any], Probe]] = None,
    ) -> None:
        super().__init__()
        self.upstreams = upstreams
        self.reactor = reactor
        self.probe_for = probe_for or (lambda upstream: Prober(reactor, upstream.config, resolve))
        self.checkers: Dict[str, HealthChecker] = {}
        self.add_checkers()

    def add_checkers(self) -> None:
        """A checker for each upstream that has active checks and none yet."""
        for name, upstream in list(self.upstreams.items()):
            if name in self.checkers or upstream.config.health_check.active is None:
                continue
            checker = HealthChecker(upstream.health, self.probe_for(upstream), self.reactor)
            upstream.checker = checker
            self.checkers[name] = checker
            checker.setServiceParent(self)

    def startService(self) -> None:
        # Upstreams added since (an http filter's) get their checker too.
        self.add_checkers()
        for upstream in self.upstreams.values():
            upstream.health.start(owner=self)
        super().startService()

    def stopService(self) -> Deferred:
        for upstream in self.upstreams.values():
            upstream.health.stop(owner=self)
        return super().stopService()

    def state(self) -> Dict[str, Any]:
        """Every upstream's state by name (L{UpstreamSet.state})."""
        return self.upstreams.state()
