"""
The router's path patterns, compiled into a table indexed by host and by
path segment, so that the cost of routing a request does not grow with the
number of rules.

Pattern syntax (INFINI Gateway's):

  - C{/_bulk}: static text, matched segment by segment;
  - C{{name}}: one whole, non-empty segment, captured as C{name};
  - C{{name}_admin}, C{v{version}}: a variable with literal text around it,
    inside one segment (one variable a segment);
  - C{{name:regexp}}: one non-empty segment that the regular expression
    matches in full (C{{id:[0-9]+}}); it may have literal text around it too;
  - C{{name:*}}: the rest of the path, possibly empty, as the last segment
    only (C{/src/{filepath:*}} matches C{/src/}, C{/src/a.go} and
    C{/src/dir/a.go}, but not C{/src}).

A pattern begins with C{/}.  Segments are compared after percent-decoding,
each on its own, so C{%2F} inside a segment never splits it.

Precedence, for one request:

  1. host: a rule listing the exact host name, then one listing a wildcard
     (C{*.example.org}; a longer suffix first), then a rule without hosts;
  2. path, segment by segment from the left, each segment trying:
     a static segment; a variable with literal text around it (more literal
     characters first, then the longer prefix); a variable restricted by a
     regular expression (several at one position: in the order of the
     rules); a plain C{{name}}; the catch-all C{{name:*}};
  3. method: a rule naming the request's method, then one with C{*}.

A candidate that fails further right (or has no rule for the method) gives
way to the next one in that order.  Two rules that would match the same
requests at the same precedence conflict: L{RouteTable.add} reports it, and
the configuration loader turns it into an error.
"""

import re
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

ANY_METHOD = "*"

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_RESERVED = frozenset(["_ctx", "_sys", "_util"])

# Ranks of the kinds of segment, best first.
_STATIC, _AFFIX, _REGEXP, _PLAIN, _CATCH_ALL = range(5)


class PatternError(ValueError):
    """A pattern or a host that cannot be compiled; the text says why."""


class Variable:
    """
    A segment holding one variable: literal C{prefix} and C{suffix} around
    a non-empty value, which C{regexp}, when given, must match in full.

    Two variables with the same C{key} match the same segments, whatever
    their names.
    """

    __slots__ = ("prefix", "suffix", "regexp", "source", "key", "rank", "_low")

    def __init__(self, prefix: str, suffix: str, source: Optional[str]) -> None:
        self.prefix = prefix
        self.suffix = suffix
        self.source = source
        self.regexp = None if source is None else re.compile(source)
        self.key = (prefix, suffix, source)
        literal = len(prefix) + len(suffix)
        if literal:
            self.rank = (_AFFIX, -literal, -len(prefix), source is None)
        elif source is not None:
            self.rank = (_REGEXP,)
        else:
            self.rank = (_PLAIN,)
        self._low = literal + 1

    def match(self, segment: str) -> Optional[str]:
        """The value this variable takes in C{segment}, or None."""
        if len(segment) < self._low:
            return None
        prefix, suffix = self.prefix, self.suffix
        if prefix and not segment.startswith(prefix):
            return None
        if suffix:
            if not segment.endswith(suffix):
                return None
            value = segment[len(prefix) : len(segment) - len(suffix)]
        else:
            value = segment[len(prefix) :]
        if self.regexp is not None and self.regexp.fullmatch(value) is None:
            return None
        return value


class CatchAll:
    """The C{{name:*}} segment: the rest of the path."""

    __slots__ = ()


_CATCH = CatchAll()

Segment = Union[str, Variable, CatchAll]


class Pattern:
    """
    A compiled pattern.

    @ivar text: the pattern as written.
    @ivar segments: static text, L{Variable} or L{CatchAll}, one per segment.
    @ivar names: the variables' names, in order.
    """

    __slots__ = ("text", "segments", "names")

    def __init__(self, text: str, segments: Sequence[Segment], names: Sequence[str]) -> None:
        self.text = text
        self.segments = tuple(segments)
        self.names = tuple(names)

    def __repr__(self) -> str:
        return f"Pattern({self.text!r})"


