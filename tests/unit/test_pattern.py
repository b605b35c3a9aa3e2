"""
The pattern compiler and the route table: INFINI Gateway's syntax, the
precedence between rules, hosts, and conflicts.
"""

import pytest

from infini_gateway.pattern import (
    PatternError,
    RouteTable,
    compile_pattern,
    normalise_host,
    request_host,
    split_path,
    unsafe_segment,
)


def table(*rules):
    """A table of C{(pattern, methods, value[, hosts])} rules; fails on a conflict."""
    routes = RouteTable()
    for rule in rules:
        pattern, methods, value = rule[:3]
        hosts = [normalise_host(h) for h in (rule[3] if len(rule) > 3 else ())]
        assert routes.add(compile_pattern(pattern), methods, value, hosts) == []
    return routes


def find(routes, path, method="GET", host=""):
    found = routes.lookup(method, split_path(path), host)
    return None if found is None else (found.route.value, found.vars)


# The examples of INFINI Gateway's "Service Router" page, each with its outcome.

SEED = [
    ("/user/{user}", "/user/gordon", {"user": "gordon"}),
    ("/user/{user}", "/user/you", {"user": "you"}),
    ("/user/{user}", "/user/gordon/profile", None),
    ("/user/{user}", "/user/", None),
    ("/user/{user}_admin", "/user/gordon_admin", {"user": "gordon"}),
    ("/user/{user}_admin", "/user/you_admin", {"user": "you"}),
    ("/user/{user}_admin", "/user/you", None),
    ("/user/{user}_admin", "/user/gordon/profile", None),
    ("/user/{user}_admin", "/user/gordon_admin/profile", None),
    ("/user/{user}_admin", "/user/", None),
    ("/src/{filepath:*}", "/src/", {"filepath": ""}),
    ("/src/{filepath:*}", "/src/somefile.go", {"filepath": "somefile.go"}),
    ("/src/{filepath:*}", "/src/subdir/somefile.go", {"filepath": "subdir/somefile.go"}),
]


@pytest.mark.parametrize("pattern, path, captured", SEED)
def test_seed_examples(pattern, path, captured):
    """Each example of the seed page matches (with these values) or does not."""
    found = find(table((pattern, ["*"], "r")), path)
    assert found == (None if captured is None else ("r", captured))


def test_catch_all_needs_the_slash_before_it():
    """/src/{filepath:*} does not match /src: there is no automatic redirect."""
    assert find(table(("/src/{filepath:*}", ["*"], "r")), "/src") is None


def test_no_trailing_slash_or_case_leniency():
    routes = table(("/users", ["*"], "r"))
    assert find(routes, "/users") == ("r", {})
    assert find(routes, "/users/") is None
    assert find(routes, "/Users") is None


def test_root_and_static_paths():
    routes = table(("/", ["*"], "root"), ("/_bulk", ["*"], "bulk"))
    assert find(routes, "/") == ("root", {})
    assert find(routes, "/_bulk") == ("bulk", {})
    assert find(routes, "/x") is None


def test_regexp_variable_matches_the_whole_segment():
    routes = table(("/item/{id:[0-9]+}", ["*"], "r"))
    assert find(routes, "/item/42") == ("r", {"id": "42"})
    assert find(routes, "/item/42a") is None
    assert find(routes, "/item/a42") is None


def test_regexp_may_hold_braces_and_slashes():
    routes = table(("/year/{y:[0-9]{4}}/{rest:*}", ["*"], "r"))
    assert find(routes, "/year/2024/a/b") == ("r", {"y": "2024", "rest": "a/b"})
    assert find(routes, "/year/24/a") is None
    # A "/" in the regexp never spans segments: segments are matched one by one.
    routes = table(("/p/{x:a/b|c}", ["*"], "r"))
    assert find(routes, "/p/c") == ("r", {"x": "c"})
    assert find(routes, "/p/a/b") is None


def test_prefix_and_regexp_with_literal_text():
    routes = table(("/v{version:[0-9]+}/status", ["*"], "r"))
    assert find(routes, "/v2/status") == ("r", {"version": "2"})
    assert find(routes, "/vx/status") is None


def test_percent_encoded_slash_stays_in_its_segment():
    """Segments are given decoded; a decoded "/" inside one is still one segment."""
    routes = table(("/files/{name}", ["*"], "r"))
    found = routes.lookup("GET", ["files", "a/b"])
    assert (found.route.value, found.vars) == ("r", {"name": "a/b"})


