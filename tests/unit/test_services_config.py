"""
The service: section of gateway.yml: what it becomes (ServiceConfig values,
inline upstreams joining the upstream set) and every problem reported at
load time with the file, the line and the key path.
"""

import ipaddress
import textwrap

import pytest

from infini_gateway.config import ConfigError, load_config
from infini_gateway.config.model import CanaryRule, StickyKey, UpstreamVersion

BASE = """\
entry:
  - name: web
    network: {binding: "127.0.0.1:0"}
router:
  - name: default
    rules:
      - {pattern: ["/v1/status"], flow: [echo]}
  - name: internal
flow:
  - name: echo
    filter:
      - echo: {message: hi}
upstream:
  - name: pets_v1
    endpoints: ["http://127.0.0.1:9001"]
"""


@pytest.fixture
def load(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def load(services):
        """Load BASE followed by C{services} (a service: section)."""
        with open("gateway.yml", "w") as f:
            f.write(BASE + textwrap.dedent(services))
        return load_config("gateway.yml")

    return load


@pytest.fixture
def problems(load):
    def problems(text):
        with pytest.raises(ConfigError) as caught:
            load(text)
        return caught.value.problems

    return problems


def test_a_service_with_every_key(load):
    """Every key of the section, and the values it becomes."""
    config = load("""\
        service:
          - name: pets
            description: The pet store.
            published: true
            router: [default, internal]
            protocol: https
            hosts: [api.example.com, "*.example.org"]
            path_prefix: /v1
            trusted_proxies: [10.0.0.0/8, 192.168.1.1]
            plugins:
              - set_request_header: {headers: ["X-A -> 1"]}
              - drop:
            upstreams:
              - {version: default, upstream: pets_v1}
              - version: v2
                upstream:
                  endpoints: ["http://127.0.0.1:9002", {url: "http://127.0.0.1:9003", weight: 2}]
                  balancer: least_conn
                  retries: 0
            upstream_in_use: default
            canary:
              version: v2
              rules:
                - {header: X-Canary, value: "on"}
                - {query: beta, operator: in, value: ["1", 2]}
                - {cookie: group, operator: regex, value: "^b"}
                - {header: X-Old, operator: "!=", value: "yes"}
              state: paused
            routes:
              - name: pets
                paths: ["/pets/{id}"]
                methods: GET
                strip_path_prefix: true
                plugins:
                  - drop:
              - paths: /all
                published: false
        """)
    (service,) = config.services
    assert service.name == "pets"
    assert service.description == "The pet store."
    assert service.routers == ("default", "internal")
    assert service.protocols == ("https",)
    assert service.hosts == ("api.example.com", "*.example.org")
    assert service.path_prefix == "/v1"
    assert service.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.168.1.1/32"),
    )
    assert [spec.name for spec in service.plugins] == ["set_request_header", "drop"]
    assert service.plugins[1].params == {}
    assert service.plugins[0].where == "gateway.yml:26: service[0].plugins[0].set_request_header"
    assert service.upstreams == (
        UpstreamVersion("default", "pets_v1"),
        UpstreamVersion("v2", "service/pets/v2"),
    )
    inline = config.upstream("service/pets/v2")
    assert [e.url for e in inline.endpoints] == ["http://127.0.0.1:9002", "http://127.0.0.1:9003"]
    assert (inline.balancer, inline.retries, inline.endpoints[1].weight) == ("least_conn", 0, 2)
    canary = service.canary
    assert (canary.version, canary.state, canary.percent, canary.sticky) == (
        "v2",
        "paused",
        None,
        None,
    )
    assert canary.rules == (
        CanaryRule("header", "X-Canary", "==", ("on",)),
        CanaryRule("query", "beta", "in", ("1", "2")),
        CanaryRule("cookie", "group", "regex", ("^b",)),
        CanaryRule("header", "X-Old", "!=", ("yes",)),
    )
    assert service.version_in_use == "default"
    first, second = service.routes
    assert (first.name, first.paths, first.methods, first.strip_path_prefix) == (
        "pets",
        ("/pets/{id}",),
        ("GET",),
        True,
    )
    assert [spec.name for spec in first.plugins] == ["drop"]
    assert (second.name, second.paths, second.methods, second.published) == (
        "routes[1]",
        ("/all",),
        ("*",),
        False,
    )


def test_defaults(load):
    """Published, router default, both protocols, any host, version default, no canary."""
    config = load("""\
        service:
          - name: pets
            upstreams: [{version: default, upstream: pets_v1}]
        """)
    (service,) = config.services
    assert service.published is True
    assert service.routers == ("default",)
    assert service.protocols == ("http", "https")
    assert (service.hosts, service.path_prefix, service.routes) == ((), "", ())
    assert (service.upstream_in_use, service.canary) == ("default", None)
    assert [u.name for u in config.upstreams] == ["pets_v1"]


