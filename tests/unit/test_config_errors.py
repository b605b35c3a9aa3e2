"""
Every kind of mistake in gateway.yml gets one message naming the file, the
line, the key path and what was expected.
"""

import textwrap

import pytest

from infini_gateway import filters
from infini_gateway.config import ConfigError, load_config
from infini_gateway.filters import Filter, filter_class, filter_names


@pytest.fixture
def problems(tmp_path, monkeypatch):
    """Load a gateway.yml written from text; return the problems reported."""
    monkeypatch.chdir(tmp_path)

    def problems(text):
        with open("gateway.yml", "w") as f:
            f.write(textwrap.dedent(text))
        with pytest.raises(ConfigError) as caught:
            load_config("gateway.yml")
        assert str(caught.value) == "\n".join(caught.value.problems)
        return caught.value.problems

    return problems


# Reading the file


def test_missing_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_config("gateway.yml")
    assert caught.value.problems == [
        "gateway.yml: cannot read the file: No such file or directory"
    ]


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "---\n"])
def test_empty_file(problems, text):
    assert problems(text) == [
        "gateway.yml: the file is empty"
        " (expected a mapping of top-level keys: path, entry, router, flow)"
    ]


@pytest.mark.parametrize(
    "text, got",
    [("- a\n- b\n", "a list"), ("just text\n", "'just text'"), ("3\n", "3")],
)
def test_top_level_not_a_mapping(problems, text, got):
    assert problems(text) == [
        "gateway.yml:1: expected a mapping of top-level keys"
        f" (path, entry, router, flow), got {got}"
    ]


def test_yaml_syntax_error(problems):
    """The line comes from PyYAML's mark."""
    assert (
        problems(
            """\
        router:
          - name: r
        entry:
          - name: a
            network: binding: 127.0.0.1:80
        """
        )
        == ["gateway.yml:5: invalid YAML: mapping values are not allowed here"]
    )


def test_yaml_tab(problems):
    assert problems("router:\n  - name: r\n\trules: []\n") == [
        "gateway.yml:3: invalid YAML: found character '\\t' that cannot start any token"
        " (while scanning for the next token)"
    ]


def test_duplicate_key(problems):
    """PyYAML would keep the last value silently."""
    assert (
        problems(
            """\
        router:
          - name: r
            default_flow: f
            default_flow: g
        flow:
          - name: f
          - name: g
        """
        )
        == [
            "gateway.yml:4: router[0].default_flow: duplicate key 'default_flow'"
            " (also at line 3; expected each key once)"
        ]
    )


def test_merge_keys_are_not_duplicates(tmp_path, monkeypatch):
    """A key overriding one merged in with << is not a duplicate."""
    monkeypatch.chdir(tmp_path)
    with open("gateway.yml", "w") as f:
        f.write(
            textwrap.dedent(
                """\
                router:
                  - &base {name: base, default_flow: f}
                  - <<: *base
                    name: other
                flow:
                  - name: f
                """
            )
        )
    config = load_config("gateway.yml")
    assert [r.name for r in config.routers] == ["base", "other"]
    assert config.router("other").default_flow == "f"


# Structure: unknown keys, types, required keys, ranges


def test_unknown_key_with_suggestion(problems):
    assert (
        problems(
            """\
        entry:
          - name: a
            network:
              bindng: 0.0.0.0:8000
        router:
          - name: default
        """
        )
        == [
            "gateway.yml:4: entry[0].network.bindng: unknown key 'bindng' (did you mean"
            " 'binding'? expected one of: binding, host, port, publish, reuse_port,"
            " skip_occupied_port)"
        ]
    )


def test_unknown_top_level_key(problems):
    assert (
        problems(
            """\
        flow: []
        entries: []
        xyzzy: 1
        """
        )
        == [
            "gateway.yml:2: entries: unknown key 'entries' (did you mean 'entry'?"
            " expected one of: path, entry, router, flow, upstream, elasticsearch,"
            " floating_ip, service, api, configs, shutdown_timeout)",
            "gateway.yml:3: xyzzy: unknown key 'xyzzy'"
            " (expected one of: path, entry, router, flow, upstream, elasticsearch,"
            " floating_ip, service, api, configs, shutdown_timeout)",
        ]
    )


def test_wrong_types(problems):
    assert (
        problems(
            """\
        entry:
          - name: a
            enabled: 1
            max_concurrency: abc
            network: {binding: 0.0.0.0:8000}
        router: {name: default}
        flow:
          - name: 5
        """
        )
        == [
            "gateway.yml:3: entry[0].enabled: expected true or false, got 1",
            "gateway.yml:4: entry[0].max_concurrency: expected integer, got 'abc'",
            "gateway.yml:6: router: expected a list, got a mapping",
            "gateway.yml:8: flow[0].name: expected string, got 5",
        ]
    )


