"""
The gateway's HTTP client towards upstreams: an agent per upstream with its
idle connections, endpoints with the connect timeout and TLS of each
upstream.

Each upstream gets its own L{UpstreamAgent} (see
L{infini_gateway.upstream.client}), because an upstream's
C{keepalive_pool} sets how many idle connections it keeps per endpoint and
for how long; separate agents also keep connections made with one
upstream's TLS identity (client certificate, trust roots, SNI) away from
any other upstream, even one with the same endpoints.  L{ClientPools} owns
them all and closes them together.

The proxy uses neither C{treq.HTTPClient} nor Twisted's C{Agent}: it needs
the raw response (C{length}, C{deliverBody}) and a streaming body producer,
and treq's wrappers would parse each URL again with hyperlink (IDNA-encoding
the host), buffer bodies unless told not to, and look cookies up in a jar on
every request, for nothing a proxy uses; Twisted's Agent costs a third of a
proxied request's time (see L{infini_gateway.upstream.client}).  Neither
agent handles cookies, follows redirects or decodes content, so a
Set-Cookie from an upstream reaches only the client that caused it.
L{ClientPools.treq_client} gives other components a treq client over a
pool of their own, with a cookie jar that accepts nothing.
"""

from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any, Callable, Dict, Optional

from zope.interface import implementer

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web.client import Agent, HTTPConnectionPool, URI
from twisted.web.iweb import IAgentEndpointFactory

from infini_gateway.config.model import UpstreamConfig
from infini_gateway.upstream._tls import ClientTLS
from infini_gateway.upstream.client import UpstreamAgent

# A connect timeout of 0 means none; endpoints want a number.
_NO_CONNECT_TIMEOUT = 24 * 3600.0


class NoCookies(CookieJar):
    """A cookie jar that keeps nothing: no domain is allowed to set cookies."""

    def __init__(self) -> None:
        super().__init__(policy=DefaultCookiePolicy(allowed_domains=[]))


@implementer(IStreamClientEndpoint)
class QuietEndpoint:
    """
    A client endpoint whose factories log nothing when they start and stop:
    the pool makes one factory per connection, and its "Starting factory"
    and "Stopping factory" lines would come with every new upstream
    connection.
    """

    def __init__(self, endpoint: IStreamClientEndpoint) -> None:
        self.endpoint = endpoint

    def connect(self, protocolFactory: Any) -> Deferred:
        protocolFactory.noisy = False
        return self.endpoint.connect(protocolFactory)


@implementer(IAgentEndpointFactory)
class EndpointFactory:
    """
    Client endpoints to one upstream's endpoints: TCP with the upstream's
    connect timeout, wrapped in its TLS for C{https}.
    """

    def __init__(self, reactor: Any, config: UpstreamConfig, tls: Optional[ClientTLS]) -> None:
        self.reactor = reactor
        self.timeout = config.timeout.connect or _NO_CONNECT_TIMEOUT
        self.tls = tls

    def endpoint(self, scheme: str, host: str, port: int) -> IStreamClientEndpoint:
        if isIPAddress(host):
            endpoint: Any = TCP4ClientEndpoint(self.reactor, host, port, timeout=self.timeout)
        elif isIPv6Address(host):
            endpoint = TCP6ClientEndpoint(self.reactor, host, port, timeout=self.timeout)
        else:
            endpoint = HostnameEndpoint(self.reactor, host, port, timeout=self.timeout)
        if scheme == "https":
            if self.tls is None:
                raise ValueError("https endpoint without TLS settings")
            endpoint = wrapClientTLS(self.tls.creator(host), endpoint)
        return endpoint

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        return QuietEndpoint(
            self.endpoint(uri.scheme.decode("ascii"), uri.host.decode("idna"), uri.port)
        )


class UpstreamClient:
    """
    One upstream's client: an L{UpstreamAgent} keeping C{keepalive_pool}
    idle connections per endpoint.

    @ivar endpoints: its L{EndpointFactory}, also used for raw connections
        (protocol upgrades).
    @ivar pool: the agent again, under the name of what closes its
        connections (C{closeCachedConnections}).
    """

    def __init__(self, reactor: Any, config: UpstreamConfig, resolve: Callable[[str], str]):
        keepalive = config.keepalive_pool
        needs_tls = any(e.url.lower().startswith("https:") for e in config.endpoints)
        tls = ClientTLS(config.name, config.tls, resolve) if needs_tls else None
        self.endpoints = EndpointFactory(reactor, config, tls)
        self.agent = UpstreamAgent(
            reactor,
            self.endpoints,
            max_idle=keepalive.size,
            idle_timeout=keepalive.idle_timeout or 0,
        )
        self.pool = self.agent


class ClientPools:
    """
    The gateway's upstream client: an L{UpstreamClient} per upstream, made
    with L{add}, all closed by L{close}.
    """

    def __init__(self, reactor: Any, resolve: Callable[[str], str] = lambda path: path):
        self.reactor = reactor
        self.resolve = resolve
        self.clients: Dict[str, UpstreamClient] = {}
        self._treq_pool: Optional[HTTPConnectionPool] = None

    def add(self, config: UpstreamConfig) -> UpstreamClient:
        """
        The client for C{config} (made now).

        @raise infini_gateway.upstream._tls.UpstreamTLSError: a TLS file
            cannot be used.
        """
        client = UpstreamClient(self.reactor, config, self.resolve)
        self.clients[config.name] = client
        return client

    def treq_client(self) -> Any:
        """A C{treq.HTTPClient} over a pool of its own, keeping no cookies."""
        from treq.client import HTTPClient

        if self._treq_pool is None:
            self._treq_pool = HTTPConnectionPool(self.reactor, persistent=True)
        return HTTPClient(Agent(self.reactor, pool=self._treq_pool), cookiejar=NoCookies())

    def close(self) -> Deferred:
        """Close every idle connection of every pool; fires when they are closed."""
        pools = [client.pool for client in self.clients.values()]
        if self._treq_pool is not None:
            pools.append(self._treq_pool)
        return DeferredList([pool.closeCachedConnections() for pool in pools])
