"""
The admin API's resource on a real twisted.web Site fed raw bytes: basic
auth, routing, health levels, reload answers.
"""

import base64
import json

from twisted.internet.testing import MemoryReactorClock

from infini_gateway import build_service
from infini_gateway.config import config_from_dict
from tests.unit._site import request

CONFIG = {
    "api": {"security": {"enabled": True, "username": "ops", "password": "pw"}},
    "entry": [{"name": "web", "network": {"binding": "127.0.0.1:8001"}}],
    "router": [{"name": "default", "default_flow": "hello"}],
    "flow": [{"name": "hello", "filter": [{"echo": {"message": "hello"}}]}],
    "upstream": [{"name": "api", "endpoints": ["http://127.0.0.1:9001"]}],
}


def admin(config=CONFIG):
    service = build_service(config, reactor=MemoryReactorClock())
    service.startService()
    return service


def call(service, method, path, auth="ops:pw"):
    headers = b""
    if auth is not None:
        headers = b"Authorization: Basic " + base64.b64encode(auth.encode()) + b"\r\n"
    raw = b"%s %s HTTP/1.1\r\nHost: x\r\n%sContent-Length: 0\r\n\r\n" % (
        method.encode(),
        path.encode(),
        headers,
    )
    exchange = request(service.admin.site, raw)
    document = None
    if exchange.header("content-type") == "application/json":
        document = json.loads(exchange.body)
    return exchange.status, document, exchange


def test_the_api_section_defaults_to_loopback_and_is_off_without_it():
    assert (
        config_from_dict({k: v for k, v in CONFIG.items() if k != "api"}).api.enabled
        is False
    )
    api = config_from_dict(dict(CONFIG, api={})).api
    assert api.enabled is True and api.network.binding == "127.0.0.1:2900"
    assert build_service({k: v for k, v in CONFIG.items() if k != "api"}).admin is None


def test_every_endpoint_asks_for_basic_auth():
    service = admin()
    for method, path in [
        ("GET", "/"),
        ("GET", "/metrics"),
        ("POST", "/config/_reload"),
    ]:
        status, _, exchange = call(service, method, path, auth=None)
        assert status == 401
        assert exchange.header("www-authenticate").startswith("Basic ")
        assert call(service, method, path, auth="ops:nope")[0] == 401
    assert call(service, "GET", "/")[0] == 200


def test_health_levels():
    """Green when all is well; yellow for an upstream without a healthy endpoint; red with no entry listening."""
    service = admin()
    assert call(service, "GET", "/health")[1]["status"] == "green"
    service.upstreams["api"].endpoints[0].healthy = False
    status, report, _ = call(service, "GET", "/health")
    assert (status, report["status"]) == (200, "yellow")
    assert report["reasons"] == [
        {"status": "yellow", "reason": "upstream api has no healthy endpoint"}
    ]
    assert call(service, "POST", "/gateway/entry/web/_stop")[1] == {
        "entry": "web",
        "listening": False,
    }
    status, report, _ = call(service, "GET", "/health")
    assert (status, report["status"]) == (503, "red")


def test_routing_answers():
    service = admin()
    assert call(service, "GET", "/nowhere")[0] == 404
    status, _, exchange = call(service, "GET", "/config/_reload")
    assert status == 405 and exchange.header("allow") == "POST"
    assert call(service, "POST", "/gateway/entry/nope/_start")[0] == 404
    # Built from a dict: there is no file to reload.
    status, document, _ = call(service, "POST", "/config/_reload")
    assert status == 409 and document["reloaded"] is False
    status, _, exchange = call(service, "GET", "/metrics")
    assert status == 200 and exchange.header("content-type").startswith("text/plain")


def test_upstreams_lists_every_endpoint():
    service = admin()
    _status, document, _ = call(service, "GET", "/upstreams")
    (endpoint,) = document["upstreams"]["api"]["endpoints"]
    assert endpoint["url"] == "http://127.0.0.1:9001"
    assert endpoint["healthy"] is True and endpoint["requests"] == 0
