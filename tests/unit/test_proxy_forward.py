"""
The forwarding engine on fakes: a real Site and Router fed raw bytes, an
Upstream whose Agent is scripted, and a MemoryReactorClock for the timers.
"""

import json
from types import SimpleNamespace
from typing import Any, Callable, List, Optional

import attrs
from zope.interface import implementer

from twisted.internet import error
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IPushProducer
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.web._newclient import ResponseDone, ResponseNeverReceived
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH

from infini_gateway.config.model import EndpointConfig, Timeouts, UpstreamConfig
from infini_gateway.filters import Filter
from infini_gateway.upstream.proxy import forward
from infini_gateway.upstream.upstreams import Upstream
from tests.unit._site import make_site, request

URLS = ("http://10.0.0.1:81", "http://10.0.0.2:82", "http://10.0.0.3:83")


@implementer(IPushProducer)
class FakeTransport:
    paused = stopped = False

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False

    def stopProducing(self):
        self.stopped = True


@attrs.define
class FakeResponse:
    code: int = 200
    phrase: bytes = b"OK"
    headers: Headers = attrs.field(factory=Headers)
    body: bytes = b""
    length: Any = None

    def deliverBody(self, protocol):
        protocol.makeConnection(FakeTransport())
        if self.body:
            protocol.dataReceived(self.body)
        protocol.connectionLost(Failure(ResponseDone()))


class FakeAgent:
    """Answers each request with C{script(method, uri)}; records what it got."""

    def __init__(self, script: Callable[[bytes, bytes], Deferred]) -> None:
        self.script = script
        self.calls: List[tuple] = []

    def request(self, method, uri, headers=None, bodyProducer=None):
        self.calls.append((method, uri, headers, bodyProducer))
        if bodyProducer is not None:
            bodyProducer.startProducing(SimpleNamespace(write=lambda data: None))
        return self.script(method, uri)


def upstream(agent: FakeAgent, reactor, **settings) -> Upstream:
    config = UpstreamConfig(
        name="api", endpoints=tuple(EndpointConfig(u) for u in URLS), **settings
    )
    return Upstream(config, reactor, SimpleNamespace(agent=agent))


class Forward(Filter):
    name = "forward"

    def __init__(self, target: Upstream, timeouts: Optional[Timeouts] = None) -> None:
        self.target = target
        self.timeouts = timeouts

    def filter(self, ctx):
        return forward(ctx, self.target, self.timeouts)


def run(target: Upstream, raw: bytes = b"GET /p?q=1 HTTP/1.1\r\nHost: h\r\n\r\n", reactor=None):
    site = make_site([Forward(target)], reactor=reactor)
    return request(site, raw)


def endpoints_called(agent: FakeAgent) -> List[str]:
    return [uri.decode().rsplit(":", 1)[0].split("//")[1] for _, uri, _, _ in agent.calls]


def test_a_response_is_streamed_with_its_length_and_headers():
    """Status, end-to-end headers and Content-Length of the upstream reach the client."""
    headers = Headers({b"X-Up": [b"1"], b"Set-Cookie": [b"a=1", b"b=2"]})
    agent = FakeAgent(
        lambda m, u: _succeed(FakeResponse(201, b"Created", headers, b"hello", 5))
    )
    exchange = run(upstream(agent, MemoryReactorClock()))
    assert exchange.status == 201
    assert exchange.body == b"hello"
    assert exchange.header("content-length") == "5"
    assert exchange.header_values("set-cookie") == ["a=1", "b=2"]
    assert exchange.header("content-type") is None
    method, uri, sent, producer = agent.calls[0]
    assert (method, uri, producer) == (b"GET", b"http://10.0.0.1:81/p?q=1", None)
    assert sent.getRawHeaders(b"x-forwarded-for") == [b"127.0.0.1"]


def _succeed(value):
    d: Deferred = Deferred()
    d.callback(value)
    return d


def test_unknown_length_is_chunked():
    agent = FakeAgent(lambda m, u: _succeed(FakeResponse(body=b"abc", length=UNKNOWN_LENGTH)))
    exchange = run(upstream(agent, MemoryReactorClock()))
    assert exchange.header("transfer-encoding") == "chunked"
    assert exchange.transport.value().endswith(b"3\r\nabc\r\n0\r\n\r\n")


def test_connect_failures_are_retried_on_endpoints_not_tried():
    """Every endpoint refuses: each is tried once, then 502 names the reason."""
    agent = FakeAgent(lambda m, u: fail(error.ConnectionRefusedError()))
    exchange = run(upstream(agent, MemoryReactorClock()))
    assert sorted(endpoints_called(agent)) == ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
    assert exchange.status == 502
    assert json.loads(exchange.body) == {
        "error": "bad gateway",
        "upstream": "api",
        "reason": "connection refused",
    }


def test_retries_setting_bounds_the_attempts():
    agent = FakeAgent(lambda m, u: fail(error.ConnectionRefusedError()))
    run(upstream(agent, MemoryReactorClock(), retries=1))
    assert len(agent.calls) == 2


