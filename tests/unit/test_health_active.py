"""
Active health checks on fakes: the HealthChecker TimerService on a Clock
with scripted probes, the Prober over a MemoryReactorClock (connections and
bytes, no network), and the HealthService in the gateway's service tree.
"""

import json
from typing import Dict, List

import pytest

from twisted.internet import error
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

from infini_gateway.config import config_from_dict
from infini_gateway.config.model import (
    ActiveHealthCheck,
    ActiveHealthy,
    ActiveUnhealthy,
    EndpointConfig,
    HealthCheck,
    UpstreamConfig,
)
from infini_gateway.service import GatewayService, Runtime
from infini_gateway.upstream.balancer import EndpointState
from infini_gateway.upstream.health import (
    HealthChecker,
    Prober,
    ProbeResult,
    UpstreamHealth,
)
from infini_gateway.upstream.upstreams import UpstreamSet

OK = ProbeResult("success", "status 200")
REFUSED = ProbeResult("tcp", "connection refused")


class ScriptedProbe:
    """Records probes; answers each with the endpoint's script (a result or a Deferred)."""

    def __init__(self, default=OK):
        self.default = default
        self.calls: List[tuple] = []
        self.script: Dict[str, list] = {}
        self.clock = None

    def __call__(self, endpoint):
        self.calls.append((self.clock.seconds() if self.clock else None, endpoint.host))
        queue = self.script.get(endpoint.host)
        answer = queue.pop(0) if queue else self.default
        if isinstance(answer, Exception):
            raise answer
        return answer if isinstance(answer, Deferred) else succeed(answer)

    def times(self, host):
        return [t for t, h in self.calls if h == host]


def checker(n=3, active=None, probe=None):
    clock = Clock()
    eps = [EndpointState.from_url(f"http://10.0.0.{i + 1}:80") for i in range(n)]
    active = active or ActiveHealthCheck(
        healthy=ActiveHealthy(interval=1.0), unhealthy=ActiveUnhealthy(interval=0.25)
    )
    health = UpstreamHealth("api", eps, clock, HealthCheck(active=active))
    probe = probe or ScriptedProbe()
    probe.clock = clock
    return HealthChecker(health, probe, clock), health, eps, clock, probe


