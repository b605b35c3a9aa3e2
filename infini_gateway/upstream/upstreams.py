"""
Upstreams at run time: each configured upstream's endpoints (their
L{EndpointState}, shared with the health checks and the admin API), its
balancer and its client, by name, in one L{UpstreamSet}.
"""

from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional

import attrs

from twisted.internet.defer import Deferred

from infini_gateway.config.model import GatewayConfig, UpstreamConfig
from infini_gateway.config.upstreams import cluster_upstream_name
from infini_gateway.tls import TLSConfigError
from infini_gateway.upstream.balancer import Balancer, EndpointState, make_balancer
from infini_gateway.upstream.health import HealthChecker, HealthService, UpstreamHealth
from infini_gateway.upstream.pool import ClientPools, UpstreamClient


class Upstream:
    """
    One upstream at run time.

    @ivar name: its name (C{elasticsearch:NAME} for a cluster,
        C{http:HOST,...} for an C{http} filter's hosts).
    @ivar config: its L{UpstreamConfig}.
    @ivar endpoints: the L{EndpointState} of each endpoint, in order.
    @ivar balancer: the L{Balancer} picking among them.
    @ivar client: its connection pool and Agent.
    @ivar health: its L{UpstreamHealth}: what the health checks know, which
        sets each endpoint's C{healthy}; the proxy reports every attempt.
    @ivar checker: its active L{HealthChecker}, once the gateway's
        L{HealthService} made it (None without active checks).
    """

    def __init__(self, config: UpstreamConfig, reactor: Any, client: UpstreamClient) -> None:
        self.name = config.name
        self.config = config
        self.endpoints: List[EndpointState] = [
            EndpointState.from_url(e.url, weight=e.weight, priority=e.priority)
            for e in config.endpoints
        ]
        self.balancer: Balancer = make_balancer(config.balancer, self.endpoints, reactor)
        self.client = client
        self.health = UpstreamHealth(
            self.name, self.endpoints, reactor, config.health_check, config.panic_threshold
        )
        self.checker: Optional[HealthChecker] = None
        # Told of every attempt by the proxy (the gateway's metrics), or None.
        self.observer: Any = None

    def state(self) -> Dict[str, Any]:
        """
        Plain data for the admin API: health, counters, in-flight requests
        and EWMA cost of every endpoint (see L{UpstreamHealth.state}).
        """
        return self.health.state(self.balancer)

    def __repr__(self) -> str:
        return f"<Upstream {self.name!r} {[e.url for e in self.endpoints]}>"


class UpstreamSet(Mapping[str, Upstream]):
    """
    Every upstream of a gateway by name, and the pools they share a life
    with: the configured ones, one per enabled Elasticsearch cluster, and
    the anonymous ones of C{http} filters (L{anonymous}).

    @param previous: the set a reloaded gateway used: each upstream whose
        settings did not change is kept as it was (endpoints, health,
        connections), so a reload does not disturb it.
    @raise ConfigError: an upstream's TLS files cannot be used.
    """

    def __init__(
        self,
        config: GatewayConfig,
        reactor: Any,
        resolve: Callable[[str], str],
        previous: Optional["UpstreamSet"] = None,
    ) -> None:
        self.reactor = reactor
        self.previous = previous
        self.source = config.source
        self.pools = ClientPools(reactor, resolve)
        self._upstreams: Dict[str, Upstream] = {}
        problems = []
        configs = list(config.upstreams)
        configs += [c.upstream for c in config.elasticsearch if c.enabled]
        for upstream in configs:
            try:
                self._add(upstream)
            except TLSConfigError as e:
                problems.append(f"{config.source}: {e}")
        if problems:
            # Not imported at the top: the config loader imports the filters,
            # which import this module.
            from infini_gateway.config import ConfigError

            raise ConfigError(problems)

    def _add(self, config: UpstreamConfig) -> Upstream:
        kept = self.previous.get(config.name) if self.previous is not None else None
        if kept is not None and kept.config == config:
            self._upstreams[config.name] = kept
            self.pools.clients[config.name] = kept.client
            return kept
        upstream = Upstream(config, self.reactor, self.pools.add(config))
        self._upstreams[config.name] = upstream
        return upstream

    def __getitem__(self, name: str) -> Upstream:
        return self._upstreams[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._upstreams)

    def __len__(self) -> int:
        return len(self._upstreams)

    def cluster(self, name: str) -> Upstream:
        """The upstream of the Elasticsearch cluster C{name}."""
        return self._upstreams[cluster_upstream_name(name)]

    def anonymous(self, config: UpstreamConfig) -> Upstream:
        """
        The upstream for C{config}, an C{http} filter's: filters with the
        same settings share one; another with the same hosts but other
        settings gets the name with C{#2}, C{#3}... appended.

        @raise infini_gateway.tls.TLSConfigError: its TLS files cannot be used.
        """
        name, n = config.name, 1
        while name in self._upstreams:
            existing = self._upstreams[name]
            if existing.config == attrs.evolve(config, name=name):
                return existing
            n += 1
            name = f"{config.name}#{n}"
        return self._add(attrs.evolve(config, name=name))

    def health_service(self) -> HealthService:
        """
        The service running the health checks of every upstream (an active
        checker each, probing from the start): for the service tree.
        """
        return HealthService(self, self.reactor, self.pools.resolve)

    def state(self) -> Dict[str, Dict[str, Any]]:
        """Every upstream's L{Upstream.state}, by name: plain data."""
        return {name: upstream.state() for name, upstream in self._upstreams.items()}

    def close(self) -> Deferred:
        """Close the pools' idle connections."""
        return self.pools.close()

