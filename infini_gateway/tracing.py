"""
The router's C{tracing_flow}: a flow run once each response has been sent
(or the client went away), to log the request or count it.

L{Tracer.trace} takes a snapshot of the finished exchange, a L{TraceRecord},
and starts the tracing flow at once, apart from the request: the response
is written by then, nothing the flow does reaches the client, and whatever
it waits for (a write to a slow collector, say) is waited for on its own.
(It was scheduled with C{callLater(0)} at first: the extra reactor turn per
request cost about 7% of a proxied request's time.)  A filter of the tracing flow reads the snapshot as
C{ctx.trace} (or through L{trace_record}, which also works in an ordinary
flow, with what is known at that point).
"""

from typing import TYPE_CHECKING, Any, Optional, Tuple

import attrs
from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure

from infini_gateway.context import RequestContext

if TYPE_CHECKING:
    from infini_gateway.flow import Flow

# The flow module imports the filters, and the logging filter imports this
# module: the flow module is imported where it is used.

log = Logger()

HeaderPairs = Tuple[Tuple[str, str], ...]


def _pairs(headers: Any) -> HeaderPairs:
    """Every (name, value) of a twisted Headers or a list of raw pairs, as text."""
    if hasattr(headers, "getAllRawHeaders"):
        raw = [(name, value) for name, values in headers.getAllRawHeaders() for value in values]
    else:
        raw = list(headers)
    return tuple((name.decode("latin-1"), value.decode("latin-1")) for name, value in raw)


def _find(pairs: HeaderPairs, name: str) -> Optional[str]:
    lower = name.lower()
    for n, v in reversed(pairs):
        if n.lower() == lower:
            return v
    return None


def request_body_size(request: Any) -> Optional[int]:
    """
    The request body's size: its Content-Length, else the size of the body
    still held (twisted.web lets go of it once the response is sent), else
    None (a chunked body, after the response).
    """
    length = request.getHeader(b"content-length")
    if length is not None and length.strip().isdigit():
        return int(length)
    content = getattr(request, "content", None)
    if content is None or getattr(content, "closed", False):
        return None if request.getHeader(b"transfer-encoding") else 0
    try:
        position = content.tell()
        size = content.seek(0, 2)
        content.seek(position)
    except (OSError, ValueError):
        return None
    return size


@attrs.frozen
class TraceRecord:
    """
    One request and its response, as the tracing flow sees them.

    @ivar method: the request method (C{"GET"}).
    @ivar path: the request path as sent, without the query string.
    @ivar uri: the request target as sent (path and query).
    @ivar query: the query string without C{?} (C{""} for none).
    @ivar host: the Host header (C{""} without one).
    @ivar client_ip: the peer's address (C{::ffff:} mapping undone).
    @ivar client_port: the peer's port, or None for a non-IP peer.
    @ivar status: the status sent; None when the client went away before
        the gateway wrote anything.
    @ivar request_headers: the request headers as (name, value) text pairs
        (latin-1), in the order received, after the flow's edits.
    @ivar response_headers: the response headers sent, as pairs.
    @ivar request_bytes: the request body's size, or None when unknown (a
        chunked body).
    @ivar response_bytes: the response body bytes written (twisted.web's
        C{request.sentLength}: no status line, headers or chunk framing).
    @ivar started: when the router took the request (reactor seconds).
    @ivar finished: when the response ended or the client went away.
    @ivar duration: C{finished - started}, in seconds.
    @ivar rule: the router rule that matched (None for the default flow).
    @ivar flow: the flow (or flows) the router ran (None for no route).
    @ivar aborted: the client went away before the response was complete.
    @ivar complete: taken once the response ended (always, in a tracing
        flow); False when taken in an ordinary flow, mid-request.
    """

    method: str
    path: str
    uri: str
    query: str
    host: str
    client_ip: str
    client_port: Optional[int]
    status: Optional[int]
    request_headers: HeaderPairs
    response_headers: HeaderPairs
    request_bytes: Optional[int]
    response_bytes: int
    started: float
    finished: float
    duration: float
    rule: Optional[str]
    flow: Optional[str]
    aborted: bool
    complete: bool

    def request_header(self, name: str) -> Optional[str]:
        """The last value of request header C{name} (any case), or None."""
        return _find(self.request_headers, name)

    def response_header(self, name: str) -> Optional[str]:
        """The last value of response header C{name} (any case), or None."""
        return _find(self.response_headers, name)

    @property
    def user_agent(self) -> Optional[str]:
        return self.request_header("user-agent")

    @classmethod
    def of(cls, ctx: RequestContext, now: float, complete: bool = True) -> "TraceRecord":
        """
        The record of C{ctx}'s request at time C{now}.

        With C{complete}, the response has ended (or the client went
        away): the status, headers and byte count are those sent.
        Otherwise the record holds what is known so far: the response
        draft, unless a filter already sent the answer itself.
        """
        request = ctx.request
        uri = request.uri.decode("latin-1")
        path, _, query = uri.partition("?")
        peer = request.getClientAddress()
        port = getattr(peer, "port", None)
        if complete or ctx.response.sent:
            aborted = not request.finished
            status: Optional[int] = request.code
            if aborted and not request.startedWriting:
                status = None
            response_headers = _pairs(request.responseHeaders)
            response_bytes = request.sentLength
        else:
            aborted = False
            status = ctx.response.status
            response_headers = _pairs(ctx.response.headers)
            response_bytes = sum(len(part) for part in ctx.response.body)
        host = request.getHeader(b"host")
        return cls(
            method=ctx.method,
            path=path,
            uri=uri,
            query=query,
            host="" if host is None else host.decode("latin-1"),
            client_ip=ctx.client_ip,
            client_port=port if isinstance(port, int) else None,
            status=status,
            request_headers=_pairs(request.requestHeaders),
            response_headers=response_headers,
            request_bytes=request_body_size(request),
            response_bytes=response_bytes,
            started=ctx.started,
            finished=now,
            duration=max(0.0, now - ctx.started),
            rule=ctx.rule,
            flow=ctx.flow_name,
            aborted=aborted,
            complete=complete,
        )