def _split(text: str) -> List[str]:
    """Split on C{/} outside braces (a regular expression may hold C{/})."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth < 0:
                raise PatternError(f"unbalanced '}}' in {text!r}")
        elif char == "/" and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise PatternError(f"unbalanced '{{' in {text!r}")
    parts.append(text[start:])
    return parts


def compile_pattern(text: str) -> Pattern:
    """
    Compile a router pattern.

    @raise PatternError: it does not begin with C{/}, a brace is unbalanced,
        a segment holds two variables, a name is invalid or repeated, a
        regular expression does not compile, or C{{name:*}} is not the
        whole last segment.
    """
    if not isinstance(text, str) or not text.startswith("/"):
        raise PatternError(f"expected a pattern beginning with '/', got {text!r}")
    parts = _split(text[1:])
    segments: List[Segment] = []
    names: List[str] = []
    for index, part in enumerate(parts):
        open_ = part.find("{")
        if open_ < 0:
            segments.append(part)
            continue
        depth, close = 0, -1
        for i in range(open_, len(part)):
            if part[i] == "{":
                depth += 1
            elif part[i] == "}":
                depth -= 1
                if depth == 0:
                    close = i
                    break
        prefix, body, suffix = part[:open_], part[open_ + 1 : close], part[close + 1 :]
        if "{" in suffix or "}" in suffix:
            raise PatternError(f"segment {part!r} of {text!r} holds more than one variable")
        name, colon, source = body.partition(":")
        if not _NAME.match(name) or name in _RESERVED:
            raise PatternError(
                f"variable {{{body}}} of {text!r}: expected a name of letters, digits"
                " and '_' (not _ctx, _sys or _util)"
            )
        if name in names:
            raise PatternError(f"variable {name!r} appears twice in {text!r}")
        names.append(name)
        if colon and source == "*":
            if prefix or suffix or index != len(parts) - 1:
                raise PatternError(
                    f"{{{name}:*}} must be the whole last segment of {text!r}"
                )
            segments.append(_CATCH)
            continue
        if colon:
            if not source:
                raise PatternError(f"variable {{{body}}} of {text!r} has an empty regexp")
            try:
                re.compile(source)
            except re.error as e:
                raise PatternError(
                    f"variable {{{body}}} of {text!r}: invalid regexp ({e})"
                ) from None
        segments.append(Variable(prefix, suffix, source if colon else None))
    return Pattern(text, segments, names)


def normalise_host(text: str) -> str:
    """
    A rule's host, lower-cased and checked: a host name, an IP address, or
    C{*.} and a host name.

    @raise PatternError: anything else (a port, a wildcard elsewhere).
    """
    # Imported here: the configuration checks import this module.
    from infini_gateway.config.values import check_host

    if not isinstance(text, str) or not text:
        raise PatternError(f"expected a host name or *.domain, got {text!r}")
    host = text.lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    wildcard = host.startswith("*.")
    name = host[2:] if wildcard else host
    if "*" in name:
        raise PatternError(
            f"expected a host name or a leftmost wildcard such as *.example.org,"
            f" got {text!r}"
        )
    if ":" in name and not wildcard and name.count(":") == 1:
        raise PatternError(
            f"expected a host without a port (hosts match any port), got {text!r}"
        )
    try:
        check_host(name)
    except ValueError:
        raise PatternError(
            f"expected a host name, an IP address or *.domain, got {text!r}"
        ) from None
    if wildcard and (":" in name or name.replace(".", "").isdigit()):
        raise PatternError(f"expected *. followed by a domain name, got {text!r}")
    return host.rstrip(".") if not wildcard else "*." + name.rstrip(".")


def request_host(header: Optional[bytes]) -> str:
    """The Host header's name, lower-cased, without the port or brackets."""
    if not header:
        return ""
    host = header.decode("latin-1").strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host[1:]
    if host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


class Route:
    """
    One (rule, pattern) as stored in the table.

    @ivar value: what the table's user stored (the router: a flow).
    @ivar names: the names of the pattern's variables, in order.
    """

    __slots__ = ("value", "names", "pattern", "methods", "host")

    def __init__(
        self, value: Any, pattern: Pattern, methods: Tuple[str, ...], host: Optional[str]
    ) -> None:
        self.value = value
        self.names = pattern.names
        self.pattern = pattern.text
        self.methods = methods
        self.host = host


class _Leaf:
    """The routes ending at one point of the trie, by method."""

    __slots__ = ("methods", "any")

    def __init__(self) -> None:
        self.methods: Dict[str, Route] = {}
        self.any: Optional[Route] = None

    def get(self, method: str) -> Optional[Route]:
        route = self.methods.get(method)
        return route if route is not None else self.any


class _Node:
    __slots__ = ("static", "variables", "_by_key", "catch_all", "leaf")

    def __init__(self) -> None:
        self.static: Dict[str, "_Node"] = {}
        self.variables: List[Tuple[Variable, "_Node"]] = []
        self._by_key: Dict[tuple, "_Node"] = {}
        self.catch_all: Optional[_Leaf] = None
        self.leaf: Optional[_Leaf] = None

    def child(self, segment: Segment) -> "_Node":
        if isinstance(segment, str):
            node = self.static.get(segment)
            if node is None:
                node = self.static[segment] = _Node()
            return node
        node = self._by_key.get(segment.key)
        if node is None:
            node = self._by_key[segment.key] = _Node()
            self.variables.append((segment, node))
            # Stable: regexps of equal rank keep the order of the rules.
            self.variables.sort(key=lambda pair: pair[0].rank)
        return node


class Conflict:
    """
    A route that could not be added: C{existing} already matches the same
    requests at the same precedence, for C{method} on C{host} (None: any
    host).
    """

    __slots__ = ("existing", "method", "host")

    def __init__(self, existing: Route, method: str, host: Optional[str]) -> None:
        self.existing = existing
        self.method = method
        self.host = host


