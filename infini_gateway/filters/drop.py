"""
C{drop}: end the request without any answer, INFINI Gateway's filter of
that name.

INFINI Gateway stops the flow and lets whatever response was built so far
go out (often an empty 200), which tells a client nothing useful and looks
like success.  Here C{drop} does what nginx's C{return 444} does: no
response is written and the connection is closed (on HTTP/2, only the
request's stream is reset).  Nothing after it in the flow runs.  It takes
no parameters.
"""

from infini_gateway.filters import Filter, register


@register
class Drop(Filter):
    name = "drop"
    schema = {"type": "object", "additionalProperties": False}

    def filter(self, ctx):
        # The draft is never written: the router skips an answer marked sent.
        ctx.response.sent = True
        ctx.stop()
        request = ctx.request
        # An HTTP/2 stream has abortConnection (a RST_STREAM for this request
        # only); HTTP/1.x closes the connection once earlier answers are out.
        abort = getattr(request.channel, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            request.loseConnection()
