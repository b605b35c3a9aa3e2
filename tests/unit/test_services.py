"""
Services compiled into router rules and flows (infini_gateway.services) and
the canary (infini_gateway.canary), on Twisted's fakes: a real Site over
the compiled router, fed raw requests, with the upstreams on a
MemoryReactorClock (a forwarded request shows as a connection attempt).
"""

import copy
import hashlib

import attrs
import pytest

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.web.server import Site

from infini_gateway import build_router, build_service, config_from_dict
from infini_gateway.canary import BUCKETS, SmoothSplit, VersionChooser, sticky_bucket
from infini_gateway.config.model import FilterSpec
from infini_gateway.services import (
    _ForwardedRequest,
    check_service_removal,
    merge_plugins,
    strip_prefix,
)
from tests.unit._site import request

V1_PORT, V2_PORT = 9001, 9002


def gateway(*services, entries=None, routers=None):
    """A configuration dict: an HTTP entry, a TLS entry, upstream v1, C{services}."""
    return {
        "entry": (
            entries
            if entries is not None
            else [
                {"name": "web", "network": {"binding": "127.0.0.1:8000"}},
                {
                    "name": "secure",
                    "network": {"binding": "127.0.0.1:8443"},
                    "tls": {"enabled": True},
                },
            ]
        ),
        "router": (
            routers
            if routers is not None
            else [
                {"name": "default", "rules": [{"pattern": "/own", "flow": "own"}]},
                {"name": "other"},
            ]
        ),
        "flow": [{"name": "own", "filter": [{"echo": {"message": "own"}}]}],
        "upstream": [{"name": "v1", "endpoints": [f"http://127.0.0.1:{V1_PORT}"]}],
        "service": list(services),
    }


def service(**overrides):
    base = {
        "name": "pets",
        "upstreams": [
            {"version": "default", "upstream": "v1"},
            {"version": "v2", "upstream": {"endpoints": [f"http://127.0.0.1:{V2_PORT}"]}},
        ],
        "routes": [{"name": "pets", "paths": ["/pets", "/pets/{id}"], "methods": ["GET", "POST"]}],
    }
    base.update(overrides)
    return base


def site_for(config, name="default"):
    reactor = MemoryReactorClock()
    router = build_router(config_from_dict(config), name=name, reactor=reactor)
    return Site(router, reactor=reactor), reactor, router


def raw(method="GET", path="/", host="x", headers=b"", body=b""):
    head = b"%s %s HTTP/1.1\r\nHost: %s\r\n" % (method.encode(), path.encode(), host.encode())
    if body or method in ("POST", "PUT"):
        head += b"Content-Length: %d\r\n" % len(body)
    return head + headers + b"\r\n" + body


def forwarded_to(reactor):
    """The ports of the upstream connections attempted so far."""
    return [port for _, port, *_ in reactor.tcpClients]


# Compilation


def test_routes_become_rules_of_their_routers():
    """Each published route is a rule (hosts, methods, prefix + paths) after the router's own."""
    config = config_from_dict(
        gateway(
            service(
                router=["default", "other"],
                hosts=["api.example.com", "*.example.org"],
                path_prefix="/v1/",
                routes=[
                    {"name": "pets", "paths": ["/pets", "/pets/{id}"], "methods": "GET"},
                    {"name": "off", "paths": ["/off"], "published": False},
                ],
            ),
            service(name="draft", published=False),
        )
    )
    built = build_service(config, MemoryReactorClock())
    for name in ["default", "other"]:
        rules = built.routers[name].config.rules
        assert rules[-1].patterns == ("/v1/pets", "/v1/pets/{id}")
        assert rules[-1].methods == ("GET",)
        assert rules[-1].hosts == ("api.example.com", "*.example.org")
        assert rules[-1].flows == ("service/pets/pets",)
    assert len(built.routers["default"].config.rules) == 2
    assert list(built.service_routing.flows) == ["service/pets/pets"]
    match = built.routers["default"].match("GET", "/v1/pets/7", "a.b.example.org")
    assert (match.flow.name, match.vars) == ("service/pets/pets", {"id": "7"})
    assert built.routers["default"].match("GET", "/v1/pets/7", "example.org") is None
    assert built.routers["default"].match("GET", "/v1/off", "api.example.com") is None
    # The configuration itself is not changed: the rules are added when routers are built.
    assert len(config.router("default").rules) == 1


