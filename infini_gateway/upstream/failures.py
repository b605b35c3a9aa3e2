"""
What went wrong with an upstream attempt, the status the client gets for it,
and whether the request may be tried again on another endpoint.

  - nothing could be connected (refused, unreachable, name not found) ->
    C{502}; a connect timeout -> C{504}; nothing was sent, so any request
    may be retried;
  - the connection failed after that (reset, closed, TLS refused, an
    invalid response) -> C{502};
  - the upstream sent nothing for the read or send timeout -> C{504};
  - C{retry_timeout} passed -> C{504};
  - no endpoint is available (all tried, unhealthy or drained) -> C{503}.

The JSON body names the upstream and the reason:
C{{"error": "bad gateway", "upstream": "api", "reason": "connection refused"}}.
"""

from typing import FrozenSet, Optional

import attrs
from OpenSSL import SSL

from twisted.internet import error
from twisted.python.failure import Failure
from twisted.web._newclient import (
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)

# RFC 9110 9.2.2; a request with a body that was sent is not retried either.
IDEMPOTENT: FrozenSet[bytes] = frozenset(
    [b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"]
)

_TITLES = {502: "bad gateway", 503: "service unavailable", 504: "gateway timeout"}


@attrs.frozen
class AttemptFailure:
    """
    One failed attempt.

    @ivar status: what the client gets if it is the last.
    @ivar reason: for the JSON body and the log.
    @ivar before_send: nothing of the request left the gateway.
    @ivar endpoint: the endpoint's URL, when one was tried.
    """

    status: int
    reason: str
    before_send: bool = False
    endpoint: Optional[str] = None

    def document(self, upstream: str) -> dict:
        """The JSON body of the answer."""
        return {
            "error": _TITLES.get(self.status, "upstream error"),
            "upstream": upstream,
            "reason": self.reason,
        }


def no_endpoint(tried: int) -> AttemptFailure:
    reason = "no endpoint available"
    if tried:
        reason += f" (tried {tried})"
    return AttemptFailure(503, reason, before_send=True)


def timed_out(kind: str, before_send: bool = False) -> AttemptFailure:
    """C{kind}: C{connect}, C{send}, C{read} or C{retry_timeout}."""
    text = "retry_timeout passed" if kind == "retry_timeout" else f"{kind} timeout"
    return AttemptFailure(504, text, before_send=before_send)


def classify(failure: Failure) -> AttemptFailure:
    """The L{AttemptFailure} for an Agent request that failed."""
    value = failure.value
    if isinstance(value, (error.TimeoutError, error.TCPTimedOutError)):
        return timed_out("connect", before_send=True)
    if isinstance(value, error.ConnectionRefusedError):
        return AttemptFailure(502, "connection refused", before_send=True)
    if isinstance(value, error.DNSLookupError):
        return AttemptFailure(502, "host name not found", before_send=True)
    if isinstance(value, error.ConnectError):
        return AttemptFailure(502, f"cannot connect: {_text(value)}", before_send=True)
    if isinstance(value, RequestNotSent):
        return AttemptFailure(502, "connection closed before sending", before_send=True)
    if isinstance(value, (ResponseFailed, RequestTransmissionFailed)):
        reasons = list(getattr(value, "reasons", []))
        for reason in reasons:
            if reason.check(SSL.Error):
                return AttemptFailure(502, f"TLS failed: {_text(reason.value)}")
        for reason in reasons:
            if reason.check(error.ConnectionLost):
                return AttemptFailure(502, "connection reset")
            if reason.check(error.ConnectionDone):
                return AttemptFailure(502, "connection closed before the response")
        if isinstance(value, ResponseNeverReceived):
            return AttemptFailure(502, "no response")
        if reasons:
            return AttemptFailure(502, f"invalid response: {_text(reasons[0].value)}")
        return AttemptFailure(502, "request failed")
    if isinstance(value, SSL.Error):
        return AttemptFailure(502, f"TLS failed: {_text(value)}")
    return AttemptFailure(502, _text(value))


def may_retry(
    failure: AttemptFailure, method: bytes, body_started: bool, retry_non_idempotent: bool
) -> bool:
    """
    Whether another endpoint may get the request: always when nothing was
    sent; after that, only an idempotent request whose body (if any) was
    not started, unless C{retry_non_idempotent}.
    """
    if failure.status == 503 or failure.before_send or retry_non_idempotent:
        return True
    return method in IDEMPOTENT and not body_started


def _text(value: BaseException) -> str:
    text = str(value).strip()
    if isinstance(value, SSL.Error) and value.args and isinstance(value.args[0], list):
        parts = [part[-1] for part in value.args[0] if isinstance(part, tuple) and part]
        text = ", ".join(str(p) for p in parts) or text
    return text or type(value).__name__
