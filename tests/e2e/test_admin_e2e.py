"""
The admin API against a real ``twistd -n infini-gateway``: every endpoint,
with and without basic auth, ``/metrics`` read back with prometheus-client's
parser, entries stopped and started, a broken configuration refused.
"""

import base64
import http.client
import json
import re
import textwrap
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.backends import Backend

ADMIN = re.compile(r"admin API listening on (https?)://([0-9.]+):(\d+)")

CONFIG = """
api:
  network: {{binding: "127.0.0.1:0"}}
{security}
entry:
  - name: web
    network: {{binding: "127.0.0.1:0"}}
router:
  - name: default
    default_flow: hello
    rules:
      - method: [GET]
        pattern: ["/user/{{name}}"]
        flow: [user]
      - method: [GET]
        pattern: ["/teapot"]
        flow: [teapot]
      - method: ["*"]
        pattern: ["/api/{{rest:*}}"]
        flow: [api]
flow:
  - name: hello
    filter:
      - echo: {{message: "hello"}}
  - name: user
    filter:
      - echo: {{message: "user $[[name]]"}}
  - name: teapot
    filter:
      - echo: {{message: "short and stout", status: 418, continue: false}}
  - name: api
    filter:
      - proxy: {{upstream: api}}
upstream:
  - name: api
    endpoints: ["http://127.0.0.1:{dead}", "http://127.0.0.1:{live}"]
    balancer: roundrobin
    retries: 1
    timeout: {{connect: 2s, read: 5s}}
"""

SECURITY = "  security: {enabled: true, username: ops, password: 's3cret pass'}"