def test_flow_steps_redirect_plugins_proxy():
    """An https-only route runs: https_redirect, plugins (the route's replacing), proxy."""
    config = config_from_dict(
        gateway(
            service(
                protocol="https",
                plugins=[
                    {"set_request_header": {"headers": ["X-A -> service"]}},
                    {"set_response_header": {"headers": ["X-B -> service"]}},
                ],
                routes=[
                    {
                        "name": "pets",
                        "paths": ["/pets"],
                        "plugins": [
                            {"basic_auth": {"valid_users": {"u": "p"}}},
                            {"set_request_header": {"headers": ["X-A -> route"]}},
                        ],
                    },
                    {"name": "plain", "paths": ["/plain"]},
                ],
            )
        )
    )
    built = build_service(config, MemoryReactorClock())
    flows = built.service_routing.flows
    assert [step[1] for step in flows["service/pets/pets"].steps] == [
        "https_redirect",
        "set_request_header",
        "set_response_header",
        "basic_auth",
        "proxy",
    ]
    assert flows["service/pets/pets"].steps[1][2].params["headers"] == ["X-A -> route"]
    # Service plugins are built once, shared by the routes.
    assert flows["service/pets/plain"].steps[2][2] is flows["service/pets/pets"].steps[2][2]


def test_merge_plugins_replaces_in_place_and_appends():
    def spec(name, tag):
        return FilterSpec(name, {"tag": tag})

    merged = merge_plugins(
        [spec("a", "s"), spec("b", "s"), spec("c", "s")],
        [spec("d", "r"), spec("b", "r1"), spec("b", "r2")],
    )
    assert [(origin, s.name, s.params["tag"]) for origin, s in merged] == [
        ("service", "a", "s"),
        ("route", "b", "r1"),
        ("route", "b", "r2"),
        ("service", "c", "s"),
        ("route", "d", "r"),
    ]


def test_unpublished_answers_like_an_unknown_path():
    """404 with the router's own body, or the router's default flow when it has one."""
    config = gateway(
        service(published=False),
        service(name="cats", routes=[{"paths": ["/cats"], "published": False}]),
    )
    site, reactor, _ = site_for(config)
    answer = request(site, raw(path="/pets"))
    assert (answer.status, answer.body) == (
        404,
        b'{"error": "no route", "method": "GET", "path": "/pets"}\n',
    )
    assert request(site, raw(path="/cats")).status == 404
    assert forwarded_to(reactor) == []

    config["router"][0]["default_flow"] = "own"
    site, _, _ = site_for(config)
    assert request(site, raw(path="/pets")).body == b"own"


def test_plain_service_forwards_to_the_version_in_use():
    site, reactor, _ = site_for(gateway(service()))
    request(site, raw(path="/pets/1"))
    assert forwarded_to(reactor) == [V1_PORT]
    site, reactor, _ = site_for(gateway(service(upstream_in_use="v2")))
    request(site, raw(path="/pets/1"))
    assert forwarded_to(reactor) == [V2_PORT]


def test_a_plugin_answering_stops_before_the_proxy():
    site, reactor, _ = site_for(
        gateway(service(plugins=[{"basic_auth": {"valid_users": {"u": "p"}}}]))
    )
    assert request(site, raw(path="/pets")).status == 401
    assert forwarded_to(reactor) == []


def test_plugins_refusing_their_parameters_are_load_errors():
    """A regular expression that does not compile, an upstream that does not exist."""
    from infini_gateway.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        config_from_dict(
            gateway(
                service(
                    plugins=[{"request_path_filter": {"must": {"regex": ["(("]}}}],
                    routes=[{"paths": ["/a"], "plugins": [{"proxy": {"upstream": "v3"}}]}],
                )
            )
        )
    assert sorted(caught.value.problems) == [
        "<dict>: service[0].plugins[0].request_path_filter: must.regex[0]: '((' is not a"
        " valid regular expression: missing ), unterminated subpattern at position 1",
        "<dict>: service[0].routes[0].plugins[0].proxy.upstream: expected the name of an"
        " upstream, got 'v3' (upstreams: v1, service/pets/v2)",
    ]


# HTTPS redirects


def test_https_only_redirects_301_for_get_and_head_308_otherwise():
    site, reactor, _ = site_for(
        gateway(service(protocol=["https"], routes=[{"paths": ["/pets/{id}"]}]))
    )
    for method, status in [
        ("GET", 301),
        ("HEAD", 301),
        ("POST", 308),
        ("PUT", 308),
        ("DELETE", 308),
    ]:
        answer = request(site, raw(method, "/pets/7?a=1&b=%20", host="Api.Example.com:8000"))
        assert answer.status == status, method
        assert answer.header("location") == "https://Api.Example.com:8443/pets/7?a=1&b=%20"
    assert forwarded_to(reactor) == []


