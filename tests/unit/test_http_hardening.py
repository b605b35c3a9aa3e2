"""
The front door (L{infini_gateway.http}): strict request framing, limits and
timeouts, on a real twisted.web Site fed raw bytes over a StringTransport
with a fake clock.
"""

import json
from typing import List

import pytest

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from infini_gateway.config import config_from_dict
from infini_gateway.config.model import RouterConfig, Rule
from infini_gateway.http import (
    GatewaySite,
    HTTPLimits,
    RequestFramer,
    entry_limits,
)
from infini_gateway.policy import PER_IP_RESPONSE, AcceptPolicy, OverloadedFactory
from infini_gateway.service import build_service

H = b"Host: example.com\r\n"


class Recorder(Resource):
    """Answers C{ok METHOD URI BODY}; remembers each request it saw."""

    isLeaf = True

    def __init__(self, hold: bool = False) -> None:
        super().__init__()
        self.seen: List[tuple] = []
        self.hold = hold
        self.held: list = []

    def render(self, request):
        body = request.content.read()
        self.seen.append((request.method, request.uri, body))
        if self.hold:
            self.held.append(request)
            return NOT_DONE_YET
        return b"ok " + request.method + b" " + request.uri + b" " + body


class Conn:
    """One client connection to a GatewaySite."""

    def __init__(self, site, clock) -> None:
        self.clock = clock
        self.channel = site.buildProtocol(IPv4Address("TCP", "10.0.0.1", 5555))
        self.transport = StringTransport(
            peerAddress=IPv4Address("TCP", "10.0.0.1", 5555)
        )
        self.channel.makeConnection(self.transport)

    def send(self, data: bytes) -> "Conn":
        self.channel.dataReceived(data)
        return self

    @property
    def out(self) -> bytes:
        return self.transport.value()

    @property
    def closing(self) -> bool:
        return self.transport.disconnecting or self.transport.disconnected


def make(limits: HTTPLimits = HTTPLimits(), hold: bool = False, timeout: float = 30):
    clock = MemoryReactorClock()
    resource = Recorder(hold)
    site = GatewaySite(resource, limits, reactor=clock, timeout=timeout)
    return site, resource, clock


def connect(limits: HTTPLimits = HTTPLimits(), **kwargs):
    site, resource, clock = make(limits, **kwargs)
    return Conn(site, clock), resource


def answer(out: bytes):
    """(status, headers dict lower-case, body) of the first answer in C{out}."""
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