@pytest.fixture
def logged():
    events: List[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def test_probes_start_with_the_service_and_follow_the_intervals():
    """At once on start, then every healthy interval; an unhealthy endpoint every unhealthy one."""
    service, health, eps, clock, probe = checker()
    assert probe.calls == []
    probe.script["10.0.0.2"] = [REFUSED, REFUSED]
    service.startService()
    assert service.step == 0.25
    assert sorted(h for _, h in probe.calls) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    for _ in range(12):
        clock.advance(0.25)
    assert probe.times("10.0.0.1") == [0.0, 1.0, 2.0, 3.0]
    # Refused at 0 (healthy: next at 1), refused at 1 -> unhealthy: every 0.25 s,
    # two successes (1.25, 1.5) -> healthy again: every second.
    assert probe.times("10.0.0.2") == [0.0, 1.0, 1.25, 1.5, 2.5]
    assert eps[1].healthy
    service.stopService()


def test_a_single_endpoint_upstream_is_probed():
    service, health, eps, clock, probe = checker(n=1)
    service.startService()
    assert probe.times("10.0.0.1") == [0.0]
    service.stopService()


def test_a_probe_under_way_is_not_sent_again():
    service, health, eps, clock, probe = checker(n=1)
    pending: Deferred = Deferred()
    probe.script["10.0.0.1"] = [pending]
    service.startService()
    for _ in range(8):
        clock.advance(0.25)
    assert probe.times("10.0.0.1") == [0.0]
    pending.callback(REFUSED)
    # Due since 1 s after the start of the last one: probed at the next tick.
    clock.advance(0.25)
    assert probe.times("10.0.0.1") == [0.0, 2.25]
    service.stopService()


def test_an_exception_never_stops_the_checker(logged):
    """A probe raising, or giving garbage, is logged; probing goes on."""
    service, health, eps, clock, probe = checker(n=1)
    probe.script["10.0.0.1"] = [RuntimeError("boom"), succeed("not a result")]
    service.startService()
    clock.advance(1)
    clock.advance(1)
    assert service.running
    assert len(probe.times("10.0.0.1")) == 3
    failures = [e for e in logged if e.get("log_failure") is not None]
    assert len(failures) == 2
    for event in failures:
        event["log_failure"].cleanFailure()
    service.stopService()


def test_stopping_cancels_probes_under_way_and_ignores_their_results():
    service, health, eps, clock, probe = checker(n=1)
    cancelled = []
    probe.script["10.0.0.1"] = [Deferred(lambda d: cancelled.append(True))]
    service.startService()
    service.stopService()
    assert cancelled == [True]
    assert not service.running
    assert health[eps[0]].last_probe is None
    assert clock.getDelayedCalls() == []


# The Prober over a memory reactor


def upstream_config(**active):
    return UpstreamConfig(
        name="api",
        endpoints=(EndpointConfig("http://10.0.0.1:8080"),),
        health_check=HealthCheck(active=ActiveHealthCheck(**active)),
    )


def results_of(d: Deferred) -> list:
    out: list = []
    d.addBoth(out.append)
    return out


def test_tcp_probe_connects_to_the_probe_port_and_closes():
    reactor = MemoryReactorClock()
    prober = Prober(reactor, upstream_config(type="tcp", port=9999), lambda p: p)
    result = results_of(prober(EndpointState.from_url("http://10.0.0.1:8080")))
    host, port, factory, timeout, _ = reactor.tcpClients[0]
    assert (host, port, timeout) == ("10.0.0.1", 9999, 1.0)
    protocol = factory.buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    assert result == [ProbeResult("success", "connected")]
    assert transport.disconnecting
    assert reactor.getDelayedCalls() == []


def test_tcp_probe_refused_and_timed_out():
    reactor = MemoryReactorClock()
    prober = Prober(reactor, upstream_config(type="tcp", timeout=0.5), lambda p: p)
    endpoint = EndpointState.from_url("http://10.0.0.1:8080")
    refused = results_of(prober(endpoint))
    reactor.tcpClients[0][2].clientConnectionFailed(None, Failure(error.ConnectionRefusedError()))
    assert refused == [ProbeResult("tcp", "connection refused")]
    slow = results_of(prober(endpoint))
    reactor.advance(0.5)
    assert slow == [ProbeResult("timeout", "timed out after 0.5s")]


def http_probe(reactor, response: bytes, **active):
    prober = Prober(reactor, upstream_config(**active), lambda p: p)
    result = results_of(prober(EndpointState.from_url("http://10.0.0.1:8080")))
    protocol = reactor.tcpClients[-1][2].buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    sent = transport.value()
    protocol.dataReceived(response)
    return result, sent, transport


def test_http_probe_sends_path_host_and_headers():
    reactor = MemoryReactorClock()
    result, sent, transport = http_probe(
        reactor,
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        http_path="/healthz?deep=1",
        host="api.internal",
        req_headers=(("X-Probe", "yes"),),
    )
    assert sent.startswith(b"GET /healthz?deep=1 HTTP/1.1\r\n")
    assert b"\r\nHost: api.internal\r\n" in sent
    assert b"\r\nX-Probe: yes\r\n" in sent
    assert b"\r\nUser-Agent: infini-gateway health check\r\n" in sent
    assert result == [ProbeResult("success", "status 200")]
    assert reactor.getDelayedCalls() == []


@pytest.mark.parametrize(
    "status, expected",
    [(302, "success"), (503, "http"), (404, "http"), (418, "neutral"), (204, "neutral")],
)
def test_http_probe_classifies_statuses(status, expected):
    result, _, _ = http_probe(
        MemoryReactorClock(), b"HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n" % status
    )
    assert result == [ProbeResult(expected, f"status {status}")]


def test_http_probe_without_an_answer_times_out_and_drops_the_connection():
    reactor = MemoryReactorClock()
    result, _, transport = http_probe(reactor, b"", timeout=2.0)
    reactor.advance(2)
    assert result == [ProbeResult("timeout", "timed out after 2s")]
    assert transport.disconnecting or transport.disconnected


def test_http_probe_reading_a_broken_answer_is_a_tcp_failure():
    result, _, _ = http_probe(MemoryReactorClock(), b"garbage\r\n\r\n")
    assert result[0].result == "tcp"


# The service tree


def gateway(upstreams, **extra):
    return config_from_dict(
        {
            "entry": [{"name": "web", "network": {"binding": "127.0.0.1:0"}}],
            "router": [{"name": "default", "default_flow": "main"}],
            "flow": [{"name": "main", "filter": [{"echo": {"message": "hi"}}]}],
            "upstream": upstreams,
            **extra,
        }
    )


TCP_CHECK = {"active": {"type": "tcp", "timeout": "300ms", "healthy": {"interval": "2s"}}}


def test_probes_start_with_the_tree_for_an_upstream_no_filter_uses():
    """Building starts nothing; starting the tree probes at once, one endpoint or several."""
    config = gateway(
        [
            {"name": "lonely", "endpoints": ["http://10.9.9.9:7001"], "health_check": TCP_CHECK},
            {"name": "plain", "endpoints": ["http://10.9.9.8:7002"]},
        ]
    )
    reactor = MemoryReactorClock()
    service = GatewayService(config, reactor)
    assert reactor.tcpClients == []
    assert set(service.health.checkers) == {"lonely"}
    assert service.upstreams["lonely"].checker is service.health.checkers["lonely"]
    assert service.upstreams["plain"].checker is None
    service.health.startService()
    assert [(h, p) for h, p, *_ in reactor.tcpClients] == [("10.9.9.9", 7001)]
    reactor.advance(2)
    assert len(reactor.tcpClients) == 2
    service.health.stopService()
    assert not service.health.checkers["lonely"].running


def test_health_service_state_is_every_upstream_as_json():
    config = gateway(
        [{"name": "api", "endpoints": ["http://10.9.9.9:7001"], "health_check": TCP_CHECK}]
    )
    service = GatewayService(config, MemoryReactorClock())
    state = json.loads(json.dumps(service.health.state()))
    assert list(state) == ["api"]
    assert state["api"]["endpoints"][0]["state"] == "healthy"
    assert state["api"]["active_checks"] is True
    assert service.upstreams.state() == service.health.state()


def test_without_a_service_tree_no_checker_is_built():
    """--check builds the upstreams (with no reactor) but no checker."""
    config = gateway(
        [{"name": "api", "endpoints": ["http://10.9.9.9:7001"], "health_check": TCP_CHECK}]
    )
    upstreams = Runtime(None, config).upstreams
    assert isinstance(upstreams, UpstreamSet)
    assert upstreams["api"].checker is None
    assert upstreams["api"].health.active is not None


@pytest.mark.parametrize("old_stops_first", [True, False])
def test_a_kept_upstream_changes_hands_without_losing_its_readmission(old_stops_first):
    """
    A reload keeps an unchanged upstream: the new gateway's health service
    takes it over, and the old one stopping (before or after) leaves the
    ejected endpoint's re-admission armed.
    """
    config = gateway(
        [
            {
                "name": "api",
                "endpoints": ["http://10.9.9.9:7001", "http://10.9.9.8:7002"],
                "health_check": {"passive": {"consecutive_5xx": 1}},
            }
        ]
    )
    reactor = MemoryReactorClock()
    old = GatewayService(config, reactor)
    old.health.startService()
    upstream = old.upstreams["api"]
    upstream.health.request_outcome(upstream.endpoints[0], 500)
    assert not upstream.endpoints[0].healthy
    new = old.upstreams.health_service()  # shares the same Upstream objects
    if old_stops_first:
        old.health.stopService()
        new.startService()
    else:
        new.startService()
        old.health.stopService()
    reactor.advance(30)
    assert upstream.endpoints[0].healthy
    new.stopService()
    assert reactor.getDelayedCalls() == []