def test_redirect_to_the_publish_address_or_port_443():
    entries = [
        {"name": "web", "network": {"binding": "127.0.0.1:8000"}},
        {
            "name": "off",
            "enabled": False,
            "network": {"binding": "127.0.0.1:7443"},
            "tls": {"enabled": True},
        },
        {
            "name": "secure",
            "network": {"binding": "0.0.0.0:8443", "publish": "gw.example.com:443"},
            "tls": {"enabled": True},
        },
    ]
    site, _, _ = site_for(gateway(service(protocol="https"), entries=entries))
    assert request(site, raw(path="/pets")).header("location") == "https://gw.example.com/pets"
    # No TLS entry serves the service's router: the request's host, port 443.
    site, _, _ = site_for(gateway(service(protocol="https", router="other")), name="other")
    answer = request(site, raw(path="/pets", host="[::1]:8000"))
    assert answer.header("location") == "https://[::1]/pets"
    # A Host header that is no host name: the address the request came to.
    answer = request(site, raw(path="/pets", host="evil.com/x"))
    assert answer.header("location") == "https://127.0.0.1/pets"


def test_the_redirect_names_the_port_bound():
    """A TLS entry on port 0: the redirect names the port it bound."""
    entries = [
        {"name": "web", "network": {"binding": "127.0.0.1:0"}},
        {"name": "secure", "network": {"binding": "127.0.0.1:0"}, "tls": {"enabled": True}},
    ]
    built = build_service(
        config_from_dict(gateway(service(protocol="https"), entries=entries)),
        MemoryReactorClock(),
    )

    class Bound:
        def getHost(self):
            return IPv4Address("TCP", "127.0.0.1", 40443)

    built.entries["secure"].port = Bound()
    site = Site(built.routers["default"], reactor=MemoryReactorClock())
    assert request(site, raw(path="/pets", host="h")).header("location") == "https://h:40443/pets"


def test_x_forwarded_proto_counts_from_trusted_proxies_only():
    site, reactor, _ = site_for(
        gateway(service(protocol="https", trusted_proxies=["10.0.0.0/8", "::1"]))
    )
    https = b"X-Forwarded-Proto: https\r\n"
    trusted = IPv4Address("TCP", "10.1.2.3", 5000)
    untrusted = IPv4Address("TCP", "192.168.1.1", 5000)
    assert request(site, raw(path="/pets", headers=https), peer=untrusted).status == 301
    assert (
        request(
            site, raw(path="/pets", headers=b"X-Forwarded-Proto: http\r\n"), peer=trusted
        ).status
        == 301
    )
    # The last value is the one the trusted proxy set.
    spoofed = b"X-Forwarded-Proto: https\r\nX-Forwarded-Proto: http\r\n"
    assert request(site, raw(path="/pets", headers=spoofed), peer=trusted).status == 301
    assert forwarded_to(reactor) == []
    answer = request(site, raw(path="/pets", headers=b"X-Forwarded-Proto: HTTPS\r\n"), peer=trusted)
    assert answer.status is None  # forwarded, waiting for the upstream
    assert forwarded_to(reactor) == [V1_PORT]


def test_a_service_on_both_protocols_never_redirects():
    site, reactor, _ = site_for(gateway(service(protocol=["http", "https"])))
    request(site, raw(path="/pets"))
    assert forwarded_to(reactor) == [V1_PORT]


# Path prefix


def test_strip_prefix():
    class Request:
        uri = b"/v1/pets/a%2Fb?x=/v1"
        prepath = []

    assert strip_prefix(Request(), 1) == b"/pets/a%2Fb?x=/v1"
    Request.uri = b"/v1"
    assert strip_prefix(Request(), 1) == b"/"
    Request.uri = b"/api/v1/v2/pets"
    Request.prepath = [b"api"]
    assert strip_prefix(Request(), 2) == b"/api/pets"
    Request.uri = b"http://h:80/v1/x?q"
    Request.prepath = []
    assert strip_prefix(Request(), 1) == b"/x?q"


def test_forwarded_request_reads_and_writes_the_clients():
    class Request:
        uri = b"/v1/pets"
        code = 200

    original = Request()
    forwarded = _ForwardedRequest(original, b"/pets")
    assert (forwarded.uri, forwarded.path, forwarded.code) == (b"/pets", b"/pets", 200)
    forwarded.code = 404
    forwarded.defaultContentType = None
    assert (original.code, original.defaultContentType, original.uri) == (404, None, b"/v1/pets")


