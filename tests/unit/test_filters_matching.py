"""
The request_*_filter filters: INFINI Gateway's must / must_not / should
rules and include / exclude, on path, method, headers and client address.
"""

import json

import jsonschema
import pytest

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

from infini_gateway.filters import Filter, filter_class
from infini_gateway.filters.request_path_filter import normal_path
from tests.unit._site import make_site, request


class Record(Filter):
    """Test-only: records that it ran."""

    name = "record"

    def __init__(self):
        super().__init__({}, None)
        self.ran = 0

    def filter(self, ctx):
        self.ran += 1


def send(name, params, path=b"/", method=b"GET", headers=b"", peer=None):
    """Send one request through the filter; (status, body document or None, ran on)."""
    record = Record()
    site = make_site([(name, params), record])
    raw = method + b" " + path + b" HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n"
    exchange = request(site, raw, peer=peer)
    document = json.loads(exchange.body) if exchange.body else None
    return exchange.status, document, record.ran == 1


def passes(name, params, **kwargs):
    status, document, ran = send(name, params, **kwargs)
    assert (status == 200) == ran, (status, document)
    return ran


def schema_rejects(name, params):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(params, filter_class(name).schema)


# the answer to a refused request


def test_refused_request_gets_403_json_naming_the_filter_and_stops():
    status, document, ran = send(
        "request_path_filter", {"must_not": {"prefix": ["/admin"]}}, path=b"/admin/x"
    )
    assert (status, ran) == (403, False)
    assert document == {
        "error": "request denied",
        "filter": "request_path_filter",
        "flow": "test_flow",
    }


def test_status_and_message_are_configurable():
    status, document, _ = send(
        "request_method_filter",
        {"exclude": ["DELETE"], "status": 405, "message": 'no "deletes"'},
        method=b"DELETE",
    )
    assert status == 405
    assert document["error"] == 'no "deletes"'


def test_only_deny_is_supported_as_action():
    jsonschema.validate({"action": "deny"}, filter_class("request_path_filter").schema)
    schema_rejects("request_path_filter", {"action": "redirect_flow", "flow": "x"})


def test_no_rules_let_everything_on():
    for name in (
        "request_path_filter",
        "request_method_filter",
        "request_header_filter",
        "request_client_ip_filter",
    ):
        assert passes(name, {})


# must / must_not / should on the path


@pytest.mark.parametrize(
    "rules,path,expected",
    [
        ({"must": {"prefix": ["/medcl"]}}, b"/medcl/_search", True),
        ({"must": {"prefix": ["/medcl"]}}, b"/other", False),
        # every must condition holds, even two of one kind
        ({"must": {"prefix": ["/m"], "suffix": ["_count"]}}, b"/m/_count", True),
        ({"must": {"prefix": ["/m"], "suffix": ["_count"]}}, b"/m/_search", False),
        ({"must": {"suffix": ["_count", "_refresh"]}}, b"/i/_count", False),
        ({"must": {"contain": ["_search"]}}, b"/a/_search/x", True),
        ({"must": {"regex": ["^/m[\\w]+dcl"]}}, b"/meeedcl/x", True),
        ({"must": {"regex": ["^/m[\\w]+dcl"]}}, b"/x/medcl", False),
        ({"must": {"regex": ["dcl"]}}, b"/x/medcl", True),  # searched, not anchored
        ({"must": {"wildcard": ["/*/_refresh"]}}, b"/a/b/_refresh", True),
        ({"must": {"wildcard": ["/*/_refresh"]}}, b"/a/_refresh/x", False),
        ({"must": {"wildcard": ["/i?/x"]}}, b"/i1/x", True),
        ({"must": {"wildcard": ["/i?/x"]}}, b"/i12/x", False),
        ({"must": {"wildcard": ["/a.b"]}}, b"/axb", False),
        # no must_not condition may hold
        (
            {"must_not": {"prefix": ["/.kibana", "/_security"]}},
            b"/_security/user",
            False,
        ),
        ({"must_not": {"prefix": ["/.kibana", "/_security"]}}, b"/index/_doc", True),
        ({"must_not": {"suffix": ["_refresh"]}}, b"/i/_refresh", False),
        # one should condition at least holds
        ({"should": {"prefix": ["/a"], "contain": ["_search"]}}, b"/b/_search", True),
        ({"should": {"prefix": ["/a"], "contain": ["_search"]}}, b"/a/x", True),
        ({"should": {"prefix": ["/a"], "contain": ["_search"]}}, b"/b/x", False),
        # all three together
        (
            {
                "must": {"prefix": ["/api"]},
                "must_not": {"contain": ["internal"]},
                "should": {"suffix": [".json", ".xml"]},
            },
            b"/api/x.json",
            True,
        ),
        (
            {
                "must": {"prefix": ["/api"]},
                "must_not": {"contain": ["internal"]},
                "should": {"suffix": [".json", ".xml"]},
            },
            b"/api/internal.json",
            False,
        ),
        (
            {
                "must": {"prefix": ["/api"]},
                "must_not": {"contain": ["internal"]},
                "should": {"suffix": [".json", ".xml"]},
            },
            b"/api/x.html",
            False,
        ),
    ],
)
def test_path_rules(rules, path, expected):
    assert passes("request_path_filter", rules, path=path) is expected


