"""
Forwarding: one request to an upstream, retried on other endpoints, and its
answer streamed back to the client.

L{forward} is the whole engine behind the C{proxy}, C{http} and
C{elasticsearch} filters.  For each attempt the upstream's balancer picks an
endpoint not tried yet; the request goes out over the upstream's pooled
Agent (see L{infini_gateway.upstream.pool} for why not treq) with its
headers rewritten (L{infini_gateway.upstream.headers}) and its body
streamed (L{infini_gateway.upstream.streams}); an C{Upgrade} request goes
through L{infini_gateway.upstream.tunnel} instead.

An attempt that fails before the response headers (connect error, reset,
timeout) is retried on another endpoint while C{retries} allow, except that
a request which may have reached the upstream is retried only when it is
idempotent and carried no body that was sent (or with
C{retry_non_idempotent}).  C{retry_on_status} retries those statuses too,
under the same rule.  C{retry_timeout} bounds all attempts together: when it
passes the client gets C{504} (the gateway gave up waiting, as for any
timeout).  Failures are answered as L{infini_gateway.upstream.failures}
says; a failure after the response started cuts the client connection,
which is how HTTP tells a client that a body is incomplete.  The client
going away cancels the upstream request, at any stage.

Balancer bookkeeping: C{on_request_start} before each attempt, and
C{on_request_end} once the attempt is over (the body relayed, or the
failure), with the time to the response headers.  Health: every attempt's
outcome (its status, or its failure) goes to the upstream's passive checks,
retries included; below C{panic_threshold} healthy endpoints, the balancer
picks among unhealthy ones too, and with none available and no panic the
answer is C{503} at once.
"""

from typing import IO, Any, Optional, Set, Tuple

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import connectProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import UNKNOWN_LENGTH

from infini_gateway.config.model import Timeouts
from infini_gateway.context import RequestContext
from infini_gateway.upstream.balancer import EndpointState, candidates
from infini_gateway.upstream.failures import (
    AttemptFailure,
    classify,
    may_retry,
    no_endpoint,
    timed_out,
)
from infini_gateway.upstream.headers import (
    encoded_host,
    hash_key,
    is_upgrade,
    request_headers,
    response_headers,
)
from infini_gateway.upstream.streams import Discard, IdleTimer, RequestBody, ResponseRelay
from infini_gateway.upstream.tunnel import (
    Splice,
    UpstreamSide,
    request_head,
    upgrade_response_head,
)
from infini_gateway.upstream.upstreams import Upstream

log = Logger()

_NO_BODY_STATUSES = (204, 304)


async def forward(
    ctx: RequestContext,
    upstream: Upstream,
    timeouts: Optional[Timeouts] = None,
    retries: Optional[int] = None,
) -> None:
    """
    Forward C{ctx}'s request to C{upstream} and stream the answer back
    (C{ctx.response.sent} is then true), or answer the failure in the
    response draft.

    @param timeouts: the upstream's, or a filter's override.
    @param retries: the upstream's, or a filter's override.
    """
    if retries is None:
        retries = upstream.config.max_retries
    await _Forwarder(ctx, upstream, timeouts or upstream.config.timeout, retries).run()


def request_body(request: Any) -> Optional[Tuple[IO[bytes], int]]:
    """The client's body as (file, length), or None when it sent none."""
    content = getattr(request, "content", None)
    if content is None:
        return None
    content.seek(0, 2)
    length = content.tell()
    content.seek(0)
    headers = request.requestHeaders
    if length == 0 and not (
        headers.hasHeader(b"content-length") or headers.hasHeader(b"transfer-encoding")
    ):
        return None
    return content, length


def request_target(uri: bytes) -> bytes:
    """The origin-form target (C{/path?query}) of a request's URI."""
    if uri.startswith(b"/"):
        return uri
    scheme, sep, rest = uri.partition(b"://")
    if sep:
        slash = rest.find(b"/")
        return rest[slash:] if slash >= 0 else b"/"
    return b"/"


def endpoint_base(endpoint: EndpointState) -> bytes:
    """C{scheme://host:port} of an endpoint, for the Agent."""
    return b"%s://%s:%d" % (
        endpoint.scheme.encode("ascii"),
        encoded_host(endpoint.host),
        endpoint.port,
    )