def test_ranges(problems):
    assert (
        problems(
            """\
        entry:
          - name: a
            max_concurrency: 0
            network: {host: 127.0.0.1, port: 70000}
        router: [{name: default}]
        """
        )
        == [
            "gateway.yml:3: entry[0].max_concurrency: expected at least 1, got 0",
            "gateway.yml:4: entry[0].network.port: expected at most 65535, got 70000",
        ]
    )


def test_required_keys(problems):
    assert (
        problems(
            """\
        entry:
          - router: default
        router:
          - default_flow: f
        flow:
          - filter: []
          - name: f
        """
        )
        == [
            "gateway.yml:2: entry[0]: missing required key 'name'",
            "gateway.yml:2: entry[0]: missing required key 'network'",
            "gateway.yml:4: router[0]: missing required key 'name'",
            "gateway.yml:6: flow[0]: missing required key 'name'",
        ]
    )


# Durations and addresses


def test_bad_durations(problems):
    assert (
        problems(
            """\
        entry:
          - name: a
            idle_timeout: 3 parsecs
            network: {binding: 127.0.0.1:1}
          - name: b
            idle_timeout: 0s
            network: {binding: 127.0.0.1:2}
          - name: c
            idle_timeout: [1s]
            network: {binding: 127.0.0.1:3}
        router: [{name: default}]
        """
        )
        == [
            "gateway.yml:3: entry[0].idle_timeout: expected a duration such as 500ms,"
            " 3s or 1m, got '3 parsecs'",
            "gateway.yml:6: entry[1].idle_timeout: expected a duration greater than zero,"
            " got '0s'",
            "gateway.yml:9: entry[2].idle_timeout: expected a duration such as 500ms,"
            " 3s or 1m, got a list",
        ]
    )


def test_binding_not_host_port(problems):
    assert (
        problems(
            """\
        # The gateway's listeners.
        entry:
          - name: es
            router: r
            network:
              binding: 127.0.0.1:9200

          # The second one, for bulk
          # requests, on its own port.
          - name: bulk
            router: r
            max_concurrency: 100
            network:
              binding: "8000"
        router:
          - name: r
        """
        )
        == ["gateway.yml:14: entry[1].network.binding: expected HOST:PORT, got '8000'"]
    )


def test_bad_addresses(problems):
    assert (
        problems(
            """\
        entry:
          - name: a
            network: {binding: "::1:8000"}
          - name: b
            network: {binding: "127.0.0.1:65536"}
          - name: c
            network: {binding: "bad_host:80"}
          - name: d
            network: {host: "not a host", port: 80}
          - name: e
            network: {host: "::1", port: 80, publish: "10.0.0.1"}
          - name: f
            network: {binding: 8000}
        router: [{name: default}]
        """
        )
        == [
            "gateway.yml:3: entry[0].network.binding: expected an IPv6 address in brackets,"
            " such as [::1]:8000, got '::1:8000'",
            "gateway.yml:5: entry[1].network.binding: expected a port from 0 to 65535"
            " (0: any free port), got '127.0.0.1:65536'",
            "gateway.yml:7: entry[2].network.binding: expected an IP address or a host name,"
            " got 'bad_host'",
            "gateway.yml:9: entry[3].network.host: expected an IP address or a host name,"
            " got 'not a host'",
            "gateway.yml:11: entry[4].network.publish: expected HOST:PORT, got '10.0.0.1'",
            "gateway.yml:13: entry[5].network.binding: expected HOST:PORT, got 8000",
        ]
    )


def test_binding_with_host_or_port(problems):
    assert (
        problems(
            """\
        entry:
          - name: a
            network:
              binding: 127.0.0.1:80
              port: 81
        router: [{name: default}]
        """
        )
        == [
            "gateway.yml:5: entry[0].network.port: expected either binding,"
            " or host and port, not both"
        ]
    )


def test_neither_binding_nor_port(problems):
    assert (
        problems(
            """\
        entry:
          - name: a
            network:
              reuse_port: true
          - name: b
            network:
              host: 127.0.0.1
        router: [{name: default}]
        """
        )
        == [
            "gateway.yml:3: entry[0].network: expected binding (HOST:PORT), or host and port",
            "gateway.yml:7: entry[1].network.host: expected port together with host",
        ]
    )


