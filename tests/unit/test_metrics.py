"""
The gateway's Prometheus metrics: a registry per gateway, requests counted
by entry, rule and status class, and the live state read at scrape time.
"""

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.testing import MemoryReactorClock

from infini_gateway import build_service
from infini_gateway.metrics import failure_reason
from tests.unit._site import request

CONFIG = {
    "entry": [
        {"name": "a", "network": {"binding": "127.0.0.1:8001"}},
        {"name": "b", "network": {"binding": "127.0.0.1:8002"}},
    ],
    "router": [
        {
            "name": "default",
            "default_flow": "hello",
            "rules": [
                {"method": ["GET"], "pattern": ["/user/{name}"], "flow": ["user"]},
                {"method": ["GET"], "pattern": ["/teapot"], "flow": ["teapot"]},
            ],
        }
    ],
    "flow": [
        {"name": "hello", "filter": [{"echo": {"message": "hello"}}]},
        {"name": "user", "filter": [{"echo": {"message": "hi"}}]},
        {"name": "teapot", "filter": [{"echo": {"message": "tea", "status": 418}}]},
    ],
}


def gateway():
    reactor = MemoryReactorClock()
    service = build_service(CONFIG, reactor=reactor)
    return service, reactor


def parsed(service):
    out = {}
    for family in text_string_to_metric_families(service.metrics.text().decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def requests_total(service, **labels):
    return service.metrics.value("infini_gateway_requests_total", labels) or 0


def test_requests_by_entry_rule_and_status_class():
    """Each entry counts its own requests, by router rule and status class."""
    service, _ = gateway()
    site_a = service.entries["a"].site
    site_b = service.entries["b"].site
    for _ in range(3):
        assert request(site_a, b"GET /user/x HTTP/1.1\r\nHost: h\r\n\r\n").status == 200
    assert request(site_a, b"GET /teapot HTTP/1.1\r\nHost: h\r\n\r\n").status == 418
    assert request(site_b, b"GET /other HTTP/1.1\r\nHost: h\r\n\r\n").status == 200
    assert request(site_b, b"GET /a/../b HTTP/1.1\r\nHost: h\r\n\r\n").status == 400
    common = {"router": "default"}
    assert (
        requests_total(
            service, entry="a", rule="rules[0] GET /user/{name}", status="2xx", **common
        )
        == 3
    )
    assert (
        requests_total(
            service, entry="a", rule="rules[1] GET /teapot", status="4xx", **common
        )
        == 1
    )
    assert (
        requests_total(service, entry="b", rule="default_flow", status="2xx", **common)
        == 1
    )
    assert requests_total(service, entry="b", rule="none", status="4xx", **common) == 1
    assert (
        service.metrics.value(
            "infini_gateway_request_duration_seconds_count", {"entry": "a"}
        )
        == 4
    )
    assert service.metrics.in_flight("a") == 0


def test_aborted_requests_and_in_flight():
    """A request in flight is counted live; one whose client left is 'aborted'."""
    from twisted.internet.defer import Deferred

    from infini_gateway.filters import Filter

    service, _ = gateway()
    waiting = Deferred()

    class Wait(Filter):
        name = "wait"

        def filter(self, ctx):
            return waiting

    router = service.entries["a"].site.resource
    flow = router.default_flow
    router.default_flow = type(flow)("hello", [("hello", "wait", Wait({}, None))])
    exchange = request(service.entries["a"].site, b"GET /x HTTP/1.1\r\nHost: h\r\n\r\n")
    values = parsed(service)
    assert values[("infini_gateway_requests_in_flight", (("entry", "a"),))] == 1
    exchange.channel.connectionLost(Exception("gone"))
    assert service.metrics.in_flight("a") == 0
    assert (
        requests_total(
            service, entry="a", router="default", rule="default_flow", status="aborted"
        )
        == 1
    )


def test_a_registry_per_gateway():
    """Two gateways keep apart, and neither touches the global registry."""
    one, _ = gateway()
    two, _ = gateway()
    request(one.entries["a"].site)
    assert (
        requests_total(
            one, entry="a", router="default", rule="default_flow", status="2xx"
        )
        == 1
    )
    assert (
        requests_total(
            two, entry="a", router="default", rule="default_flow", status="2xx"
        )
        == 0
    )
    assert (
        REGISTRY.get_sample_value(
            "infini_gateway_requests_total",
            {
                "entry": "a",
                "router": "default",
                "rule": "default_flow",
                "status": "2xx",
            },
        )
        is None
    )


def test_live_state_at_scrape_time():
    """Connections, listening state and endpoint health are read when scraped."""
    config = dict(
        CONFIG,
        upstream=[
            {
                "name": "api",
                "endpoints": ["http://127.0.0.1:9001", "http://127.0.0.1:9002"],
            }
        ],
    )
    service = build_service(config, reactor=MemoryReactorClock())
    service.startService()
    values = parsed(service)
    assert values[("infini_gateway_entry_listening", (("entry", "a"),))] == 1
    assert values[("infini_gateway_connections_open", (("entry", "a"),))] == 0
    ep = (
        "infini_gateway_upstream_endpoint_healthy",
        (("endpoint", "http://127.0.0.1:9001"), ("upstream", "api")),
    )
    assert values[ep] == 1
    service.upstreams["api"].endpoints[0].healthy = False
    assert parsed(service)[ep] == 0


def test_upstream_observer_counts_attempts_retries_and_reasons():
    """Attempts, retries and failures by reason, with details left out of the label."""
    from infini_gateway.upstream.failures import AttemptFailure, no_endpoint

    service, _ = gateway()
    observer = service.metrics.upstream("api")

    class Endpoint:
        url = "http://127.0.0.1:9001"

    observer.attempted(Endpoint, 0, 0.01, AttemptFailure(502, "cannot connect: boom"))
    observer.attempted(Endpoint, 1, 0.02, None)
    observer.gave_up(no_endpoint(2))
    value = service.metrics.value
    assert value("infini_gateway_upstream_retries_total", {"upstream": "api"}) == 1
    assert (
        value(
            "infini_gateway_upstream_failures_total",
            {"upstream": "api", "reason": "cannot connect"},
        )
        == 1
    )
    assert (
        value(
            "infini_gateway_upstream_failures_total",
            {"upstream": "api", "reason": "no endpoint available"},
        )
        == 1
    )
    assert (
        value(
            "infini_gateway_upstream_request_duration_seconds_count",
            {"upstream": "api"},
        )
        == 2
    )
    assert service.metrics.endpoint_counts("api", Endpoint.url) == (2, 1)


def test_failure_reason_labels_are_bounded():
    assert failure_reason("connection refused") == "connection refused"
    assert failure_reason("cannot connect: [Errno 113] No route") == "cannot connect"
    assert failure_reason("no endpoint available (tried 3)") == "no endpoint available"
    assert failure_reason("") == "unknown"