REJECTED_400 = {
    "CL and TE": b"POST / HTTP/1.1\r\n"
    + H
    + b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "TE and CL": b"POST / HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
    "two CL values": b"POST / HTTP/1.1\r\n"
    + H
    + b"Content-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
    "CL list of two values": b"POST / HTTP/1.1\r\n"
    + H
    + b"Content-Length: 4, 5\r\n\r\nabcde",
    "CL with a sign": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: +4\r\n\r\nabcd",
    "CL in hex": b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 0x4\r\n\r\nabcd",
    "TE gzip": b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: gzip\r\n\r\n",
    "TE identity": b"POST / HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: identity\r\n\r\nabcd",
    "TE chunked then gzip": b"POST / HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: chunked, gzip\r\n\r\n",
    "TE gzip then chunked": b"POST / HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "TE twice": b"POST / HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "TE xchunked": b"POST / HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "TE on HTTP/1.0": b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "TE with a space before the colon": b"POST / HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
    "TE folded": b"POST / HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    "chunk size not hex": b"POST / HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "chunk size with 0x": b"POST / HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: chunked\r\n\r\n0x3\r\nabc\r\n0\r\n\r\n",
    "chunk size negative": b"POST / HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: chunked\r\n\r\n-3\r\nabc\r\n0\r\n\r\n",
    "chunk size with a space": b"POST / HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: chunked\r\n\r\n3 \r\nabc\r\n0\r\n\r\n",
    "chunk size empty": b"POST / HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: chunked\r\n\r\n\r\nabc\r\n0\r\n\r\n",
    "chunk size too many digits": b"POST / HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: chunked\r\n\r\n"
    + b"0" * 17
    + b"3\r\nabc\r\n0\r\n\r\n",
    "chunk extension without a name": b"POST / HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: chunked\r\n\r\n3;\r\nabc\r\n0\r\n\r\n",
    "chunk extension with a control": b"POST / HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: chunked\r\n\r\n3;a=\x01\r\nabc\r\n0\r\n\r\n",
    "chunk extension unterminated quote": b"POST / HTTP/1.1\r\n"
    + H
    + b'Transfer-Encoding: chunked\r\n\r\n3;a="b\r\nabc\r\n0\r\n\r\n',
    "chunk size bare LF": b"POST / HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
    "chunk without CRLF": b"POST / HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n",
    "bad trailer": b"POST / HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nbad trailer\r\n\r\n",
    "obs-fold": b"GET / HTTP/1.1\r\n" + H + b"X-A: 1\r\n 2\r\n\r\n",
    "obs-fold with a tab": b"GET / HTTP/1.1\r\n" + H + b"X-A: 1\r\n\t2\r\n\r\n",
    "bare LF line end": b"GET / HTTP/1.1\n" + H + b"\r\n",
    "bare LF in a value": b"GET / HTTP/1.1\r\n" + H + b"X-A: 1\nX-B: 2\r\n\r\n",
    "bare CR in a value": b"GET / HTTP/1.1\r\n" + H + b"X-A: 1\rX-B: 2\r\n\r\n",
    "NUL in a value": b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x00b\r\n\r\n",
    "NUL in a name": b"GET / HTTP/1.1\r\n" + H + b"X\x00A: b\r\n\r\n",
    "NUL in the target": b"GET /a\x00b HTTP/1.1\r\n" + H + b"\r\n",
    "control in a value": b"GET / HTTP/1.1\r\n" + H + b"X-A: a\x7fb\r\n\r\n",
    "space before the colon": b"GET / HTTP/1.1\r\n" + H + b"X-A : b\r\n\r\n",
    "tab before the colon": b"GET / HTTP/1.1\r\n" + H + b"X-A\t: b\r\n\r\n",
    "no colon": b"GET / HTTP/1.1\r\n" + H + b"X-A b\r\n\r\n",
    "empty name": b"GET / HTTP/1.1\r\n" + H + b": b\r\n\r\n",
    "lower-case method": b"get / HTTP/1.1\r\n" + H + b"\r\n",
    "method with a slash": b"G/ET / HTTP/1.1\r\n" + H + b"\r\n",
    "method with a NUL": b"GE\x00T / HTTP/1.1\r\n" + H + b"\r\n",
    "two spaces": b"GET  / HTTP/1.1\r\n" + H + b"\r\n",
    "no version": b"GET /\r\n" + H + b"\r\n",
    "HTTP/2 version": b"GET / HTTP/2.0\r\n" + H + b"\r\n",
    "HTTP/1.2 version": b"GET / HTTP/1.2\r\n" + H + b"\r\n",
    "target with 0xB0": b"GET /\xb0 HTTP/1.1\r\n" + H + b"\r\n",
    "relative target": b"GET foo HTTP/1.1\r\n" + H + b"\r\n",
    "absolute-form to another host": b"GET http://evil.example/ HTTP/1.1\r\n"
    + H
    + b"\r\n",
    "absolute-form with userinfo": b"GET http://x@example.com/ HTTP/1.1\r\n"
    + H
    + b"\r\n",
    "absolute-form other port": b"GET http://example.com:8080/ HTTP/1.1\r\n"
    + H
    + b"\r\n",
    "absolute-form other scheme": b"GET ftp://example.com/ HTTP/1.1\r\n" + H + b"\r\n",
    "CONNECT": b"CONNECT example.com:443 HTTP/1.1\r\n" + H + b"\r\n",
    "asterisk for GET": b"GET * HTTP/1.1\r\n" + H + b"\r\n",
    "no Host": b"GET / HTTP/1.1\r\n\r\n",
    "two Hosts": b"GET / HTTP/1.1\r\n" + H + b"Host: other.example\r\n\r\n",
    "Host with a space": b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
    "Host with a slash": b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
    "whitespace before the first header": b"GET / HTTP/1.1\r\n " + H + b"\r\n",
}