def test_stripped_request_goes_upstream_and_the_trace_keeps_the_original():
    """The upstream is sent the path without the prefix; the router's context keeps it."""
    config = gateway(
        service(
            path_prefix="/v1",
            routes=[{"name": "pets", "paths": ["/pets/{id}"], "strip_path_prefix": True}],
        )
    )
    site, reactor, router = site_for(config)
    seen = []
    original = router.tracer

    class Tracer:
        def trace(self, ctx):
            seen.append(ctx)

    router.tracer = Tracer()
    exchange = request(site, raw(path="/v1/pets/7?q=1"))
    (connection,) = reactor.tcpClients
    protocol = connection[2].buildProtocol(None)
    transport = StringTransport()
    protocol.makeConnection(transport)
    sent = transport.value()
    assert sent.startswith(b"GET /pets/7?q=1 HTTP/1.1\r\n"), sent
    protocol.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    exchange.read()
    assert (exchange.status, exchange.body) == (200, b"ok")
    (ctx,) = seen
    assert ctx.request.uri == b"/v1/pets/7?q=1"
    assert (ctx.upstream_version, ctx.flow_name) == ("default", "service/pets/pets")
    router.tracer = original


# Canary


def test_smooth_split_is_exact_at_every_hundred():
    for percent in [0, 1, 10, 33, 50, 99, 100]:
        split = SmoothSplit(percent)
        hits = [split.next() for _ in range(1000)]
        assert sum(hits) == percent * 10
        for n in range(1, 1001):
            assert abs(sum(hits[:n]) - n * percent / 100) < 1
    assert [SmoothSplit(20).next() for _ in range(1)] == [False]
    split = SmoothSplit(20)
    assert [split.next() for _ in range(10)] == [False, False, False, False, True] * 2


def chooser(canary, **extra):
    config = config_from_dict(gateway(service(canary=canary, **extra)))
    return VersionChooser(config.services[0])


def choose(chooser, headers=b"", path="/pets", peer=None):
    site = Site(_Recorder(chooser), reactor=MemoryReactorClock())
    return request(site, raw(path=path, headers=headers), peer=peer).body.decode()


class _Recorder:
    """A Resource answering with the version the chooser picks."""

    isLeaf = True

    def __init__(self, chooser):
        self.chooser = chooser

    def render(self, req):
        from infini_gateway.context import RequestContext

        return self.chooser.choose(RequestContext(req, None)).encode()

    def getChildWithDefault(self, name, req):
        return self


def test_rules_are_exact_and_all_must_hold():
    c = chooser(
        {
            "version": "v2",
            "rules": [
                {"header": "X-Canary", "value": "yes"},
                {"query": "beta", "operator": "in", "value": ["1", "on"]},
                {"cookie": "group", "operator": "regex", "value": "^b"},
                {"header": "X-Old", "operator": "!=", "value": "yes"},
            ],
        }
    )
    good = b"X-Canary: yes\r\nCookie: a=1; group=beta\r\n"
    assert choose(c, good, "/pets?beta=on") == "v2"
    assert choose(c, good, "/pets?beta=1") == "v2"
    assert choose(c, good, "/pets?beta=2") == "default"
    assert choose(c, good, "/pets") == "default"
    assert choose(c, b"X-Canary: yess\r\nCookie: group=beta\r\n", "/pets?beta=1") == "default"
    assert choose(c, b"X-Canary: yes\r\nCookie: group=alpha\r\n", "/pets?beta=1") == "default"
    assert choose(c, good + b"X-Old: yes\r\n", "/pets?beta=1") == "default"
    assert choose(c, good + b"X-Old: no\r\n", "/pets?beta=1") == "v2"


def test_paused_and_finished():
    assert choose(chooser({"version": "v2", "percent": 100, "state": "paused"})) == "default"
    finished = chooser({"version": "v2", "percent": 0, "state": "finished"})
    assert {choose(finished) for _ in range(5)} == {"v2"}


def test_percent_without_sticky_follows_the_smooth_split():
    c = chooser({"version": "v2", "percent": 25})
    assert [choose(c) for _ in range(8)] == ["default"] * 3 + ["v2"] + ["default"] * 3 + ["v2"]