def test_reuse_port_and_skip_occupied_port(problems):
    assert (
        problems(
            """\
        entry:
          - name: a
            network:
              binding: 127.0.0.1:80
              reuse_port: true
              skip_occupied_port: true
        router: [{name: default}]
        """
        )
        == [
            "gateway.yml:6: entry[0].network.skip_occupied_port: expected reuse_port and"
            " skip_occupied_port not both true (a shared port is never skipped as occupied)"
        ]
    )


def test_cert_without_key_and_key_without_cert(problems):
    assert (
        problems(
            """\
        entry:
          - name: a
            network: {binding: 127.0.0.1:443}
            tls:
              enabled: true
              cert_file: cert.pem
          - name: b
            network: {binding: 127.0.0.1:444}
            tls: {key_file: key.pem}
        router: [{name: default}]
        """
        )
        == [
            "gateway.yml:6: entry[0].tls.cert_file: expected key_file too"
            " (the certificate's private key)",
            "gateway.yml:9: entry[1].tls.key_file: expected cert_file too (the key's certificate)",
        ]
    )


# Names and references


def test_duplicate_names(problems):
    """Both lines are named: the message is at the second, and points at the first."""
    assert (
        problems(
            """\
        entry:
          - name: a
            network: {binding: 127.0.0.1:80}
          - name: a
            network: {binding: 127.0.0.1:81}
        router:
          - name: default
          - name: default
        flow:
          - name: f
          - name: f
        """
        )
        == [
            "gateway.yml:4: entry[1].name: duplicate entry name 'a'"
            " (also at line 2; expected unique names)",
            "gateway.yml:8: router[1].name: duplicate router name 'default'"
            " (also at line 7; expected unique names)",
            "gateway.yml:11: flow[1].name: duplicate flow name 'f'"
            " (also at line 10; expected unique names)",
        ]
    )


def test_dangling_references(problems):
    assert (
        problems(
            """\
        entry:
          - name: a
            router: my_routr
            network: {binding: 127.0.0.1:80}
          - name: b
            network: {binding: 127.0.0.1:81}
        router:
          - name: my_router
            default_flow: default_flw
            tracing_flow: logging
            rules:
              - pattern: /
                flow: [default_flow, nope]
              - pattern: /x
                flow: gone
        flow:
          - name: default_flow
        """
        )
        == [
            "gateway.yml:3: entry[0].router: expected the name of a router, got 'my_routr'"
            " (did you mean 'my_router'? routers: my_router)",
            "gateway.yml:5: entry[1]: expected a router key, or a router named 'default'"
            " for this entry to use (routers: my_router)",
            "gateway.yml:9: router[0].default_flow: expected the name of a flow, got"
            " 'default_flw' (did you mean 'default_flow'? flows: default_flow)",
            "gateway.yml:10: router[0].tracing_flow: expected the name of a flow,"
            " got 'logging' (flows: default_flow)",
            "gateway.yml:13: router[0].rules[0].flow[1]: expected the name of a flow,"
            " got 'nope' (flows: default_flow)",
            "gateway.yml:15: router[0].rules[1].flow: expected the name of a flow,"
            " got 'gone' (flows: default_flow)",
        ]
    )


def test_reference_with_nothing_defined(problems):
    assert (
        problems(
            """\
        router:
          - name: r
            default_flow: f
        """
        )
        == [
            "gateway.yml:3: router[0].default_flow: expected the name of a flow, got 'f'"
            " (no flows are defined)"
        ]
    )


# Rules


def test_methods(problems):
    methods = "GET, HEAD, POST, PUT, PATCH, DELETE, CONNECT, OPTIONS, TRACE or *"
    assert (
        problems(
            """\
        router:
          - name: r
            rules:
              - method: [PUT, POSTT]
                pattern: /a
                flow: f
              - method: get
                pattern: /b
                flow: f
              - method: 5
                pattern: /c
                flow: f
              - method: []
                pattern: /d
                flow: f
        flow: [{name: f}]
        """
        )
        == [
            f"gateway.yml:4: router[0].rules[0].method[1]: expected an HTTP method ({methods}),"
            " got 'POSTT' (did you mean 'POST'?)",
            f"gateway.yml:7: router[0].rules[1].method: expected an HTTP method ({methods}),"
            " got 'get' (did you mean 'GET'?)",
            "gateway.yml:10: router[0].rules[2].method: expected an HTTP method or a list"
            " of them, got 5",
            "gateway.yml:13: router[0].rules[3].method: expected a non-empty list, got a list",
        ]
    )


