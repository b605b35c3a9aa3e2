"""
C{echo}: add a message to the response body, INFINI Gateway's echo filter,
mostly for trying flows out.

  - C{message} (default C{"."} when C{messages} is not given either) and
    C{messages}, a list, are written in that order, the whole C{repeat}
    times (default 1);
  - C{status} sets the response status (unchanged when not given);
  - C{continue} (default true): false ends the flow after the echo;
  - C{response} (default true): false writes nothing to the body;
  - C{stdout} (default false): also log the text, at level info, through
    twisted.logger (INFINI Gateway prints it to the terminal).

C{message} and C{messages} may use C{$[[...]]} variables
(L{infini_gateway.template}): C{"Hello $[[user]]"}.
"""

from twisted.logger import Logger

from infini_gateway.filters import Filter, register
from infini_gateway.template import Template

log = Logger()


@register
class Echo(Filter):
    name = "echo"
    templated = ("message", "messages")
    schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "message": {"type": "string"},
            "messages": {"type": "array", "items": {"type": "string"}},
            "repeat": {"type": "integer", "minimum": 1},
            "status": {"type": "integer", "minimum": 200, "maximum": 599},
            "continue": {"type": "boolean"},
            "response": {"type": "boolean"},
            "stdout": {"type": "boolean"},
        },
    }

    def __init__(self, params, runtime):
        super().__init__(params, runtime)
        parts = list(params.get("messages", ()))
        if "message" in params or not parts:
            parts.insert(0, params.get("message", "."))
        self._repeat = params.get("repeat", 1)
        self._template = Template("".join(parts))
        self._text = self._template.static
        if self._text is None:
            self._body = None
        else:
            self._body = (self._text * self._repeat).encode("utf-8")
        self._status = params.get("status")
        self._continue = params.get("continue", True)
        self._response = params.get("response", True)
        self._stdout = params.get("stdout", False)

    def filter(self, ctx):
        body = self._body
        if body is None:
            text = self._template.render(ctx) * self._repeat
            body = text.encode("utf-8", "surrogateescape")
        if self._response:
            ctx.response.body.append(body)
        if self._status is not None:
            ctx.response.status = self._status
        if self._stdout:
            log.info("echo: {text}", text=body.decode("utf-8", "replace"))
        if not self._continue:
            ctx.stop()