def test_path_rules_ignore_the_query_string():
    rules = {"must_not": {"suffix": ["_refresh"]}}
    assert not passes("request_path_filter", rules, path=b"/i/_refresh?x=1")
    assert passes(
        "request_path_filter", {"must": {"suffix": ["/i"]}}, path=b"/i?q=_refresh"
    )


@pytest.mark.parametrize(
    "path", [b"/%61dmin/x", b"/x/../admin", b"//admin", b"/./admin", b"/x/%2e%2e/admin"]
)
def test_path_rules_see_through_encoding_and_dot_segments(path):
    assert not passes(
        "request_path_filter", {"must_not": {"prefix": ["/admin"]}}, path=path
    )


@pytest.mark.parametrize(
    "raw,normal",
    [
        ("/", "/"),
        ("", "/"),
        ("/a/b/", "/a/b/"),
        ("/a/./b", "/a/b"),
        ("/a/../../b", "/b"),
        ("/a/..", "/"),
        ("/a/b/..", "/a/"),
        ("/a%20b", "/a b"),
    ],
)
def test_normal_path(raw, normal):
    assert normal_path(raw) == normal


def test_bad_regex_is_a_configuration_error():
    with pytest.raises(ValueError, match=r"must_not\.regex\[1\]: '\(' is not a valid"):
        filter_class("request_path_filter")({"must_not": {"regex": ["ok", "("]}}, None)


def test_path_schema():
    for bad in (
        {"must": {"prefix": "/not-a-list"}},
        {"must": {"prefx": ["/typo"]}},
        {"must": {}},
        {"must": {"prefix": []}},
        {"include": ["/a"]},
        {"status": 99},
    ):
        schema_rejects("request_path_filter", bad)


# request_method_filter


@pytest.mark.parametrize(
    "rules,method,expected",
    [
        ({"exclude": ["PUT", "POST"]}, b"POST", False),
        ({"exclude": ["PUT", "POST"]}, b"GET", True),
        ({"include": ["GET", "HEAD"]}, b"HEAD", True),
        ({"include": ["GET", "HEAD"]}, b"DELETE", False),
        ({"include": ["get"]}, b"GET", True),  # configured names are upper-cased
        ({"include": ["GET", "POST"], "exclude": ["POST"]}, b"POST", False),
        ({"must_not": {"prefix": ["P"]}}, b"PATCH", False),
        ({"should": {"regex": ["^(GET|HEAD)$"]}, "include": ["GET"]}, b"HEAD", False),
        ({"should": {"regex": ["^(GET|HEAD)$"]}, "include": ["GET"]}, b"GET", True),
    ],
)
def test_method_rules(rules, method, expected):
    assert passes("request_method_filter", rules, method=method) is expected


def test_method_schema():
    schema_rejects("request_method_filter", {"include": ["GET POST"]})
    schema_rejects("request_method_filter", {"include": "GET"})


# request_header_filter


@pytest.mark.parametrize(
    "rules,headers,expected",
    [
        # INFINI's example: YAML reads "TRACE: true" as a boolean
        ({"include": [{"TRACE": True}]}, b"Trace: true\r\n", True),
        ({"include": [{"TRACE": True}]}, b"Trace: false\r\n", False),
        ({"include": [{"TRACE": True}]}, b"", False),
        ({"include": [{"X-Version": 2}]}, b"X-Version: 2\r\n", True),
        ({"exclude": [{"User-Agent": "bad-bot"}]}, b"User-Agent: bad-bot\r\n", False),
        ({"exclude": [{"User-Agent": "bad-bot"}]}, b"User-Agent: bad-bot/2\r\n", True),
        ({"exclude": [{"User-Agent": "bad-bot"}]}, b"", True),
        # a missing header is not an empty one
        ({"exclude": [{"X-Empty": ""}]}, b"", True),
        ({"exclude": [{"X-Empty": ""}]}, b"X-Empty: \r\n", False),
        # any value of a repeated header
        ({"include": [{"X-Tag": "b"}]}, b"X-Tag: a\r\nX-Tag: b\r\n", True),
        (
            {"must": {"prefix": [{"User-Agent": "curl/"}]}},
            b"User-Agent: curl/8\r\n",
            True,
        ),
        (
            {"must": {"prefix": [{"User-Agent": "curl/"}]}},
            b"User-Agent: wget\r\n",
            False,
        ),
        ({"must": {"prefix": [{"User-Agent": "curl/"}]}}, b"", False),
        (
            {"must": {"regex": [{"X-Id": "^[0-9]+$", "X-Env": "^prod$"}]}},
            b"X-Id: 42\r\nX-Env: prod\r\n",
            True,
        ),
        (
            {"must": {"regex": [{"X-Id": "^[0-9]+$", "X-Env": "^prod$"}]}},
            b"X-Id: 42\r\nX-Env: dev\r\n",
            False,
        ),
        (
            {"must_not": {"contain": [{"Cookie": "admin"}]}},
            b"Cookie: role=admin\r\n",
            False,
        ),
        (
            {"should": {"suffix": [{"Host": ".example.com"}, {"X-Internal": "1"}]}},
            b"X-Internal: 1\r\n",
            True,
        ),
    ],
)
def test_header_rules(rules, headers, expected):
    assert passes("request_header_filter", rules, headers=headers) is expected


