"""
The health state machine driven with a Clock: active thresholds and
consecutive counting, passive ejection and its times, re-admission,
max_ejection_percent, the panic threshold, the log and the state as data.
"""

import json
from typing import List

import pytest

from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher

from infini_gateway.config.model import (
    ActiveHealthCheck,
    ActiveHealthy,
    ActiveUnhealthy,
    HealthCheck,
    PassiveHealthCheck,
)
from infini_gateway.upstream.balancer import EndpointState, make_balancer
from infini_gateway.upstream.failures import AttemptFailure, timed_out
from infini_gateway.upstream.health import ProbeResult, UpstreamHealth

OK = ProbeResult("success", "status 200")
BAD_STATUS = ProbeResult("http", "status 500")
REFUSED = ProbeResult("tcp", "connection refused")
SLOW = ProbeResult("timeout", "timed out after 1s")
ODD = ProbeResult("neutral", "status 418")


def endpoints(n: int = 3) -> List[EndpointState]:
    return [EndpointState.from_url(f"http://10.0.0.{i + 1}:80") for i in range(n)]


def make(n=3, active=None, passive=None, panic_threshold=0.0, clock=None):
    clock = clock or Clock()
    eps = endpoints(n)
    health = UpstreamHealth(
        "api", eps, clock, HealthCheck(active=active, passive=passive), panic_threshold
    )
    return health, eps, clock


