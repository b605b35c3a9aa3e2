"""
C{request_method_filter}: let a request on only when its method passes the
rules, INFINI Gateway's filter of that name.

C{include} lists the methods let on (when given, any other is refused),
C{exclude} the methods refused; C{must} / C{must_not} / C{should} take
C{prefix}, C{suffix}, C{contain}, C{wildcard} and C{regex} conditions on
the method (see L{_matching}).  Methods are compared case-sensitively, as
HTTP says; the configured C{include} / C{exclude} values are upper-cased,
so C{[get]} means C{GET}.
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

_METHODS = {
    "type": "array",
    "minItems": 1,
    "items": {
        "type": "string",
        "pattern": f"^{TOKEN}$",
        "errorMessage": "an HTTP method such as GET",
    },
}


def _equal(kind, method):
    return [string_test("equal", method.upper())]


@register
class RequestMethodFilter(RequestFilter):
    name = "request_method_filter"
    schema = filter_schema(
        {"include": _METHODS, "exclude": _METHODS, **rules_schema({"type": "string"})}
    )

    def compile_rules(self, params):
        return compile_rules(
            params, lambda kind, value: [string_test(kind, value)], include=_equal
        )

    def subject(self, ctx):
        return ctx.method
