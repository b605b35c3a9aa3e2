"""The headers of forwarded requests and relayed responses."""

import attrs

from twisted.web.http_headers import Headers

from infini_gateway.config.model import EndpointConfig, UpstreamConfig
from infini_gateway.upstream.balancer import EndpointState
from infini_gateway.upstream.headers import (
    connection_tokens,
    host_value,
    is_upgrade,
    request_headers,
    response_headers,
)

UPSTREAM = UpstreamConfig(name="api", endpoints=(EndpointConfig("http://10.0.0.5:9001"),))
ENDPOINT = EndpointState.from_url("http://10.0.0.5:9001")


def headers(*pairs):
    result = Headers()
    for name, value in pairs:
        result.addRawHeader(name, value)
    return result


def test_hop_by_hop_and_connection_named_headers_are_dropped():
    """Connection, Keep-Alive, TE, Upgrade... and what Connection names never go upstream."""
    source = headers(
        (b"Host", b"front"),
        (b"Connection", b"keep-alive, X-Private"),
        (b"Connection", b"X-Other"),
        (b"Keep-Alive", b"timeout=5"),
        (b"TE", b"trailers"),
        (b"Trailer", b"X-T"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Upgrade", b"h2c"),
        (b"Proxy-Authorization", b"Basic x"),
        (b"Proxy-Connection", b"keep-alive"),
        (b"X-Private", b"1"),
        (b"X-Other", b"2"),
        (b"Content-Length", b"10"),
        (b"Expect", b"100-continue"),
        (b"X-Kept", b"yes"),
    )
    out = request_headers(source, UPSTREAM, ENDPOINT, "192.0.2.1", secure=False)
    names = {name.lower() for name, _ in out.getAllRawHeaders()}
    assert names == {
        b"host",
        b"x-kept",
        b"x-forwarded-for",
        b"x-real-ip",
        b"x-forwarded-proto",
        b"x-forwarded-host",
    }


def test_forwarded_headers():
    """X-Forwarded-For is appended to; Proto, Host and X-Real-IP are set."""
    source = headers(
        (b"Host", b"api.example"),
        (b"X-Forwarded-For", b"203.0.113.9"),
        (b"X-Forwarded-Proto", b"http"),
        (b"X-Real-IP", b"1.2.3.4"),
    )
    out = request_headers(source, UPSTREAM, ENDPOINT, "192.0.2.1", secure=True)
    assert out.getRawHeaders(b"x-forwarded-for") == [b"203.0.113.9, 192.0.2.1"]
    assert out.getRawHeaders(b"x-forwarded-proto") == [b"https"]
    assert out.getRawHeaders(b"x-forwarded-host") == [b"api.example"]
    assert out.getRawHeaders(b"x-real-ip") == [b"192.0.2.1"]


def test_repeated_headers_are_kept_in_order():
    source = headers((b"Host", b"h"), (b"Accept", b"a"), (b"Accept", b"b"))
    out = request_headers(source, UPSTREAM, ENDPOINT, "", secure=False)
    assert out.getRawHeaders(b"accept") == [b"a", b"b"]
    assert not out.hasHeader(b"x-forwarded-for")


def test_pass_host_modes():
    """pass: the client's Host; node: the endpoint's; rewrite: upstream_host."""
    source = headers((b"Host", b"front.example"))
    assert request_headers(source, UPSTREAM, ENDPOINT, "", False).getRawHeaders(
        b"host"
    ) == [b"front.example"]
    node = attrs.evolve(UPSTREAM, pass_host="node")
    assert request_headers(source, node, ENDPOINT, "", False).getRawHeaders(b"host") == [
        b"10.0.0.5:9001"
    ]
    rewrite = attrs.evolve(UPSTREAM, pass_host="rewrite", upstream_host="internal.svc")
    assert request_headers(source, rewrite, ENDPOINT, "", False).getRawHeaders(
        b"host"
    ) == [b"internal.svc"]
    # No Host from the client (HTTP/1.0): the endpoint's.
    assert request_headers(Headers(), UPSTREAM, ENDPOINT, "", False).getRawHeaders(
        b"host"
    ) == [b"10.0.0.5:9001"]


def test_host_value_leaves_out_default_ports_and_brackets_ipv6():
    assert host_value(EndpointState.from_url("https://example.org")) == b"example.org"
    assert host_value(EndpointState.from_url("http://[::1]:8080")) == b"[::1]:8080"


def test_configured_request_headers_replace_the_clients():
    """An Elasticsearch cluster's Authorization replaces the client's."""
    config = attrs.evolve(UPSTREAM, request_headers=(("Authorization", "Basic abc"),))
    source = headers((b"Authorization", b"Bearer client"))
    out = request_headers(source, config, ENDPOINT, "", False)
    assert out.getRawHeaders(b"authorization") == [b"Basic abc"]


def test_upgrade_requests_keep_upgrade():
    source = headers((b"Connection", b"Upgrade"), (b"Upgrade", b"websocket"))
    assert is_upgrade(source)
    assert not is_upgrade(headers((b"Upgrade", b"websocket")))
    out = request_headers(source, UPSTREAM, ENDPOINT, "", False, upgrade=True)
    assert out.getRawHeaders(b"connection") == [b"Upgrade"]
    assert out.getRawHeaders(b"upgrade") == [b"websocket"]


def test_response_headers_copy_end_to_end_ones_over_the_defaults():
    """Several Set-Cookie survive; hop-by-hop go; upstream values replace defaults."""
    upstream = headers(
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
        (b"Server", b"backend"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Proxy-Authenticate", b"Basic"),
        (b"Content-Length", b"3"),
    )
    target = headers((b"Server", b"TwistedWeb"), (b"Date", b"today"))
    response_headers(upstream, target)
    assert target.getRawHeaders(b"set-cookie") == [b"a=1", b"b=2"]
    assert target.getRawHeaders(b"server") == [b"backend"]
    assert target.getRawHeaders(b"date") == [b"today"]
    assert not target.hasHeader(b"keep-alive")
    assert not target.hasHeader(b"proxy-authenticate")
    assert not target.hasHeader(b"content-length")


def test_connection_tokens():
    assert connection_tokens(headers((b"Connection", b" Keep-Alive ,X-A,"))) == {
        b"keep-alive",
        b"x-a",
    }