def admin_address(gateway, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        match = ADMIN.search(gateway.log())
        if match:
            return match.group(2), int(match.group(3))
        time.sleep(0.05)
    raise AssertionError(f"no admin API in the log:\n{gateway.log()}")


def call(address, method, path, auth=None, timeout=10.0):
    """(status, headers, body bytes) of one request on a connection of its own."""
    conn = http.client.HTTPConnection(*address, timeout=timeout)
    headers = {}
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(auth.encode()).decode()
    try:
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def get_json(address, path, auth=None, method="GET"):
    status, headers, body = call(address, method, path, auth)
    assert headers.get("Content-Type") == "application/json", (status, body)
    return status, json.loads(body)


@pytest.fixture
def backend():
    b = Backend("live").start()
    yield b
    b.stop()


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(gateways, backend, security):
    config = CONFIG.format(
        security=SECURITY if security else "", dead=free_port(), live=backend.port
    )
    gateway = gateways(textwrap.dedent(config))
    return gateway, admin_address(gateway)


@pytest.mark.parametrize("security", [False, True], ids=["open", "basic-auth"])
def test_every_endpoint(gateways, backend, security):
    """
    Each endpoint answers as documented; with security enabled, each asks
    for basic auth (401 without it or with a wrong password).
    """
    gateway, admin = start(gateways, backend, security)
    auth = "ops:s3cret pass" if security else None
    paths = [
        ("GET", "/"),
        ("GET", "/_info"),
        ("GET", "/health"),
        ("GET", "/stats"),
        ("GET", "/metrics"),
        ("GET", "/upstreams"),
        ("POST", "/config/_reload"),
        ("POST", "/gateway/entry/web/_stop"),
        ("POST", "/gateway/entry/web/_start"),
    ]
    if security:
        for method, path in paths:
            status, headers, _ = call(admin, method, path)
            assert status == 401, path
            assert headers["WWW-Authenticate"].startswith("Basic ")
            assert call(admin, method, path, auth="ops:wrong")[0] == 401

    status, index = get_json(admin, "/", auth)
    assert status == 200
    assert {(e["method"], e["path"]) for e in index["endpoints"]} >= {
        ("GET", "/metrics"),
        ("POST", "/config/_reload"),
        ("POST", "/gateway/entry/{name}/_stop"),
    }

    status, info = get_json(admin, "/_info", auth)
    assert status == 200
    assert info["version"] and info["python"]["implementation"] in ("CPython", "PyPy")
    assert info["uptime_seconds"] >= 0
    (web,) = info["entries"]
    assert web["name"] == "web" and web["binding"] == "127.0.0.1:0"
    assert web["bound"] == f"127.0.0.1:{gateway.port('web')}"
    assert web["publish"] is None

    status, health = get_json(admin, "/health", auth)
    assert (status, health["status"]) == (200, "green"), health

    status, upstreams = get_json(admin, "/upstreams", auth)
    assert status == 200
    endpoints = upstreams["upstreams"]["api"]["endpoints"]
    assert [e["url"] for e in endpoints][1] == backend.url
    assert all("healthy" in e and "requests" in e for e in endpoints)

    status, stats = get_json(admin, "/stats", auth)
    assert status == 200 and stats["entries"]["web"]["listening"] is True

    status, headers, body = call(admin, "GET", "/metrics", auth)
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    assert b"infini_gateway_requests_in_flight" in body

    status, reloaded = get_json(admin, "/config/_reload", auth, method="POST")
    assert status == 200 and reloaded["reloaded"] is True
    assert reloaded["entries"]["kept"] == ["web"]

    status, stopped = get_json(admin, "/gateway/entry/web/_stop", auth, method="POST")
    assert status == 200 and stopped["listening"] is False
    with pytest.raises(OSError):
        call(("127.0.0.1", gateway.port("web")), "GET", "/")
    status, health = get_json(admin, "/health", auth)
    assert (status, health["status"]) == (503, "red")
    assert "no entry is listening" in [r["reason"] for r in health["reasons"]]

    status, started = get_json(admin, "/gateway/entry/web/_start", auth, method="POST")
    assert status == 200 and started["listening"] is True
    host, _, port = started["bound"].rpartition(":")
    assert call((host, int(port)), "GET", "/")[2] == b"hello"

    assert get_json(admin, "/nowhere", auth)[0] == 404
    assert get_json(admin, "/gateway/entry/nope/_stop", auth, method="POST")[0] == 404
    status, headers, _ = call(admin, "POST", "/metrics", auth)
    assert status == 405 and headers["Allow"] == "GET"


def samples(text):
    """{(name, frozenset(labels)): value} of a Prometheus text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(parsed, name, **labels):
    return parsed.get((name, frozenset(labels.items())), 0.0)


def test_metrics_count_the_requests_sent(gateways, backend):
    """
    /metrics parses with prometheus-client's parser and its counters match
    the requests sent: by entry, rule and status class, the duration
    histogram, the upstream's attempts, retries and failures by reason.
    """
    gateway, admin = start(gateways, backend, security=False)
    web = ("127.0.0.1", gateway.port("web"))
    conn = http.client.HTTPConnection(*web, timeout=10)
    sent = {"user": 7, "teapot": 3, "hello": 5, "api": 4}
    for kind, count in sent.items():
        for i in range(count):
            path = {
                "user": f"/user/u{i}",
                "teapot": "/teapot",
                "hello": f"/x{i}",
                "api": "/api/x",
            }[kind]
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            assert response.status == (418 if kind == "teapot" else 200), kind
    conn.close()

    status, _, body = call(admin, "GET", "/metrics")
    assert status == 200
    parsed = samples(body.decode())
    requests = "infini_gateway_requests_total"
    common = {"entry": "web", "router": "default"}
    assert (
        value(
            parsed, requests, rule="rules[0] GET /user/{name}", status="2xx", **common
        )
        == 7
    )
    assert (
        value(parsed, requests, rule="rules[1] GET /teapot", status="4xx", **common)
        == 3
    )
    assert value(parsed, requests, rule="default_flow", status="2xx", **common) == 5
    assert (
        value(parsed, requests, rule="rules[2] * /api/{rest:*}", status="2xx", **common)
        == 4
    )
    assert (
        value(parsed, "infini_gateway_request_duration_seconds_count", entry="web")
        == 19
    )
    assert value(parsed, "infini_gateway_requests_in_flight", entry="web") == 0
    assert value(parsed, "infini_gateway_connections_open", entry="web") == 0
    assert value(parsed, "infini_gateway_entry_listening", entry="web") == 1

    # Round robin over a dead and a live endpoint, one retry: 4 requests,
    # 2 of them first tried on the dead one.
    attempts = value(
        parsed, "infini_gateway_upstream_request_duration_seconds_count", upstream="api"
    )
    retries = value(parsed, "infini_gateway_upstream_retries_total", upstream="api")
    refused = value(
        parsed,
        "infini_gateway_upstream_failures_total",
        upstream="api",
        reason="connection refused",
    )
    assert attempts == 4 + retries
    assert retries == refused and 1 <= refused <= 4
    live = value(
        parsed,
        "infini_gateway_upstream_endpoint_requests_total",
        upstream="api",
        endpoint=backend.url,
    )
    assert live == 4
    (info,) = [dict(labels) for name, labels in parsed if name == "infini_gateway_info"]
    assert info["implementation"] in ("CPython", "PyPy")
    assert value(parsed, "infini_gateway_info", **info) == 1


def test_broken_configuration_changes_nothing(gateways, backend):
    """
    POST /config/_reload of an invalid file answers 400 with the problems,
    counts a failed reload, and the gateway keeps serving the old config.
    """
    gateway, admin = start(gateways, backend, security=False)
    web = ("127.0.0.1", gateway.port("web"))
    text = gateway.config_path.read_text()
    gateway.config_path.write_text(
        text.replace('hello"}', 'changed"}').replace(
            "default_flow: hello", "default_flow: nowhere"
        )
    )
    status, answer = get_json(admin, "/config/_reload", method="POST")
    assert status == 400 and answer["reloaded"] is False
    assert any("nowhere" in problem for problem in answer["problems"]), answer
    assert call(web, "GET", "/")[2] == b"hello"
    assert "configuration not reloaded" in gateway.log()
    parsed = samples(call(admin, "GET", "/metrics")[2].decode())
    assert value(parsed, "infini_gateway_config_reloads_total", result="failure") == 1
    assert value(parsed, "infini_gateway_config_last_reload_successful") == 0
    info = get_json(admin, "/_info")[1]
    assert info["last_reload"]["ok"] is False

    gateway.config_path.write_text(text.replace('message: "hello"', 'message: "again"'))
    status, answer = get_json(admin, "/config/_reload", method="POST")
    assert status == 200, answer
    assert call(web, "GET", "/")[2] == b"again"
