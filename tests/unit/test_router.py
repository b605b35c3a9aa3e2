"""
The router on a real twisted.web Site fed raw bytes: patterns, hosts and
methods pick the flow; captured variables reach the filters' templates; an
unsafe path is refused before routing.
"""

import json

import pytest

from twisted.internet.testing import MemoryReactorClock
from twisted.web.server import Site

from infini_gateway.config.model import RouterConfig, Rule
from infini_gateway.router import Router
from tests.unit._site import make_flow, request


def echo_flow(name, message):
    return make_flow([("echo", {"message": message})], name=name)


def make_router(rules, default=None, flows=(), tracer=None):
    flows = {flow.name: flow for flow in flows}
    config = RouterConfig(name="test", rules=tuple(rules), default_flow=default)
    return Router(config, flows, MemoryReactorClock(), tracer=tracer)


def get(router, path, method="GET", host="gateway.test", headers=b""):
    site = Site(router, reactor=router.reactor)
    raw = b"%s %s HTTP/1.1\r\nHost: %s\r\n%s\r\n" % (
        method.encode(),
        path.encode("latin-1"),
        host.encode(),
        headers,
    )
    return request(site, raw)


@pytest.fixture
def router():
    flows = [
        echo_flow("user", "user $[[user]]"),
        echo_flow("admin", "admin $[[user]]"),
        echo_flow("src", "file $[[filepath]]"),
        echo_flow("fallback", "fallback"),
        echo_flow("api", "api $[[_ctx.request.host]]"),
        echo_flow("tenant", "tenant"),
    ]
    rules = [
        Rule(methods=("GET",), patterns=("/user/{user}",), flows=("user",)),
        Rule(methods=("*",), patterns=("/user/{user}_admin",), flows=("admin",)),
        Rule(methods=("*",), patterns=("/src/{filepath:*}",), flows=("src",)),
        Rule(methods=("*",), patterns=("/",), flows=("api",), hosts=("api.example.com",)),
        Rule(methods=("*",), patterns=("/",), flows=("tenant",), hosts=("*.example.org",)),
    ]
    return make_router(rules, default="fallback", flows=flows)


@pytest.mark.parametrize(
    "path, body",
    [
        ("/user/gordon", b"user gordon"),
        ("/user/you", b"user you"),
        ("/user/gordon/profile", b"fallback"),
        ("/user/", b"fallback"),
        ("/user/gordon_admin", b"admin gordon"),
        ("/user/gordon_admin/profile", b"fallback"),
        ("/src/", b"file "),
        ("/src/somefile.go", b"file somefile.go"),
        ("/src/subdir/somefile.go", b"file subdir/somefile.go"),
        ("/src", b"fallback"),
        ("/USER/gordon", b"fallback"),
    ],
)
def test_seed_examples_through_a_site(router, path, body):
    """The seed's examples, with the captured value echoed back by a template."""
    exchange = get(router, path)
    assert (exchange.status, exchange.body) == (200, body)


def test_method_not_in_rule_goes_to_default(router):
    assert get(router, "/user/gordon", method="POST").body == b"fallback"


def test_values_are_percent_decoded_per_segment():
    """%2F stays inside its segment: it matches {name}, not {a}/{b}."""
    router = make_router(
        [
            Rule(methods=("*",), patterns=("/files/{name}",), flows=("one",)),
            Rule(methods=("*",), patterns=("/files/{a}/{b}",), flows=("two",)),
        ],
        flows=[echo_flow("one", "one $[[name]]"), echo_flow("two", "two $[[a]] $[[b]]")],
    )
    assert get(router, "/files/a%2Fb").body == b"one a/b"
    assert get(router, "/files/a/b").body == b"two a b"
    assert get(router, "/files/caf%C3%A9").body == "one café".encode()


@pytest.mark.parametrize(
    "host, body",
    [
        ("api.example.com", b"api api.example.com"),
        ("API.Example.COM:8080", b"api API.Example.COM:8080"),
        ("a.example.org", b"tenant"),
        ("a.b.example.org", b"tenant"),
        ("example.org", b"fallback"),
        ("other.test", b"fallback"),
    ],
)
def test_hosts(router, host, body):
    """Exact host, then wildcard (any depth, not the domain itself), then no host."""
    assert get(router, "/", host=host).body == body


@pytest.mark.parametrize(
    "path",
    [
        "/src/../etc/passwd",
        "/src/%2e%2e/etc/passwd",
        "/src/%2E%2E",
        "/./src/x",
        "/src/%2e/x",
        "/user/a%00b",
        "/..",
    ],
)
def test_dot_segments_and_nul_are_refused(router, path):
    """A . or .. segment (even percent-encoded) or a NUL: 400 JSON, never routed."""
    exchange = get(router, path)
    assert exchange.status == 400
    assert exchange.header("content-type") == "application/json"
    assert json.loads(exchange.body)["error"] == "bad path"