class Match:
    """A route found for a request, and the values its variables took."""

    __slots__ = ("route", "vars")

    def __init__(self, route: Route, vars: Dict[str, str]) -> None:
        self.route = route
        self.vars = vars


class RouteTable:
    """
    Routes indexed by host, then path segment, then method.

    Finding a route looks up the host in dicts, walks the trie one segment
    at a time (a dict for static segments), and tries the variable shapes
    present at each position; its cost depends on the request's path and
    on the patterns' shapes, not on the number of rules.
    """

    def __init__(self) -> None:
        self._exact: Dict[str, _Node] = {}
        # ".example.org" -> trie of the rules listing "*.example.org".
        self._wildcard: Dict[str, _Node] = {}
        self._any = _Node()

    def add(
        self,
        pattern: Pattern,
        methods: Iterable[str],
        value: Any,
        hosts: Iterable[str] = (),
    ) -> List[Conflict]:
        """
        Add a route for C{pattern} (from L{compile_pattern}), C{methods}
        (C{"*"} for any), and C{hosts} (from L{normalise_host}; none: any
        host).

        @return: the conflicts found; for each, the route was not added for
            that method and host (the first route written stays).
        """
        methods = tuple(methods)
        conflicts = []
        for host in tuple(hosts) or (None,):
            route = Route(value, pattern, methods, host)
            node = self._root(host)
            leaf = None
            for segment in pattern.segments:
                if isinstance(segment, CatchAll):
                    if node.catch_all is None:
                        node.catch_all = _Leaf()
                    leaf = node.catch_all
                    break
                node = node.child(segment)
            if leaf is None:
                if node.leaf is None:
                    node.leaf = _Leaf()
                leaf = node.leaf
            for method in methods:
                if method == ANY_METHOD:
                    existing = leaf.any
                    if existing is None:
                        leaf.any = route
                else:
                    existing = leaf.methods.get(method)
                    if existing is None:
                        leaf.methods[method] = route
                if existing is not None:
                    conflicts.append(Conflict(existing, method, host))
        return conflicts

    def _root(self, host: Optional[str]) -> _Node:
        if host is None:
            return self._any
        if host.startswith("*."):
            table, key = self._wildcard, host[1:]
        else:
            table, key = self._exact, host
        node = table.get(key)
        if node is None:
            node = table[key] = _Node()
        return node

    def lookup(
        self,
        method: str,
        segments: Sequence[str],
        host: str = "",
        visits: Optional[List[int]] = None,
    ) -> Optional[Match]:
        """
        The route for a request, or None.

        @param segments: the path's segments, percent-decoded (C{"/a/b"} is
            C{["a", "b"]}, C{"/"} is C{[""]}).
        @param host: the request's host, as L{request_host} gives it.
        @param visits: if given, a one-item list counting the trie nodes
            visited (to check the cost without timing it).
        """
        if host and (self._exact or self._wildcard):
            node = self._exact.get(host)
            if node is not None:
                found = _find(node, segments, 0, method, [], visits)
                if found is not None:
                    return found
            if self._wildcard:
                dot = host.find(".")
                while dot >= 0:
                    node = self._wildcard.get(host[dot:])
                    if node is not None:
                        found = _find(node, segments, 0, method, [], visits)
                        if found is not None:
                            return found
                    dot = host.find(".", dot + 1)
        return _find(self._any, segments, 0, method, [], visits)


def _found(route: Route, values: List[str]) -> Match:
    return Match(route, dict(zip(route.names, values)))


def _find(
    node: _Node,
    segments: Sequence[str],
    index: int,
    method: str,
    values: List[str],
    visits: Optional[List[int]],
) -> Optional[Match]:
    # Depth-first in order of precedence; the recursion is no deeper than
    # the longest pattern, whatever the length of the request's path.
    if visits is not None:
        visits[0] += 1
    if index == len(segments):
        if node.leaf is not None:
            route = node.leaf.get(method)
            if route is not None:
                return _found(route, values)
        return None
    segment = segments[index]
    child = node.static.get(segment)
    if child is not None:
        found = _find(child, segments, index + 1, method, values, visits)
        if found is not None:
            return found
    for variable, child in node.variables:
        value = variable.match(segment)
        if value is not None:
            values.append(value)
            found = _find(child, segments, index + 1, method, values, visits)
            if found is not None:
                return found
            values.pop()
    if node.catch_all is not None:
        route = node.catch_all.get(method)
        if route is not None:
            return _found(route, values + ["/".join(segments[index:])])
    return None


def split_path(path: str) -> List[str]:
    """C{"/a/b"} -> C{["a", "b"]}: a path's segments, as the router sees them."""
    return path[1:].split("/") if path.startswith("/") else path.split("/")


def unsafe_segment(segments: Sequence[str]) -> Optional[str]:
    """
    The first segment that makes a path unsafe to route: C{.}, C{..}, or one
    holding a NUL character (after percent-decoding); None when all are safe.
    """
    for segment in segments:
        if segment == "." or segment == ".." or "\x00" in segment:
            return segment
    return None