@pytest.mark.parametrize("case", sorted(REJECTED_400))
def test_malformed_requests_get_a_json_400_and_are_never_handled(case):
    """Each smuggling or malformed case: 400, JSON body, Connection: close."""
    conn, resource = connect()
    conn.send(REJECTED_400[case])
    status, headers, body = answer(conn.out)
    assert status == 400, conn.out
    assert headers[b"connection"] == b"close"
    assert headers[b"content-type"] == b"application/json"
    assert json.loads(body)["error"] == "bad request"
    assert resource.seen == []
    assert conn.closing or conn.channel._linger_call is not None


@pytest.mark.parametrize("case", sorted(REJECTED_400))
def test_malformed_requests_are_caught_whatever_the_split(case):
    """Bytes arriving one at a time are judged as the same bytes at once."""
    conn, resource = connect()
    for i in range(len(REJECTED_400[case])):
        conn.send(REJECTED_400[case][i : i + 1])
    assert answer(conn.out)[0] == 400
    assert resource.seen == []


def test_smuggled_request_after_a_rejected_one_is_never_handled():
    """CL.TE: the bytes a TE-reading server would take as a second request."""
    conn, resource = connect()
    conn.send(
        b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 13\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n"
        + H
        + b"\r\n"
    )
    assert answer(conn.out)[0] == 400
    assert conn.out.count(b"HTTP/1.1") == 1
    assert resource.seen == []


ACCEPTED = {
    "chunked with extensions": (
        b"POST /c HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n"
        b'3;name=value;q="x y"\r\nabc\r\n2 ; a\r\nde\r\n0\r\nTrailer-A: 1\r\n\r\n',
        (b"POST", b"/c", b"abcde"),
    ),
    "TE case and spaces": (
        b"POST /c HTTP/1.1\r\n" + H + b"Transfer-Encoding:  Chunked \r\n\r\n0\r\n\r\n",
        (b"POST", b"/c", b""),
    ),
    "identical CL values": (
        b"POST /l HTTP/1.1\r\n"
        + H
        + b"Content-Length: 3\r\nContent-Length: 3, 3\r\n\r\nabc",
        (b"POST", b"/l", b"abc"),
    ),
    "absolute-form for the Host": (
        b"GET http://Example.COM:80/p?q=1 HTTP/1.1\r\n" + H + b"\r\n",
        (b"GET", b"/p?q=1", b""),
    ),
    "absolute-form without a path": (
        b"GET https://example.com HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        (b"GET", b"/", b""),
    ),
    # twisted.web answers OPTIONS * itself.
    "OPTIONS *": (b"OPTIONS * HTTP/1.1\r\n" + H + b"\r\n", None),
    "a leading empty line": (
        b"\r\nGET / HTTP/1.1\r\n" + H + b"\r\n",
        (b"GET", b"/", b""),
    ),
    "HTTP/1.0 without Host": (b"GET /old HTTP/1.0\r\n\r\n", (b"GET", b"/old", b"")),
    "obs-text in a value": (
        b"GET / HTTP/1.1\r\n" + H + b"X-A: caf\xe9\tb\r\n\r\n",
        (b"GET", b"/", b""),
    ),
    "WebDAV method": (
        b"PROPFIND / HTTP/1.1\r\n" + H + b"\r\n",
        (b"PROPFIND", b"/", b""),
    ),
}


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_well_formed_requests_are_handled(case):
    data, expected = ACCEPTED[case]
    conn, resource = connect()
    conn.send(data)
    assert answer(conn.out)[0] == 200, conn.out
    assert resource.seen == ([expected] if expected else [])


def test_pipelined_requests_are_answered_in_order_each_on_its_own():
    conn, resource = connect()
    conn.send(
        b"GET /a HTTP/1.1\r\n" + H + b"\r\n"
        b"POST /b HTTP/1.1\r\n" + H + b"Content-Length: 2\r\n\r\nhi"
        b"POST /c HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n"
        b"GET /d HTTP/1.1\r\n" + H + b"\r\n"
    )
    assert [uri for _, uri, _ in resource.seen] == [b"/a", b"/b", b"/c", b"/d"]
    bodies = conn.out.split(b"HTTP/1.1 200 OK")[1:]
    assert [b.rsplit(b"\r\n\r\n", 1)[1] for b in bodies] == [
        b"ok GET /a ",
        b"ok POST /b hi",
        b"ok POST /c x",
        b"ok GET /d ",
    ]


