"""
Router rules in gateway.yml: patterns that do not compile, rules that
overlap, hosts, and path variables templates use, all reported at load
time with the file, the line and the key path.
"""

import textwrap

import pytest

from infini_gateway.config import ConfigError, config_from_dict, load_config

FLOWS = """
flow:
  - name: a
    filter:
      - echo: {message: a}
  - name: b
    filter:
      - echo: {message: b}
"""


@pytest.fixture
def load(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def load(text):
        """Write C{text} (with flows a and b unless it has flows) and load it."""
        text = textwrap.dedent(text)
        if "\nflow:" not in text:
            text += FLOWS.lstrip("\n")
        with open("gateway.yml", "w") as f:
            f.write(text)
        return load_config("gateway.yml")

    return load


@pytest.fixture
def problems(load):
    def problems(text):
        with pytest.raises(ConfigError) as caught:
            load(text)
        return caught.value.problems

    return problems


def test_overlapping_rules_name_both(problems):
    assert problems(
        """\
        router:
          - name: default
            rules:
              - method: [GET]
                pattern: ["/user/{id}"]
                flow: a
              - method: [POST]
                pattern: ["/user/{id}"]
                flow: a
              - method: [GET, PUT]
                pattern: ["/user/{name}"]
                flow: b
        """
    ) == [
        "gateway.yml:11: router[0].rules[2].pattern[0]: '/user/{name}' overlaps"
        " '/user/{id}' of router[0].rules[0] (line 5) for GET"
    ]


def test_overlap_for_any_method_and_on_a_host(problems):
    assert problems(
        """\
        router:
          - name: default
            rules:
              - pattern: /src/{p:*}
                flow: a
                host: [API.example.com]
              - pattern: /src/{rest:*}
                flow: b
                host: api.example.com
              - pattern: /src/{rest:*}
                flow: b
        """
    ) == [
        "gateway.yml:7: router[0].rules[1].pattern: '/src/{rest:*}' overlaps"
        " '/src/{p:*}' of router[0].rules[0] (line 4) for any method on host api.example.com"
    ]


def test_same_pattern_with_other_methods_hosts_or_routers_is_fine(load):
    config = load(
        """\
        router:
          - name: default
            rules:
              - {method: GET, pattern: /x, flow: a}
              - {method: POST, pattern: /x, flow: a}
              - {method: "*", pattern: /x, flow: a}
              - {method: GET, pattern: /x, flow: a, host: "*.example.org"}
              - {method: GET, pattern: "/{name}", flow: a}
              - {method: GET, pattern: "/{id:[0-9]+}", flow: a}
          - name: other
            rules:
              - {method: GET, pattern: /x, flow: b}
        """
    )
    rules = config.router("default").rules
    assert rules[3].hosts == ("*.example.org",)
    assert rules[0].hosts == ()


def test_bad_patterns(problems):
    assert problems(
        """\
        router:
          - name: default
            rules:
              - pattern: ["/ok", "/user/{id", "/src/{p:*}/x"]
                flow: a
              - pattern: "/a/{x:(}"
                flow: a
        """
    ) == [
        "gateway.yml:4: router[0].rules[0].pattern[1]: unbalanced '{' in 'user/{id'",
        "gateway.yml:4: router[0].rules[0].pattern[2]: {p:*} must be the whole last"
        " segment of '/src/{p:*}/x'",
        "gateway.yml:6: router[0].rules[1].pattern: variable {x:(} of '/a/{x:(}':"
        " invalid regexp (missing ), unterminated subpattern at position 0)",
    ]


def test_bad_hosts(problems):
    assert problems(
        """\
        router:
          - name: default
            rules:
              - pattern: /
                flow: a
                host:
                  - api.example.com:8000
                  - "*.*.example.org"
                  - "bad host"
                  - ""
        """
    ) == [
        "gateway.yml:7: router[0].rules[0].host[0]: expected a host without a port"
        " (hosts match any port), got 'api.example.com:8000'",
        "gateway.yml:8: router[0].rules[0].host[1]: expected a host name or a leftmost"
        " wildcard such as *.example.org, got '*.*.example.org'",
        "gateway.yml:9: router[0].rules[0].host[2]: expected a host name, an IP address"
        " or *.domain, got 'bad host'",
        "gateway.yml:10: router[0].rules[0].host[3]: expected a non-empty string, got ''",
    ]


def test_path_variables_of_templates_must_be_captured(problems):
    assert problems(
        """\
        router:
          - name: default
            default_flow: b
            rules:
              - pattern: /user/{user}
                flow: a
        flow:
          - name: a
            filter:
              - echo: {message: "hi $[[usr]]"}
              - set_response_header: {headers: ["X-User -> $[[user]]"]}
          - name: b
            filter:
              - redirect: {uri: "/u/$[[user]]"}
        """
    ) == [
        "gateway.yml:10: flow[0].filter[0].echo.message: $[[usr]]: expected a variable"
        " captured by the pattern of a rule running flow 'a' (did you mean 'user'?"
        " captured: user)",
        "gateway.yml:14: flow[1].filter[0].redirect.uri: $[[user]]: expected a variable"
        " captured by the pattern of a rule running flow 'b' (captured: none)",
    ]


def test_unknown_context_variable_names_the_filter(load):
    """The filter's constructor refuses it; building the flows says where."""
    from infini_gateway import build_service

    config = load(
        """\
        router:
          - name: default
            default_flow: a
        flow:
          - name: a
            filter:
              - echo: {message: "$[[_ctx.request.paht]]"}
        """
    )
    with pytest.raises(ConfigError) as caught:
        build_service(config)
    (problem,) = caught.value.problems
    assert problem.startswith(
        "gateway.yml:7: flow[0].filter[0].echo: unknown variable $[[_ctx.request.paht]]"
    )


def test_dict_config_conflicts_have_no_lines():
    with pytest.raises(ConfigError) as caught:
        config_from_dict(
            {
                "router": [
                    {
                        "name": "default",
                        "rules": [
                            {"pattern": "/a/{x}", "flow": "a"},
                            {"pattern": "/a/{y}", "flow": "a"},
                        ],
                    }
                ],
                "flow": [{"name": "a", "filter": [{"echo": {"message": "a"}}]}],
            }
        )
    assert caught.value.problems == [
        "<dict>: router[0].rules[1].pattern: '/a/{y}' overlaps '/a/{x}'"
        " of router[0].rules[0] for any method"
    ]
