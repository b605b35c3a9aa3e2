"""
$[[...]] templates: compiled once, plain text rendered as it is, unknown
variables refused when the filter is built.
"""

import pytest

from twisted.internet.address import IPv4Address
from twisted.web.test.requesthelper import DummyRequest

from infini_gateway.context import RequestContext
from infini_gateway.template import (
    Template,
    escape_header,
    escape_uri,
    path_variables,
    variables,
)
from tests.unit._site import make_filter


def context(vars=None):
    request = DummyRequest([b"user", b"gordon"])
    request.method = b"POST"
    request.uri = b"/user/gordon?q=1&q=2&x=%C3%A9"
    request.path = b"/user/gordon"
    request.args = {b"q": [b"1", b"2"], b"x": ["é".encode()]}
    request.requestHeaders.setRawHeaders(b"host", [b"api.example.com:8000"])
    request.requestHeaders.setRawHeaders(b"x-token", [b"abc"])
    request.client = IPv4Address("TCP", "10.1.2.3", 5555)
    request.isSecure = lambda: False  # DummyRequest lacks it
    return RequestContext(request, None, vars)


def test_plain_text_is_static():
    """Without $[[ the template is its text: nothing to compute per request."""
    template = Template("just text, even ]] and $[ alone")
    assert template.static == "just text, even ]] and $[ alone"
    assert template.render(None) == template.static


@pytest.mark.parametrize(
    "text, rendered",
    [
        ("$[[_ctx.request.path]]", "/user/gordon"),
        ("$[[_ctx.request.method]]", "POST"),
        ("$[[_ctx.request.host]]", "api.example.com:8000"),
        ("$[[_ctx.request.uri]]", "/user/gordon?q=1&q=2&x=%C3%A9"),
        ("$[[_ctx.request.query_args.q]]", "1"),
        ("$[[_ctx.request.query_args.x]]", "é"),
        ("$[[_ctx.request.query_args.missing]]", ""),
        ("$[[_ctx.request.header.X-Token]]", "abc"),
        ("$[[_ctx.request.header.x-token]]", "abc"),
        ("$[[_ctx.request.header.Missing]]", ""),
        ("$[[_ctx.request.client_ip]]", "10.1.2.3"),
        ("$[[_ctx.remote_ip]]", "10.1.2.3"),
        ("$[[_ctx.remote_addr]]", "10.1.2.3:5555"),
        ("$[[_ctx.tls]]", "false"),
        ("$[[user]]", "gordon"),
        ("$[[ user ]]", "gordon"),
        ("$[[other]]", ""),
        ("<$[[user]]|$[[_ctx.request.method]]>", "<gordon|POST>"),
    ],
)
def test_variables(text, rendered):
    template = Template(text)
    assert template.static is None
    assert template.render(context({"user": "gordon"})) == rendered


@pytest.mark.parametrize(
    "text, message",
    [
        ("$[[_ctx.request.pth]]", "unknown variable $[[_ctx.request.pth]]"),
        ("$[[_sys.hostname]]", "unknown variable"),
        ("$[[_ctx]]", "unknown variable"),
        ("$[[a.b]]", "unknown variable"),
        ("$[[]]", "unknown variable"),
        ("$[[_ctx.request.header.]]", "expected a name after"),
        ("hello $[[user", "$[[ without ]]"),
    ],
)
def test_errors(text, message):
    with pytest.raises(ValueError) as raised:
        Template(text)
    assert message in str(raised.value)


def test_listing_variables():
    text = "$[[a]]-$[[_ctx.request.path]]-$[[ b ]]"
    assert variables(text) == ["a", "_ctx.request.path", "b"]
    assert path_variables(text) == ["a", "b"]


def test_escapes():
    assert escape_header("a\r\nb\tc") == "a%0D%0Ab\tc"
    assert escape_uri("a b/é?x=1&y\r") == "a%20b/%C3%A9?x=1&y%0D"


@pytest.mark.parametrize(
    "name, params",
    [
        ("echo", {"message": "$[[_ctx.nope]]"}),
        ("echo", {"messages": ["ok", "$[[_ctx.nope]]"]}),
        ("set_response", {"body": "$[[_ctx.nope]]"}),
        ("set_request_header", {"headers": ["X-A -> $[[_ctx.nope]]"]}),
        ("set_response_header", {"headers": ["X-A -> $[[_ctx.nope]]"]}),
        ("redirect", {"uri": "/$[[_ctx.nope]]"}),
    ],
)
def test_filters_refuse_unknown_variables(name, params):
    """The ValueError becomes a ConfigError naming the filter (see flow.build_flows)."""
    from infini_gateway.config import ConfigError

    with pytest.raises(ConfigError) as raised:
        make_filter(name, params)
    assert "unknown variable $[[_ctx.nope]]" in str(raised.value)


def test_filters_render_templates():
    ctx = context({"user": "gordon"})
    make_filter("echo", {"message": "hi $[[user]] ", "repeat": 2}).filter(ctx)
    assert ctx.response.body == [b"hi gordon hi gordon "]
    make_filter("set_response", {"body": "body $[[user]]"}).filter(ctx)
    assert ctx.response.body == [b"body gordon"]
    make_filter("set_response_header", {"headers": ["X-U -> $[[user]]", "X-U -> b"]}).filter(ctx)
    assert [v for n, v in ctx.response.headers if n == b"X-U"] == [b"gordon", b"b"]
    make_filter("set_request_header", {"headers": ["X-M -> $[[_ctx.request.method]]"]}).filter(ctx)
    assert ctx.request.requestHeaders.getRawHeaders(b"x-m") == [b"POST"]
    make_filter("redirect", {"uri": "/u/$[[user]]", "code": 301}).filter(ctx)
    assert (ctx.response.status, ctx.response.get_header(b"Location")) == (301, b"/u/gordon")


def test_static_filters_keep_precomputed_bytes():
    echo = make_filter("echo", {"message": "plain"})
    assert echo._body == b"plain"
