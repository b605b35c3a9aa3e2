"""
The proxy's HTTP/1.1 client on fakes: an endpoint factory whose connections
are StringTransports, a MemoryReactorClock for the idle timers, and raw
response bytes fed to the connection as the upstream would send them.
"""

from io import BytesIO
from typing import Any, List, Optional, Tuple

import pytest
from zope.interface import implementer

from twisted.internet import error
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.web._newclient import (
    RequestTransmissionFailed,
    ResponseDone,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer

from infini_gateway.upstream.client import (
    MAX_HEAD,
    InvalidResponse,
    UpstreamAgent,
    UpstreamConnection,
)
from infini_gateway.upstream.failures import classify
from infini_gateway.upstream.streams import RequestBody

URL = b"http://10.0.0.1:81"
KEY = ("http", "10.0.0.1", 81)
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


# --- fakes -------------------------------------------------------------------


class Endpoints:
    """
    The agent's endpoint factory.  Each connect builds the protocol over a
    StringTransport and succeeds at once, unless C{manual}: then the
    Deferred is kept in C{pending} for the test to fire.
    """

    def __init__(self, manual: bool = False) -> None:
        self.manual = manual
        self.keys: List[Tuple[str, str, int]] = []
        self.connections: List[UpstreamConnection] = []
        self.pending: List[Tuple[Any, Deferred]] = []
        self.cancelled = 0

    def endpoint(self, scheme: str, host: str, port: int) -> "Endpoint":
        return Endpoint(self, (scheme, host, port))

    def build(self, factory: Any) -> UpstreamConnection:
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        self.connections.append(protocol)
        return protocol


class Endpoint:
    def __init__(self, owner: Endpoints, key: Tuple[str, str, int]) -> None:
        self.owner = owner
        self.key = key

    def connect(self, factory: Any) -> Deferred:
        self.owner.keys.append(self.key)
        if not self.owner.manual:
            return succeed(self.owner.build(factory))

        def cancel(_: Deferred) -> None:
            self.owner.cancelled += 1

        d: Deferred = Deferred(cancel)
        self.owner.pending.append((factory, d))
        return d


@implementer(IBodyProducer)
class Producer:
    """A request body the test writes piece by piece, then finishes or fails."""

    def __init__(self, length: Any = UNKNOWN_LENGTH) -> None:
        self.length = length
        self.consumer: Any = None
        self.done: Optional[Deferred] = None
        self.state = "new"

    def startProducing(self, consumer: Any) -> Deferred:
        self.consumer = consumer
        self.state = "producing"
        self.done = Deferred()
        return self.done

    def write(self, data: bytes) -> None:
        self.consumer.write(data)

    def finish(self) -> None:
        self.done.callback(None)

    def pauseProducing(self) -> None:
        self.state = "paused"

    def resumeProducing(self) -> None:
        self.state = "producing"

    def stopProducing(self) -> None:
        self.state = "stopped"


class Body(Protocol):
    """Collects a response body and how it ended."""

    def __init__(self) -> None:
        self.chunks: List[bytes] = []
        self.reason: Optional[Failure] = None

    @property
    def data(self) -> bytes:
        return b"".join(self.chunks)

    def dataReceived(self, data: bytes) -> None:
        assert self.reason is None, "data after the end"
        self.chunks.append(data)

    def connectionLost(self, reason: Failure = None) -> None:
        assert self.reason is None, "ended twice"
        self.reason = reason


# --- helpers -----------------------------------------------------------------


def make_agent(manual: bool = False, **settings: Any):
    clock = MemoryReactorClock()
    endpoints = Endpoints(manual)
    return UpstreamAgent(clock, endpoints, **settings), endpoints, clock


def result_of(d: Deferred) -> Any:
    """What C{d} fired with (kept in it); it must have fired, successfully."""
    box: List[Any] = []

    def keep(result: Any) -> Any:
        box.append(result)
        return result

    d.addCallback(keep)
    if not box:
        d.addErrback(box.append)
    assert box, "the Deferred has not fired"
    if isinstance(box[0], Failure):
        box[0].raiseException()
    return box[0]


def failure_of(d: Deferred) -> Failure:
    """The Failure C{d} fired with; it must have failed."""
    box: List[Any] = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    assert isinstance(box[0], Failure), f"the Deferred succeeded with {box[0]!r}"
    return box[0]


def has_not_fired(d: Deferred) -> bool:
    return not d.called


def sent(connection: UpstreamConnection) -> bytes:
    """What went out on C{connection}, which is then forgotten."""
    value = connection.transport.value()
    connection.transport.clear()
    return value


def feed(connection: UpstreamConnection, data: bytes, step: int = 0) -> None:
    """The upstream sends C{data}, all at once or C{step} bytes at a time."""
    if not step:
        connection.dataReceived(data)
        return
    for i in range(0, len(data), step):
        connection.dataReceived(data[i : i + step])


def close(connection: UpstreamConnection, reason: Any = error.ConnectionDone) -> None:
    """The connection goes away, as the reactor would tell it."""
    connection.connectionLost(Failure(reason()))


def get(agent: UpstreamAgent, path: bytes = b"/", method: bytes = b"GET", **kw: Any):
    return agent.request(method, URL + path, Headers({b"Host": [b"api"]}), **kw)


def exchange(
    agent: UpstreamAgent, endpoints: Endpoints, answer: bytes, method: bytes = b"GET"
) -> Tuple[Any, Body, UpstreamConnection]:
    """One request answered with C{answer}; its response, body and connection."""
    before = len(endpoints.connections)
    d = get(agent, method=method)
    connection = (
        endpoints.connections[-1]
        if len(endpoints.connections) > before
        else _busy(endpoints)
    )
    feed(connection, answer)
    response = result_of(d)
    body = Body()
    response.deliverBody(body)
    return response, body, connection


def _busy(endpoints: Endpoints) -> UpstreamConnection:
    (connection,) = [c for c in endpoints.connections if c._state == "head"]
    return connection


def idle(agent: UpstreamAgent, key=KEY) -> List[UpstreamConnection]:
    return list(agent.idle.get(key, []))


# --- the request -------------------------------------------------------------


def test_the_request_head_is_the_method_target_and_headers_as_given():
    agent, endpoints, _ = make_agent()
    headers = Headers({b"Host": [b"api.example"], b"X-Many": [b"1", b"2"]})
    agent.request(b"DELETE", URL + b"/items/7?force=1&x=%20", headers)
    (connection,) = endpoints.connections
    assert sent(connection) == (
        b"DELETE /items/7?force=1&x=%20 HTTP/1.1\r\n"
        b"Host: api.example\r\n"
        b"X-Many: 1\r\n"
        b"X-Many: 2\r\n"
        b"\r\n"
    )


def test_no_host_header_is_invented_and_a_bare_authority_asks_for_slash():
    agent, endpoints, _ = make_agent()
    agent.request(b"GET", URL)
    assert sent(endpoints.connections[0]) == b"GET / HTTP/1.1\r\n\r\n"


def test_a_body_of_known_length_gets_content_length_and_follows_the_head():
    agent, endpoints, clock = make_agent()
    body = RequestBody(BytesIO(b"hello world"), 11, clock, 0, lambda: None, lambda: None)
    agent.request(b"POST", URL + b"/up", Headers({b"Host": [b"h"]}), body)
    (connection,) = endpoints.connections
    assert sent(connection) == (
        b"POST /up HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\nhello world"
    )
    assert body.finished
    assert connection.transport.producer is None  # registered, then unregistered


def test_a_body_of_unknown_length_is_sent_chunked_and_ends_with_the_zero_chunk():
    agent, endpoints, _ = make_agent()
    producer = Producer()
    agent.request(b"POST", URL + b"/up", Headers(), producer)
    (connection,) = endpoints.connections
    assert sent(connection) == b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
    assert connection.transport.producer is producer
    producer.write(b"hello")
    producer.write(b"")  # no empty chunk: it would end the body
    producer.write(b"x" * 26)
    assert sent(connection) == b"5\r\nhello\r\n" + b"1a\r\n" + b"x" * 26 + b"\r\n"
    producer.finish()
    assert sent(connection) == b"0\r\n\r\n"
    assert connection.transport.producer is None


def test_an_empty_body_of_known_length_says_content_length_zero():
    agent, endpoints, _ = make_agent()
    producer = Producer(length=0)
    agent.request(b"PUT", URL + b"/x", None, producer)
    producer.finish()
    assert sent(endpoints.connections[0]) == b"PUT /x HTTP/1.1\r\nContent-Length: 0\r\n\r\n"


@pytest.mark.parametrize(
    "url, key, target",
    [
        (b"http://10.0.0.1:81/p?q=1", ("http", "10.0.0.1", 81), b"/p?q=1"),
        (b"http://api.internal/p", ("http", "api.internal", 80), b"/p"),
        (b"https://api.internal/", ("https", "api.internal", 443), b"/"),
        (b"https://api.internal:8443", ("https", "api.internal", 8443), b"/"),
        (b"http://[::1]:8080/v6", ("http", "::1", 8080), b"/v6"),
        (b"http://[fe80::1]/v6", ("http", "fe80::1", 80), b"/v6"),
        (b"https://[2001:db8::7]", ("https", "2001:db8::7", 443), b"/"),
    ],
)
def test_the_url_gives_the_endpoint_and_the_request_target(url, key, target):
    agent, endpoints, _ = make_agent()
    agent.request(b"GET", url)
    agent.request(b"GET", url)  # the second from the cache of split URLs
    assert endpoints.keys == [key, key]
    for connection in endpoints.connections:
        assert sent(connection) == b"GET %s HTTP/1.1\r\n\r\n" % target


# --- the response ------------------------------------------------------------


def test_a_content_length_response_gives_its_status_headers_and_body():
    agent, endpoints, _ = make_agent()
    answer = (
        b"HTTP/1.1 201 Created Here\r\n"
        b"Content-Length: 5\r\n"
        b"Set-Cookie: a=1\r\n"
        b"X-Up:   spaced \t\r\n"
        b"set-cookie: b=2\r\n"
        b"\r\n"
        b"hello"
    )
    response, body, _ = exchange(agent, endpoints, answer)
    assert (response.code, response.phrase) == (201, b"Created Here")
    assert response.version == (b"HTTP", 1, 1)
    assert response.length == 5
    assert response.headers.getRawHeaders(b"set-cookie") == [b"a=1", b"b=2"]
    assert response.headers.getRawHeaders(b"x-up") == [b"spaced"]
    assert body.data == b"hello"
    assert body.reason.check(ResponseDone)


def test_a_status_line_without_phrase_and_an_http_1_0_version():
    agent, endpoints, _ = make_agent()
    response, body, _ = exchange(
        agent, endpoints, b"HTTP/1.0 404\r\nContent-Length: 2\r\n\r\nno"
    )
    assert (response.code, response.phrase, response.version) == (404, b"", (b"HTTP", 1, 0))
    assert body.data == b"no"


CL_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nX-A: 1\r\n\r\n0123456789"


@pytest.mark.parametrize("split", range(1, len(CL_RESPONSE)))
def test_a_content_length_response_split_anywhere(split):
    """Two pieces, cut at every byte: in the status line, in "\\r\\n\\r\\n", in the body."""
    agent, endpoints, _ = make_agent()
    d = get(agent)
    (connection,) = endpoints.connections
    feed(connection, CL_RESPONSE[:split])
    head_in = split >= CL_RESPONSE.index(b"\r\n\r\n") + 4
    assert has_not_fired(d) != head_in
    feed(connection, CL_RESPONSE[split:])
    response = result_of(d)
    body = Body()
    response.deliverBody(body)
    assert response.headers.getRawHeaders(b"x-a") == [b"1"]
    assert (body.data, response.length) == (b"0123456789", 10)
    assert body.reason.check(ResponseDone)
    assert idle(agent) == [connection]


def test_a_content_length_response_fed_one_byte_at_a_time():
    agent, endpoints, _ = make_agent()
    d = get(agent)
    body = Body()
    d.addCallback(lambda response: response.deliverBody(body))
    feed(endpoints.connections[0], CL_RESPONSE, step=1)
    assert body.chunks == [bytes([b]) for b in b"0123456789"]  # passed on as it came
    assert body.reason.check(ResponseDone)
    assert idle(agent) == endpoints.connections


CHUNKED_RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"\r\n"
    b"5\r\nhello\r\n"
    b"A;name=value;other\r\n0123456789\r\n"
    b"1f \t\r\n" + b"y" * 31 + b"\r\n"
    b"0\r\n"
    b"X-Trailer: dropped\r\n"
    b"X-Other: too\r\n"
    b"\r\n"
)
CHUNKED_BODY = b"hello0123456789" + b"y" * 31


