"""
The ClientHello reader and SNI routes: real ClientHellos made by Python's
ssl module (in memory), split and reframed, and hand-made broken ones.
"""

import ssl
import struct
from typing import Optional

import pytest

from infini_gateway.config.model import SNIRoute
from infini_gateway.sni import (
    MAX_HELLO,
    ClientHelloReader,
    MalformedClientHello,
    SNIRoutes,
    parse_client_hello,
)


def client_hello(server_name=None, alpn=None) -> bytes:
    """The first flight of a real TLS client: one or more records."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(alpn)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


def records(data: bytes):
    """(type, version, payload) of each record."""
    found, offset = [], 0
    while offset < len(data):
        kind, major, minor, length = struct.unpack("!BBBH", data[offset : offset + 5])
        found.append((kind, (major, minor), data[offset + 5 : offset + 5 + length]))
        offset += 5 + length
    return found


def handshake_message(data: bytes) -> bytes:
    """The ClientHello message (header included) of a first flight."""
    return b"".join(payload for kind, _, payload in records(data) if kind == 22)


def reframe(message: bytes, size: int) -> bytes:
    """C{message} split into handshake records of C{size} bytes."""
    return b"".join(
        struct.pack("!BBBH", 22, 3, 1, len(chunk)) + chunk
        for chunk in (message[i : i + size] for i in range(0, len(message), size))
    )


def hello_message(body: bytes) -> bytes:
    return bytes([1]) + len(body).to_bytes(3, "big") + body


def hello_body(extensions: Optional[bytes] = None, session_id=b"", suites=b"\x13\x01") -> bytes:
    body = b"\x03\x03" + b"\x00" * 32
    body += bytes([len(session_id)]) + session_id
    body += len(suites).to_bytes(2, "big") + suites + b"\x01\x00"
    if extensions is not None:
        body += len(extensions).to_bytes(2, "big") + extensions
    return body


def sni_extension(*names, name_type=0) -> bytes:
    entries = b"".join(
        bytes([name_type]) + len(name).to_bytes(2, "big") + name for name in names
    )
    data = len(entries).to_bytes(2, "big") + entries
    return b"\x00\x00" + len(data).to_bytes(2, "big") + data


def feed_all(data: bytes, step: Optional[int] = None):
    reader = ClientHelloReader()
    step = step or len(data)
    result = None
    for i in range(0, len(data), step):
        result = reader.feed(data[i : i + step])
    return reader, result


# Real hellos


@pytest.mark.parametrize(
    "name",
    ["web.default.dc1.internal.example.org", "a.example.com", "localhost"],
)
def test_reads_the_server_name_of_a_real_client_hello(name):
    _, hello = feed_all(client_hello(name))
    assert hello is not None
    assert hello.server_name == name


def test_a_client_hello_without_sni_has_no_server_name():
    _, hello = feed_all(client_hello(None))
    assert hello is not None and hello.server_name is None


def test_server_name_is_lower_cased_as_routes_compare_it():
    _, hello = feed_all(client_hello("Web.Example.ORG"))
    assert hello.server_name == "web.example.org"


def test_one_byte_at_a_time_gives_the_same_hello_and_keeps_every_byte():
    data = client_hello("web.example.org", alpn=["h2", "http/1.1"])
    reader = ClientHelloReader()
    results = [reader.feed(data[i : i + 1]) for i in range(len(data))]
    assert all(result is None for result in results[:-1])
    assert results[-1].server_name == "web.example.org"
    assert bytes(reader.raw) == data


def test_hello_split_over_several_records_is_reassembled():
    data = client_hello("split.example.org")
    message = handshake_message(data)
    reframed = reframe(message, 50)
    assert len(records(reframed)) > 5
    _, hello = feed_all(reframed, step=3)
    assert hello.server_name == "split.example.org"


def test_bytes_after_the_hello_are_kept_for_the_replay():
    data = client_hello("web.example.org") + b"\x17\x03\x03\x00\x02hi"
    reader, hello = feed_all(data)
    assert hello.server_name == "web.example.org"
    assert bytes(reader.raw) == data


# Broken input


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",
        b"\x80\x2e\x01\x03\x01",  # an SSLv2 hello
        b"\x15\x03\x03\x00\x02\x02\x28",  # an alert
        b"\x16\x02\x00",  # SSL 2.0 record version
        b"\x16\x03\x03\x00\x00",  # an empty record
        b"\x16\x03\x03\x48\x01",  # a record over 16 KiB
        b"\x16\x03\x01\x00\x04\x02\x00\x00\x00",  # a ServerHello
    ],
    ids=["http", "sslv2", "alert", "ssl2-record", "empty-record", "huge-record", "server-hello"],
)
def test_anything_but_a_client_hello_is_refused_as_soon_as_it_shows(data):
    reader = ClientHelloReader()
    with pytest.raises(MalformedClientHello) as raised:
        for i in range(len(data)):
            reader.feed(data[i : i + 1])
    assert raised.value.reason == "malformed"


def test_a_plain_text_client_is_refused_at_its_first_byte():
    with pytest.raises(MalformedClientHello):
        ClientHelloReader().feed(b"G")


def test_a_hello_announcing_more_than_the_cap_is_refused_before_it_arrives():
    data = b"\x16\x03\x01\x00\x04" + b"\x01" + (MAX_HELLO + 1).to_bytes(3, "big")
    with pytest.raises(MalformedClientHello) as raised:
        ClientHelloReader().feed(data)
    assert raised.value.reason == "too_large"


def test_too_many_records_are_refused():
    message = handshake_message(client_hello("a.example.org"))
    with pytest.raises(MalformedClientHello) as raised:
        feed_all(reframe(message, 1))
    assert raised.value.reason == "too_large"


@pytest.mark.parametrize(
    "body, why",
    [
        (b"\x03\x03" + b"\x00" * 10, "random runs past the end"),
        (hello_body(suites=b""), "no cipher suites"),
        (hello_body(suites=b"\x13"), "odd length"),
        (hello_body(session_id=b"x" * 33), "session id over 32"),
        (b"\x02\x00" + hello_body()[2:], "not TLS"),
        (hello_body(sni_extension(b"a.example.org") + b"\x00"), "runs past the end"),
        (hello_body(sni_extension(b"a.example.org") * 2), "extension 0 twice"),
        (hello_body(sni_extension(b"a.example.org", b"b.example.org")), "two host names"),
        (hello_body(sni_extension(b"")), "not a DNS name"),
        (hello_body(sni_extension(b"a\x00.example.org")), "not a DNS name"),
        (hello_body(sni_extension("é.example.org".encode())), "not a DNS name"),
        (hello_body(sni_extension(b"127.0.0.1")), "not a DNS name"),
        (hello_body(b"\x00\x00\x00\x02\x00\x00"), "empty or overlong list"),
        (hello_body(b"") + b"x", "bytes after the extensions"),
    ],
)
def test_malformed_client_hello_bodies_are_refused(body, why):
    with pytest.raises(MalformedClientHello, match=why):
        parse_client_hello(body)


def test_hand_made_hello_with_sni_is_read():
    body = hello_body(sni_extension(b"db.default.dc1.internal.example.org."))
    data = reframe(hello_message(body), 200)
    _, hello = feed_all(data, step=1)
    assert hello.server_name == "db.default.dc1.internal.example.org"


def test_unknown_name_types_are_skipped():
    body = hello_body(sni_extension(b"whatever", name_type=7))
    assert parse_client_hello(body).server_name is None


# Routes


ROUTES = SNIRoutes(
    [
        SNIRoute("web.default.dc1.internal.example.org", "web"),
        SNIRoute("*.dc2.internal.example.org", "dc2_gateway"),
        SNIRoute("*.internal.example.org", "any_dc"),
        SNIRoute("api.dc2.internal.example.org", "api_dc2"),
    ],
    default="fallback",
)


@pytest.mark.parametrize(
    "name, upstream",
    [
        ("web.default.dc1.internal.example.org", "web"),
        ("WEB.default.dc1.internal.example.org.", "web"),
        # Exact beats any wildcard.
        ("api.dc2.internal.example.org", "api_dc2"),
        # A whole datacenter's suffix, at any depth, to its gateway.
        ("db.default.dc2.internal.example.org", "dc2_gateway"),
        ("x.dc2.internal.example.org", "dc2_gateway"),
        # The longest matching wildcard wins.
        ("db.default.dc3.internal.example.org", "any_dc"),
        # A wildcard does not take the suffix itself.
        ("dc2.internal.example.org", "any_dc"),
        ("internal.example.org", "fallback"),
        ("other.example.com", "fallback"),
        (None, "fallback"),
    ],
)
def test_exact_then_longest_wildcard_then_default(name, upstream):
    assert ROUTES.lookup(name) == upstream


def test_without_default_unknown_and_missing_names_have_no_route():
    routes = SNIRoutes([SNIRoute("a.example.org", "a")])
    assert routes.lookup("a.example.org") == "a"
    assert routes.lookup("b.example.org") is None
    assert routes.lookup(None) is None
