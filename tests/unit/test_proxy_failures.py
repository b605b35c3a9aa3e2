"""Upstream failures: the status each gets and whether it may be retried."""

import pytest
from OpenSSL import SSL

from twisted.internet import error
from twisted.python.failure import Failure
from twisted.web._newclient import (
    RequestNotSent,
    RequestTransmissionFailed,
    ResponseNeverReceived,
)

from infini_gateway.upstream.failures import (
    AttemptFailure,
    classify,
    may_retry,
    no_endpoint,
    timed_out,
)


@pytest.mark.parametrize(
    "exception, status, reason, before_send",
    [
        (error.ConnectionRefusedError(), 502, "connection refused", True),
        (error.TimeoutError(), 504, "connect timeout", True),
        (error.DNSLookupError("nope"), 502, "host name not found", True),
        (error.NoRouteError(), 502, "cannot connect: No route to host.", True),
        (RequestNotSent(), 502, "connection closed before sending", True),
        (
            ResponseNeverReceived([Failure(error.ConnectionLost())]),
            502,
            "connection reset",
            False,
        ),
        (
            ResponseNeverReceived([Failure(error.ConnectionDone())]),
            502,
            "connection closed before the response",
            False,
        ),
        (
            RequestTransmissionFailed([Failure(error.ConnectionLost())]),
            502,
            "connection reset",
            False,
        ),
        (
            ResponseNeverReceived(
                [Failure(SSL.Error([("SSL routines", "", "certificate verify failed")]))]
            ),
            502,
            "TLS failed: certificate verify failed",
            False,
        ),
    ],
)
def test_classify(exception, status, reason, before_send):
    """Connect failures are 502/504 before sending; later ones 502."""
    failure = classify(Failure(exception))
    assert (failure.status, failure.reason, failure.before_send) == (
        status,
        reason,
        before_send,
    )


def test_timeouts_and_no_endpoint():
    assert timed_out("read") == AttemptFailure(504, "read timeout")
    assert timed_out("retry_timeout").reason == "retry_timeout passed"
    assert no_endpoint(0) == AttemptFailure(503, "no endpoint available", True)
    assert no_endpoint(2).reason == "no endpoint available (tried 2)"


def test_document_names_upstream_and_reason():
    assert AttemptFailure(504, "read timeout").document("api") == {
        "error": "gateway timeout",
        "upstream": "api",
        "reason": "read timeout",
    }


SENT = AttemptFailure(502, "connection reset")
NOT_SENT = AttemptFailure(502, "connection refused", before_send=True)


@pytest.mark.parametrize(
    "failure, method, body_started, non_idempotent, expected",
    [
        (NOT_SENT, b"POST", False, False, True),  # nothing left: always safe
        (SENT, b"GET", False, False, True),
        (SENT, b"PUT", False, False, True),  # idempotent and no body sent
        (SENT, b"PUT", True, False, False),  # its body was sent
        (SENT, b"POST", False, False, False),
        (SENT, b"PATCH", False, False, False),
        (SENT, b"POST", True, True, True),  # retry_non_idempotent
    ],
)
def test_retry_policy(failure, method, body_started, non_idempotent, expected):
    assert may_retry(failure, method, body_started, non_idempotent) is expected
