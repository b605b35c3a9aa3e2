"""
C{set_request_header}: set request headers before later filters (the proxy)
see the request, INFINI Gateway's filter of that name.

C{headers} is a list of C{"Name -> value"} lines.  Each named header is
replaced: its earlier values, sent by the client, are dropped.  Several
lines naming one header give it several values.  Values may use C{$[[...]]}
variables (L{infini_gateway.template}); control characters in a variable's
value are percent-encoded.
"""

from infini_gateway.filters import Filter, register
from infini_gateway.filters._headers import HEADERS_SCHEMA, parse_header_lines
from infini_gateway.template import compile_header_values


@register
class SetRequestHeader(Filter):
    name = "set_request_header"
    schema = HEADERS_SCHEMA
    templated = ("headers",)

    def __init__(self, params, runtime):
        super().__init__(params, runtime)
        self._headers = compile_header_values(parse_header_lines(params.get("headers", ())))

    def filter(self, ctx):
        headers = ctx.request.requestHeaders
        for name, values in self._headers:
            headers.setRawHeaders(name, values(ctx))
