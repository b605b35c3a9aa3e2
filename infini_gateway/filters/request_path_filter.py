"""
C{request_path_filter}: let a request on only when its path passes
INFINI Gateway's C{must} / C{must_not} / C{should} rules (C{prefix},
C{suffix}, C{contain}, C{wildcard}, C{regex}); see L{_matching}.

The rules are tested on the path as an upstream will most likely read it:
percent-decoded, dot segments resolved, runs of slashes merged, and without
the query string.  INFINI Gateway tests the path as sent, so that
C{/%61dmin} or C{/x/../admin} walk past C{must_not: {prefix: [/admin]}}.
"""

from urllib.parse import unquote

from infini_gateway.filters import register
from infini_gateway.filters._matching import (
    RequestFilter,
    compile_rules,
    filter_schema,
    rules_schema,
    string_test,
)


def normal_path(raw: str) -> str:
    """C{raw} percent-decoded, with dot segments resolved and slashes merged."""
    segments = []
    parts = unquote(raw, errors="replace").split("/")
    for segment in parts[1:]:
        if segment == "..":
            if segments:
                segments.pop()
        elif segment not in (".", ""):
            segments.append(segment)
    trailing = "/" if segments and parts[-1] in ("", ".", "..") else ""
    return "/" + "/".join(segments) + trailing


@register
class RequestPathFilter(RequestFilter):
    name = "request_path_filter"
    schema = filter_schema(rules_schema({"type": "string"}))

    def compile_rules(self, params):
        return compile_rules(params, lambda kind, value: [string_test(kind, value)])

    def subject(self, ctx):
        return normal_path(ctx.path)