def test_an_error_in_a_pipelined_request_is_answered_after_the_earlier_ones():
    """The 400 waits for the answer in progress; nothing mixes."""
    conn, resource = connect(hold=True)
    conn.send(b"GET /slow HTTP/1.1\r\n" + H + b"\r\nGET /bad HTTP/1.1\r\nX : y\r\n\r\n")
    assert conn.out == b""
    assert [uri for _, uri, _ in resource.seen] == [b"/slow"]
    request = resource.held[0]
    request.write(b"first answer")
    request.finish()
    first, _, rest = conn.out.partition(b"first answer\r\n0\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200")
    assert answer(rest)[0] == 400
    assert [uri for _, uri, _ in resource.seen] == [b"/slow"]


def test_a_header_block_over_max_header_size_gets_431():
    """The whole block counts: many small headers as well as one long one."""
    limits = HTTPLimits(max_header_size=1024)
    for head in (
        b"GET / HTTP/1.1\r\n" + H + b"X-Long: " + b"a" * 1100 + b"\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + H + b"X-Short: abcdefgh\r\n" * 60 + b"\r\n",
        b"GET /" + b"a" * 1100 + b" HTTP/1.1\r\n" + H + b"\r\n",
    ):
        conn, resource = connect(limits)
        conn.send(head)
        status, headers, body = answer(conn.out)
        assert status == 431
        assert headers[b"connection"] == b"close"
        assert resource.seen == []


def test_a_header_block_of_exactly_max_header_size_is_accepted():
    head = b"GET / HTTP/1.1\r\n" + H + b"X-Pad: "
    pad = 1024 - len(head) - 4
    conn, resource = connect(HTTPLimits(max_header_size=1024))
    conn.send(head + b"p" * pad + b"\r\n\r\n")
    assert answer(conn.out)[0] == 200
    conn, resource = connect(HTTPLimits(max_header_size=1024))
    conn.send(head + b"p" * (pad + 1) + b"\r\n\r\n")
    assert answer(conn.out)[0] == 431


def test_a_head_without_an_end_is_cut_at_max_header_size_not_buffered():
    conn, resource = connect(HTTPLimits(max_header_size=1024))
    conn.send(b"GET / HTTP/1.1\r\n" + H + b"X-A: " + b"a" * 2000)
    assert answer(conn.out)[0] == 431


def test_content_length_over_the_limit_gets_413_before_the_body_is_read():
    conn, resource = connect(HTTPLimits(max_request_body_size=10))
    conn.send(
        b"POST / HTTP/1.1\r\n"
        + H
        + b"Expect: 100-continue\r\nContent-Length: 11\r\n\r\n"
    )
    status, headers, body = answer(conn.out)
    # No 100 Continue: the client never sends the body.
    assert status == 413
    assert headers[b"connection"] == b"close"
    assert resource.seen == []


def test_a_chunked_body_over_the_limit_gets_413_while_it_streams():
    conn, resource = connect(HTTPLimits(max_request_body_size=10))
    conn.send(b"POST / HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n")
    conn.send(b"6\r\nabcdef\r\n")
    assert conn.out == b""
    conn.send(b"5\r\n")
    assert answer(conn.out)[0] == 413
    assert resource.seen == []


def test_a_body_of_exactly_the_limit_is_accepted():
    conn, resource = connect(HTTPLimits(max_request_body_size=10))
    conn.send(
        b"POST / HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n5\r\nfghij\r\n0\r\n\r\n"
    )
    assert answer(conn.out)[0] == 200
    assert resource.seen == [(b"POST", b"/", b"abcdefghij")]