@pytest.mark.parametrize("step", [0, 1, 2, 3, 7])
def test_a_chunked_response_is_decoded_whatever_the_pieces(step):
    agent, endpoints, _ = make_agent()
    d = get(agent)
    body = Body()
    responses: List[Any] = []
    d.addCallback(lambda response: responses.append(response) or response.deliverBody(body))
    feed(endpoints.connections[0], CHUNKED_RESPONSE, step)
    (response,) = responses
    assert response.length is UNKNOWN_LENGTH
    assert body.data == CHUNKED_BODY
    assert body.reason.check(ResponseDone)
    assert response.headers.getRawHeaders(b"x-trailer") is None
    assert idle(agent) == endpoints.connections


@pytest.mark.parametrize("split", range(1, len(CHUNKED_RESPONSE)))
def test_a_chunked_response_split_anywhere(split):
    agent, endpoints, _ = make_agent()
    d = get(agent)
    body = Body()
    d.addCallback(lambda response: response.deliverBody(body))
    connection = endpoints.connections[0]
    feed(connection, CHUNKED_RESPONSE[:split])
    assert body.reason is None
    feed(connection, CHUNKED_RESPONSE[split:])
    assert body.data == CHUNKED_BODY
    assert body.reason.check(ResponseDone)
    assert idle(agent) == [connection]


