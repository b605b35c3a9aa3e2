"""
Client address deny / permit lists against the real ``twistd`` gateway: a
denied client's connection is closed as soon as it is accepted, with no
HTTP response byte and, on TLS entries, no ServerHello (so no certificate);
everyone else is served.
"""

import http.client
import shutil
import socket
import ssl
import subprocess
import textwrap
import time

import pytest

from tests.e2e.conftest import ipv6_available

HAS_IPV6 = ipv6_available()
needs_ipv6 = pytest.mark.skipif(not HAS_IPV6, reason="no IPv6 loopback here")

REQUEST = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"

ROUTERS = """
router:
  - name: open
    default_flow: hello
  - name: no_v4
    default_flow: hello
    denied_client_ip_list:
      - 127.0.0.1
  - name: no_v6
    default_flow: hello
    ip_access_control:
      enabled: true
      client_ip:
        denied: ["::1/128"]
  - name: only_127_0_0_2
    default_flow: hello
    ip_access_control:
      client_ip:
        permitted: [127.0.0.2]
  - name: denied_wins
    default_flow: hello
    permitted_client_ip_list: [127.0.0.0/8]
    ip_access_control:
      client_ip:
        denied: [127.0.0.2]
flow:
  - name: hello
    filter:
      - echo: {message: "hello\\n"}
"""


def config(entries: str) -> str:
    return (
        "path:\n  data: ./data\nentry:\n"
        + textwrap.dedent(entries)
        + textwrap.dedent(ROUTERS)
    )


def entry(name, router, binding, tls=False):
    text = (
        f"  - name: {name}\n"
        f"    router: {router}\n"
        f'    network: {{binding: "{binding}"}}\n'
    )
    if tls:
        text += "    tls: {enabled: true}\n"
    return text


def family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def open_socket(host, port, source=None):
    s = socket.socket(family(host), socket.SOCK_STREAM)
    s.settimeout(10)
    if source is not None:
        s.bind((source, 0))
    s.connect((host, port))
    return s


