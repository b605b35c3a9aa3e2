"""
C{set_response}: set the answer's status, content type and body, INFINI
Gateway's filter of that name.

C{status} defaults to 200; C{content_type}, when given, replaces the
Content-Type; C{body}, when given, replaces the body (an empty string
empties it) and may use C{$[[...]]} variables (L{infini_gateway.template}).
The flow goes on, as in INFINI Gateway, so later filters can
still add headers (C{set_response_header}) or replace the answer (a proxy).
"""

from infini_gateway.filters import Filter, register
from infini_gateway.template import Template


@register
class SetResponse(Filter):
    name = "set_response"
    templated = ("body",)
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
        self._template = None if body is None else Template(body)
        self._body = None if body is None else body.encode("utf-8")
        if self._template is not None and self._template.static is None:
            self._body = None

    def filter(self, ctx):
        draft = ctx.response
        draft.status = self._status
        if self._content_type is not None:
            draft.set_header(b"Content-Type", self._content_type)
        body = self._body
        if body is None and self._template is not None:
            body = self._template.render(ctx).encode("utf-8", "surrogateescape")
        if body is not None:
            draft.body = [body] if body else []