def test_a_chunked_response_with_upper_case_and_zero_padded_sizes():
    agent, endpoints, _ = make_agent()
    answer = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n"
        b"000B\r\nhello world\r\n00\r\n\r\n"
    )
    _, body, _ = exchange(agent, endpoints, answer)
    assert body.data == b"hello world"
    assert body.reason.check(ResponseDone)


def test_a_close_delimited_body_ends_with_potential_data_loss():
    agent, endpoints, _ = make_agent()
    response, body, connection = exchange(
        agent, endpoints, b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nsome"
    )
    assert response.length is UNKNOWN_LENGTH
    feed(connection, b" more")
    assert body.reason is None
    close(connection)
    assert body.data == b"some more"
    assert body.reason.check(PotentialDataLoss)
    assert idle(agent) == []


def test_a_transfer_encoding_that_is_not_chunked_runs_to_the_close():
    agent, endpoints, _ = make_agent()
    _, body, connection = exchange(
        agent, endpoints, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8b"
    )
    close(connection)
    assert body.data == b"\x1f\x8b"
    assert body.reason.check(PotentialDataLoss)


@pytest.mark.parametrize(
    "method, status",
    [(b"HEAD", b"200 OK"), (b"GET", b"204 No Content"), (b"GET", b"304 Not Modified")],
)
def test_no_body_for_head_204_and_304_even_with_a_length(method, status):
    agent, endpoints, _ = make_agent()
    answer = b"HTTP/1.1 %s\r\nContent-Length: 42\r\nTransfer-Encoding: chunked\r\n\r\n" % status
    response, body, connection = exchange(agent, endpoints, answer, method=method)
    assert response.length == 0
    assert response.headers.getRawHeaders(b"content-length") == [b"42"]
    assert body.data == b""
    assert body.reason.check(ResponseDone)
    assert idle(agent) == [connection]


