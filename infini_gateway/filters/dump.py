"""
C{dump}: log the request as it reaches this point of the flow, INFINI
Gateway's filter of that name, for debugging.

One event at level info, through twisted.logger, with the method, URI,
client address, request headers (C{request_header}, default true) and body
size; C{status_code} and C{response_header} (default false) add the status
and headers of the response draft built so far.  Authorization,
Proxy-Authorization and Cookie values are redacted (the scheme of an
Authorization is kept), and so are Set-Cookie values in the response.  The
flow goes on.
"""

from twisted.logger import Logger

from infini_gateway.filters import Filter, register

log = Logger()

_SECRET = frozenset([b"cookie", b"set-cookie"])
_CREDENTIALS = frozenset([b"authorization", b"proxy-authorization"])
REDACTED = "<redacted>"


def redacted(name: bytes, value: bytes) -> str:
    lower = name.lower()
    if lower in _CREDENTIALS:
        scheme = value.split(b" ", 1)[0].decode("latin-1") if b" " in value else ""
        return f"{scheme} {REDACTED}".strip()
    if lower in _SECRET:
        return REDACTED
    return value.decode("latin-1")


def _body_size(request) -> int:
    content = getattr(request, "content", None)
    if content is None:
        return 0
    position = content.tell()
    size = content.seek(0, 2)
    content.seek(position)
    return size


@register
class Dump(Filter):
    name = "dump"
    schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "request_header": {"type": "boolean"},
            "response_header": {"type": "boolean"},
            "status_code": {"type": "boolean"},
        },
    }

    def __init__(self, params, runtime):
        super().__init__(params, runtime)
        self._request_header = params.get("request_header", True)
        self._response_header = params.get("response_header", False)
        self._status_code = params.get("status_code", False)

    def filter(self, ctx):
        request = ctx.request
        fields = {
            "method": ctx.method,
            "uri": ctx.uri,
            "client_ip": ctx.client_ip,
            "body_size": _body_size(request),
            "flow": ctx.flow,
        }
        text = "dump: {method} {uri} from {client_ip}, body {body_size} bytes"
        if self._request_header:
            fields["headers"] = [
                (name.decode("latin-1"), redacted(name, value))
                for name, values in request.requestHeaders.getAllRawHeaders()
                for value in values
            ]
            text += ", headers {headers}"
        if self._status_code:
            fields["status"] = ctx.response.status
            text += ", response status {status}"
        if self._response_header:
            fields["response_headers"] = [
                (name.decode("latin-1"), redacted(name, value))
                for name, value in ctx.response.headers
            ]
            text += ", response headers {response_headers}"
        log.info(text, **fields)