def test_finished_canary_switches_the_version_in_use(load):
    config = load("""\
        service:
          - name: pets
            upstreams:
              - {version: default, upstream: pets_v1}
              - {version: v2, upstream: pets_v1}
            canary: {version: v2, percent: 5, state: finished, sticky: {cookie: uid}}
        """)
    (service,) = config.services
    assert service.version_in_use == "v2"
    assert service.canary.sticky == StickyKey("cookie", "uid")


def test_references_and_names(problems):
    """Routers, upstreams and versions named must exist; names are unique."""
    assert (
        problems("""\
        service:
          - name: pets
            router: [default, extrenal]
            upstreams:
              - {version: default, upstream: pets_v2}
              - {version: default, upstream: pets_v1}
            routes:
              - {name: a, paths: ["/a"]}
              - {name: a, paths: ["/b"]}
          - name: pets
            upstreams: [{version: v1, upstream: pets_v1}]
        """)
        == [
            "gateway.yml:18: service[0].router[1]: expected the name of a router, got"
            " 'extrenal' (did you mean 'internal'? routers: default, internal)",
            "gateway.yml:20: service[0].upstreams[0].upstream: expected the name of an"
            " upstream, got 'pets_v2' (did you mean 'pets_v1'? upstreams: pets_v1)",
            "gateway.yml:21: service[0].upstreams[1].version: duplicate version 'default'"
            " (expected unique versions)",
            "gateway.yml:24: service[0].routes[1].name: duplicate route name 'a'"
            " (also routes[0]; expected unique names)",
            "gateway.yml:25: service[1]: expected upstream_in_use to name a version of"
            " upstreams, got 'default' (versions: v1)",
            "gateway.yml:25: service[1].name: duplicate service name 'pets'"
            " (also at line 17; expected unique names)",
        ]
    )


def test_canary_problems(problems):
    """percent xor rules; sticky with percent only; the canary's version exists."""
    assert (
        problems("""\
        service:
          - name: a
            upstreams: [{version: default, upstream: pets_v1}, {version: v2, upstream: pets_v1}]
            canary: {version: v3, percent: 10, rules: [{header: X, value: "1"}]}
          - name: b
            upstreams: [{version: default, upstream: pets_v1}, {version: v2, upstream: pets_v1}]
            canary:
              version: default
              sticky: {header: X-User}
              rules:
                - {header: X, cookie: Y, value: "1"}
                - {query: q, operator: in, value: "1"}
                - {query: q, operator: "==", value: ["1", "2"]}
                - {cookie: c, operator: regex, value: "(("}
                - {value: "1"}
        """)
        == [
            "gateway.yml:19: service[0].canary: expected either percent or rules (one of them)",
            "gateway.yml:19: service[0].canary.version: expected a version of the service's"
            " upstreams, got 'v3' (versions: default, v2)",
            "gateway.yml:23: service[1].canary.version: expected a version other than"
            " upstream_in_use ('default')",
            "gateway.yml:24: service[1].canary.sticky: expected sticky only with percent"
            " (rules already decide per request)",
            "gateway.yml:26: service[1].canary.rules[0]: expected one of header, query or"
            " cookie, got header, cookie",
            "gateway.yml:27: service[1].canary.rules[1].value: expected a list for in, got '1'",
            "gateway.yml:28: service[1].canary.rules[2].value: expected one value for ==,"
            " got a list",
            "gateway.yml:29: service[1].canary.rules[3].value: expected a regular expression,"
            " got '((' (missing ), unterminated subpattern at position 1)",
            "gateway.yml:30: service[1].canary.rules[4]: expected one of header, query or cookie",
        ]
    )


def test_structure_problems(problems):
    """The schema's words: out of range, unknown keys and values."""
    found = problems("""\
        service:
          - name: c
            protocol: [http, ftp]
            upstreams: [{version: default, upstream: pets_v1}]
            canary: {version: default, percent: 101, state: done}
            routes: [{paths: ["pets"], method: GET}]
        """)
    assert found == [
        "gateway.yml:18: service[0].protocol[1]: expected http or https, got 'ftp'",
        "gateway.yml:20: service[0].canary.version: expected a version other than"
        " upstream_in_use ('default')",
        "gateway.yml:20: service[0].canary.percent: expected at most 100, got 101",
        "gateway.yml:20: service[0].canary.state: expected one of in_progress, paused,"
        " finished, got 'done'",
        "gateway.yml:21: service[0].routes[0].paths[0]: expected a path pattern"
        " beginning with /, got 'pets'",
        "gateway.yml:21: service[0].routes[0].method: unknown key 'method' (did you mean"
        " 'methods'? expected one of: name, description, paths, methods,"
        " strip_path_prefix, published, plugins, intentions)",
    ]


