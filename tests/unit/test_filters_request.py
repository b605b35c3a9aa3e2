"""
The filters that look at or change the request: set_request_header,
basic_auth and dump.
"""

import json
from base64 import b64encode

import jsonschema
import pytest

from infini_gateway.filters import Filter, filter_class
from tests.unit._site import captured_logs, make_site, request


class SeenHeaders(Filter):
    """Test-only: records the request headers as later filters (the proxy) see them."""

    name = "seen_headers"

    def __init__(self):
        super().__init__({}, None)
        self.seen = []

    def filter(self, ctx):
        self.seen.append(
            {
                name.decode().lower(): [v.decode() for v in values]
                for name, values in ctx.request.requestHeaders.getAllRawHeaders()
            }
        )


def get(headers=b"", path=b"/"):
    return b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n"


def basic(user, password):
    return b"Authorization: Basic " + b64encode(f"{user}:{password}".encode()) + b"\r\n"


# set_request_header


def test_set_request_header_replaces_the_clients_values():
    seen = SeenHeaders()
    site = make_site(
        [
            (
                "set_request_header",
                {"headers": ["X-Env -> prod", "X-Two -> a", "x-two -> b"]},
            ),
            seen,
        ]
    )
    exchange = request(site, get(b"X-Env: client\r\nX-Env: again\r\nX-Keep: 1\r\n"))
    assert exchange.status == 200
    (headers,) = seen.seen
    assert headers["x-env"] == ["prod"]
    assert headers["x-two"] == ["a", "b"]
    assert headers["x-keep"] == ["1"]


def test_set_request_header_does_not_touch_the_response():
    exchange = request(
        make_site([("set_request_header", {"headers": ["X-Env -> prod"]})])
    )
    assert exchange.header("x-env") is None


# basic_auth

USERS = {"medcl": "passwd", "ünï": "pä:ss"}


def auth_site():
    seen = SeenHeaders()
    return make_site([("basic_auth", {"valid_users": USERS}), seen]), seen


@pytest.mark.parametrize("user,password", list(USERS.items()))
def test_basic_auth_lets_valid_users_on(user, password):
    site, seen = auth_site()
    exchange = request(site, get(basic(user, password)))
    assert exchange.status == 200
    assert len(seen.seen) == 1


@pytest.mark.parametrize(
    "header",
    [
        b"",
        basic("medcl", "wrong"),
        basic("medcl", "passwd "),
        basic("nobody", "passwd"),
        basic("", ""),
        b"Authorization: Bearer abc\r\n",
        b"Authorization: Basic !!!notbase64\r\n",
        b"Authorization: Basic " + b64encode(b"no colon") + b"\r\n",
        b"Authorization: Basic " + b64encode(b"medcl:\xff") + b"\r\n",
    ],
)
def test_basic_auth_challenges_everyone_else(header):
    site, seen = auth_site()
    exchange = request(site, get(header))
    assert exchange.status == 401
    assert (
        exchange.header("www-authenticate")
        == 'Basic realm="infini-gateway", charset="UTF-8"'
    )
    assert json.loads(exchange.body) == {
        "error": "unauthorized",
        "filter": "basic_auth",
        "flow": "test_flow",
    }
    assert seen.seen == []


def test_basic_auth_scheme_is_case_insensitive_and_realm_configurable():
    site = make_site([("basic_auth", {"valid_users": {"a": "b"}, "realm": "ops"})])
    ok = request(site, get(b"Authorization: basic " + b64encode(b"a:b") + b"\r\n"))
    assert ok.status == 200
    denied = request(site, get())
    assert denied.header("www-authenticate") == 'Basic realm="ops", charset="UTF-8"'


def test_basic_auth_validation():
    schema = filter_class("basic_auth").schema
    for bad in (
        {},
        {"valid_users": {}},
        {"valid_users": {"a:b": "c"}},
        {"valid_users": {"a": 1}},
        {"valid_users": {"a": "b"}, "realm": 'say "hi"'},
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, schema)
    cls = filter_class("basic_auth")
    with pytest.raises(ValueError, match="valid_users"):
        cls({}, None)
    with pytest.raises(ValueError, match="':'"):
        cls({"valid_users": {"a:b": "c"}}, None)
    with pytest.raises(ValueError, match="realm"):
        cls({"valid_users": {"a": "b"}, "realm": "a\\b"}, None)


# dump


def test_dump_logs_the_request_with_secrets_redacted_and_continues():
    site = make_site(
        [("dump", {"status_code": True, "response_header": True}), ("echo", {})]
    )
    raw = (
        b"POST /medcl/_search?from=1 HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Basic bWVkY2w6cGFzc3dk\r\nCookie: session=secret\r\n"
        b"Content-Length: 5\r\n\r\nhello"
    )
    with captured_logs() as events:
        exchange = request(site, raw)
    assert (exchange.status, exchange.body) == (200, b".")
    (event,) = [e for e in events if e.get("log_format", "").startswith("dump:")]
    assert event["method"] == "POST"
    assert event["uri"] == "/medcl/_search?from=1"
    assert event["client_ip"] == "127.0.0.1"
    assert event["body_size"] == 5
    assert event["status"] == 200
    headers = dict((name.lower(), value) for name, value in event["headers"])
    assert headers["authorization"] == "Basic <redacted>"
    assert headers["cookie"] == "<redacted>"
    assert headers["host"] == "x"
    assert "secret" not in repr(event) and "bWVkY2w6cGFzc3dk" not in repr(event)


def test_dump_leaves_the_body_readable_for_later_filters():
    class ReadBody(Filter):
        name = "read_body"

        def filter(self, ctx):
            ctx.response.body.append(ctx.request.content.read())

    site = make_site([("dump", {}), ReadBody({}, None)])
    raw = b"PUT / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
    with captured_logs():
        assert request(site, raw).body == b"abc"


def test_dump_without_request_headers():
    site = make_site([("dump", {"request_header": False})])
    with captured_logs() as events:
        request(site)
    (event,) = [e for e in events if e.get("log_format", "").startswith("dump:")]
    assert "headers" not in event and event["body_size"] == 0
