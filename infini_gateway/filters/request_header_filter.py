"""
C{request_header_filter}: let a request on only when its headers pass the
rules, INFINI Gateway's filter of that name.

Every condition is a map C{{Header-Name: value}} (a map of several headers
is one condition per header):

  - C{include}: when given, the request goes on only if one of the listed
    headers has exactly the listed value;
  - C{exclude}: a request with one of the listed headers at exactly the
    listed value is refused;
  - C{must} / C{must_not} / C{should}: C{prefix}, C{suffix}, C{contain},
    C{wildcard} and C{regex} conditions on the named header (see
    L{_matching}).

A condition holds when any value of the header (a header may be sent more
than once) matches; a header the request lacks matches nothing.  (INFINI
Gateway reads a missing header as an empty value.)  YAML turns C{TRACE:
true} into a boolean: such values are compared as C{true} / C{false}, and
numbers as written.
"""

from infini_gateway.filters import register
from infini_gateway.filters._headers import TOKEN
from infini_gateway.filters._matching import (
    RequestFilter,
    compile_rules,
    filter_schema,
    rules_schema,
    string_test,
)

_CONDITION = {
    "type": "object",
    "minProperties": 1,
    "propertyNames": {"pattern": f"^{TOKEN}$", "errorMessage": "a header name"},
    "additionalProperties": {"type": ["string", "number", "boolean"]},
}
_CONDITIONS = {"type": "array", "minItems": 1, "items": _CONDITION}


def _text(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _header_test(kind, name, value):
    test = string_test(kind, _text(value))
    raw_name = name.encode("ascii")

    def holds(request):
        values = request.requestHeaders.getRawHeaders(raw_name, ())
        return any(test(v.decode("latin-1")) for v in values)

    return holds


def _compiler(equal):
    def compile_condition(kind, condition):
        return [
            _header_test("equal" if equal else kind, name, value)
            for name, value in condition.items()
        ]

    return compile_condition


@register
class RequestHeaderFilter(RequestFilter):
    name = "request_header_filter"
    schema = filter_schema(
        {"include": _CONDITIONS, "exclude": _CONDITIONS, **rules_schema(_CONDITION)}
    )

    def compile_rules(self, params):
        return compile_rules(
            params, _compiler(equal=False), include=_compiler(equal=True)
        )

    def subject(self, ctx):
        return ctx.request