# Precedence


def test_static_beats_variable_beats_catch_all():
    routes = table(
        ("/user/{name:*}", ["*"], "rest"),
        ("/user/{name}", ["*"], "plain"),
        ("/user/admin", ["*"], "static"),
    )
    assert find(routes, "/user/admin") == ("static", {})
    assert find(routes, "/user/gordon") == ("plain", {"name": "gordon"})
    assert find(routes, "/user/gordon/profile") == ("rest", {"name": "gordon/profile"})


def test_order_of_variable_kinds_at_one_segment():
    """Literal text around a variable, then a regexp, then a plain {name}."""
    routes = table(
        ("/u/{a}", ["*"], "plain"),
        ("/u/{a:[0-9]+}", ["*"], "regexp"),
        ("/u/{a}_admin", ["*"], "suffix"),
        ("/u/{a}_superadmin", ["*"], "longer suffix"),
    )
    assert find(routes, "/u/gordon")[0] == "plain"
    assert find(routes, "/u/42")[0] == "regexp"
    assert find(routes, "/u/42_admin") == ("suffix", {"a": "42"})
    assert find(routes, "/u/x_superadmin") == ("longer suffix", {"a": "x"})


def test_regexps_at_one_position_are_tried_in_rule_order():
    routes = table(("/r/{a:[0-9]+}", ["*"], "digits"), ("/r/{b:[0-9a-f]+}", ["*"], "hex"))
    assert find(routes, "/r/12") == ("digits", {"a": "12"})
    assert find(routes, "/r/1f") == ("hex", {"b": "1f"})


def test_a_failed_static_branch_gives_way_to_a_variable():
    routes = table(("/user/admin/settings", ["*"], "settings"), ("/user/{id}/profile", ["*"], "profile"))
    assert find(routes, "/user/admin/profile") == ("profile", {"id": "admin"})
    assert find(routes, "/user/admin/settings") == ("settings", {})


def test_method_named_beats_any_method():
    routes = table(("/doc", ["*"], "any"), ("/doc", ["GET", "HEAD"], "get"))
    assert find(routes, "/doc", "GET")[0] == "get"
    assert find(routes, "/doc", "HEAD")[0] == "get"
    assert find(routes, "/doc", "POST")[0] == "any"


def test_path_precedence_comes_before_method():
    """A more specific path with no rule for the method gives way to the next path."""
    routes = table(("/user/admin", ["POST"], "static post"), ("/user/{id}", ["*"], "variable"))
    assert find(routes, "/user/admin", "POST")[0] == "static post"
    assert find(routes, "/user/admin", "GET") == ("variable", {"id": "admin"})


def test_same_pattern_different_methods_and_names():
    routes = table(("/user/{id}", ["GET"], "get"), ("/user/{name}", ["POST"], "post"))
    assert find(routes, "/user/x", "GET") == ("get", {"id": "x"})
    assert find(routes, "/user/x", "POST") == ("post", {"name": "x"})
    assert find(routes, "/user/x", "PUT") is None


# Hosts


def test_exact_host_beats_wildcard_beats_no_host():
    routes = table(
        ("/", ["*"], "any host"),
        ("/", ["*"], "wildcard", ["*.example.org"]),
        ("/", ["*"], "deeper wildcard", ["*.api.example.org"]),
        ("/", ["*"], "exact", ["api.example.org"]),
    )
    assert find(routes, "/", host="api.example.org")[0] == "exact"
    assert find(routes, "/", host="a.example.org")[0] == "wildcard"
    assert find(routes, "/", host="a.b.example.org")[0] == "wildcard"
    assert find(routes, "/", host="v1.api.example.org")[0] == "deeper wildcard"
    assert find(routes, "/", host="example.org")[0] == "any host"
    assert find(routes, "/", host="")[0] == "any host"


def test_host_rules_fall_back_to_rules_without_hosts():
    routes = table(("/a", ["*"], "host", ["api.example.com"]), ("/b", ["*"], "any"))
    assert find(routes, "/b", host="api.example.com")[0] == "any"
    assert find(routes, "/a", host="other.example.com") is None


@pytest.mark.parametrize(
    "header, host",
    [
        (b"API.Example.com:8000", "api.example.com"),
        (b"api.example.com.", "api.example.com"),
        (b"[::1]:8000", "::1"),
        (b"127.0.0.1", "127.0.0.1"),
        (None, ""),
    ],
)
def test_request_host_ignores_case_and_port(header, host):
    assert request_host(header) == host


