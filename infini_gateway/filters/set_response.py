"""
C{set_response}: set the answer's status, content type and body, INFINI
Gateway's filter of that name.

C{status} defaults to 200; C{content_type}, when given, replaces the
Content-Type; C{body}, when given, replaces the body (an empty string
empties it).  The flow goes on, as in INFINI Gateway, so later filters can
still add headers (C{set_response_header}) or replace the answer (a proxy).
"""

from infini_gateway.filters import Filter, register


@register
class SetResponse(Filter):
    name = "set_response"
    schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "status": {"type": "integer", "minimum": 200, "maximum": 599},
            "content_type": {
                "type": "string",
                "pattern": "^[^\\x00-\\x1f\\x7f]+$",
                "errorMessage": "a media type without control characters",
            },
            "body": {"type": "string"},
        },
    }

    def __init__(self, params, runtime):
        super().__init__(params, runtime)
        self._status = params.get("status", 200)
        self._content_type = params.get("content_type")
        if self._content_type is not None and any(
            ord(c) < 0x20 or ord(c) == 0x7F for c in self._content_type
        ):
            raise ValueError(
                f"content_type {self._content_type!r} holds a control character"
            )
        body = params.get("body")
        self._body = None if body is None else body.encode("utf-8")

    def filter(self, ctx):
        draft = ctx.response
        draft.status = self._status
        if self._content_type is not None:
            draft.set_header(b"Content-Type", self._content_type)
        if self._body is not None:
            draft.body = [self._body] if self._body else []
