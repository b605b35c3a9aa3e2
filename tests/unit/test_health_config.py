"""The health_check and panic_threshold keys: defaults, values, and errors at load time."""

import pytest

from infini_gateway.config import ConfigError, config_from_dict
from infini_gateway.config.model import (
    ActiveHealthCheck,
    HealthCheck,
    PassiveHealthCheck,
)


def upstream(**keys):
    config = config_from_dict(
        {"upstream": [{"name": "api", "endpoints": ["http://127.0.0.1:9001"], **keys}]}
    )
    return config.upstreams[0]


def problems(health_check=None, **keys):
    if health_check is not None:
        keys["health_check"] = health_check
    with pytest.raises(ConfigError) as caught:
        upstream(**keys)
    return str(caught.value).splitlines()


def test_no_health_check_and_no_panic_by_default():
    api = upstream()
    assert api.health_check == HealthCheck(active=None, passive=None)
    assert api.panic_threshold == 0


def test_an_empty_section_means_the_defaults():
    api = upstream(health_check={"active": {}, "passive": {}})
    assert api.health_check == HealthCheck(ActiveHealthCheck(), PassiveHealthCheck())
    active, passive = api.health_check.active, api.health_check.passive
    assert (active.type, active.timeout, active.http_path) == ("http", 1.0, "/")
    assert (active.healthy.interval, active.unhealthy.interval) == (1.0, 1.0)
    assert active.healthy.successes == 2
    assert active.healthy.http_statuses == (200, 302)
    assert (active.unhealthy.http_failures, active.unhealthy.tcp_failures) == (5, 2)
    assert active.unhealthy.timeouts == 3
    assert active.unhealthy.http_statuses == (429, 404, 500, 501, 502, 503, 504, 505)
    assert active.https_verify_certificate is True
    assert (passive.base_ejection_time, passive.max_ejection_time) == (30.0, 300.0)
    assert passive.max_ejection_percent == 50


def test_every_key_is_read():
    api = upstream(
        panic_threshold=40,
        health_check={
            "active": {
                "type": "https",
                "timeout": "250ms",
                "http_path": "/healthz",
                "host": "api.internal",
                "port": 8443,
                "req_headers": ["X-Probe: yes", "Accept:  */*"],
                "https_verify_certificate": False,
                "healthy": {"interval": "5s", "successes": 3, "http_statuses": [200]},
                "unhealthy": {
                    "interval": "500ms",
                    "http_failures": 2,
                    "tcp_failures": 1,
                    "timeouts": 4,
                    "http_statuses": [500],
                },
            },
            "passive": {
                "consecutive_5xx": 0,
                "consecutive_gateway_failure": 3,
                "consecutive_timeouts": 2,
                "base_ejection_time": "10s",
                "max_ejection_time": "1m",
                "max_ejection_percent": 100,
            },
        },
    )
    active, passive = api.health_check.active, api.health_check.passive
    assert api.panic_threshold == 40
    assert (active.type, active.timeout, active.http_path) == ("https", 0.25, "/healthz")
    assert (active.host, active.port) == ("api.internal", 8443)
    assert active.req_headers == (("X-Probe", "yes"), ("Accept", "*/*"))
    assert active.https_verify_certificate is False
    assert (active.healthy.interval, active.healthy.successes) == (5.0, 3)
    assert active.healthy.http_statuses == (200,)
    assert active.unhealthy.interval == 0.5
    assert (active.unhealthy.http_failures, active.unhealthy.tcp_failures) == (2, 1)
    assert (active.unhealthy.timeouts, active.unhealthy.http_statuses) == (4, (500,))
    assert passive == PassiveHealthCheck(0, 3, 2, 10.0, 60.0, 100)


def test_a_long_base_ejection_time_raises_the_default_maximum():
    api = upstream(health_check={"passive": {"base_ejection_time": "10m"}})
    assert api.health_check.passive.max_ejection_time == 600.0


def test_elasticsearch_clusters_take_the_keys_too():
    config = config_from_dict(
        {
            "elasticsearch": [
                {
                    "name": "es",
                    "endpoint": "http://127.0.0.1:9200",
                    "panic_threshold": 10,
                    "health_check": {"active": {"http_path": "/_cluster/health"}},
                }
            ]
        }
    )
    cluster = config.elasticsearch[0].upstream
    assert cluster.health_check.active.http_path == "/_cluster/health"
    assert cluster.panic_threshold == 10


@pytest.mark.parametrize(
    "health_check, expected",
    [
        ({"active": {"timeout": 0}}, "health_check.active.timeout: expected a duration above 0"),
        (
            {"active": {"healthy": {"interval": "0s"}}},
            "health_check.active.healthy.interval: expected a duration above 0",
        ),
        (
            {"active": {"type": "udp"}},
            "health_check.active.type: expected one of http, https, tcp",
        ),
        (
            {"active": {"req_headers": ["no colon"]}},
            "health_check.active.req_headers[0]: expected a header written 'Name: value'",
        ),
        ({"active": {"port": 0}}, "health_check.active.port"),
        ({"active": {"http_path": "health"}}, "health_check.active.http_path"),
        (
            {"active": {"unhealthy": {"tcp_failures": 0}}},
            "health_check.active.unhealthy.tcp_failures: expected at least 1",
        ),
        (
            {"active": {"healthy": {"http_statuses": [99]}}},
            "health_check.active.healthy.http_statuses[0]: expected at least 200",
        ),
        (
            {"passive": {"base_ejection_time": "1m", "max_ejection_time": "30s"}},
            "health_check.passive.max_ejection_time: expected at least base_ejection_time",
        ),
        (
            {"passive": {"max_ejection_percent": 101}},
            "health_check.passive.max_ejection_percent: expected at most 100",
        ),
        ({"passive": {"enforcing": 1}}, "health_check.passive.enforcing: unknown key 'enforcing'"),
        (
            {"passive": {"consecutive_5xx": -1}},
            "health_check.passive.consecutive_5xx: expected at least 0",
        ),
    ],
)
def test_bad_values_are_errors_at_load_time(health_check, expected):
    found = problems(health_check)
    assert len(found) == 1, found
    assert f"upstream[0].{expected}" in found[0]


def test_panic_threshold_is_a_percentage():
    assert "upstream[0].panic_threshold" in problems(panic_threshold=150)[0]
    assert "upstream[0].panic_threshold" in problems(panic_threshold="half")[0]
