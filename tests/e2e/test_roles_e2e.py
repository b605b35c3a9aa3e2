"""
The three gateway roles end to end: a real twistd gateway, real TLS
backends (tests/e2e/backends.py) with certificates from
examples/make-certs.py, and clients using Python's ssl module.

  - mesh: an sni entry passes TLS through by server name (each client gets
    its backend's own certificate: the gateway did not terminate), even for
    a ClientHello written one byte at a time; unknown names and slow
    clients are closed;
  - terminating: client certificates against the mesh CA, intentions (403
    naming the rule), no certificate refused (required) or anonymous
    (optional); the gateway reaches an mTLS backend with its own client
    certificate and a one-way TLS backend with only ca_file; a tcp entry
    closes a denied client after the handshake;
  - ingress: one entry exposing two services by host, a tcp entry
    forwarding raw bytes;
  - the examples of each role start as they are.
"""

import http.client
import json
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest

from tests.e2e.backends import Backend
from tests.e2e.conftest import REPO

WEB = "spiffe://example.org/ns/default/dc/dc1/svc/web"
DB = "spiffe://example.org/ns/default/dc/dc1/svc/db"
DC1_WEB = "web.default.dc1.internal.example.org"
DC2_API = "api.default.dc2.internal.example.org"


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    """examples/make-certs.py, run as a user would."""
    directory = tmp_path_factory.mktemp("certs")
    subprocess.run(
        [sys.executable, str(REPO / "examples" / "make-certs.py"), str(directory)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return directory


@pytest.fixture
def backends():
    started: List[Backend] = []

    def start(name: str, *args: str) -> Backend:
        backend = Backend(name, *args)
        started.append(backend)
        return backend.start()

    yield start
    for backend in started:
        backend.stop()


def tls_backend(backends, certs, name, stem, client_ca=False):
    args = ["--tls", str(certs / f"{stem}.crt"), str(certs / f"{stem}.key")]
    if client_ca:
        args += ["--client-ca", str(certs / "ca.crt")]
    return backends(name, *args)


def client_context(certs, stem=None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    if stem is not None:
        context.load_cert_chain(str(certs / f"{stem}.crt"), str(certs / f"{stem}.key"))
    return context


def common_name(tls: ssl.SSLSocket) -> str:
    subject = dict(item for rdn in tls.getpeercert()["subject"] for item in rdn)
    return subject["commonName"]


def http_over(tls: ssl.SSLSocket, host: str, path: str = "/") -> dict:
    tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    data = b""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        chunk = tls.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return json.loads(body)


def closed_without_answer(sock: socket.socket, timeout: float = 10.0) -> bool:
    """Whether the peer closes C{sock} (EOF or reset) within C{timeout}."""
    sock.settimeout(timeout)
    try:
        return sock.recv(1024) == b""
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


# Mesh: SNI passthrough


MESH = """
entry:
  - name: mesh
    protocol: sni
    network: {{binding: "127.0.0.1:0"}}
    client_hello_timeout: 1s
    sni_routes:
      {dc1_web}: dc1_web
      "*.dc2.internal.example.org": dc2
upstream:
  - name: dc1_web
    endpoints: ["https://127.0.0.1:{web_port}"]
  - name: dc2
    endpoints: ["https://127.0.0.1:{api_port}"]
"""


@pytest.fixture
def mesh(gateways, backends, certs):
    web = tls_backend(backends, certs, "web-dc1", "web-dc1")
    api = tls_backend(backends, certs, "api-dc2", "api-dc2")
    gateway = gateways(MESH.format(dc1_web=DC1_WEB, web_port=web.port, api_port=api.port))
    return gateway


def connect_tls(port: int, context: ssl.SSLContext, server_name: str) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return context.wrap_socket(raw, server_hostname=server_name)


@pytest.mark.parametrize(
    "server_name, backend",
    [(DC1_WEB, "web-dc1"), (DC2_API, "api-dc2")],
)
def test_sni_entry_passes_tls_through_to_the_backend_of_the_name(mesh, certs, server_name, backend):
    """The client verifies the backend's own certificate for that name: the
    gateway, holding no key, did not terminate TLS."""
    with connect_tls(mesh.port("mesh"), client_context(certs), server_name) as tls:
        assert common_name(tls) == server_name
        assert http_over(tls, server_name)["backend"] == backend


def test_sni_entry_closes_an_unknown_name(mesh, certs):
    with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
        with connect_tls(mesh.port("mesh"), client_context(certs), "unknown.example.org"):
            pass
    with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
        context = client_context(certs)
        context.check_hostname = False
        raw = socket.create_connection(("127.0.0.1", mesh.port("mesh")), timeout=10)
        with context.wrap_socket(raw, server_hostname=None):
            pass
    assert "no route for server name 'unknown.example.org'" in mesh.log()


def test_client_hello_written_one_byte_at_a_time_still_routes(mesh, certs):
    """Each byte its own write and TCP segment (TCP_NODELAY)."""
    context = client_context(certs)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=DC2_API)
    sock = socket.create_connection(("127.0.0.1", mesh.port("mesh")), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        with pytest.raises(ssl.SSLWantReadError):
            tls.do_handshake()
        hello = outgoing.read()
        for i in range(len(hello)):
            sock.sendall(hello[i : i + 1])
            if i % 64 == 63:
                # A pause now and then, so the gateway reads partial hellos,
                # within the fixture's 1 s client_hello_timeout.
                time.sleep(0.005)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                pending = outgoing.read()
                if pending:
                    sock.sendall(pending)
                data = sock.recv(65536)
                assert data, "the gateway closed the connection"
                incoming.write(data)
        sock.sendall(outgoing.read())
        peer = tls.getpeercert()
        assert dict(item for rdn in peer["subject"] for item in rdn)["commonName"] == DC2_API
    finally:
        sock.close()


def test_a_client_too_slow_with_its_hello_is_dropped_at_the_timeout(mesh, certs):
    context = client_context(certs)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=DC1_WEB)
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    with socket.create_connection(("127.0.0.1", mesh.port("mesh")), timeout=10) as sock:
        sock.sendall(hello[:30])
        started = time.monotonic()
        assert closed_without_answer(sock, timeout=10)
        elapsed = time.monotonic() - started
    assert 0.7 < elapsed < 5, elapsed
    assert "no whole ClientHello within 1s" in mesh.log()


def test_a_plain_text_client_is_closed(mesh):
    with socket.create_connection(("127.0.0.1", mesh.port("mesh")), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert closed_without_answer(sock, timeout=5)


# Terminating


TERMINATING = """
entry:
  - name: required
    network: {{binding: "127.0.0.1:0"}}
    tls:
      enabled: true
      cert_file: {certs}/gateway.crt
      key_file: {certs}/gateway.key
      client_ca_file: {certs}/ca.crt
      client_auth: required
  - name: optional
    network: {{binding: "127.0.0.1:0"}}
    tls:
      enabled: true
      cert_file: {certs}/gateway.crt
      key_file: {certs}/gateway.key
      client_ca_file: {certs}/ca.crt
      client_auth: optional
  - name: tcp
    protocol: tcp
    upstream: plain
    network: {{binding: "127.0.0.1:0"}}
    tls:
      enabled: true
      cert_file: {certs}/gateway.crt
      key_file: {certs}/gateway.key
      client_ca_file: {certs}/ca.crt
    intentions:
      rules: [{{source: "{web}", action: allow}}]
router:
  - name: default
    default_flow: mtls
    rules:
      - pattern: ["/oneway"]
        flow: [oneway]
      - pattern: ["/whoami"]
        flow: [whoami]
flow:
  - name: mtls
    filter:
      - intentions:
          rules:
            - {{source: "spiffe://example.org/ns/default/dc/*/svc/db", action: deny}}
            - {{source: "spiffe://example.org/ns/default/dc/*/svc/web", action: allow}}
      - proxy: {{upstream: mtls}}
  - name: oneway
    filter:
      - intentions: {{rules: [{{source: "{web}", action: allow}}]}}
      - proxy: {{upstream: oneway}}
  - name: whoami
    filter:
      - echo: {{message: "ok"}}
upstream:
  - name: mtls
    endpoints: ["https://127.0.0.1:{mtls_port}"]
    tls:
      ca_file: {certs}/ca.crt
      cert_file: {certs}/gateway-client.crt
      key_file: {certs}/gateway-client.key
  - name: oneway
    endpoints: ["https://127.0.0.1:{oneway_port}"]
    tls: {{ca_file: {certs}/ca.crt}}
  - name: plain
    endpoints: ["http://127.0.0.1:{plain_port}"]
"""


@pytest.fixture
def terminating(gateways, backends, certs):
    mtls = tls_backend(backends, certs, "mtls", "backend", client_ca=True)
    oneway = tls_backend(backends, certs, "oneway", "backend")
    plain = backends("plain")
    return gateways(
        TERMINATING.format(
            certs=certs,
            web=WEB,
            mtls_port=mtls.port,
            oneway_port=oneway.port,
            plain_port=plain.port,
        ),
        entries=3,
    )


def get(gateway, entry, certs, stem, path="/"):
    conn = http.client.HTTPSConnection(
        "localhost", gateway.port(entry), context=client_context(certs, stem), timeout=15
    )
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def test_allowed_client_reaches_the_mtls_backend_with_the_gateways_certificate(terminating, certs):
    status, body = get(terminating, "required", certs, "web")
    assert status == 200, body
    assert body["backend"] == "mtls"


def test_one_way_tls_backend_with_only_ca_file(terminating, certs):
    status, body = get(terminating, "required", certs, "web", "/oneway")
    assert status == 200, body
    assert body["backend"] == "oneway"


def test_denied_client_gets_403_naming_the_rule(terminating, certs):
    status, body = get(terminating, "required", certs, "db")
    assert status == 403
    assert body["identity"] == DB
    assert body["rule"] == "rules[0] (deny spiffe://example.org/ns/default/dc/*/svc/db)"


def test_client_without_certificate_fails_the_handshake_when_required(terminating, certs):
    with pytest.raises((ssl.SSLError, ConnectionResetError, http.client.RemoteDisconnected)):
        get(terminating, "required", certs, None)


def test_client_without_certificate_is_anonymous_when_optional(terminating, certs):
    status, body = get(terminating, "optional", certs, None)
    assert status == 403
    assert body["identity"] == "anonymous"
    assert get(terminating, "optional", certs, "web")[0] == 200


def test_tcp_entry_forwards_allowed_clients_and_closes_denied_ones(terminating, certs):
    port = terminating.port("tcp")
    with connect_tls(port, client_context(certs, "web"), "localhost") as tls:
        assert http_over(tls, "localhost")["backend"] == "plain"
    with connect_tls(port, client_context(certs, "db"), "localhost") as tls:
        # The handshake completed; the connection is closed right after it.
        assert closed_without_answer(tls, timeout=10)
    assert f"{DB} denied by intention default (deny)" in terminating.log()


# Ingress


INGRESS = """
entry:
  - name: web
    network: {{binding: "127.0.0.1:0"}}
  - name: tcp
    protocol: tcp
    upstream: tcp_service
    network: {{binding: "127.0.0.1:0"}}
router:
  - name: default
    rules:
      - {{host: api.example.com, pattern: ["/{{path:*}}"], flow: [api]}}
      - {{host: "*.www.example.com", pattern: ["/{{path:*}}"], flow: [www]}}
flow:
  - name: api
    filter: [{{proxy: {{upstream: api}}}}]
  - name: www
    filter: [{{proxy: {{upstream: www}}}}]
upstream:
  - {{name: api, endpoints: ["http://127.0.0.1:{api}"]}}
  - {{name: www, endpoints: ["http://127.0.0.1:{www}"]}}
  - name: tcp_service
    endpoints: ["http://127.0.0.1:{down}", "http://127.0.0.1:{tcp}"]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_entry_exposes_services_by_host_and_a_tcp_entry_forwards_bytes(gateways, backends):
    api, www, tcp = backends("api"), backends("www"), backends("tcp")
    gateway = gateways(
        INGRESS.format(api=api.port, www=www.port, tcp=tcp.port, down=free_port()), entries=2
    )

    def who(host):
        conn = http.client.HTTPConnection("127.0.0.1", gateway.port("web"), timeout=10)
        conn.request("GET", "/x", headers={"Host": host})
        response = conn.getresponse()
        return response.status, response.read()

    assert json.loads(who("api.example.com")[1])["backend"] == "api"
    assert json.loads(who("shop.www.example.com")[1])["backend"] == "www"
    assert who("other.example.com")[0] == 404
    # Raw TCP: an endpoint that refuses is skipped, the bytes reach the other.
    for _ in range(2):
        with socket.create_connection(("127.0.0.1", gateway.port("tcp")), timeout=10) as sock:
            sock.sendall(b"GET /raw HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        assert json.loads(data.partition(b"\r\n\r\n")[2])["backend"] == "tcp"


def test_tcp_entry_passes_a_half_close_on(gateways, backends):
    """The client's FIN reaches the backend, and its answer still comes back."""
    tcp = backends("tcp")
    gateway = gateways(
        INGRESS.format(api=1, www=1, tcp=tcp.port, down=tcp.port), entries=2
    )
    with socket.create_connection(("127.0.0.1", gateway.port("tcp")), timeout=10) as sock:
        sock.sendall(b"GET /half HTTP/1.0\r\nHost: x\r\n\r\n")
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    assert json.loads(data.partition(b"\r\n\r\n")[2])["path"] == "/half"


# The examples


def example(tmp_path: Path, name: str) -> str:
    """An example's text with its addresses moved to free ports."""
    text = (REPO / "examples" / name).read_text()
    return re.sub(r"binding: 127\.0\.0\.1:\d+", 'binding: "127.0.0.1:0"', text)


@pytest.mark.parametrize("name, entries", [("ingress.yml", 2), ("mesh.yml", 1)])
def test_examples_start_as_they_are(gateways, tmp_path, name, entries):
    gateway = gateways(example(tmp_path, name), entries=entries)
    assert len(gateway.addresses) == entries


def test_terminating_example_starts_with_the_scripts_certificates(gateways, tmp_path, certs):
    shutil.copytree(certs, tmp_path / "data" / "certs")
    gateway = gateways(example(tmp_path, "terminating.yml"), entries=2)
    status, body = get(gateway, "terminating", certs, "db", "/payments/")
    assert status == 403 and body["identity"] == DB