def test_dots_inside_names_are_fine(router):
    assert get(router, "/src/a..b/.hidden/...").body == b"file a..b/.hidden/..."


def test_no_rule_and_no_default_is_404_json():
    router = make_router([Rule(methods=("*",), patterns=("/a",), flows=("a",))], flows=[echo_flow("a", "a")])
    exchange = get(router, "/b")
    assert exchange.status == 404
    assert json.loads(exchange.body) == {"error": "no route", "method": "GET", "path": "/b"}


def test_context_names_the_rule_and_flow():
    seen = []

    class Tracer:
        def trace(self, ctx):
            seen.append((ctx.rule, ctx.flow_name, ctx.vars))

    router = make_router(
        [
            Rule(methods=("GET", "HEAD"), patterns=("/x", "/user/{user}"), flows=("a", "b")),
        ],
        default="a",
        flows=[echo_flow("a", "a"), echo_flow("b", "b")],
        tracer=Tracer(),
    )
    assert get(router, "/user/gordon").body == b"ab"
    get(router, "/nothing")
    assert seen == [
        ("rules[0] GET,HEAD /user/{user}", "a+b", {"user": "gordon"}),
        (None, "a", {}),
    ]


def test_match_returns_flow_vars_and_rule(router):
    found = router.match("GET", "/user/gordon")
    assert (found.flow.name, found.vars, found.rule) == (
        "user",
        {"user": "gordon"},
        "rules[0] GET /user/{user}",
    )
    flow, vars, rule = router.match("GET", ["src", "a", "b"])
    assert (flow.name, vars) == ("src", {"filepath": "a/b"})
    assert router.match("GET", "/", host="x.example.org").flow.name == "tenant"
    assert router.match("GET", "/nowhere") == (router.default_flow, {}, None)


def test_conflicting_rules_are_refused_when_built_directly():
    with pytest.raises(ValueError) as raised:
        make_router(
            [
                Rule(methods=("GET",), patterns=("/user/{id}",), flows=("a",)),
                Rule(methods=("GET",), patterns=("/user/{name}",), flows=("a",)),
            ],
            flows=[echo_flow("a", "a")],
        )
    assert "rules[1] GET /user/{name} overlaps rules[0] GET /user/{id} for GET" in str(raised.value)


def test_templates_see_the_request():
    flow = make_flow(
        [
            ("set_response_header", {"headers": ["X-Method -> $[[_ctx.request.method]]"]}),
            (
                "echo",
                {
                    "message": "$[[_ctx.request.path]] $[[_ctx.request.uri]]"
                    " $[[_ctx.request.query_args.q]] $[[_ctx.request.header.X-Token]]"
                    " $[[_ctx.request.client_ip]] $[[_ctx.remote_ip]] $[[id]]"
                },
            ),
        ],
        name="t",
    )
    router = make_router(
        [Rule(methods=("*",), patterns=("/item/{id:[0-9]+}",), flows=("t",))], flows=[flow]
    )
    exchange = get(router, "/item/42?q=hello&q=x", method="PUT", headers=b"x-token: abc\r\n")
    assert exchange.body == b"/item/42 /item/42?q=hello&q=x hello abc 127.0.0.1 127.0.0.1 42"
    assert exchange.header("x-method") == "PUT"


def test_header_templates_cannot_inject_lines():
    """A decoded CR LF in a captured value is percent-encoded in headers and Location."""
    flows = [
        make_flow([("set_response_header", {"headers": ["X-User -> $[[user]]"]})], name="h"),
        make_flow([("redirect", {"uri": "https://example.com/u/$[[user]]"})], name="r"),
    ]
    router = make_router(
        [
            Rule(methods=("*",), patterns=("/h/{user}",), flows=("h",)),
            Rule(methods=("*",), patterns=("/r/{user}",), flows=("r",)),
        ],
        flows=flows,
    )
    exchange = get(router, "/h/a%0d%0aSet-Cookie:%20x")
    assert exchange.header("x-user") == "a%0D%0ASet-Cookie: x"
    assert exchange.header("set-cookie") is None
    exchange = get(router, "/r/a%20b%0d%0a%C3%A9")
    assert exchange.status == 302
    assert exchange.header("location") == "https://example.com/u/a%20b%0D%0A%C3%A9"


def test_filter_failure_is_still_500_json():
    from infini_gateway.filters import Filter

    class Boom(Filter):
        name = "boom"

        def filter(self, ctx):
            raise RuntimeError("boom")

    router = make_router(
        [Rule(methods=("*",), patterns=("/{x}",), flows=("b",))],
        flows=[make_flow([Boom({}, None)], name="b")],
    )
    exchange = get(router, "/anything")
    assert exchange.status == 500
    assert json.loads(exchange.body) == {"error": "filter failed", "filter": "boom", "flow": "b"}