def read_until_closed(s, limit=1 << 20):
    """Every byte the server sends before it closes (a reset counts as closed)."""
    chunks = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and sum(map(len, chunks)) < limit:
        try:
            data = s.recv(65536)
        except ConnectionResetError:
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def exchange(host, port, payload, source=None):
    """Connect, send C{payload} (if the server lets us), return all it sends."""
    with open_socket(host, port, source) as s:
        try:
            s.sendall(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass
        return read_until_closed(s)


def first_reply(host, port, payload):
    """Send C{payload}; the first bytes the server sends back (b"" when it closes)."""
    with open_socket(host, port) as s:
        try:
            s.sendall(payload)
            return s.recv(65536)
        except (BrokenPipeError, ConnectionResetError):
            return b""


def assert_closed_without_response(host, port, source=None):
    """The connection is closed with not one HTTP response byte."""
    assert exchange(host, port, REQUEST, source) == b""


def assert_served(host, port, source=None):
    response = exchange(host, port, REQUEST, source)
    assert response.startswith(b"HTTP/1.1 200 "), response
    assert response.endswith(b"hello\n"), response


def client_hello():
    """The bytes of a real TLS ClientHello, from Python's ssl module."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16"  # a handshake record
    return hello


def assert_tls_refused_before_server_hello(host, port, verify):
    """
    A TLS client gets EOF (or a reset) in place of a ServerHello: no byte
    at all comes back, so no certificate was sent.
    """
    assert first_reply(host, port, client_hello()) == b""
    with open_socket(host, port) as s:
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)) as e:
            verify.wrap_socket(s, server_hostname="localhost")
        assert not isinstance(e.value, ssl.SSLCertVerificationError)
    if shutil.which("openssl"):
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        result = subprocess.run(
            ["openssl", "s_client", "-connect", target, "-servername", "localhost"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert result.returncode != 0
        assert "BEGIN CERTIFICATE" not in result.stdout
        assert "Server certificate" not in result.stdout
        assert "no peer certificate available" in result.stdout


def assert_tls_served(host, port, verify):
    # The same raw ClientHello gets a ServerHello back here.
    assert first_reply(host, port, client_hello())[:1] == b"\x16"
    conn = http.client.HTTPSConnection(host, port, timeout=10, context=verify)
    try:
        conn.request("GET", "/", headers={"Host": "localhost"})
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"hello\n")
    finally:
        conn.close()


def can_bind_source(address):
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((address, 0))
        return True
    except OSError:
        return False


def dual_stack_available():
    """Whether an IPv4 client can reach a socket bound to [::] (bindv6only=0)."""
    if not HAS_IPV6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as server:
            server.bind(("::", 0))
            server.listen(1)
            port = server.getsockname()[1]
            with socket.create_connection(("127.0.0.1", port), timeout=5):
                return True
    except OSError:
        return False


def test_plain_denied_clients_are_closed_and_ipv4_ipv6_are_told_apart(gateways):
    """
    Denying 127.0.0.1 leaves ::1 served; denying ::1/128 leaves 127.0.0.1
    served; the denied client gets its connection closed, no response.
    """
    entries = entry("a4", "no_v4", "127.0.0.1:0") + entry("b4", "no_v6", "127.0.0.1:0")
    count = 2
    if HAS_IPV6:
        entries += entry("a6", "no_v4", "[::1]:0") + entry("b6", "no_v6", "[::1]:0")
        count = 4
    gateway = gateways(config(entries), entries=count)

    assert_closed_without_response("127.0.0.1", gateway.port("a4"))
    # Closed at once, before the client sends anything.
    with open_socket("127.0.0.1", gateway.port("a4")) as s:
        assert read_until_closed(s) == b""
    assert_served("127.0.0.1", gateway.port("b4"))
    if HAS_IPV6:
        assert_served("::1", gateway.port("a6"))
        assert_closed_without_response("::1", gateway.port("b6"))

    # Denied connections did not stop the entry from serving others.
    assert_served("127.0.0.1", gateway.port("b4"))
    log = gateway.log()
    assert "entry a4: closed a connection from 127.0.0.1 (client address denied)" in log
    assert gateway.stop() == 0


def test_tls_denied_client_gets_no_server_hello(gateways, tmp_path):
    """
    On a TLS entry a denied client's handshake ends in EOF before any
    ServerHello, so no certificate is sent; a permitted client completes
    the handshake and is served.
    """
    entries = entry("t4", "no_v4", "127.0.0.1:0", tls=True)
    entries += entry("ok4", "no_v6", "127.0.0.1:0", tls=True)
    count = 2
    if HAS_IPV6:
        entries += entry("t6", "no_v6", "[::1]:0", tls=True)
        entries += entry("ok6", "no_v4", "[::1]:0", tls=True)
        count = 4
    gateway = gateways(config(entries), entries=count)
    ca = tmp_path / "data" / "tls" / "ca.crt"
    verify = ssl.create_default_context(cafile=str(ca))

    assert_tls_refused_before_server_hello("127.0.0.1", gateway.port("t4"), verify)
    assert_tls_served("127.0.0.1", gateway.port("ok4"), verify)
    if HAS_IPV6:
        assert_tls_refused_before_server_hello("::1", gateway.port("t6"), verify)
        assert_tls_served("::1", gateway.port("ok6"), verify)
    assert gateway.stop() == 0


@pytest.mark.skipif(
    not can_bind_source("127.0.0.2"), reason="cannot connect from 127.0.0.2 here"
)
def test_permitted_list_and_denied_wins(gateways):
    """
    A permitted list serves only its clients; an address both permitted
    (by its block) and denied is denied.
    """
    entries = entry("only", "only_127_0_0_2", "127.0.0.1:0")
    entries += entry("wins", "denied_wins", "127.0.0.1:0")
    gateway = gateways(config(entries), entries=2)

    only, wins = gateway.port("only"), gateway.port("wins")
    assert_served("127.0.0.1", only, source="127.0.0.2")
    assert_closed_without_response("127.0.0.1", only, source="127.0.0.1")

    assert_served("127.0.0.1", wins, source="127.0.0.1")
    assert_closed_without_response("127.0.0.1", wins, source="127.0.0.2")
    assert gateway.stop() == 0


@needs_ipv6
@pytest.mark.skipif(
    not dual_stack_available(),
    reason="IPv4 clients cannot reach [::] listeners here (bindv6only)",
)
def test_ipv4_client_of_an_ipv6_listener_is_matched_as_ipv4(gateways):
    """
    On a [::] listener an IPv4 client's address is ::ffff:127.0.0.1; it is
    matched against the IPv4 rule 127.0.0.1 and denied, while ::1 is served.
    """
    gateway = gateways(config(entry("any", "no_v4", "[::]:0")))
    port = gateway.port("any")
    assert_closed_without_response("127.0.0.1", port)
    assert_served("::1", port)
    assert "closed a connection from ::ffff:127.0.0.1" in gateway.log()
    assert gateway.stop() == 0