@pytest.fixture
def logged():
    events: List[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def lines(events) -> List[str]:
    return [formatEvent(e) for e in events if "upstream" in e]


# Active


def test_endpoints_start_healthy():
    health, eps, _ = make(active=ActiveHealthCheck())
    assert all(ep.healthy for ep in eps)
    assert [h.state for h in health.endpoints] == ["healthy"] * 3


def test_tcp_failures_threshold_marks_unhealthy():
    """Two refused probes in a row (the default) make an endpoint unhealthy; one does not."""
    health, eps, _ = make(active=ActiveHealthCheck())
    health.probe_result(eps[0], REFUSED)
    assert eps[0].healthy
    health.probe_result(eps[0], REFUSED)
    assert not eps[0].healthy
    assert health[eps[0]].state == "unhealthy"
    assert eps[1].healthy and eps[2].healthy


def test_http_failures_and_timeouts_have_their_own_thresholds():
    """Defaults: 5 failure statuses in a row, 3 timeouts in a row."""
    health, eps, _ = make(active=ActiveHealthCheck())
    for _ in range(4):
        health.probe_result(eps[0], BAD_STATUS)
    assert eps[0].healthy
    health.probe_result(eps[0], BAD_STATUS)
    assert not eps[0].healthy

    for _ in range(2):
        health.probe_result(eps[1], SLOW)
    assert eps[1].healthy
    health.probe_result(eps[1], SLOW)
    assert not eps[1].healthy


def test_a_success_resets_the_failure_counters():
    """Failures must be consecutive: a success between them starts the count again."""
    health, eps, _ = make(active=ActiveHealthCheck())
    for _ in range(10):
        health.probe_result(eps[0], REFUSED)
        health.probe_result(eps[0], OK)
    assert eps[0].healthy
    assert health[eps[0]].tcp_failures == 0


def test_a_failure_resets_the_success_counter():
    """An unhealthy endpoint needs two successes in a row (the default) to come back."""
    health, eps, _ = make(active=ActiveHealthCheck())
    health.probe_result(eps[0], REFUSED)
    health.probe_result(eps[0], REFUSED)
    health.probe_result(eps[0], OK)
    health.probe_result(eps[0], REFUSED)
    health.probe_result(eps[0], OK)
    assert not eps[0].healthy
    health.probe_result(eps[0], OK)
    assert eps[0].healthy


def test_a_status_in_neither_list_changes_nothing():
    health, eps, _ = make(active=ActiveHealthCheck(unhealthy=ActiveUnhealthy(tcp_failures=1)))
    health.probe_result(eps[0], REFUSED)
    health.probe_result(eps[0], OK)
    health.probe_result(eps[0], ODD)
    health.probe_result(eps[0], OK)
    assert eps[0].healthy
    assert health[eps[0]].last_probe["reason"] == "status 200"


def test_configured_thresholds_are_used():
    active = ActiveHealthCheck(
        healthy=ActiveHealthy(successes=3), unhealthy=ActiveUnhealthy(tcp_failures=4)
    )
    health, eps, _ = make(active=active)
    for _ in range(3):
        health.probe_result(eps[0], REFUSED)
    assert eps[0].healthy
    health.probe_result(eps[0], REFUSED)
    assert not eps[0].healthy
    health.probe_result(eps[0], OK)
    health.probe_result(eps[0], OK)
    assert not eps[0].healthy
    health.probe_result(eps[0], OK)
    assert eps[0].healthy


# Passive


def test_consecutive_5xx_eject():
    """Five 5xx in a row (the default) eject; a good answer before that resets the count."""
    health, eps, clock = make(passive=PassiveHealthCheck())
    for _ in range(4):
        health.request_outcome(eps[0], 500)
    health.request_outcome(eps[0], 200)
    for _ in range(4):
        health.request_outcome(eps[0], 500)
    assert eps[0].healthy
    health.request_outcome(eps[0], 500)
    assert not eps[0].healthy
    assert health[eps[0]].state == "ejected"


def test_gateway_failures_count_502_503_504_and_connection_errors():
    passive = PassiveHealthCheck(consecutive_5xx=0, consecutive_gateway_failure=3)
    health, eps, _ = make(passive=passive)
    health.report_failure(eps[0], AttemptFailure(502, "connection refused", before_send=True))
    health.request_outcome(eps[0], 503)
    health.request_outcome(eps[0], 500)  # a 5xx, not a gateway failure: starts again
    health.request_outcome(eps[0], 504)
    health.report_failure(eps[0], AttemptFailure(502, "connection reset"))
    assert eps[0].healthy
    health.request_outcome(eps[0], 502)
    assert not eps[0].healthy


def test_timeouts_eject_but_the_retry_deadline_does_not_count():
    passive = PassiveHealthCheck(consecutive_5xx=0, consecutive_gateway_failure=0)
    health, eps, _ = make(passive=passive)
    for _ in range(5):
        health.report_failure(eps[0], timed_out("retry_timeout"))
    assert eps[0].healthy and health[eps[0]].consecutive_timeouts == 0
    health.report_failure(eps[0], timed_out("connect", before_send=True))
    health.report_failure(eps[0], timed_out("read"))
    assert eps[0].healthy
    health.report_failure(eps[0], timed_out("send"))
    assert not eps[0].healthy


def test_ejection_time_grows_with_each_ejection_up_to_the_maximum():
    """base_ejection_time times the ejections so far: 30 s, 60 s, 90 s, then capped."""
    passive = PassiveHealthCheck(consecutive_5xx=1, max_ejection_time=100.0)
    health, eps, clock = make(passive=passive)
    for expected in (30.0, 60.0, 90.0, 100.0, 100.0):
        health.request_outcome(eps[0], 500)
        assert not eps[0].healthy
        assert health[eps[0]].ejected_until == clock.seconds() + expected
        clock.advance(expected - 0.01)
        assert not eps[0].healthy
        clock.advance(0.01)
        assert eps[0].healthy, "back when the ejection time has passed"
    assert health[eps[0]].times_ejected == 5


def test_an_ejected_endpoint_comes_back_without_active_checks():
    health, eps, clock = make(passive=PassiveHealthCheck(consecutive_gateway_failure=2))
    health.request_outcome(eps[1], 502)
    health.request_outcome(eps[1], 502)
    assert not eps[1].healthy
    assert [c.getTime() for c in clock.getDelayedCalls()] == [30.0]
    clock.advance(30)
    assert eps[1].healthy
    assert health[eps[1]].consecutive_gateway_failure == 0
    assert clock.getDelayedCalls() == []


def test_max_ejection_percent_keeps_endpoints_in_service():
    """With 3 endpoints and 50 %, one may be ejected at a time; another waits its turn."""
    health, eps, clock = make(passive=PassiveHealthCheck(consecutive_5xx=2))
    for ep in eps[:2]:
        health.request_outcome(ep, 500)
        health.request_outcome(ep, 500)
    assert [ep.healthy for ep in eps] == [False, True, True]
    assert health[eps[1]].consecutive_5xx == 0, "refused: its count starts again"
    clock.advance(30)
    health.request_outcome(eps[1], 500)
    health.request_outcome(eps[1], 500)
    assert [ep.healthy for ep in eps] == [True, False, True]


def test_max_ejection_percent_100_ejects_all_and_0_none():
    health, eps, _ = make(passive=PassiveHealthCheck(consecutive_5xx=1, max_ejection_percent=100))
    for ep in eps:
        health.request_outcome(ep, 500)
    assert not any(ep.healthy for ep in eps)
    health, eps, _ = make(passive=PassiveHealthCheck(consecutive_5xx=1, max_ejection_percent=0))
    for ep in eps:
        health.request_outcome(ep, 500)
    assert all(ep.healthy for ep in eps)


def test_active_successes_end_an_ejection_early():
    """With active checks too, healthy.successes probes after the ejection bring it back."""
    health, eps, clock = make(
        active=ActiveHealthCheck(), passive=PassiveHealthCheck(consecutive_5xx=1)
    )
    health.probe_result(eps[0], OK)
    health.probe_result(eps[0], OK)
    health.request_outcome(eps[0], 500)
    assert not eps[0].healthy
    health.probe_result(eps[0], OK)
    assert not eps[0].healthy, "successes before the ejection do not count"
    health.probe_result(eps[0], OK)
    assert eps[0].healthy
    assert clock.getDelayedCalls() == []


def test_the_end_of_an_ejection_does_not_override_active_checks():
    health, eps, clock = make(
        active=ActiveHealthCheck(), passive=PassiveHealthCheck(consecutive_5xx=1)
    )
    health.request_outcome(eps[0], 500)
    health.probe_result(eps[0], REFUSED)
    health.probe_result(eps[0], REFUSED)
    clock.advance(30)
    assert health[eps[0]].state == "unhealthy"
    assert not eps[0].healthy
    health.probe_result(eps[0], OK)
    health.probe_result(eps[0], OK)
    assert eps[0].healthy


def test_without_passive_checks_outcomes_change_nothing():
    health, eps, clock = make(active=ActiveHealthCheck())
    for _ in range(20):
        health.request_outcome(eps[0], 502)
    assert eps[0].healthy
    assert clock.getDelayedCalls() == []


def test_stop_cancels_readmission_and_start_arms_it_again():
    health, eps, clock = make(passive=PassiveHealthCheck(consecutive_5xx=1))
    health.request_outcome(eps[0], 500)
    health.stop()
    assert clock.getDelayedCalls() == []
    clock.advance(10)
    health.start()
    clock.advance(19.9)
    assert not eps[0].healthy
    clock.advance(0.1)
    assert eps[0].healthy


# Panic


@pytest.mark.parametrize(
    "threshold, unhealthy, panic",
    [
        (0, 3, False),
        (50, 0, False),
        (50, 1, False),  # 2 of 3 healthy: 66 %
        (50, 2, True),  # 1 of 3: 33 %
        (50, 3, True),
        (100, 1, True),
        (34, 2, True),
        (33, 2, False),  # 1 of 3 is 33.3 %
    ],
)
def test_panic_threshold(threshold, unhealthy, panic):
    health, eps, _ = make(panic_threshold=threshold)
    for ep in eps[:unhealthy]:
        ep.healthy = False
    assert health.panicking() is panic


def test_drained_endpoints_do_not_count_for_panic():
    health, eps, _ = make(panic_threshold=50)
    eps[0].weight = 0
    eps[1].healthy = False
    assert health.panicking() is False  # 1 of 2
    eps[2].healthy = False
    assert health.panicking() is True


# Visible


def test_every_change_is_logged_with_endpoint_counters_and_reason(logged):
    health, eps, clock = make(
        active=ActiveHealthCheck(), passive=PassiveHealthCheck(consecutive_5xx=1)
    )
    health.probe_result(eps[0], REFUSED)
    health.probe_result(eps[0], REFUSED)
    health.probe_result(eps[0], OK)
    health.probe_result(eps[0], OK)
    health.request_outcome(eps[1], 503)
    clock.advance(30)
    text = lines(logged)
    assert len(text) == 4, text
    assert "http://10.0.0.1:80 healthy -> unhealthy" in text[0]
    assert "2 probes in a row failed to connect (connection refused)" in text[0]
    assert "tcp_failures=2" in text[0]
    assert "unhealthy -> healthy" in text[1] and "successes=2" in text[1]
    assert "http://10.0.0.2:80 healthy -> ejected" in text[2]
    assert "ejected for 30s" in text[2] and "times_ejected=1" in text[2]
    assert "ejected -> healthy: ejection time passed" in text[3]


def test_panic_is_logged_when_it_starts_and_ends(logged):
    health, eps, _ = make(active=ActiveHealthCheck(), panic_threshold=50)
    for ep in eps[:2]:
        health.probe_result(ep, REFUSED)
        health.probe_result(ep, REFUSED)
    health.probe_result(eps[0], OK)
    health.probe_result(eps[0], OK)
    text = [t for t in lines(logged) if "panic" in t]
    assert len(text) == 2
    assert "1 of 3 endpoints healthy, below panic_threshold 50%" in text[0]
    assert "panic over" in text[1]


def test_state_is_plain_data_with_balancer_figures():
    health, eps, clock = make(
        active=ActiveHealthCheck(), passive=PassiveHealthCheck(consecutive_5xx=1)
    )
    balancer = make_balancer("ewma", eps, clock)
    clock.advance(100)
    balancer.on_request_start(eps[2])
    balancer.on_request_start(eps[1])
    balancer.on_request_end(eps[1], 0.5, False)
    health.probe_result(eps[0], REFUSED)
    health.probe_result(eps[0], REFUSED)
    health.request_outcome(eps[1], 500)
    state = json.loads(json.dumps(health.state(balancer)))
    assert {k: state[k] for k in ("name", "balancer", "panic", "healthy", "total")} == {
        "name": "api",
        "balancer": "ewma",
        "panic": False,
        "healthy": 1,
        "total": 3,
    }
    first, second, third = state["endpoints"]
    assert first["state"] == "unhealthy" and first["available"] is False
    assert first["active"]["tcp_failures"] == 2
    assert first["active"]["last_probe"] == {
        "at": 100.0,
        "result": "tcp",
        "reason": "connection refused",
    }
    assert first["last_change"]["state"] == "unhealthy"
    assert second["state"] == "ejected"
    assert second["passive"]["ejected_until"] == 130.0
    assert second["passive"]["ejection_remaining"] == 30.0
    assert second["ewma"] == pytest.approx(0.5)
    assert third["in_flight"] == 1 and third["state"] == "healthy"
    assert third["last_change"] is None


def test_state_without_checks_has_no_active_or_passive_part():
    health, eps, clock = make()
    state = health.state(make_balancer("roundrobin", eps, clock))
    assert state["active_checks"] is False and state["passive_checks"] is False
    assert state["endpoints"][0]["active"] is None
    assert state["endpoints"][0]["passive"] is None