def test_connect_is_accepted_when_a_rule_asks_for_it():
    router = Resource()
    router.config = RouterConfig("r", rules=(Rule(("CONNECT",), ("/",), ("f",)),))
    site = GatewaySite(router, reactor=MemoryReactorClock())
    assert site.channel_limits().allow_connect
    assert (
        RequestFramer(site.channel_limits())
        .feed(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        .completed
        == 1
    )
    router.config = RouterConfig("r", rules=(Rule(("*",), ("/",), ("f",)),))
    assert (
        not GatewaySite(router, reactor=MemoryReactorClock())
        .channel_limits()
        .allow_connect
    )


def test_bytes_after_an_upgrade_request_pass_through_untouched():
    """WebSocket frames are not read as HTTP (the tunnel takes them)."""
    framer = RequestFramer(HTTPLimits())
    framed = framer.feed(
        b"GET /ws HTTP/1.1\r\n"
        + H
        + b"Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n\x81\x05hello\x00\r\n"
    )
    assert framed.error is None and framed.completed == 1
    assert framed.output[-1] == b"\x81\x05hello\x00\r\n"


def test_nothing_is_read_after_a_request_that_closes_the_connection():
    conn, resource = connect()
    conn.send(
        b"GET /a HTTP/1.1\r\n"
        + H
        + b"Connection: keep-alive, close\r\n\r\nGET /b HTTP/1.1\r\n"
        + H
        + b"\r\n"
    )
    assert [uri for _, uri, _ in resource.seen] == [b"/a"]
    assert answer(conn.out)[1][b"connection"] == b"close"
    assert conn.closing


# Timeouts


def test_slowloris_head_is_cut_at_read_timeout_with_408():
    """One byte every few seconds resets the idle timer, not read_timeout."""
    conn, resource = connect(HTTPLimits(read_timeout=10), timeout=5)
    data = b"GET / HTTP/1.1\r\n" + H + b"X-A: " + b"a" * 100
    for i in range(len(data)):
        conn.send(data[i : i + 1])
        conn.clock.advance(1)
        if conn.out:
            break
    assert i == 9
    status, headers, body = answer(conn.out)
    assert status == 408
    assert headers[b"connection"] == b"close"


def test_a_stalled_body_is_cut_at_read_timeout_but_a_slow_one_is_not():
    conn, resource = connect(HTTPLimits(read_timeout=10), timeout=100)
    conn.send(b"POST / HTTP/1.1\r\n" + H + b"Content-Length: 30\r\n\r\n")
    for _ in range(20):
        conn.clock.advance(9)
        conn.send(b"x")
    assert conn.out == b""
    conn.clock.advance(10)
    assert answer(conn.out)[0] == 408
    assert resource.seen == []


def test_an_idle_keep_alive_connection_is_closed_at_idle_timeout():
    conn, resource = connect(timeout=30)
    conn.send(b"GET / HTTP/1.1\r\n" + H + b"\r\n")
    assert answer(conn.out)[0] == 200
    conn.clock.advance(29)
    assert not conn.closing
    conn.clock.advance(2)
    assert conn.closing


def test_idle_timeout_does_not_cut_a_long_running_response():
    conn, resource = connect(
        HTTPLimits(read_timeout=5, write_timeout=5), hold=True, timeout=10
    )
    conn.send(b"GET / HTTP/1.1\r\n" + H + b"\r\n")
    request = resource.held[0]
    for _ in range(12):
        conn.clock.advance(5)
        request.write(b"x")
    assert not conn.closing
    request.finish()
    assert conn.out.endswith(b"0\r\n\r\n")


def test_a_client_not_reading_is_cut_at_write_timeout():
    """The transport pausing the channel without resuming: abort."""
    conn, resource = connect(HTTPLimits(write_timeout=20), hold=True, timeout=1000)
    conn.send(b"GET / HTTP/1.1\r\n" + H + b"\r\n")
    conn.channel.pauseProducing()
    conn.clock.advance(19)
    assert not conn.transport.disconnected
    conn.clock.advance(2)
    assert conn.transport.disconnected  # abortConnection


def test_a_resumed_write_stops_the_write_timeout():
    conn, resource = connect(HTTPLimits(write_timeout=20), hold=True, timeout=1000)
    conn.send(b"GET / HTTP/1.1\r\n" + H + b"\r\n")
    for _ in range(5):
        conn.channel.pauseProducing()
        conn.clock.advance(15)
        conn.channel.resumeProducing()
    assert not conn.closing


def test_a_graceful_close_that_never_drains_is_aborted_at_write_timeout():
    conn, resource = connect(HTTPLimits(write_timeout=20), timeout=1000)
    conn.send(b"GET / HTTP/1.0\r\n\r\n")
    assert conn.transport.disconnecting
    conn.clock.advance(21)
    assert conn.transport.disconnected


def test_a_rejected_connection_lingers_then_closes():
    conn, resource = connect()
    conn.send(b"GET / HTTP/1.1\r\nX : y\r\n\r\n")
    assert not conn.transport.disconnecting
    conn.send(b"more bytes are read and dropped")
    assert conn.out.count(b"HTTP/1.1") == 1
    conn.clock.advance(1.5)
    assert conn.transport.disconnecting


# Configuration and wiring


def test_entry_keys_load_with_their_defaults_and_units():
    config = config_from_dict(
        {
            "entry": [
                {"name": "a", "network": {"binding": "127.0.0.1:0"}},
                {
                    "name": "b",
                    "network": {"binding": "127.0.0.1:0"},
                    "read_timeout": "5s",
                    "write_timeout": 7,
                    "max_header_size": "8kb",
                    "max_request_body_size": "1mb",
                    "max_conns_per_ip": 3,
                },
            ],
            "router": [{"name": "default", "default_flow": "f"}],
            "flow": [{"name": "f", "filter": [{"echo": {"message": "hi"}}]}],
        }
    )
    a, b = config.entries
    assert (a.read_timeout, a.write_timeout, a.max_header_size) == (30.0, 30.0, 65536)
    assert (a.max_request_body_size, a.max_conns_per_ip) == (200 * 1024**2, 0)
    assert entry_limits(b) == HTTPLimits(5.0, 7.0, 8192, 1024**2)
    assert b.max_conns_per_ip == 3
    service = build_service(config, reactor=MemoryReactorClock())
    site = service.entries["b"].site
    assert isinstance(site, GatewaySite) and site.limits == entry_limits(b)


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("read_timeout", "0s", "expected a duration greater than zero"),
        ("write_timeout", "soon", "expected a duration"),
        ("max_header_size", "0kb", "at least 1 byte"),
        ("max_request_body_size", "lots", "expected a size in bytes"),
        ("max_conns_per_ip", -1, "max_conns_per_ip"),
    ],
)
def test_entry_key_errors_name_the_key(key, value, expected):
    from infini_gateway.config import ConfigError

    with pytest.raises(ConfigError) as caught:
        config_from_dict(
            {
                "entry": [
                    {"name": "a", "network": {"binding": "127.0.0.1:0"}, key: value}
                ],
                "router": [{"name": "default", "default_flow": "f"}],
                "flow": [{"name": "f", "filter": [{"echo": {"message": "hi"}}]}],
            }
        )
    text = str(caught.value)
    assert key in text and expected in text