def test_patterns_begin_with_a_slash(problems):
    assert (
        problems(
            """\
        router:
          - name: r
            rules:
              - pattern: ["/_bulk", "{index}/_bulk"]
                flow: f
              - pattern: _search
                flow: f
        flow: [{name: f}]
        """
        )
        == [
            "gateway.yml:4: router[0].rules[0].pattern[1]: expected a path pattern"
            " beginning with /, got '{index}/_bulk'",
            "gateway.yml:6: router[0].rules[1].pattern: expected a path pattern"
            " beginning with /, got '_search'",
        ]
    )


# Filters


def test_unknown_filter(problems):
    valid = ", ".join(filter_names())
    assert (
        problems(
            """\
        flow:
          - name: f
            filter:
              - echo: {message: hi}
              - ecoh: {message: hi}
              - zzzzzz:
        """
        )
        == [
            "gateway.yml:5: flow[0].filter[1].ecoh: unknown filter 'ecoh'"
            f" (did you mean 'echo'? valid filters: {valid})",
            "gateway.yml:6: flow[0].filter[2].zzzzzz: unknown filter 'zzzzzz'"
            f" (valid filters: {valid})",
        ]
    )


def test_bad_filter_parameters(problems):
    """Parameters are checked against the filter's own schema, at their own line."""
    echo_keys = ", ".join(filter_class("echo").schema["properties"])
    assert (
        problems(
            """\
        flow:
          - name: f
            filter:
              - echo:
                  message: hi
                  repeat: many
                  mesage: hi
              - echo: hello
        """
        )
        == [
            "gateway.yml:6: flow[0].filter[0].echo.repeat: expected integer, got 'many'",
            "gateway.yml:7: flow[0].filter[0].echo.mesage: unknown key 'mesage'"
            f" (did you mean 'message'? expected one of: {echo_keys})",
            "gateway.yml:8: flow[0].filter[1].echo: expected a mapping of the filter's"
            " parameters, or nothing, got 'hello'",
        ]
    )


class _NeedsTarget(Filter):
    name = "needs_target"
    schema = {
        "type": "object",
        "required": ["target"],
        "properties": {"target": {"type": "string"}},
    }


def test_filter_registered_later_is_known(problems, monkeypatch):
    """
    The registry is read when a file is loaded; a filter written with no
    parameters is checked as C{{}}, so missing required ones are named.
    """
    monkeypatch.setitem(filters._REGISTRY, "needs_target", _NeedsTarget)
    assert (
        problems(
            """\
        flow:
          - name: f
            filter:
              - needs_target: {target: x}
              - needs_target:
        """
        )
        == [
            "gateway.yml:5: flow[0].filter[1].needs_target: missing required key 'target'"
        ]
    )


def test_filter_items_have_one_key(problems):
    assert (
        problems(
            """\
        flow:
          - name: f
            filter:
              - echo
              - echo:
                message: not indented
              - {}
              - [echo]
        """
        )
        == [
            "gateway.yml:4: flow[0].filter[0]: expected a mapping with one key, a filter name,"
            " got 'echo' (write 'echo:' for the filter without parameters)",
            "gateway.yml:5: flow[0].filter[1]: expected a mapping with one key, a filter name,"
            " got 2 keys: echo, message (are the parameters of 'echo' indented under it?)",
            "gateway.yml:7: flow[0].filter[2]: expected a mapping with one key, a filter name,"
            " got an empty mapping",
            "gateway.yml:8: flow[0].filter[3]: expected a mapping with one key, a filter name,"
            " got a list",
        ]
    )


# All at once


def test_every_problem_once_in_file_order(problems):
    """Structural and semantic problems come together, sorted by line."""
    assert (
        problems(
            """\
        entry:
          - name: a
            router: nowhere
            max_concurrency: lots
            network:
              binding: "8000"
        router:
          - name: r
            default_flow: nothing
        flow:
          - name: f
            filter:
              - ecoh:
        pth: {}
        """
        )
        == [
            "gateway.yml:3: entry[0].router: expected the name of a router, got 'nowhere'"
            " (routers: r)",
            "gateway.yml:4: entry[0].max_concurrency: expected integer, got 'lots'",
            "gateway.yml:6: entry[0].network.binding: expected HOST:PORT, got '8000'",
            "gateway.yml:9: router[0].default_flow: expected the name of a flow, got 'nothing'"
            " (flows: f)",
            "gateway.yml:13: flow[0].filter[0].ecoh: unknown filter 'ecoh' (did you mean"
            f" 'echo'? valid filters: {', '.join(filter_names())})",
            "gateway.yml:14: pth: unknown key 'pth' (did you mean 'path'?"
            " expected one of: path, entry, router, flow, upstream, elasticsearch,"
            " floating_ip, service, api, configs, shutdown_timeout)",
        ]
    )