def test_hosts_prefix_proxies_and_inline_upstreams(problems):
    assert (
        problems("""\
        service:
          - name: pets
            hosts: ["api.example.com:80", "a.*.example.org"]
            path_prefix: /{tenant}
            trusted_proxies: [10.0.0.300]
            upstreams:
              - version: default
                upstream: {endpoints: ["ftp://127.0.0.1:21"], pass_host: rewrite}
        """)
        == [
            "gateway.yml:18: service[0].hosts[0]: expected a host without a port (hosts"
            " match any port), got 'api.example.com:80'",
            "gateway.yml:18: service[0].hosts[1]: expected a host name or a leftmost"
            " wildcard such as *.example.org, got 'a.*.example.org'",
            "gateway.yml:19: service[0].path_prefix: expected a literal path prefix"
            " (no {variables}), got '/{tenant}'",
            "gateway.yml:20: service[0].trusted_proxies[0]: expected an IP address or CIDR"
            " block such as 10.0.0.0/8, got '10.0.0.300'",
            "gateway.yml:23: service[0].upstreams[0].upstream.endpoints[0]: expected an"
            " http:// or https:// URL, got 'ftp://127.0.0.1:21'",
            "gateway.yml:23: service[0].upstreams[0].upstream.pass_host: expected"
            " upstream_host too (the Host to send)",
        ]
    )


def test_routes_conflicting_with_rules_and_other_services(problems):
    """A route overlapping a router rule or another service's route names both."""
    assert (
        problems("""\
        service:
          - name: pets
            path_prefix: /v1
            upstreams: [{version: default, upstream: pets_v1}]
            routes:
              - {name: status, paths: ["/status"]}
              - {name: pet, paths: ["/pets/{id}"]}
          - name: pets2
            path_prefix: /v1/
            upstreams: [{version: default, upstream: pets_v1}]
            routes:
              - {name: pet, paths: ["/pets/{name}"]}
              - {name: hidden, paths: ["/pets/{other}"], published: false}
          - name: other_host
            hosts: [api.example.com]
            path_prefix: /v1
            upstreams: [{version: default, upstream: pets_v1}]
            routes:
              - {paths: ["/pets/{id}"]}
        """)
        == [
            "gateway.yml:21: service[0].routes[0].paths[0]: '/v1/status' overlaps"
            " '/v1/status' of router[0].rules[0] (line 7) for any method in router 'default'",
            "gateway.yml:27: service[1].routes[0].paths[0]: '/v1/pets/{name}' overlaps"
            " '/v1/pets/{id}' of service[0].routes[1] (line 22) for any method in"
            " router 'default'",
        ]
    )


def test_plugin_templates_use_captured_variables(problems):
    """$[[name]] in a plugin must be captured by the paths of every route running it."""
    assert (
        problems("""\
        service:
          - name: pets
            path_prefix: /v1
            plugins:
              - set_request_header: {headers: ["X-Pet -> $[[id]]"]}
            upstreams: [{version: default, upstream: pets_v1}]
            routes:
              - {name: one, paths: ["/pets/{id}"]}
              - {name: all, paths: ["/pets"]}
              - name: replaced
                paths: ["/cats"]
                plugins:
                  - set_request_header: {headers: ["X-Cat -> $[[cat]]"]}
        """)
        == [
            "gateway.yml:20: service[0].plugins[0].set_request_header.headers[0]:"
            " $[[id]]: expected a variable captured by the paths of route 'all'"
            " (captured: none)",
            "gateway.yml:28: service[0].routes[2].plugins[0].set_request_header.headers[0]:"
            " $[[cat]]: expected a variable captured by the paths of route 'replaced'"
            " (captured: none)",
        ]
    )


def test_unknown_plugin_is_named(problems):
    found = problems("""\
        service:
          - name: pets
            plugins: [{set_request_headr: {}}]
            upstreams: [{version: default, upstream: pets_v1}]
        """)
    assert len(found) == 1
    assert found[0].startswith(
        "gateway.yml:18: service[0].plugins[0].set_request_headr: unknown key"
        " 'set_request_headr' (did you mean 'set_request_header'?"
    )


def test_default_router_must_exist(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gateway.yml").write_text(textwrap.dedent("""\
            router:
              - name: edge
            upstream:
              - {name: a, endpoints: ["http://127.0.0.1:9001"]}
            service:
              - name: pets
                upstreams: [{version: default, upstream: a}]
            """))
    with pytest.raises(ConfigError) as caught:
        load_config("gateway.yml")
    assert caught.value.problems == [
        "gateway.yml:6: service[0]: expected a router key, or a router named 'default'"
        " to serve this service (routers: edge)"
    ]


def test_inline_upstream_name_taken(tmp_path, monkeypatch):
    """An inline upstream's generated name may not be an upstream's name already."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gateway.yml").write_text(textwrap.dedent("""\
            router:
              - name: default
            upstream:
              - {name: service/pets/v2, endpoints: ["http://127.0.0.1:9001"]}
            service:
              - name: pets
                upstreams:
                  - {version: default, upstream: service/pets/v2}
                  - {version: v2, upstream: {endpoints: ["http://127.0.0.1:9002"]}}
            """))
    with pytest.raises(ConfigError) as caught:
        load_config("gateway.yml")
    assert caught.value.problems == [
        "gateway.yml:9: service[0].upstreams[1].upstream: an upstream named"
        " 'service/pets/v2' is already defined (the name this inline upstream gets)"
    ]
