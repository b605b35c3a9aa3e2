"""
C{redirect}: answer with a redirection to C{uri}, INFINI Gateway's filter
of that name, and end the flow.

C{code} defaults to 302 and must be a redirection status: 300, 301, 302,
303, 307 or 308 (304 is not a redirection; 305 and 306 are obsolete).
C{uri} is sent as it is in the Location header, so it may not hold control
characters or spaces.
"""

import re

from infini_gateway.filters import Filter, register

CODES = (300, 301, 302, 303, 307, 308)
_URI = r"^[^\x00-\x20\x7f]+$"


@register
class Redirect(Filter):
    name = "redirect"
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
        self._code = params.get("code", 302)
        if self._code not in CODES:
            raise ValueError(
                f"code {self._code!r} is not a redirection status"
                f" ({', '.join(map(str, CODES))})"
            )

    def filter(self, ctx):
        ctx.response.set_header(b"Location", self._uri)
        ctx.answer(self._code)