def test_max_conns_per_ip_answers_429_past_the_limit_per_address():
    clock = MemoryReactorClock()
    site, _, _ = make()
    policy = AcceptPolicy(
        site,
        100,
        OverloadedFactory(clock),
        clock=clock,
        max_conns_per_ip=2,
        per_ip_overflow=OverloadedFactory(clock, PER_IP_RESPONSE),
    )

    def open_from(host):
        protocol = policy.buildProtocol(IPv4Address("TCP", host, 1234))
        transport = StringTransport()
        protocol.makeConnection(transport)
        return protocol, transport

    first = [open_from("10.0.0.1") for _ in range(2)]
    refused, transport = open_from("10.0.0.1")
    assert transport.value().startswith(b"HTTP/1.1 429 Too Many Requests\r\n")
    assert b"Connection: close" in transport.value()
    assert policy.refused_per_ip == 1
    other, transport = open_from("::ffff:10.0.0.2")
    assert transport.value() == b""
    first[0][0].connectionLost(None)
    again, transport = open_from("10.0.0.1")
    assert transport.value() == b""
    assert policy.per_ip == {"10.0.0.1": 2, "10.0.0.2": 1}


def test_new_connections_take_the_limits_and_router_now_set_on_the_site():
    """A reload replaces site.limits or site.resource: the next channel follows."""
    site, _, clock = make(HTTPLimits(read_timeout=5))
    assert Conn(site, clock).channel.limits.read_timeout == 5
    site.limits = HTTPLimits(read_timeout=3)
    assert Conn(site, clock).channel.limits.read_timeout == 3
    router = Resource()
    router.config = RouterConfig("r", rules=(Rule(("CONNECT",), ("/",), ("f",)),))
    site.resource = router
    assert Conn(site, clock).channel.limits.allow_connect
