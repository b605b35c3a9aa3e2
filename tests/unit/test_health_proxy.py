"""
The proxy and the health checks: every attempt's outcome, retries included,
reaches the passive checks; the panic threshold lets unhealthy endpoints
serve; with none available and no panic, 503 at once.
"""

import json
from collections import Counter

from twisted.internet import error
from twisted.internet.defer import Deferred, fail
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from infini_gateway.config.model import HealthCheck, PassiveHealthCheck
from tests.unit.test_proxy_forward import (
    FakeAgent,
    FakeResponse,
    _succeed,
    endpoints_called,
    run,
    upstream,
)


def passive(**settings):
    return HealthCheck(passive=PassiveHealthCheck(**settings))


def test_failures_seen_by_retries_count():
    """Each endpoint refuses once within one request: each count is 1, all are ejected."""
    agent = FakeAgent(lambda m, u: fail(error.ConnectionRefusedError()))
    target = upstream(
        agent,
        MemoryReactorClock(),
        health_check=passive(consecutive_gateway_failure=1, max_ejection_percent=100),
    )
    exchange = run(target)
    assert exchange.status == 502
    assert len(agent.calls) == 3
    assert [target.health[ep].state for ep in target.endpoints] == ["ejected"] * 3
    # The next request finds none available: 503 at once, no attempt.
    exchange = run(target)
    assert exchange.status == 503
    assert json.loads(exchange.body)["reason"] == "no endpoint available"
    assert len(agent.calls) == 3


def test_statuses_from_the_upstream_count():
    agent = FakeAgent(lambda m, u: _succeed(FakeResponse(500, body=b"e", length=1)))
    target = upstream(agent, MemoryReactorClock(), health_check=passive(consecutive_5xx=2))
    run(target)
    first = target.endpoints[0]
    assert target.health[first].consecutive_5xx == 1
    assert target.health[first].consecutive_gateway_failure == 0
    agent.script = lambda m, u: _succeed(FakeResponse(200, body=b"k", length=1))
    run(target)
    assert target.health[target.endpoints[1]].consecutive_5xx == 0


def test_a_status_retried_elsewhere_counts_once():
    answers = [FakeResponse(503, body=b"busy", length=4), FakeResponse(200, body=b"ok", length=2)]
    agent = FakeAgent(lambda m, u: _succeed(answers.pop(0)))
    target = upstream(agent, MemoryReactorClock(), retry_on_status=(503,), health_check=passive())
    exchange = run(target)
    assert exchange.status == 200
    first, second, _ = (target.health[ep] for ep in target.endpoints)
    assert (first.consecutive_5xx, first.consecutive_gateway_failure) == (1, 1)
    assert (second.consecutive_5xx, second.consecutive_gateway_failure) == (0, 0)


def test_timeouts_count_as_timeouts():
    reactor = MemoryReactorClock()
    agent = FakeAgent(lambda m, u: Deferred())
    target = upstream(agent, reactor, retries=0, health_check=passive())
    exchange = run(target, reactor=reactor)
    reactor.advance(61)
    assert exchange.read().status == 504
    health = target.health[target.endpoints[0]]
    assert (health.consecutive_timeouts, health.consecutive_gateway_failure) == (1, 1)


def test_a_client_going_away_counts_nothing():
    reactor = MemoryReactorClock()
    agent = FakeAgent(lambda m, u: Deferred())
    target = upstream(agent, reactor, health_check=passive())
    exchange = run(target, reactor=reactor)
    exchange.channel.connectionLost(Failure(error.ConnectionDone()))
    assert all(target.health[ep].counters()["consecutive_5xx"] == 0 for ep in target.endpoints)


def test_no_endpoint_and_no_panic_is_503_at_once():
    agent = FakeAgent(lambda m, u: _succeed(FakeResponse(200, body=b"ok", length=2)))
    target = upstream(agent, MemoryReactorClock())
    for ep in target.endpoints:
        ep.healthy = False
    exchange = run(target)
    assert exchange.status == 503
    assert json.loads(exchange.body) == {
        "error": "service unavailable",
        "upstream": "api",
        "reason": "no endpoint available",
    }
    assert agent.calls == []


def test_below_the_panic_threshold_all_endpoints_serve():
    """2 of 3 unhealthy with panic_threshold 50: requests go round all three."""
    agent = FakeAgent(lambda m, u: _succeed(FakeResponse(200, body=b"ok", length=2)))
    target = upstream(agent, MemoryReactorClock(), panic_threshold=50.0)
    target.endpoints[0].healthy = target.endpoints[1].healthy = False
    for _ in range(6):
        assert run(target).status == 200
    assert Counter(endpoints_called(agent)) == {"10.0.0.1": 2, "10.0.0.2": 2, "10.0.0.3": 2}


def test_above_the_panic_threshold_only_healthy_endpoints_serve():
    agent = FakeAgent(lambda m, u: _succeed(FakeResponse(200, body=b"ok", length=2)))
    target = upstream(agent, MemoryReactorClock(), panic_threshold=30.0)
    target.endpoints[0].healthy = target.endpoints[1].healthy = False
    for _ in range(4):
        run(target)
    assert set(endpoints_called(agent)) == {"10.0.0.3"}


def test_all_unhealthy_with_panic_still_serves():
    agent = FakeAgent(lambda m, u: _succeed(FakeResponse(200, body=b"ok", length=2)))
    target = upstream(agent, MemoryReactorClock(), panic_threshold=1.0)
    for ep in target.endpoints:
        ep.healthy = False
    assert run(target).status == 200
    assert target.state()["panic"] is True
