"""
The front door end to end: raw bytes sent over a socket to a real twistd
gateway proxying to a backend that records every byte it receives
(tests/e2e/raw_backend.py).  Each case checks what the client got and what
the backend received: a rejected request never reaches it.
"""

import json
import socket
import textwrap
import time
from typing import List, Tuple

import pytest

from tests.e2e.raw_backend import RawBackend

H = b"Host: gw.example\r\n"

CONFIG = """
entry:
  - name: web
    network: {{binding: "127.0.0.1:0"}}
    read_timeout: 1s
    write_timeout: 1s
    idle_timeout: 1s
    max_header_size: 4kb
    max_request_body_size: 1kb
  - name: limited
    network: {{binding: "127.0.0.1:0"}}
    max_conns_per_ip: 2
router:
  - name: default
    default_flow: main
flow:
  - name: main
    filter:
      - proxy: {{upstream: raw}}
upstream:
  - name: raw
    endpoints: ["{url}"]
    retries: 0
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """One gateway and one recording backend for the module (they are slow to start)."""
    from tests.e2e.conftest import Gateway

    directory = tmp_path_factory.mktemp("hardening")
    backend = RawBackend(directory / "received.bin").start()
    gateway = Gateway(directory, textwrap.dedent(CONFIG.format(url=backend.url)))
    try:
        gateway.start(entries=2)
        yield gateway, backend
    finally:
        gateway.stop()
        backend.stop()


def exchange(gateway, data: bytes, entry: str = "web", timeout: float = 10.0) -> bytes:
    """Send C{data}, then read until the gateway closes (or C{timeout})."""
    with socket.create_connection(
        ("127.0.0.1", gateway.port(entry)), timeout=timeout
    ) as s:
        s.sendall(data)
        return read_all(s, timeout)


def read_all(s: socket.socket, timeout: float) -> bytes:
    received = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            data = s.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            break
        if not data:
            break
        received += data
    return received


def responses(data: bytes) -> List[Tuple[int, dict, bytes]]:
    """The responses in C{data} (Content-Length or chunked bodies)."""
    found = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            raise AssertionError(f"an incomplete head: {data!r}")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ")[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if b"content-length" in headers:
            n = int(headers[b"content-length"])
            body, data = rest[:n], rest[n:]
        elif headers.get(b"transfer-encoding") == b"chunked":
            body = b""
            while True:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line, 16)
                if size == 0:
                    rest = rest[2:]
                    break
                body += rest[:size]
                rest = rest[size + 2 :]
            data = rest
        else:
            body, data = rest, b""
        found.append((status, headers, body))
    return found


def unique(name: str) -> bytes:
    return f"{name}-{time.monotonic_ns()}".encode()


def smuggling_cases():
    """(name, bytes) with {m} marking paths that must never reach the backend."""
    te = b"Transfer-Encoding: chunked\r\n"
    smuggled = b"GET /{m}-SMUGGLED HTTP/1.1\r\n" + H + b"\r\n"
    chunked_smuggle = b"0\r\n\r\n" + smuggled
    tecl_body = b"%x\r\n" % len(smuggled) + smuggled + b"\r\n0\r\n\r\n"
    return {
        "CL.TE": b"POST /{m} HTTP/1.1\r\n"
        + H
        + b"Content-Length: %d\r\n" % len(chunked_smuggle)
        + te
        + b"\r\n"
        + chunked_smuggle,
        "TE.CL": b"POST /{m} HTTP/1.1\r\n"
        + H
        + te
        + b"Content-Length: 4\r\n\r\n"
        + tecl_body,
        "TE.TE obfuscated": b"POST /{m} HTTP/1.1\r\n"
        + H
        + te
        + b"Transfer-Encoding: cow\r\nContent-Length: 4\r\n\r\n"
        + tecl_body,
        "TE with a space before the colon": b"POST /{m} HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding : chunked\r\nContent-Length: 4\r\n\r\n"
        + tecl_body,
        "TE folded": b"POST /{m} HTTP/1.1\r\n"
        + H
        + b"X: y\r\n Transfer-Encoding: chunked\r\nContent-Length: %d\r\n\r\n"
        % len(chunked_smuggle)
        + chunked_smuggle,
        "TE xchunked": b"POST /{m} HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: xchunked\r\n\r\n"
        + chunked_smuggle,
        "TE identity": b"POST /{m} HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: identity\r\n\r\n"
        + smuggled,
        "two Content-Lengths": b"POST /{m} HTTP/1.1\r\n"
        + H
        + b"Content-Length: 0\r\nContent-Length: %d\r\n\r\n" % len(smuggled)
        + smuggled,
        "bad chunk size": b"POST /{m} HTTP/1.1\r\n"
        + H
        + te
        + b"\r\n0x5\r\nhello\r\n0\r\n\r\n"
        + smuggled,
        "bad chunk extension": b"POST /{m} HTTP/1.1\r\n"
        + H
        + te
        + b"\r\n5;a\x00\r\nhello\r\n0\r\n\r\n"
        + smuggled,
        "bare LF in a header": b"GET /{m} HTTP/1.1\r\n"
        + H
        + b"X: a\nTransfer-Encoding: chunked\r\n\r\n"
        + smuggled,
        "bare CR in a header": b"GET /{m} HTTP/1.1\r\n"
        + H
        + b"X: a\rContent-Length: 4\r\n\r\n"
        + smuggled,
        "NUL in a header": b"GET /{m} HTTP/1.1\r\n"
        + H
        + b"X: a\x00b\r\n\r\n"
        + smuggled,
        "space before the colon": b"GET /{m} HTTP/1.1\r\n"
        + H
        + b"Content-Length : 4\r\n\r\n"
        + smuggled,
        "invalid method": b"G<T /{m} HTTP/1.1\r\n" + H + b"\r\n" + smuggled,
        "absolute-form to another host": b"GET http://elsewhere.example/{m} HTTP/1.1\r\n"
        + H
        + b"\r\n"
        + smuggled,
        "CONNECT": b"CONNECT elsewhere.example:443 HTTP/1.1\r\nHost: elsewhere.example:443\r\nX-M: /{m}\r\n\r\n"
        + smuggled,
        "HTTP/1.1 without Host": b"GET /{m} HTTP/1.1\r\n\r\n" + smuggled,
    }


CASES = smuggling_cases()


@pytest.mark.parametrize("case", sorted(CASES))
def test_malformed_and_smuggling_requests_get_400_and_reach_nothing(setup, case):
    gateway, backend = setup
    marker = unique(case.replace(" ", "_").replace(".", "_"))
    data = CASES[case].replace(b"{m}", marker)
    got = exchange(gateway, data)
    ((status, headers, body),) = responses(got)
    assert status == 400, got
    assert headers[b"connection"] == b"close"
    assert headers[b"content-type"] == b"application/json"
    assert json.loads(body)["error"] == "bad request"
    assert marker not in backend.received()


def test_a_valid_request_after_the_smuggling_attempts_still_goes_through(setup):
    gateway, backend = setup
    marker = unique("fine")
    got = exchange(
        gateway, b"GET /" + marker + b" HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"
    )
    ((status, _, body),) = responses(got)
    assert status == 200
    assert json.loads(body)["path"] == "/" + marker.decode()
    assert b"GET /" + marker + b" HTTP/1.1\r\n" in backend.received()


def test_pipelined_requests_are_answered_in_order_and_routed_one_by_one(setup):
    gateway, backend = setup
    markers = [unique(f"pipe{i}") for i in range(4)]
    data = b"".join(b"GET /" + m + b" HTTP/1.1\r\n" + H + b"\r\n" for m in markers[:3])
    data += (
        b"POST /"
        + markers[3]
        + b" HTTP/1.1\r\n"
        + H
        + b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    got = exchange(gateway, data)
    answered = responses(got)
    assert [json.loads(body)["path"] for _, _, body in answered] == [
        "/" + m.decode() for m in markers
    ]
    assert json.loads(answered[3][2])["body_length"] == 3
    received = backend.received()
    for m in markers:
        assert received.count(b"/" + m + b" HTTP/1.1") == 1


def test_a_rejected_pipelined_request_is_answered_after_the_good_ones(setup):
    gateway, backend = setup
    good, bad = unique("good"), unique("bad")
    got = exchange(
        gateway,
        b"GET /" + good + b" HTTP/1.1\r\n" + H + b"\r\n"
        b"GET /" + bad + b" HTTP/1.1\r\n" + H + b"X : y\r\n\r\n",
    )
    (s1, _, b1), (s2, h2, _) = responses(got)
    assert (s1, json.loads(b1)["path"], s2) == (200, "/" + good.decode(), 400)
    assert bad not in backend.received()


@pytest.mark.parametrize(
    "data, status",
    [
        (b"GET / HTTP/1.1\r\n" + H + b"X-Big: " + b"a" * 5000 + b"\r\n\r\n", 431),
        (
            b"GET / HTTP/1.1\r\n" + H + b"X-Many: abcdefghijklmnop\r\n" * 200 + b"\r\n",
            431,
        ),
        (b"POST /{m} HTTP/1.1\r\n" + H + b"Content-Length: 2000\r\n\r\n", 413),
        (
            b"POST /{m} HTTP/1.1\r\n"
            + H
            + b"Transfer-Encoding: chunked\r\n\r\n"
            + b"100\r\n"
            + b"a" * 256
            + b"\r\n" * 1
            + b"400\r\n",
            413,
        ),
    ],
)
def test_limits_answer_431_and_413(setup, data, status):
    gateway, backend = setup
    marker = unique("limit")
    got = exchange(gateway, data.replace(b"{m}", marker))
    ((answered, headers, _),) = responses(got)
    assert answered == status
    assert headers[b"connection"] == b"close"
    assert marker not in backend.received()


@pytest.mark.parametrize(
    "path, expect",
    [
        ("/bad-status", "502"),
        ("/reset", "502"),
        ("/bad-chunk", "cut"),
        ("/truncated", "cut"),
    ],
)
def test_an_upstream_answering_badly_gives_502_or_a_cut_connection(setup, path, expect):
    gateway, backend = setup
    got = exchange(gateway, f"GET {path} HTTP/1.1\r\n".encode() + H + b"\r\n")
    if expect == "502":
        ((status, headers, body),) = responses(got)
        assert status == 502
        assert json.loads(body)["error"] == "bad gateway"
        return
    head, _, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    if b"Content-Length: 100" in head:
        assert len(body) < 100
    else:
        assert not body.endswith(b"0\r\n\r\n")


def test_extra_bytes_from_the_upstream_never_reach_another_request(setup):
    """Response splitting upstream: the unasked-for bytes are dropped."""
    gateway, backend = setup
    marker = unique("after-split")
    got = exchange(
        gateway,
        b"GET /split HTTP/1.1\r\n"
        + H
        + b"\r\nGET /"
        + marker
        + b" HTTP/1.1\r\n"
        + H
        + b"Connection: close\r\n\r\n",
    )
    (s1, _, b1), (s2, _, b2) = responses(got)
    assert (s1, b1) == (200, b"hello")
    assert s2 == 200 and json.loads(b2)["path"] == "/" + marker.decode()
    assert b"SPLIT-SMUGGLED" not in got
    for _ in range(3):
        other = exchange(
            gateway, b"GET /x HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"
        )
        assert b"SPLIT-SMUGGLED" not in other


def test_slowloris_is_cut_at_read_timeout_and_others_are_served(setup):
    gateway, backend = setup
    with socket.create_connection(
        ("127.0.0.1", gateway.port("web")), timeout=10
    ) as slow:
        started = time.monotonic()
        head = b"GET / HTTP/1.1\r\n" + H + b"X-Slow: " + b"a" * 50
        got = b""
        for i in range(len(head)):
            # Meanwhile everyone else is answered at once.
            if i % 10 == 0:
                t = time.monotonic()
                fast = exchange(
                    gateway,
                    b"GET /fast HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n",
                )
                assert responses(fast)[0][0] == 200
                assert time.monotonic() - t < 1.0
            try:
                slow.sendall(head[i : i + 1])
            except OSError:
                break
            slow.settimeout(0.1)
            try:
                got += slow.recv(65536)
            except socket.timeout:
                pass
            if got:
                break
        got += read_all(slow, 3)
        elapsed = time.monotonic() - started
    ((status, headers, _),) = responses(got)
    assert status == 408
    assert 0.9 < elapsed < 3.0


def test_a_client_that_stops_reading_is_cut_at_write_timeout(setup):
    gateway, backend = setup
    size = 64 * 1024 * 1024
    with socket.create_connection(("127.0.0.1", gateway.port("web")), timeout=10) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(f"GET /big?size={size} HTTP/1.1\r\n".encode() + H + b"\r\n")
        time.sleep(4)  # write_timeout is 1s; the buffers fill well before
        t = time.monotonic()
        fast = exchange(
            gateway, b"GET /fast HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"
        )
        assert responses(fast)[0][0] == 200 and time.monotonic() - t < 1.0
        got = read_all(s, 10)
    assert len(got) < size


def test_idle_keep_alive_is_closed_but_a_long_response_is_not(setup):
    gateway, backend = setup
    with socket.create_connection(("127.0.0.1", gateway.port("web")), timeout=10) as s:
        # idle_timeout is 1s: a body dripping for 2.5s is not cut...
        s.sendall(b"GET /drip?n=5&gap=0.5 HTTP/1.1\r\n" + H + b"\r\n")
        got = b""
        deadline = time.monotonic() + 8
        while not got.endswith(b"ddddd") and time.monotonic() < deadline:
            got += s.recv(65536)
        assert got.startswith(b"HTTP/1.1 200") and got.endswith(b"ddddd")
        # ...and the connection, idle after it, is closed after about 1s.
        t = time.monotonic()
        assert read_all(s, 5) == b""
        assert 0.5 < time.monotonic() - t < 3.5


def test_max_conns_per_ip_answers_429_past_the_limit(setup):
    gateway, backend = setup
    port = gateway.port("limited")
    held = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
    try:
        time.sleep(0.2)
        got = exchange(gateway, b"GET / HTTP/1.1\r\n" + H + b"\r\n", entry="limited")
        ((status, headers, body),) = responses(got)
        assert status == 429 and headers[b"connection"] == b"close"
    finally:
        for s in held:
            s.close()
    time.sleep(0.3)
    got = exchange(
        gateway,
        b"GET / HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n",
        entry="limited",
    )
    assert responses(got)[0][0] == 200