def test_header_schema_and_constructor():
    schema_rejects("request_header_filter", {"include": [{}]})
    schema_rejects("request_header_filter", {"include": [{"Bad Name": "x"}]})
    schema_rejects("request_header_filter", {"include": [{"X": ["list"]}]})
    schema_rejects("request_header_filter", {"include": ["X: y"]})
    with pytest.raises(ValueError, match=r"should\.regex\[0\]"):
        filter_class("request_header_filter")({"should": {"regex": [{"X": "["}]}}, None)


# request_client_ip_filter


def v4(host):
    return IPv4Address("TCP", host, 50000)


def v6(host):
    return IPv6Address("TCP", host, 50000)


@pytest.mark.parametrize(
    "rules,peer,expected",
    [
        ({"exclude": ["192.168.3.67"]}, v4("192.168.3.67"), False),
        ({"exclude": ["192.168.3.67"]}, v4("192.168.3.68"), True),
        ({"exclude": ["10.0.0.0/8"]}, v4("10.1.2.3"), False),
        ({"include": ["10.0.0.0/8", "127.0.0.1"]}, v4("127.0.0.1"), True),
        ({"include": ["10.0.0.0/8", "127.0.0.1"]}, v4("192.168.0.1"), False),
        # IPv4-mapped IPv6 peers are matched as IPv4
        ({"exclude": ["192.168.3.67"]}, v6("::ffff:192.168.3.67"), False),
        ({"include": ["10.0.0.0/8"]}, v6("::ffff:10.0.0.1"), True),
        # addresses, not strings
        ({"exclude": ["0:0:0:0:0:0:0:1"]}, v6("::1"), False),
        ({"include": ["2001:db8::/32"]}, v6("2001:db8::5"), True),
        ({"include": ["2001:db8::/32"]}, v4("10.0.0.1"), False),
        (
            {"must": {"cidr": ["10.0.0.0/8"]}, "must_not": {"cidr": ["10.9.0.0/16"]}},
            v4("10.1.0.1"),
            True,
        ),
        (
            {"must": {"cidr": ["10.0.0.0/8"]}, "must_not": {"cidr": ["10.9.0.0/16"]}},
            v4("10.9.0.1"),
            False,
        ),
        (
            {"should": {"prefix": ["192.168."], "cidr": ["172.16.0.0/12"]}},
            v4("172.20.0.1"),
            True,
        ),
        (
            {"should": {"prefix": ["192.168."], "cidr": ["172.16.0.0/12"]}},
            v4("192.168.9.9"),
            True,
        ),
        (
            {"should": {"prefix": ["192.168."], "cidr": ["172.16.0.0/12"]}},
            v4("8.8.8.8"),
            False,
        ),
        ({"must_not": {"regex": ["\\.1$"]}}, v4("10.0.0.1"), False),
    ],
)
def test_client_ip_rules(rules, peer, expected):
    assert passes("request_client_ip_filter", rules, peer=peer) is expected


def test_client_ip_filter_fails_closed_on_peers_without_an_address():
    peer = UNIXAddress(b"/tmp/gateway.sock")
    assert not passes("request_client_ip_filter", {"exclude": ["10.0.0.1"]}, peer=peer)
    assert passes("request_client_ip_filter", {}, peer=peer)


@pytest.mark.parametrize(
    "params,where",
    [
        ({"include": ["10.0.0.300"]}, r"include\[0\]"),
        ({"exclude": ["127.0.0.1", "10.0.0.1/8"]}, r"exclude\[1\].*host bits"),
        ({"must": {"cidr": ["nope"]}}, r"must\.cidr\[0\]"),
    ],
)
def test_client_ip_addresses_are_checked(params, where):
    with pytest.raises(ValueError, match=where):
        filter_class("request_client_ip_filter")(params, None)
