"""
The router: a twisted.web Resource that picks the flows for each request,
runs them, and writes the answer.

Rules match on method and path; a request that matches no rule runs the
router's C{default_flow}, or gets a 404 with a JSON body when there is none.
"""

from typing import Any, Dict, List, Mapping, Optional, Tuple

from twisted.internet.defer import CancelledError
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from infini_gateway.config.model import RouterConfig
from infini_gateway.context import RequestContext, json_body
from infini_gateway.flow import FilterFailed, Flow

log = Logger()

_ANY = "*"


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
        """
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.tracer = tracer
        # path -> [(methods or None for any, flow)], in configuration order.
        self._exact: Dict[str, List[Tuple[Optional[frozenset], Flow]]] = {}
        for rule in config.rules:
            flow = Flow.chain(flows[name] for name in rule.flows)
            methods = None if _ANY in rule.methods else frozenset(rule.methods)
            for pattern in rule.patterns:
                self._exact.setdefault(pattern, []).append((methods, flow))
        for candidates in self._exact.values():
            # A rule naming the method beats one that takes any method.
            candidates.sort(key=lambda c: c[0] is None)
        self.default_flow = (
            flows[config.default_flow] if config.default_flow is not None else None
        )

    def match(self, method: str, path: str) -> Optional[Flow]:
        """The flow for C{method} on C{path}, or None."""
        for methods, flow in self._exact.get(path, ()):
            if methods is None or method in methods:
                return flow
        return self.default_flow

    def render(self, request):
        ctx = RequestContext(request, self.reactor)
        if self.tracer is not None:
            request.notifyFinish().addBoth(lambda _: self.tracer.trace(ctx))
        path = route_path(request)
        flow = self.match(ctx.method, path)
        ctx.flow_name = flow.name if flow is not None else None
        if flow is None:
            document = {"error": "no route", "method": ctx.method, "path": path}
            _write(request, 404, [], [json_body(document)], json=True)
            return NOT_DONE_YET

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


def route_path(request) -> str:
    """
    The path below the point where the router is mounted (the whole path
    for a Site's root), each segment percent-decoded.
    """
    return "/" + "/".join(
        segment.decode("utf-8", "surrogateescape") for segment in request.postpath
    )


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