def test_a_post_is_not_retried_once_sent_but_a_get_is():
    """A reset after sending: GET goes on to another endpoint, POST stops at 502."""
    reset = lambda m, u: fail(ResponseNeverReceived([Failure(error.ConnectionLost())]))
    agent = FakeAgent(reset)
    exchange = run(
        upstream(agent, MemoryReactorClock()),
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",
    )
    assert len(agent.calls) == 1
    assert exchange.status == 502
    assert json.loads(exchange.body)["reason"] == "connection reset"

    agent = FakeAgent(reset)
    run(upstream(agent, MemoryReactorClock()))
    assert len(agent.calls) == 3

    agent = FakeAgent(reset)
    run(
        upstream(agent, MemoryReactorClock(), retry_non_idempotent=True),
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",
    )
    assert len(agent.calls) == 3


def test_a_refused_post_is_retried_since_nothing_was_sent():
    agent = FakeAgent(lambda m, u: fail(error.ConnectionRefusedError()))
    run(
        upstream(agent, MemoryReactorClock()),
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",
    )
    assert len(agent.calls) == 3
    assert agent.calls[0][3].length == 3


def test_read_timeout_gives_504_and_cancels_the_request():
    """No response within the read timeout: the attempt is cancelled, the last is 504."""
    pending: List[Deferred] = []

    def never(method, uri):
        d: Deferred = Deferred()
        pending.append(d)
        return d

    reactor = MemoryReactorClock()
    agent = FakeAgent(never)
    exchange = run(upstream(agent, reactor, retries=0), reactor=reactor)
    assert exchange.status is None
    reactor.advance(59)
    assert exchange.read().status is None
    reactor.advance(1.5)
    exchange.read()
    assert exchange.status == 504
    assert json.loads(exchange.body)["reason"] == "read timeout"
    assert pending[0].called


def test_filter_timeouts_override_the_upstreams():
    reactor = MemoryReactorClock()
    agent = FakeAgent(lambda m, u: Deferred())
    site = make_site(
        [Forward(upstream(agent, reactor, retries=0), Timeouts(read=2.0))], reactor=reactor
    )
    exchange = request(site)
    reactor.advance(2.1)
    assert exchange.read().status == 504


def test_retry_timeout_is_an_overall_deadline():
    """With retry_timeout, attempts stop when it passes: 504."""
    reactor = MemoryReactorClock()
    agent = FakeAgent(lambda m, u: Deferred())
    exchange = run(
        upstream(agent, reactor, timeout=Timeouts(read=10.0), retry_timeout=15.0),
        reactor=reactor,
    )
    reactor.advance(10.1)  # first attempt: read timeout, second starts
    assert len(agent.calls) == 2
    reactor.advance(5)
    assert exchange.read().status == 504
    assert json.loads(exchange.body)["reason"] == "retry_timeout passed"
    assert len(agent.calls) == 2


def test_no_endpoint_available_is_503():
    agent = FakeAgent(lambda m, u: fail(error.ConnectionRefusedError()))
    target = upstream(agent, MemoryReactorClock())
    for endpoint in target.endpoints:
        endpoint.healthy = False
    exchange = run(target)
    assert exchange.status == 503
    assert json.loads(exchange.body)["reason"] == "no endpoint available"
    assert agent.calls == []


def test_retry_on_status_tries_another_endpoint():
    answers = [FakeResponse(503, body=b"busy", length=4), FakeResponse(200, body=b"ok", length=2)]
    agent = FakeAgent(lambda m, u: _succeed(answers.pop(0)))
    exchange = run(upstream(agent, MemoryReactorClock(), retry_on_status=(503,)))
    assert (exchange.status, exchange.body) == (200, b"ok")
    assert len(agent.calls) == 2


def test_the_client_going_away_cancels_the_upstream_request():
    """A disconnect while waiting for the upstream cancels it, and nothing is retried."""
    reactor = MemoryReactorClock()
    cancelled = []
    agent = FakeAgent(lambda m, u: Deferred(lambda d: cancelled.append(True)))
    target = upstream(agent, reactor)
    exchange = run(target, reactor=reactor)
    exchange.channel.connectionLost(Failure(error.ConnectionDone()))
    assert cancelled == [True]
    assert len(agent.calls) == 1
    assert [e.in_flight for e in target.endpoints] == [0, 0, 0]


def test_head_keeps_the_upstreams_content_length():
    """A HEAD answer says how long the GET's body would be, as the upstream did."""
    headers = Headers({b"Content-Length": [b"1234"], b"X-Up": [b"1"]})
    agent = FakeAgent(lambda m, u: _succeed(FakeResponse(200, b"OK", headers, b"", 0)))
    exchange = run(
        upstream(agent, MemoryReactorClock()), b"HEAD /p HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    assert exchange.status == 200
    assert exchange.header("content-length") == "1234"
    assert exchange.header("x-up") == "1"
    assert exchange.body == b""
    assert agent.calls[0][0] == b"HEAD"


def test_head_without_a_length_gets_none_invented():
    agent = FakeAgent(lambda m, u: _succeed(FakeResponse(200, b"OK", Headers(), b"", 0)))
    exchange = run(
        upstream(agent, MemoryReactorClock()), b"HEAD /p HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    assert exchange.status == 200
    assert exchange.header("content-length") is None
    assert exchange.header("transfer-encoding") is None