def test_sticky_users_keep_their_version_and_the_split_holds():
    c = chooser({"version": "v2", "percent": 30, "sticky": {"header": "X-User"}})
    placed = {}
    for n in range(600):
        user = f"user-{n % 200}"
        version = choose(c, b"X-User: %s\r\n" % user.encode())
        assert placed.setdefault(user, version) == version
    # Over many users the share follows percent (the hash is stable: no flakiness).
    salt = "pets\0v2"
    share = sum(sticky_bucket(salt, f"user-{n}") < 30 * BUCKETS // 100 for n in range(20000))
    assert abs(share / 200 - 30) < 1.5, share / 200
    # Without the header the request is counted in the smooth split.
    assert [choose(c) for _ in range(10)].count("v2") == 3


def test_sticky_by_cookie_and_raising_percent_only_moves_users_to_the_canary():
    low = chooser({"version": "v2", "percent": 10, "sticky": {"cookie": "uid"}})
    high = chooser({"version": "v2", "percent": 40, "sticky": {"cookie": "uid"}})
    for n in range(300):
        cookie = b"Cookie: uid=%d\r\n" % n
        if choose(low, cookie) == "v2":
            assert choose(high, cookie) == "v2"


def test_sticky_bucket_is_stable():
    """sha256-based: the same on every Python, process and run (not hash())."""
    assert sticky_bucket("pets\0v2", "alice") == sticky_bucket("pets\0v2", "alice")
    assert [sticky_bucket("s", u) for u in ["alice", "bob"]] == [
        int.from_bytes(hashlib.sha256(f"s\0{u}".encode()).digest()[:8], "big") % BUCKETS
        for u in ["alice", "bob"]
    ]


def test_canary_split_is_shared_by_the_routes_of_a_service():
    config = gateway(
        service(
            canary={"version": "v2", "percent": 50},
            routes=[{"name": "a", "paths": ["/a"]}, {"name": "b", "paths": ["/b"]}],
        )
    )
    site, reactor, _ = site_for(config)
    for path in ["/a", "/b", "/a", "/b"]:
        request(site, raw(path=path))
    assert forwarded_to(reactor) == [V1_PORT, V2_PORT, V1_PORT, V2_PORT]


# Removal at run time


def test_a_service_with_routes_cannot_be_removed():
    old = config_from_dict(
        gateway(
            service(),
            service(name="empty", routes=[]),
            service(name="cats", routes=[{"name": "a", "paths": ["/a"]}, {"paths": ["/b"]}]),
        )
    )
    kept_cats = copy.deepcopy(gateway(service(name="cats", routes=[])))
    new = config_from_dict(kept_cats)
    assert check_service_removal(old, new) == [
        "service 'pets' cannot be removed: it still has 1 route (pets);"
        " remove its routes first, then the service",
    ]
    assert check_service_removal(old, config_from_dict(gateway())) == [
        "service 'pets' cannot be removed: it still has 1 route (pets);"
        " remove its routes first, then the service",
        "service 'cats' cannot be removed: it still has 2 routes (a, routes[1]);"
        " remove its routes first, then the service",
    ]
    # Routes removed first, the service goes next; an unchanged set passes.
    assert check_service_removal(new, config_from_dict(gateway())) == []
    assert check_service_removal(old, old) == []
    unpublished = attrs.evolve(
        old, services=tuple(attrs.evolve(s, published=False) for s in old.services)
    )
    assert len(check_service_removal(unpublished, config_from_dict(gateway()))) == 2


def test_service_intentions_run_first_and_a_route_replaces_them():
    """
    The service's intentions deny a client without a certificate (the
    ``anonymous`` identity) before anything is forwarded; a route's own
    intentions replace the service's.
    """
    deny_anonymous = {"rules": [{"source": "anonymous", "action": "deny"}], "default": "allow"}
    allow_anonymous = {"rules": [{"source": "anonymous", "action": "allow"}]}
    config = gateway(
        service(
            intentions=deny_anonymous,
            routes=[
                {"name": "pets", "paths": ["/pets"]},
                {"name": "open", "paths": ["/open"], "intentions": allow_anonymous},
            ],
        )
    )
    built = config_from_dict(config).services[0]
    assert [spec.name for spec in built.plugins] == ["intentions"]
    assert [spec.name for spec in built.routes[1].plugins] == ["intentions"]

    site, reactor, _ = site_for(config)
    denied = request(site, raw(path="/pets"))
    assert denied.status == 403
    assert b"anonymous" in denied.body
    assert forwarded_to(reactor) == []
    request(site, raw(path="/open"))
    assert forwarded_to(reactor) == [V1_PORT]