@pytest.mark.parametrize(
    "text, normal",
    [("API.example.com", "api.example.com"), ("*.Example.ORG", "*.example.org"), ("10.0.0.1", "10.0.0.1")],
)
def test_rule_hosts_are_normalised(text, normal):
    assert normalise_host(text) == normal


@pytest.mark.parametrize("text", ["api.example.com:80", "a.*.org", "*", "*.", "bad_host!", "*.10.0.0.1"])
def test_bad_rule_hosts(text):
    with pytest.raises(PatternError):
        normalise_host(text)


# Conflicts


@pytest.mark.parametrize(
    "first, second, path",
    [
        ("/user/{id}", "/user/{name}", "/user/1"),
        ("/a/{x:[0-9]+}", "/a/{y:[0-9]+}", "/a/1"),
        ("/src/{a:*}", "/src/{b:*}", "/src/1"),
        ("/x", "/x", "/x"),
        ("/u/{a}_admin", "/u/{b}_admin", "/u/1_admin"),
    ],
)
def test_overlapping_patterns_conflict(first, second, path):
    """Same shape, same method: whatever the names, the second rule is refused."""
    routes = RouteTable()
    assert routes.add(compile_pattern(first), ["GET"], 1) == []
    (conflict,) = routes.add(compile_pattern(second), ["GET", "POST"], 2)
    assert (conflict.existing.value, conflict.existing.pattern, conflict.method) == (1, first, "GET")
    # The first rule stays for GET; the second still serves POST.
    assert find(routes, path, "GET")[0] == 1
    assert find(routes, path, "POST")[0] == 2


def test_different_hosts_or_methods_do_not_conflict():
    routes = RouteTable()
    p = compile_pattern("/a")
    assert routes.add(p, ["GET"], 1) == []
    assert routes.add(p, ["POST"], 2) == []
    assert routes.add(p, ["*"], 3) == []
    assert routes.add(p, ["GET"], 4, ["example.com"]) == []
    assert routes.add(p, ["GET"], 5, ["*.example.com"]) == []
    (conflict,) = routes.add(p, ["GET"], 6, ["example.com"])
    assert (conflict.existing.value, conflict.host) == (4, "example.com")


# Syntax errors


@pytest.mark.parametrize(
    "text, message",
    [
        ("user", "beginning with '/'"),
        ("/user/{id", "unbalanced '{'"),
        ("/user/id}", "unbalanced '}'"),
        ("/user/{a}{b}", "more than one variable"),
        ("/user/{1a}", "expected a name"),
        ("/user/{_ctx}", "expected a name"),
        ("/{a}/{a}", "appears twice"),
        ("/src/{p:*}/x", "whole last segment"),
        ("/src/x{p:*}", "whole last segment"),
        ("/a/{x:[}", "invalid regexp"),
        ("/a/{x:(}", "invalid regexp"),
        ("/a/{x:}", "empty regexp"),
    ],
)
def test_pattern_errors(text, message):
    with pytest.raises(PatternError) as raised:
        compile_pattern(text)
    assert message in str(raised.value)


# Path safety


@pytest.mark.parametrize(
    "segments, unsafe",
    [
        (["a", "..", "b"], ".."),
        (["."], "."),
        (["a\x00b"], "a\x00b"),
        (["a", "..b", "...", "b.."], None),
        ([""], None),
    ],
)
def test_unsafe_segments(segments, unsafe):
    assert unsafe_segment(segments) == unsafe


# Cost


def test_lookup_cost_does_not_grow_with_the_number_of_rules():
    """The trie nodes visited for a request are the same with 10 or 10,000 rules."""

    def build(n):
        routes = RouteTable()
        for i in range(n):
            routes.add(compile_pattern(f"/static{i}/x"), ["GET"], i)
            routes.add(compile_pattern(f"/v{i}/{{id}}/items"), ["GET"], i)
            routes.add(compile_pattern(f"/files{i}/{{path:*}}"), ["GET"], i)
        return routes

    def visits(routes, path):
        counter = [0]
        routes.lookup("GET", split_path(path), "", counter)
        return counter[0]

    small, large = build(10), build(10_000)
    for path in ["/static5/x", "/v7/abc/items", "/files3/a/b/c", "/nothing/here"]:
        assert visits(small, path) == visits(large, path)
