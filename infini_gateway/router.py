"""
The router: a twisted.web Resource that picks the flows for each request,
runs them, and writes the answer.

Rules match on host, path pattern and method (see L{infini_gateway.pattern}
for the syntax and the precedence); the variables a pattern captures go to
C{ctx.vars}.  A request that matches no rule runs the router's
C{default_flow}, or gets a 404 with a JSON body when there is none.  A path
with a C{.} or C{..} segment, or a NUL character, gets a 400 with a JSON
body and is never routed.
"""

import copy
from typing import Any, Dict, Mapping, NamedTuple, Optional, Sequence, Union

from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from infini_gateway.config.model import RouterConfig
from infini_gateway.context import RequestContext, json_body
from infini_gateway.flow import FilterFailed, Flow
from infini_gateway.pattern import (
    RouteTable,
    compile_pattern,
    normalise_host,
    request_host,
    split_path,
    unsafe_segment,
)

log = Logger()


class RouteMatch(NamedTuple):
    """
    What the router chose for a request.

    @ivar rule: C{"rules[2] GET /user/{user}"}, or None for the default flow.
    """

    flow: Flow
    vars: Dict[str, str]
    rule: Optional[str] = None


class Router(Resource):
    """
    Routes every request below the point where it is mounted.

    Mount it as a Site's root, or as a child of any Resource of an existing
    twisted.web application.
    """

    isLeaf = True

    def __init__(
        self,
        config: RouterConfig,
        flows: Mapping[str, Flow],
        reactor: Any,
        tracer: Any = None,
    ) -> None:
        """
        @param tracer: if given, its C{trace(ctx)} is called once each
            request's response has been sent (or the client went away).
        @raise ValueError: a pattern or host does not compile, or two rules
            conflict (the configuration loader reports these first, with
            their lines).
        """
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.tracer = tracer
        # Told of each request as it starts and once it is over (metrics):
        # see observed().
        self.observer: Any = None
        self._table = RouteTable()
        for index, rule in enumerate(config.rules):
            flow = Flow.chain(flows[name] for name in rule.flows)
            hosts = [normalise_host(host) for host in rule.hosts]
            for text in rule.patterns:
                pattern = compile_pattern(text)
                label = f"rules[{index}] {','.join(rule.methods)} {text}"
                conflicts = self._table.add(pattern, rule.methods, (flow, label), hosts)
                if conflicts:
                    other = conflicts[0].existing
                    raise ValueError(
                        f"router {config.name!r}: {label} overlaps {other.value[1]}"
                        f" for {conflicts[0].method}"
                    )
        self.default_flow = (
            flows[config.default_flow] if config.default_flow is not None else None
        )

    def observed(self, observer: Any) -> "Router":
        """
        This router (same rules, flows and tracer) telling C{observer} of
        each request: C{observer.started(ctx)} when it is routed,
        C{observer.finished(ctx)} once its response ended or its client
        went away.  The gateway gives each entry one, so that requests are
        counted by entry.
        """
        router = copy.copy(self)
        router.observer = observer
        return router

    def match(
        self,
        method: str,
        path: Union[str, Sequence[str]],
        host: str = "",
    ) -> Optional[RouteMatch]:
        """
        The flow for a request, the variables captured, and the rule.

        @param path: C{"/user/gordon"}, or its percent-decoded segments
            (C{["user", "gordon"]}).
        @param host: the Host header's name (any case, no port).
        @return: the match, the default flow (no variables) when no rule
            matches, or None when there is no default flow either.
        """
        segments = split_path(path) if isinstance(path, str) else path
        found = self._table.lookup(method, segments, host.lower())
        if found is not None:
            flow, label = found.route.value
            return RouteMatch(flow, found.vars, label)
        if self.default_flow is not None:
            return RouteMatch(self.default_flow, {})
        return None

    def render(self, request):
        ctx = RequestContext(request, self.reactor)
        if self.tracer is not None:
            request.notifyFinish().addBoth(lambda _: self.tracer.trace(ctx))
        observer = self.observer
        if observer is not None:
            observer.started(ctx)
            request.notifyFinish().addBoth(lambda _: observer.finished(ctx))
        segments = route_segments(request)
        if unsafe_segment(segments) is not None:
            document = {
                "error": "bad path",
                "reason": "a '.' or '..' segment, or a NUL character",
                "path": ctx.path,
            }
            _write(request, 400, [], [json_body(document)], json=True)
            return NOT_DONE_YET
        found = self.match(ctx.method, segments, request_host(request.getHeader(b"host")))
        if found is None:
            path = "/" + "/".join(segments)
            document = {"error": "no route", "method": ctx.method, "path": path}
            _write(request, 404, [], [json_body(document)], json=True)
            return NOT_DONE_YET
        flow = found.flow
        ctx.vars = found.vars
        ctx.rule = found.rule
        ctx.flow_name = flow.name

        finished = []
        d = flow.run(ctx)

        def client_gone(reason: Failure) -> None:
            finished.append(True)
            d.cancel()

        request.notifyFinish().addErrback(client_gone)

        def done(_: None) -> None:
            if finished or ctx.response.sent:
                return
            draft = ctx.response
            _write(request, draft.status, draft.headers, draft.body)

        def failed(reason: Failure) -> None:
            if reason.check(CancelledError):
                return
            if reason.check(FilterFailed):
                error = reason.value
                log.failure(
                    "filter {filter} of flow {flow} failed on {method} {uri}",
                    error.failure,
                    filter=error.filter,
                    flow=error.flow,
                    method=ctx.method,
                    uri=ctx.uri,
                )
                document = {
                    "error": "filter failed",
                    "flow": error.flow,
                    "filter": error.filter,
                }
            else:
                log.failure("request {method} {uri} failed", reason, method=ctx.method, uri=ctx.uri)
                document = {"error": "internal error"}
            if finished or ctx.response.sent:
                return
            _write(request, 500, [], [json_body(document)], json=True)

        d.addCallbacks(done, failed)
        d.addErrback(lambda f: log.failure("writing the answer failed", f))
        return NOT_DONE_YET


def route_segments(request) -> list:
    """
    The path's segments below the point where the router is mounted (the
    whole path for a Site's root), each percent-decoded on its own: an
    encoded C{/} stays inside its segment.
    """
    segments = [segment.decode("utf-8", "surrogateescape") for segment in request.postpath]
    # Mounted at /api, a request for /api itself is the router's "/".
    return segments or [""]


def route_path(request) -> str:
    """L{route_segments} joined back into a path, for messages."""
    return "/" + "/".join(route_segments(request))


def _write(request, status, headers, body, json: bool = False) -> None:
    request.setResponseCode(status)
    for name, value in headers:
        request.responseHeaders.addRawHeader(name, value)
    if json:
        request.responseHeaders.setRawHeaders(b"content-type", [b"application/json"])
    elif not request.responseHeaders.hasHeader(b"content-type"):
        request.responseHeaders.setRawHeaders(b"content-type", [b"text/plain; charset=utf-8"])
    payload = b"".join(body)
    if status not in (204, 304) and not (100 <= status < 200):
        request.setHeader(b"content-length", b"%d" % len(payload))
        request.write(payload)
    request.finish()