class TraceContext(RequestContext):
    """
    The context a tracing flow runs over: the traced request, its router
    rule and flow, and C{trace}, its L{TraceRecord}.  The response draft
    holds the status and headers sent and is marked sent: nothing a
    tracing filter does reaches the client.
    """

    def __init__(self, origin: RequestContext, record: TraceRecord, reactor: Any) -> None:
        super().__init__(origin.request, reactor, dict(origin.vars))
        self.started = origin.started
        self.rule = origin.rule
        self.flow_name = origin.flow_name
        self.trace = record
        if record.status is not None:
            self.response.status = record.status
        self.response.headers = [
            (name.encode("latin-1"), value.encode("latin-1"))
            for name, value in record.response_headers
        ]
        self.response.sent = True


def trace_record(ctx: RequestContext) -> TraceRecord:
    """
    The L{TraceRecord} a filter should log: the finished exchange's in a
    tracing flow, else one taken now with what is known so far.
    """
    record = getattr(ctx, "trace", None)
    if isinstance(record, TraceRecord):
        return record
    reactor = ctx.reactor
    now = reactor.seconds() if reactor is not None else ctx.started
    return TraceRecord.of(ctx, now, complete=False)


class Tracer:
    """
    Runs a router's tracing flow after each response, detached.

    @ivar flow: the tracing L{Flow}.
    @ivar traced: how many requests were handed to the tracing flow.
    @ivar errors: how many runs of the tracing flow failed.
    """

    def __init__(self, flow: "Flow", reactor: Any) -> None:
        self.flow = flow
        self.reactor = reactor
        self.traced = 0
        self.errors = 0

    def trace(self, ctx: RequestContext) -> None:
        """
        Snapshot C{ctx}'s finished exchange now and start the tracing flow
        over it; never raises.
        """
        try:
            record = TraceRecord.of(ctx, self.reactor.seconds())
            trace_ctx = TraceContext(ctx, record, self.reactor)
            self._run(trace_ctx)
        except Exception:
            self.errors += 1
            log.failure(
                "tracing flow {flow}: could not trace {method} {uri}",
                flow=self.flow.name,
                method=getattr(ctx, "method", "?"),
                uri=getattr(ctx, "uri", "?"),
            )

    def _run(self, ctx: TraceContext) -> None:
        self.traced += 1
        d = self.flow.run(ctx)
        d.addErrback(self._failed, ctx)

    def _failed(self, reason: Failure, ctx: TraceContext) -> None:
        from infini_gateway.flow import FilterFailed

        if reason.check(CancelledError):
            return
        self.errors += 1
        if reason.check(FilterFailed):
            error = reason.value
            log.failure(
                "tracing flow {flow}: filter {filter} failed on {method} {uri}",
                error.failure,
                flow=error.flow,
                filter=error.filter,
                method=ctx.method,
                uri=ctx.uri,
            )
        else:
            log.failure(
                "tracing flow {flow} failed on {method} {uri}",
                reason,
                flow=self.flow.name,
                method=ctx.method,
                uri=ctx.uri,
            )


__all__ = ["TraceContext", "TraceRecord", "Tracer", "trace_record"]