class _Forwarder:
    """The attempts of one request."""

    def __init__(
        self, ctx: RequestContext, upstream: Upstream, timeouts: Timeouts, retries: int
    ) -> None:
        self.ctx = ctx
        self.request = ctx.request
        self.upstream = upstream
        self.config = upstream.config
        self.timeouts = timeouts
        self.retries = retries
        self.clock = ctx.reactor
        self.method = self.request.method
        self.client_ip = ctx.client_ip
        self.body = request_body(self.request)
        self.body_started = False
        self.gone = False
        self.deadline: Optional[float] = None
        self.request.notifyFinish().addErrback(self._client_gone)

    def _client_gone(self, reason: Failure) -> None:
        self.gone = True

    async def run(self) -> None:
        config = self.config
        if config.retry_timeout:
            self.deadline = self.clock.seconds() + config.retry_timeout
        upgrade = is_upgrade(self.request.requestHeaders)
        key = hash_key(self.request, config, self.client_ip)
        tried: Set[EndpointState] = set()
        failure: Optional[AttemptFailure] = None
        # The gateway's metrics, when it keeps them.
        observer = self.upstream.observer
        outcome: Optional[AttemptFailure] = None
        for attempt in range(self.retries + 1):
            if self.deadline is not None and self.clock.seconds() >= self.deadline:
                failure = timed_out("retry_timeout")
                break
            # Below panic_threshold, unhealthy endpoints are picked too.
            panic = self.upstream.health.panicking()
            endpoint = self.upstream.balancer.pick(
                key, exclude=frozenset(tried), include_unhealthy=panic
            )
            if endpoint is None:
                failure = failure or no_endpoint(len(tried))
                break
            tried.add(endpoint)
            last = attempt == self.retries or not candidates(
                self.upstream.endpoints, tried, include_unhealthy=panic
            )
            started = self.clock.seconds()
            if upgrade:
                outcome = await self._tunnel(endpoint)
            else:
                outcome = await self._exchange(endpoint, last)
            if observer is not None:
                observer.attempted(endpoint, attempt, self.clock.seconds() - started, outcome)
            if outcome is None:
                return
            failure = outcome
            self.upstream.health.report_failure(endpoint, failure)
            log.warn(
                "upstream {upstream}: {method} {uri} to {endpoint}: {reason}",
                upstream=self.upstream.name,
                method=self.ctx.method,
                uri=self.ctx.uri,
                endpoint=endpoint.url,
                reason=failure.reason,
            )
            if not may_retry(
                failure, self.method, self.body_started, config.retry_non_idempotent
            ):
                break
        if failure is None:
            failure = no_endpoint(len(tried))
        if observer is not None and failure is not outcome:
            observer.gave_up(failure)
        self.ctx.answer_json(failure.status, failure.document(self.upstream.name))

    def _check_gone(self) -> None:
        if self.gone:
            raise CancelledError()

    def _wait(self, d: Deferred) -> Deferred:
        """
        C{d}, as a Deferred whose cancellation (the client went away: the
        router cancels the flow) is remembered before C{d} is cancelled, so
        that the failure it then gives is not taken for the upstream's.
        """

        def cancel(_: Deferred) -> None:
            self.gone = True
            d.cancel()

        waiting: Deferred = Deferred(cancel)

        def passed(result: Any) -> None:
            if not waiting.called:
                waiting.callback(result)

        d.addBoth(passed)
        return waiting

    def _attempt_timers(self, expire):
        read = IdleTimer(self.clock, self.timeouts.read, lambda: expire("read"))
        deadline = None
        if self.deadline is not None:
            deadline = IdleTimer(
                self.clock, 0, lambda: expire("retry_timeout")
            )
            deadline.start(max(self.deadline - self.clock.seconds(), 0.001))
        return read, deadline

    def _headers(self, endpoint: EndpointState, upgrade: bool = False) -> Any:
        """The request headers of an attempt on C{endpoint}."""
        request = self.request
        return request_headers(
            request.requestHeaders,
            self.config,
            endpoint,
            self.client_ip,
            request.isSecure(),
            upgrade=upgrade,
        )

    async def _exchange(self, endpoint: EndpointState, last: bool) -> Optional[AttemptFailure]:
        """One attempt over the Agent; None when the answer was relayed."""
        balancer = self.upstream.balancer
        request = self.request
        headers = self._headers(endpoint)
        expired = []

        def expire(kind: str) -> None:
            expired.append(kind)
            d.cancel()

        read_timer, deadline_timer = self._attempt_timers(expire)
        producer = None
        if self.body is not None:
            content, length = self.body
            producer = RequestBody(
                content,
                length,
                self.clock,
                self.timeouts.send,
                lambda: expire("send"),
                read_timer.start,
            )
        balancer.on_request_start(endpoint)
        started = self.clock.seconds()
        d = self.upstream.client.agent.request(
            self.method,
            endpoint_base(endpoint) + request_target(request.uri),
            headers,
            producer,
        )
        if producer is None:
            read_timer.start()
        try:
            response = await self._wait(d)
        except BaseException:
            reason = Failure()
            if producer is not None and producer.started:
                self.body_started = True
            balancer.on_request_end(endpoint, self.clock.seconds() - started, True)
            self._check_gone()
            if expired:
                return timed_out(expired[0])
            if reason.check(CancelledError):
                raise
            return classify(reason)
        finally:
            read_timer.stop()
            if deadline_timer is not None:
                deadline_timer.stop()
        if producer is not None and producer.started:
            self.body_started = True
        elapsed = self.clock.seconds() - started
        self._check_gone()

        if response.code in self.config.retry_on_status and not last:
            candidate = AttemptFailure(response.code, f"status {response.code}")
            if may_retry(
                candidate, self.method, self.body_started, self.config.retry_non_idempotent
            ):
                response.deliverBody(Discard())
                balancer.on_request_end(endpoint, elapsed, False)
                return candidate

        # A failed attempt is reported by run(); this one has its answer.
        self.upstream.health.request_outcome(endpoint, response.code)
        failed = True
        try:
            failed = await self._relay(response)
        finally:
            balancer.on_request_end(endpoint, elapsed, failed)
        return None

    async def _relay(self, response: Any) -> bool:
        """Stream C{response} to the client; whether the upstream failed."""
        request, draft = self.request, self.ctx.response
        request.setResponseCode(response.code, response.phrase or None)
        response_headers(response.headers, request.responseHeaders)
        draft.apply_headers(request.responseHeaders)
        if (
            response.length is not UNKNOWN_LENGTH
            and self.method != b"HEAD"
            and response.code not in _NO_BODY_STATUSES
        ):
            request.responseHeaders.setRawHeaders(
                b"Content-Length", [b"%d" % response.length]
            )
        elif self.method == b"HEAD" and response.code not in _NO_BODY_STATUSES:
            # The length a GET's body would have, as the upstream said.
            lengths = response.headers.getRawHeaders(b"content-length") or [b""]
            if lengths[0].strip().isdigit():
                request.responseHeaders.setRawHeaders(b"Content-Length", [lengths[0].strip()])
        # No invented Content-Type for an upstream answer without one.
        request.defaultContentType = None
        draft.status = response.code
        draft.sent = True
        relay = ResponseRelay(request, self.clock, self.timeouts.read)
        response.deliverBody(relay)
        try:
            await self._wait(relay.done)
        except CancelledError:
            raise
        except Exception:
            reason = Failure()
            self._check_gone()
            log.warn(
                "upstream {upstream}: {method} {uri}: the response broke after"
                " {bytes} bytes ({reason}); closing the client connection",
                upstream=self.upstream.name,
                method=self.ctx.method,
                uri=self.ctx.uri,
                bytes=relay.received,
                reason="read timeout" if relay.timed_out else reason.getErrorMessage(),
            )
            request.loseConnection()
            return True
        if not self.gone:
            request.finish()
        return False

    async def _tunnel(self, endpoint: EndpointState) -> Optional[AttemptFailure]:
        """One attempt of an upgrade; None when the answer was relayed."""
        balancer = self.upstream.balancer
        request = self.request
        headers = self._headers(endpoint, upgrade=True)
        body = None
        if self.body is not None:
            body, length = self.body
            headers.setRawHeaders(b"Content-Length", [b"%d" % length])
        side = UpstreamSide(
            request_head(self.method, request_target(request.uri), headers), body
        )
        expired = []

        def expire(kind: str) -> None:
            expired.append(kind)
            waiting.cancel()

        read_timer, deadline_timer = self._attempt_timers(expire)
        balancer.on_request_start(endpoint)
        started = self.clock.seconds()
        endpoints = self.upstream.client.endpoints
        try:
            waiting = connectProtocol(
                endpoints.endpoint(endpoint.scheme, endpoint.host, endpoint.port), side
            )
            await self._wait(waiting)
            read_timer.start()
            waiting = side.head
            status, reason, upstream_headers, rest = await self._wait(waiting)
        except BaseException:
            failure = Failure()
            self.body_started = side.sent and body is not None
            balancer.on_request_end(endpoint, self.clock.seconds() - started, True)
            side.abort()
            self._check_gone()
            if expired:
                return timed_out(expired[0], before_send=not side.sent)
            if failure.check(CancelledError):
                raise
            outcome = classify(failure)
            if side.sent and outcome.before_send:
                outcome = AttemptFailure(outcome.status, outcome.reason)
            return outcome
        finally:
            read_timer.stop()
            if deadline_timer is not None:
                deadline_timer.stop()
        elapsed = self.clock.seconds() - started
        if self.gone:
            side.abort()
            balancer.on_request_end(endpoint, elapsed, False)
            raise CancelledError()

        remaining = None
        if status != 101:
            lengths = upstream_headers.getRawHeaders(b"content-length")
            if status in _NO_BODY_STATUSES or self.method == b"HEAD":
                remaining = 0
            elif lengths and lengths[0].strip().isdigit():
                remaining = int(lengths[0])
        self.upstream.health.request_outcome(endpoint, status)
        self.ctx.response.status = status
        self.ctx.response.sent = True
        splice = Splice(
            request.channel,
            side,
            self.clock,
            self.timeouts.read,
            remaining=remaining,
            closed=lambda: balancer.on_request_end(endpoint, elapsed, False),
        )
        splice.start(
            upgrade_response_head(status, reason, upstream_headers, self.ctx.response), rest
        )
        if remaining == 0:
            splice.close()
        return None

