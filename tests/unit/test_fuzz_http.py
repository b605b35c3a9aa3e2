"""
Property-based fuzzing (hypothesis) of the front door: request bytes built
from valid and broken pieces, cut at random points, fed to the framer alone
and to a real Site behind L{GatewayChannel}.  Bounded: a fixed number of
examples each, on a fake clock, well under a minute in all.
"""

from typing import List

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import globalLogPublisher
from twisted.web.resource import Resource

from infini_gateway.http import GatewaySite, HTTPLimits, RequestFramer

LIMITS = HTTPLimits(
    read_timeout=10, write_timeout=10, max_header_size=2048, max_request_body_size=4096
)
FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

METHODS = [
    b"GET",
    b"POST",
    b"PUT",
    b"HEAD",
    b"OPTIONS",
    b"CONNECT",
    b"get",
    b"G T",
    b"\x00",
    b"",
]
TARGETS = [
    b"/",
    b"/a/b?c=d",
    b"*",
    b"http://h.example/x",
    b"http://other.example/",
    b"h.example:443",
    b"/\x7f",
    b"/\xb0",
    b"",
]
VERSIONS = [b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"http/1.1", b""]
HEADERS = [
    b"Host: h.example",
    b"Host: other.example",
    b"Content-Length: 0",
    b"Content-Length: 3",
    b"Content-Length: 5000",
    b"Content-Length: 3, 3",
    b"Content-Length: -1",
    b"Content-Length: 99999999999999999999999",
    b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: gzip, chunked",
    b"Transfer-Encoding: identity",
    b"Transfer-Encoding : chunked",
    b" folded",
    b"Connection: close",
    b"Connection: keep-alive, close",
    b"Connection: Upgrade",
    b"Upgrade: websocket",
    b"Expect: 100-continue",
    b"X-A: \x00",
    b"X-A: a\rb",
    b"X-A: a\nb",
    b"X-A: caf\xe9",
    b"no colon",
    b": empty",
]
BODIES = [
    b"",
    b"abc",
    b"3\r\nabc\r\n0\r\n\r\n",
    b"3;x=y\r\nabc\r\n0\r\nT: 1\r\n\r\n",
    b"zz\r\n",
    b"fffffffffffffffff\r\n",
    b"3\r\nabcd\r\n",
    b"0\r\n\r\n",
    b"\r\n",
]


@st.composite
def request_bytes(draw) -> bytes:
    line = b" ".join(
        [
            draw(st.sampled_from(METHODS)),
            draw(st.sampled_from(TARGETS)),
            draw(st.sampled_from(VERSIONS)),
        ]
    )
    eol = draw(st.sampled_from([b"\r\n"] * 8 + [b"\n", b"\r", b"\r\r\n"]))
    headers = draw(st.lists(st.sampled_from(HEADERS), max_size=6))
    head = line + eol + b"".join(h + eol for h in headers) + eol
    return head + draw(st.sampled_from(BODIES))


streams = st.lists(
    st.one_of(request_bytes(), st.binary(max_size=64)), min_size=1, max_size=5
).map(b"".join)


def pieces(data: bytes, cuts: List[int]) -> List[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, start = [], 0
    for p in points + [len(data)]:
        out.append(data[start:p])
        start = p
    return [p for p in out if p]


def frame(data_pieces):
    framer = RequestFramer(LIMITS)
    output, completed, error = [], 0, None
    for piece in data_pieces:
        framed = framer.feed(piece)
        output.extend(framed.output)
        completed += framed.completed
        if framed.error is not None and error is None:
            error = framed.error.status
    return b"".join(output), completed, error


@FUZZ
@given(streams, st.lists(st.integers(min_value=0), max_size=8))
def test_framing_does_not_depend_on_how_the_bytes_are_cut(data, cuts):
    assert frame(pieces(data, cuts)) == frame([data])


@FUZZ
@given(streams)
def test_canonical_output_is_read_back_the_same(data):
    """What the channel is given is a fixed point: no second reading of it."""
    output, completed, error = frame([data])
    again, completed_again, error_again = frame([output])
    assert (again, completed_again, error_again) == (output, completed, None)


class Recorder(Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def render(self, request):
        self.seen += 1
        return b"ok:" + request.content.read()


def split_responses(out: bytes) -> List[int]:
    """Statuses of the complete responses in C{out}; fails on anything else."""
    statuses = []
    while out:
        head, sep, rest = out.partition(b"\r\n\r\n")
        assert sep, out
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        statuses.append(status)
        if status == 100:
            out = rest
            continue
        length = [l for l in lines if l.lower().startswith(b"content-length:")]
        n = int(length[0].split(b":")[1]) if length else 0
        out = rest[n:]
    return statuses


@FUZZ
@given(streams, st.lists(st.integers(min_value=0), max_size=6))
def test_the_channel_answers_every_input_cleanly(data, cuts):
    """
    No exception escapes, no error is logged, twisted.web never has to
    reject what the framer let through (its bare 400), every request the
    framer completed is answered in order and nothing else is, and the
    connection always ends on the clock.
    """
    errors = []

    def observer(event):
        if event.get("log_failure") is not None or event.get("isError"):
            errors.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        clock = MemoryReactorClock()
        resource = Recorder()
        site = GatewaySite(resource, LIMITS, reactor=clock, timeout=30)
        channel = site.buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        for piece in pieces(data, cuts):
            channel.dataReceived(piece)
        _, completed, error = frame([data])
        out = transport.value()
        assert b"HTTP/1.1 400 Bad Request\r\n\r\n" not in out
        statuses = split_responses(out)
        final = [s for s in statuses if s != 100]
        # OPTIONS * and HEAD are answered by twisted.web without a body.
        assert resource.seen <= completed
        assert len(final) == completed + (1 if error is not None else 0) or (
            # The last request was still waiting for more bytes.
            error is None
            and len(final) == completed
        )
        if error is not None:
            assert final[-1] == error
        for _ in range(10):
            if transport.disconnecting or transport.disconnected:
                break
            clock.advance(15)
        assert transport.disconnecting or transport.disconnected
    finally:
        globalLogPublisher.removeObserver(observer)
    assert errors == []