def test_content_length_zero_ends_the_body_at_once_and_keeps_the_connection():
    agent, endpoints, _ = make_agent()
    response, body, connection = exchange(
        agent, endpoints, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    )
    assert response.length == 0
    assert body.reason.check(ResponseDone)
    assert idle(agent) == [connection]


@pytest.mark.parametrize("step", [0, 1])
def test_interim_responses_are_skipped(step):
    agent, endpoints, _ = make_agent()
    d = get(agent)
    connection = endpoints.connections[0]
    feed(connection, b"HTTP/1.1 100 Continue\r\n\r\n", step)
    assert has_not_fired(d)
    feed(
        connection,
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        step,
    )
    response = result_of(d)
    body = Body()
    response.deliverBody(body)
    assert response.code == 200
    assert response.headers.getRawHeaders(b"link") is None
    assert body.data == b"ok"
    assert idle(agent) == [connection]


def test_101_to_a_request_that_asked_no_upgrade_is_rejected():
    agent, endpoints, _ = make_agent()
    d = get(agent)
    connection = endpoints.connections[0]
    feed(connection, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
    reason = failure_of(d)
    assert reason.check(ResponseFailed)
    assert classify(reason).reason.startswith("invalid response: 101")
    assert connection.transport.disconnected  # aborted


def test_a_body_that_came_before_deliver_body_is_kept():
    agent, endpoints, _ = make_agent()
    d = get(agent)
    connection = endpoints.connections[0]
    feed(connection, b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc")
    response = result_of(d)
    feed(connection, b"def")
    body = Body()
    response.deliverBody(body)
    assert body.data == b"abcdef"
    assert body.reason is None
    feed(connection, b"ghi")
    assert body.data == b"abcdefghi"
    assert body.reason.check(ResponseDone)


def test_a_body_that_ended_before_deliver_body_is_delivered_with_its_end():
    agent, endpoints, _ = make_agent()
    d = get(agent)
    connection = endpoints.connections[0]
    feed(connection, CHUNKED_RESPONSE)
    response = result_of(d)
    assert idle(agent) == [connection]  # reusable before the body is even read
    body = Body()
    response.deliverBody(body)
    assert body.data == CHUNKED_BODY
    assert body.reason.check(ResponseDone)


def test_a_body_cut_short_before_deliver_body_is_delivered_with_its_failure():
    agent, endpoints, _ = make_agent()
    d = get(agent)
    connection = endpoints.connections[0]
    feed(connection, b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nabc")
    response = result_of(d)
    close(connection)
    body = Body()
    response.deliverBody(body)
    assert body.data == b"abc"
    assert body.reason.check(ResponseFailed)


# --- keep-alive --------------------------------------------------------------


def test_a_connection_is_reused_after_a_complete_response():
    agent, endpoints, clock = make_agent()
    _, body, connection = exchange(agent, endpoints, OK)
    assert idle(agent) == [connection]
    assert not connection.transport.disconnecting
    assert sent(connection).startswith(b"GET / HTTP/1.1\r\n")

    d = get(agent, b"/second")
    assert idle(agent) == []  # busy
    assert clock.getDelayedCalls() == []  # its idle timer is cancelled
    assert sent(connection) == b"GET /second HTTP/1.1\r\nHost: api\r\n\r\n"
    feed(connection, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo")
    body = Body()
    result_of(d).deliverBody(body)
    assert body.data == b"two"
    assert len(endpoints.connections) == 1
    assert endpoints.keys == [KEY]
    assert idle(agent) == [connection]


def test_a_head_request_does_not_leave_its_no_body_rule_to_the_next_one():
    agent, endpoints, _ = make_agent()
    response, _, connection = exchange(
        agent, endpoints, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", method=b"HEAD"
    )
    assert response.length == 0
    response, body, again = exchange(agent, endpoints, OK)
    assert again is connection
    assert (response.length, body.data) == (5, b"hello")
    assert idle(agent) == [connection]


def test_bodies_are_sent_on_a_reused_connection_too():
    agent, endpoints, clock = make_agent()
    for text in (b"one", b"three"):
        body = RequestBody(BytesIO(text), len(text), clock, 0, lambda: None, lambda: None)
        d = agent.request(b"POST", URL + b"/", None, body)
        connection = endpoints.connections[0]
        assert sent(connection).endswith(b"Content-Length: %d\r\n\r\n%s" % (len(text), text))
        feed(connection, OK)
        assert result_of(d).code == 200
    assert len(endpoints.connections) == 1
    assert idle(agent) == [connection]


def test_connection_close_on_one_request_does_not_stick_to_the_connection():
    agent, endpoints, _ = make_agent()
    _, _, connection = exchange(agent, endpoints, OK)
    _, _, again = exchange(agent, endpoints, OK)
    assert again is connection and idle(agent) == [connection]
    agent.request(b"GET", URL + b"/", Headers({b"Connection": [b"Close"]}))
    feed(connection, OK)
    assert connection.transport.disconnecting
    assert idle(agent) == []


def test_a_connection_to_another_endpoint_is_not_reused():
    agent, endpoints, _ = make_agent()
    exchange(agent, endpoints, OK)
    agent.request(b"GET", b"http://10.0.0.1:82/")
    assert len(endpoints.connections) == 2
    assert endpoints.keys == [KEY, ("http", "10.0.0.1", 82)]


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nConnection: Keep-Alive, Close\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nextra",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\nextra",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nextra",
    ],
    ids=[
        "connection-close",
        "connection-close-in-a-list",
        "http-1.0",
        "http-1.0-keep-alive",
        "bytes-after-length-body",
        "bytes-after-chunked-body",
        "chunked-and-content-length",
        "bytes-after-204",
        "bytes-after-empty-body",
    ],
)
def test_a_connection_is_not_reused_after(answer):
    agent, endpoints, _ = make_agent()
    _, body, connection = exchange(agent, endpoints, answer)
    assert body.reason.check(ResponseDone)
    assert idle(agent) == []
    assert connection.transport.disconnecting
    get(agent)
    assert len(endpoints.connections) == 2


def test_a_close_delimited_response_is_not_reused():
    agent, endpoints, _ = make_agent()
    _, _, connection = exchange(agent, endpoints, b"HTTP/1.1 200 OK\r\n\r\nall")
    close(connection)
    assert idle(agent) == []
    get(agent)
    assert len(endpoints.connections) == 2


def test_a_request_that_says_connection_close_is_not_reused():
    agent, endpoints, _ = make_agent()
    agent.request(b"GET", URL + b"/", Headers({b"Connection": [b"close"]}))
    connection = endpoints.connections[0]
    feed(connection, OK)
    assert idle(agent) == []
    assert connection.transport.disconnecting


def test_at_most_max_idle_connections_are_kept_per_endpoint():
    agent, endpoints, _ = make_agent(max_idle=2)
    requests = [get(agent) for _ in range(3)]
    assert len(endpoints.connections) == 3
    for connection in endpoints.connections:
        feed(connection, OK)
    for d in requests:
        result_of(d)
    first, second, third = endpoints.connections
    assert idle(agent) == [first, second]
    assert third.transport.disconnecting
    assert not first.transport.disconnecting and not second.transport.disconnecting
    # The most recently used idle one goes out first.
    get(agent)
    assert idle(agent) == [first]
    assert second._state == "head"


def test_max_idle_zero_keeps_nothing():
    agent, endpoints, _ = make_agent(max_idle=0)
    _, _, connection = exchange(agent, endpoints, OK)
    assert idle(agent) == []
    assert connection.transport.disconnecting


def test_an_idle_connection_is_closed_after_idle_timeout():
    agent, endpoints, clock = make_agent(idle_timeout=30)
    _, _, connection = exchange(agent, endpoints, OK)
    clock.advance(29.9)
    assert idle(agent) == [connection]
    assert not connection.transport.disconnecting
    clock.advance(0.1)
    assert idle(agent) == []
    assert connection.transport.disconnecting
    close(connection)
    get(agent)
    assert len(endpoints.connections) == 2


def test_the_idle_timeout_starts_again_at_each_release():
    agent, endpoints, clock = make_agent(idle_timeout=30)
    _, _, connection = exchange(agent, endpoints, OK)
    clock.advance(20)
    exchange(agent, endpoints, OK)
    clock.advance(20)
    assert idle(agent) == [connection]
    assert not connection.transport.disconnecting
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(10)
    assert connection.transport.disconnecting


def test_close_cached_connections_closes_idle_ones_and_busy_ones_once_done():
    agent, endpoints, clock = make_agent()
    requests = [get(agent) for _ in range(3)]
    first, second, busy = endpoints.connections
    feed(first, OK)
    feed(second, OK)
    assert idle(agent) == [first, second]
    done = agent.closeCachedConnections()
    assert clock.getDelayedCalls() == []  # idle timers cancelled
    assert first.transport.disconnecting and second.transport.disconnecting
    assert not busy.transport.disconnecting
    assert idle(agent) == []
    assert has_not_fired(done)
    close(first)
    assert has_not_fired(done)
    close(second)
    assert [ok for ok, _ in result_of(done)] == [True, True]
    feed(busy, OK)
    assert result_of(requests[2]).code == 200
    assert busy.transport.disconnecting
    assert idle(agent) == []


def test_an_idle_connection_closed_by_the_upstream_is_forgotten():
    agent, endpoints, clock = make_agent()
    _, _, connection = exchange(agent, endpoints, OK)
    close(connection)
    assert idle(agent) == []
    assert clock.getDelayedCalls() == []
    assert result_of(connection.closed) is None
    get(agent)
    assert len(endpoints.connections) == 2


def test_bytes_on_an_idle_connection_drop_it():
    agent, endpoints, clock = make_agent()
    _, _, connection = exchange(agent, endpoints, OK)
    feed(connection, b"HTTP/1.1 408 Request Timeout\r\n\r\n")
    assert connection.transport.disconnected  # aborted
    assert idle(agent) == []
    assert clock.getDelayedCalls() == []


# --- a stale idle connection -------------------------------------------------


def test_a_get_on_an_idle_connection_closed_meanwhile_is_sent_again():
    agent, endpoints, _ = make_agent()
    _, _, stale = exchange(agent, endpoints, OK)
    sent(stale)
    d = get(agent, b"/again")
    assert sent(stale) == b"GET /again HTTP/1.1\r\nHost: api\r\n\r\n"
    close(stale)
    assert has_not_fired(d)
    assert len(endpoints.connections) == 2
    fresh = endpoints.connections[1]
    assert sent(fresh) == b"GET /again HTTP/1.1\r\nHost: api\r\n\r\n"
    feed(fresh, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert result_of(d).code == 200


def test_the_retry_is_made_once_only():
    agent, endpoints, _ = make_agent()
    _, _, stale = exchange(agent, endpoints, OK)
    d = get(agent)
    close(stale)
    close(endpoints.connections[1])
    assert failure_of(d).check(ResponseNeverReceived)
    assert len(endpoints.connections) == 2


def test_the_retry_fails_with_its_connect_failure_and_may_be_cancelled():
    agent, endpoints, _ = make_agent(manual=True)
    first = get(agent)
    factory, connecting = endpoints.pending[0]
    stale = endpoints.build(factory)
    connecting.callback(stale)
    feed(stale, OK)
    assert result_of(first).code == 200
    d = get(agent)
    close(stale)
    assert len(endpoints.pending) == 2  # connecting again
    d.cancel()
    assert endpoints.cancelled == 1
    assert failure_of(d).check(CancelledError)

    d = get(agent)
    assert len(endpoints.pending) == 3  # nothing idle: a new connect
    endpoints.pending[2][1].errback(error.ConnectionRefusedError())
    assert classify(failure_of(d)).reason == "connection refused"


@pytest.mark.parametrize("method", [b"POST", b"GET"])
def test_a_request_with_a_body_is_not_sent_again(method):
    agent, endpoints, clock = make_agent()
    _, _, stale = exchange(agent, endpoints, OK)
    body = RequestBody(BytesIO(b"data"), 4, clock, 0, lambda: None, lambda: None)
    d = agent.request(method, URL + b"/", None, body)
    close(stale)
    reason = failure_of(d)
    assert reason.check(ResponseNeverReceived)
    assert classify(reason).reason == "connection closed before the response"
    assert len(endpoints.connections) == 1


def test_a_post_without_body_is_not_sent_again():
    agent, endpoints, _ = make_agent()
    _, _, stale = exchange(agent, endpoints, OK)
    d = get(agent, method=b"POST")
    close(stale)
    assert failure_of(d).check(ResponseNeverReceived)
    assert len(endpoints.connections) == 1


def test_a_reused_connection_that_answered_in_part_is_not_sent_again():
    agent, endpoints, _ = make_agent()
    _, _, stale = exchange(agent, endpoints, OK)
    d = get(agent)
    feed(stale, b"HTTP/1.1 200")
    close(stale)
    assert failure_of(d).check(ResponseNeverReceived)
    assert len(endpoints.connections) == 1


def test_a_new_connection_closed_before_the_answer_is_not_retried():
    agent, endpoints, _ = make_agent()
    d = get(agent)
    close(endpoints.connections[0])
    assert failure_of(d).check(ResponseNeverReceived)
    assert len(endpoints.connections) == 1


# --- failures ----------------------------------------------------------------


@pytest.mark.parametrize(
    "reason, text",
    [
        (error.ConnectionDone, "connection closed before the response"),
        (error.ConnectionLost, "connection reset"),
    ],
)
def test_a_connection_lost_before_the_answer(reason, text):
    agent, endpoints, _ = make_agent()
    d = get(agent)
    close(endpoints.connections[0], reason)
    failure = failure_of(d)
    assert failure.check(ResponseNeverReceived)
    assert classify(failure).reason == text
    assert classify(failure).status == 502


def test_a_connect_failure_is_passed_on():
    agent, endpoints, _ = make_agent(manual=True)
    d = get(agent)
    ((_, connecting),) = endpoints.pending
    connecting.errback(error.ConnectionRefusedError())
    failure = failure_of(d)
    assert classify(failure).reason == "connection refused"
    assert classify(failure).before_send


@pytest.mark.parametrize(
    "head, why",
    [
        (b"HTP/1.1 200 OK", "bad status line"),
        (b"HTTP/1.1", "bad status line"),
        (b"HTTP/2 200 OK", "bad status line"),
        (b"HTTP/1.2 200 OK", "bad HTTP version"),
        (b"HTTP/1.1 20 OK", "bad status code"),
        (b"HTTP/1.1 2x0 OK", "bad status code"),
        (b"HTTP/1.1 200 OK\r\nNoColon", "bad header line"),
        (b"HTTP/1.1 200 OK\r\n: empty name", "bad header line"),
        (b"HTTP/1.1 200 OK\r\nX-A : 1", "bad header line"),
        (b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded", "bad header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2", "conflicting"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1, 2", "conflicting"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1", "bad Content-Length"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 0x10", "bad Content-Length"),
    ],
)
def test_an_invalid_response_head_fails_the_request(head, why):
    agent, endpoints, _ = make_agent()
    d = get(agent)
    connection = endpoints.connections[0]
    feed(connection, head + b"\r\n\r\n")
    failure = failure_of(d)
    assert failure.check(ResponseFailed)
    assert failure.value.reasons[0].check(InvalidResponse)
    text = classify(failure).reason
    assert text.startswith("invalid response: ") and why in text
    assert connection.transport.disconnected  # aborted
    close(connection, error.ConnectionAborted)  # nothing more happens
    assert idle(agent) == [] and len(endpoints.connections) == 1


def test_the_same_content_length_repeated_is_accepted():
    agent, endpoints, _ = make_agent()
    response, body, _ = exchange(
        agent,
        endpoints,
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2, 2\r\n\r\nok",
    )
    assert response.length == 2 and body.data == b"ok"


def test_a_response_head_over_64_kib_fails_the_request():
    agent, endpoints, _ = make_agent()
    d = get(agent)
    connection = endpoints.connections[0]
    feed(connection, b"HTTP/1.1 200 OK\r\n")
    line = b"X-Big: " + b"a" * 1000 + b"\r\n"
    for _ in range(MAX_HEAD // len(line) + 1):
        assert not d.called
        feed(connection, line)
    failure = failure_of(d)
    assert classify(failure).reason == "invalid response: response head too long"
    assert connection.transport.disconnected


def test_a_head_at_the_limit_is_accepted():
    agent, endpoints, _ = make_agent()
    d = get(agent)
    connection = endpoints.connections[0]
    # 17 + 7 + value + 19 bytes before the blank line: exactly MAX_HEAD.
    size = MAX_HEAD - 43
    head = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * size
    feed(connection, head, step=4096)
    feed(connection, b"\r\nContent-Length: 0\r\n\r\n")
    assert len(result_of(d).headers.getRawHeaders(b"x-big")[0]) == size


def test_a_head_over_the_limit_in_one_read_fails_the_request():
    """The limit holds when the whole head, blank line included, comes at once."""
    agent, endpoints, _ = make_agent()
    d = get(agent)
    connection = endpoints.connections[0]
    head = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (MAX_HEAD - 42)
    connection.dataReceived(head + b"\r\nContent-Length: 0\r\n\r\n")
    failure = failure_of(d)
    assert classify(failure).reason == "invalid response: response head too long"


@pytest.mark.parametrize(
    "chunks, why, data",
    [
        (b"g\r\n", "bad chunk size", b"abc"),
        (b"\r\n", "bad chunk size", b"abc"),
        (b"-5\r\nhello\r\n", "bad chunk size", b"abc"),
        (b"0x5\r\nhello\r\n", "bad chunk size", b"abc"),
        (b"5\r\nhelloX\r\n", "no CRLF after chunk data", b"abchello"),
        (b"5" * 5000, "chunk line too long", b"abc"),
    ],
)
def test_an_invalid_chunked_body_fails_the_body(chunks, why, data):
    agent, endpoints, _ = make_agent()
    _, body, connection = exchange(
        agent,
        endpoints,
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n" + chunks,
    )
    assert body.data == data
    assert body.reason.check(ResponseFailed)
    assert classify(body.reason).reason == f"invalid response: {why}"
    assert connection.transport.disconnected
    close(connection, error.ConnectionAborted)  # the body does not end twice
    assert idle(agent) == []


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nshort\r\n",
    ],
)
def test_a_body_cut_short_fails_the_body(answer):
    agent, endpoints, _ = make_agent()
    _, body, connection = exchange(agent, endpoints, answer)
    close(connection, error.ConnectionLost)
    assert body.data == b"short"
    assert body.reason.check(ResponseFailed)
    assert body.reason.value.reasons[0].check(error.ConnectionLost)
    assert classify(body.reason).reason == "connection reset"
    assert idle(agent) == []


# --- cancellation ------------------------------------------------------------


def test_cancelling_while_connecting_cancels_the_connect():
    agent, endpoints, _ = make_agent(manual=True)
    d = get(agent)
    d.cancel()
    assert endpoints.cancelled == 1
    assert failure_of(d).check(CancelledError)
    assert endpoints.connections == []


def test_cancelling_while_waiting_for_the_head_aborts_the_connection():
    agent, endpoints, _ = make_agent(manual=True)
    d = get(agent)
    factory, connecting = endpoints.pending[0]
    connection = endpoints.build(factory)
    connecting.callback(connection)
    assert sent(connection).startswith(b"GET / HTTP/1.1")
    d.cancel()
    assert connection.transport.disconnected
    assert failure_of(d).check(CancelledError)
    close(connection, error.ConnectionAborted)
    assert idle(agent) == []
    assert len(endpoints.pending) == 1


def test_cancelling_on_a_reused_connection_does_not_send_again():
    agent, endpoints, _ = make_agent()
    _, _, connection = exchange(agent, endpoints, OK)
    d = get(agent)
    d.cancel()
    assert failure_of(d).check(CancelledError)
    assert connection.transport.disconnected
    close(connection, error.ConnectionAborted)
    assert len(endpoints.connections) == 1
    assert idle(agent) == []


def test_cancelling_after_the_head_changes_nothing():
    agent, endpoints, _ = make_agent()
    d = get(agent)
    connection = endpoints.connections[0]
    feed(connection, b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
    d.cancel()
    response = result_of(d)
    assert not connection.transport.disconnecting
    body = Body()
    response.deliverBody(body)
    feed(connection, b"cd")
    assert body.data == b"abcd"


# --- flow control ------------------------------------------------------------


class Pausing(Body):
    def connectionMade(self) -> None:
        self.transport.pauseProducing()


def test_the_body_protocol_pauses_and_resumes_the_connection():
    agent, endpoints, _ = make_agent()
    d = get(agent)
    connection = endpoints.connections[0]
    feed(connection, b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nab")
    body = Pausing()
    result_of(d).deliverBody(body)
    assert connection.transport.producerState == "paused"
    body.transport.resumeProducing()
    assert connection.transport.producerState == "producing"
    body.transport.pauseProducing()
    feed(connection, b"cdef")  # bytes already on their way
    # The body ended: the connection is resumed for its next exchange.
    assert body.reason.check(ResponseDone)
    assert connection.transport.producerState == "producing"
    assert idle(agent) == [connection]
    assert body.transport.getPeer() == connection.transport.getPeer()
    assert body.transport.getHost() == connection.transport.getHost()


def test_stop_producing_from_the_body_protocol_aborts_the_connection():
    agent, endpoints, _ = make_agent()
    d = get(agent)
    connection = endpoints.connections[0]
    feed(connection, b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nab")
    body = Body()
    result_of(d).deliverBody(body)
    body.transport.stopProducing()
    assert connection.transport.disconnected
    close(connection, error.ConnectionAborted)
    assert body.reason.check(ResponseFailed)
    assert idle(agent) == []


def test_after_the_body_ended_its_transport_does_nothing_to_the_connection():
    agent, endpoints, _ = make_agent()
    _, body, connection = exchange(agent, endpoints, OK)
    assert idle(agent) == [connection]
    body.transport.pauseProducing()
    assert connection.transport.producerState == "producing"
    body.transport.stopProducing()
    assert not connection.transport.disconnecting
    # And the next exchange on it is not disturbed by the old body's transport.
    d = get(agent)
    body.transport.stopProducing()
    body.transport.pauseProducing()
    assert connection.transport.producerState == "producing"
    feed(connection, OK)
    assert result_of(d).code == 200


# --- request bodies ----------------------------------------------------------


def test_an_answer_before_the_body_is_all_sent_stops_the_producer():
    agent, endpoints, _ = make_agent()
    producer = Producer(length=100)
    d = agent.request(b"POST", URL + b"/upload", None, producer)
    connection = endpoints.connections[0]
    producer.write(b"x" * 10)
    feed(connection, b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\n\r\nbig")
    response = result_of(d)
    body = Body()
    response.deliverBody(body)
    assert response.code == 413
    assert body.data == b"big"
    assert body.reason.check(ResponseDone)
    assert producer.state == "stopped"
    # Unregistered, or a TLS transport would wait for it before closing.
    assert connection.transport.producer is None
    assert connection.transport.disconnecting
    assert idle(agent) == []


def test_an_answer_before_a_chunked_body_is_all_sent_is_not_reused():
    agent, endpoints, _ = make_agent()
    producer = Producer()
    d = agent.request(b"POST", URL + b"/upload", None, producer)
    connection = endpoints.connections[0]
    feed(connection, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
    assert result_of(d).code == 200
    assert producer.state == "stopped"
    assert connection.transport.producer is None
    assert connection.transport.disconnecting
    assert idle(agent) == []


def test_a_response_head_before_the_body_is_sent_waits_for_the_body():
    agent, endpoints, _ = make_agent()
    producer = Producer(length=4)
    d = agent.request(b"POST", URL + b"/", None, producer)
    connection = endpoints.connections[0]
    feed(connection, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\no")
    response = result_of(d)
    producer.write(b"data")
    producer.finish()
    feed(connection, b"k")
    body = Body()
    response.deliverBody(body)
    assert body.data == b"ok"
    assert idle(agent) == [connection]
    assert connection.transport.producer is None


def test_a_failing_body_producer_fails_the_request():
    agent, endpoints, _ = make_agent()
    producer = Producer(length=10)
    d = agent.request(b"PUT", URL + b"/", None, producer)
    connection = endpoints.connections[0]
    producer.done.errback(OSError("disk"))
    failure = failure_of(d)
    assert failure.check(RequestTransmissionFailed)
    assert failure.value.reasons[0].check(OSError)
    assert connection.transport.disconnected
    close(connection, error.ConnectionAborted)
    assert idle(agent) == []


def test_a_connection_lost_while_sending_stops_the_producer():
    agent, endpoints, _ = make_agent()
    producer = Producer(length=10)
    d = agent.request(b"PUT", URL + b"/", None, producer)
    close(endpoints.connections[0], error.ConnectionLost)
    assert producer.state == "stopped"
    assert classify(failure_of(d)).reason == "connection reset"
