"""
C{redirect}: answer with a redirection to C{uri}, INFINI Gateway's filter
of that name, and end the flow.

C{code} defaults to 302 and must be a redirection status: 300, 301, 302,
303, 307 or 308 (304 is not a redirection; 305 and 306 are obsolete).
C{uri} is sent as it is in the Location header, so it may not hold control
characters or spaces.  It may use C{$[[...]]} variables
(L{infini_gateway.template}): C{https://example.com/$[[_ctx.request.path]]};
what a variable's value holds that a URI cannot (spaces, control
characters, non-ASCII) is percent-encoded.
"""

import re

from infini_gateway.filters import Filter, register
from infini_gateway.template import Template, escape_uri

CODES = (300, 301, 302, 303, 307, 308)
_URI = r"^[^\x00-\x20\x7f]+$"


@register
class Redirect(Filter):
    name = "redirect"
    templated = ("uri",)
    schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["uri"],
        "properties": {
            "uri": {
                "type": "string",
                "pattern": _URI,
                "errorMessage": "a URI without spaces or control characters",
            },
            "code": {"enum": list(CODES)},
        },
    }

    def __init__(self, params, runtime):
        super().__init__(params, runtime)
        self._uri = params.get("uri", "")
        if re.fullmatch(_URI[1:-1], self._uri) is None:
            raise ValueError(
                f"uri {self._uri!r} is empty or holds spaces or control characters"
            )
        self._template = Template(self._uri, escape_uri)
        self._code = params.get("code", 302)
        if self._code not in CODES:
            raise ValueError(
                f"code {self._code!r} is not a redirection status"
                f" ({', '.join(map(str, CODES))})"
            )

    def filter(self, ctx):
        uri = self._template.static
        if uri is None:
            uri = self._template.render(ctx).encode("utf-8", "surrogateescape")
        ctx.response.set_header(b"Location", uri)
        ctx.answer(self._code)
