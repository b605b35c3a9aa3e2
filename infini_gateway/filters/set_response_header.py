"""
C{set_response_header}: set headers of the answer, INFINI Gateway's filter
of that name.

C{headers} is a list of C{"Name -> value"} lines; each named header replaces
any header of that name already in the response draft (several lines naming
one header give it several values).  Values may use C{$[[...]]} variables
(L{infini_gateway.template}); control characters in a variable's value are
percent-encoded.

The headers go into the context's response draft, which is the one place a
flow's response headers live:

  - when the flow ends without a filter streaming the answer, the router
    writes the draft, headers included;
  - a filter that streams the answer itself (the proxy) calls
    L{ResponseDraft.apply_headers<infini_gateway.context.ResponseDraft.apply_headers>}
    on the headers it is about to send, after copying the upstream's, so a
    header set here replaces the upstream's header of the same name.

So the filter may come before the proxy in the flow, as in INFINI Gateway.
"""

from infini_gateway.filters import Filter, register
from infini_gateway.filters._headers import HEADERS_SCHEMA, parse_header_lines
from infini_gateway.template import compile_header_values


@register
class SetResponseHeader(Filter):
    name = "set_response_header"
    schema = HEADERS_SCHEMA
    templated = ("headers",)

    def __init__(self, params, runtime):
        super().__init__(params, runtime)
        self._headers = compile_header_values(parse_header_lines(params.get("headers", ())))

    def filter(self, ctx):
        draft = ctx.response
        for name, render in self._headers:
            values = render(ctx)
            draft.set_header(name, values[0])
            for value in values[1:]:
                draft.add_header(name, value)
