"""
The gateway as an operator runs it: twistd, a gateway.yml, real sockets,
real clients (curl, http.client, ssl), SIGTERM.
"""

import http.client
import json
import signal
import socket
import ssl
import textwrap
import time

import pytest

from tests.e2e.conftest import REPO, curl, ipv6_available, twistd

needs_ipv6 = pytest.mark.skipif(not ipv6_available(), reason="no IPv6 loopback here")

FLOWS = """
router:
  - name: default
    default_flow: hello
    rules:
      - method: [POST]
        pattern: ["/admin"]
        flow: [admin]
      - method: ["*"]
        pattern: ["/teapot"]
        flow: [teapot]
  - name: strict
    rules:
      - method: [GET]
        pattern: ["/only"]
        flow: [hello]
flow:
  - name: hello
    filter:
      - set_response_header: {headers: ["X-Gateway -> e2e"]}
      - echo: {message: "hello from %(who)s\\n"}
  - name: teapot
    filter:
      - echo: {message: "short and stout", status: 418, continue: false}
      - echo: {message: "never"}
  - name: admin
    filter:
      - basic_auth: {valid_users: {admin: s3cret}}
      - echo: {message: "welcome"}
"""


def config(entries: str, who: str = "gateway", data: str = "./data") -> str:
    return textwrap.dedent(f"path:\n  data: {data}\nentry:\n{entries}") + textwrap.dedent(
        FLOWS % {"who": who}
    )


def request(host, port, method="GET", path="/", headers=None, body=None, tls=None):
    if tls is None:
        conn = http.client.HTTPConnection(host, port, timeout=10)
    else:
        conn = http.client.HTTPSConnection(host, port, timeout=10, context=tls)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def test_twistd_lists_the_plugin():
    """``twistd --help`` names the infini-gateway plugin."""
    result = twistd("--help")
    assert result.returncode == 0, result.stderr
    assert "infini-gateway" in result.stdout


def test_http_ipv4_and_ipv6_then_sigterm(gateways):
    """
    Two entries with their own routers, IPv4 and IPv6: routing by method and
    path, the default flow, a flow that stops early, basic auth, the JSON 404,
    and SIGTERM ends the process with status 0.
    """
    v6 = ipv6_available()
    entries = """
      - name: v4
        router: default
        network: {binding: "127.0.0.1:0"}
      - name: strict
        router: strict
        network: {host: 127.0.0.1, port: 0}
    """
    if v6:
        entries += """
      - name: v6
        router: default
        network: {binding: "[::1]:0"}
    """
    gateway = gateways(config(entries), entries=3 if v6 else 2)
    port = gateway.port("v4")

    status, headers, body = request("127.0.0.1", port, path="/anything?x=1")
    assert (status, body) == (200, b"hello from gateway\n")
    assert headers["X-Gateway"] == "e2e"

    status, _, body = request("127.0.0.1", port, method="DELETE", path="/teapot")
    assert (status, body) == (418, b"short and stout")

    status, headers, _ = request("127.0.0.1", port, method="POST", path="/admin")
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Basic realm=")
    result = curl("-u", "admin:s3cret", "-X", "POST", gateway.url("v4", "/admin"))
    assert result.stdout == "welcome"

    status, headers, body = request("127.0.0.1", gateway.port("strict"), path="/nope")
    assert status == 404
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body)["error"] == "no route"
    status, _, body = request("127.0.0.1", gateway.port("strict"), path="/only")
    assert (status, body) == (200, b"hello from gateway\n")

    if v6:
        result = curl("-i", gateway.url("v6", "/"))
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("HTTP/1.1 200")
        assert result.stdout.endswith("hello from gateway\n")

    assert gateway.stop(signal.SIGTERM) == 0


def test_https_with_generated_certificate(gateways, tmp_path):
    """
    A TLS entry without files generates a CA and a certificate under
    path.data; clients verifying against that CA connect by name, by IPv4
    and by IPv6; a restart reuses the same certificate.
    """
    entries = """
      - name: tls4
        network: {binding: "127.0.0.1:0"}
        tls: {enabled: true}
    """
    if ipv6_available():
        entries += """
      - name: tls6
        network: {binding: "[::1]:0"}
        tls: {enabled: true}
    """
    count = 2 if ipv6_available() else 1
    gateway = gateways(config(entries), entries=count)
    ca = tmp_path / "data" / "tls" / "ca.crt"
    assert ca.exists()
    verify = ssl.create_default_context(cafile=str(ca))

    port = gateway.port("tls4")
    for host in ("127.0.0.1", "localhost"):
        status, _, body = request(host, port, tls=verify)
        assert (status, body) == (200, b"hello from gateway\n")
    result = curl("--cacert", str(ca), f"https://localhost:{port}/")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello from gateway\n"
    if count == 2:
        status, _, body = request("::1", gateway.port("tls6"), tls=verify)
        assert (status, body) == (200, b"hello from gateway\n")

    untrusting = ssl.create_default_context()
    with pytest.raises(ssl.SSLCertVerificationError):
        request("127.0.0.1", port, tls=untrusting)

    certificate = (tmp_path / "data" / "tls" / "tls4.crt").read_bytes()
    assert gateway.stop() == 0
    again = gateways(config(entries), entries=count)
    status, _, body = request("localhost", again.port("tls4"), tls=verify)
    assert (status, body) == (200, b"hello from gateway\n")
    assert (tmp_path / "data" / "tls" / "tls4.crt").read_bytes() == certificate


def _connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    return s


def _read_all(s):
    chunks = []
    while True:
        data = s.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def test_max_concurrency_refuses_then_recovers(gateways):
    """
    Past max_concurrency a new connection gets a raw 503 with Connection:
    close and is closed; once an old connection closes, new ones are served.
    """
    gateway = gateways(
        config(
            """
      - name: small
        max_concurrency: 2
        network: {binding: "127.0.0.1:0"}
    """
        )
    )
    port = gateway.port("small")
    held = [_connect(port), _connect(port)]
    for s in held:  # each is a live keep-alive connection
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert s.recv(65536).startswith(b"HTTP/1.1 200")

    extra = _connect(port)
    extra.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = _read_all(extra)
    extra.close()
    assert answer.startswith(b"HTTP/1.1 503 ")
    assert b"\r\nConnection: close\r\n" in answer

    held.pop().close()
    deadline = time.monotonic() + 10
    while True:
        status, _, body = request("127.0.0.1", port)
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert (status, body) == (200, b"hello from gateway\n")
    for s in held:
        s.close()


def test_reuse_port_two_processes_share_one_port(gateways):
    """Two gateways bound to one port with reuse_port: both answer."""
    first = gateways(
        config(
            """
      - name: shared
        network: {binding: "127.0.0.1:0", reuse_port: true}
    """,
            who="first",
        )
    )
    port = first.port("shared")
    second = gateways(
        config(
            f"""
      - name: shared
        network: {{binding: "127.0.0.1:{port}", reuse_port: true}}
    """,
            who="second",
        )
    )
    assert second.port("shared") == port
    seen = set()
    for _ in range(200):
        status, _, body = request("127.0.0.1", port, headers={"Connection": "close"})
        assert status == 200
        seen.add(body)
        if len(seen) == 2:
            break
    assert seen == {b"hello from first\n", b"hello from second\n"}


def test_skip_occupied_port_moves_to_the_next_free_port(gateways):
    """A taken port moves to a free one, and the port bound is logged."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        gateway = gateways(
            config(
                f"""
      - name: skip
        network: {{binding: "127.0.0.1:{port}", skip_occupied_port: true}}
    """
            )
        )
        bound = gateway.port("skip")
        assert bound > port
        assert f"port {port} on 127.0.0.1 is occupied" in gateway.log()
        status, _, _ = request("127.0.0.1", bound)
        assert status == 200


def test_occupied_port_is_fatal(tmp_path):
    """Without skip_occupied_port, a taken port stops twistd with a clear message."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        path = tmp_path / "gateway.yml"
        path.write_text(
            config(
                f"""
      - name: busy
        network: {{binding: "127.0.0.1:{port}"}}
    """
            )
        )
        result = twistd("-n", "--pidfile=", "infini-gateway", "--config", str(path), cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"entry 'busy': cannot listen on 127.0.0.1:{port}" in output
    assert "in use" in output


def test_disabled_entry_binds_nothing(gateways):
    """An entry with enabled: false does not listen; the others do."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    gateway = gateways(
        config(
            f"""
      - name: live
        network: {{binding: "127.0.0.1:0"}}
      - name: dormant
        enabled: false
        network: {{binding: "127.0.0.1:{free}"}}
    """
        )
    )
    assert "dormant" not in gateway.addresses
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", free), timeout=5).close()


def test_check_prints_what_would_listen_without_binding(tmp_path):
    """--check validates, prints the entries, exits 0 and binds nothing."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        path = tmp_path / "gateway.yml"
        path.write_text(
            config(
                f"""
      - name: web
        network: {{binding: "127.0.0.1:{port}", publish: "gw.example.com:80"}}
    """
            )
        )
        result = twistd("-n", "infini-gateway", "--config", str(path), "--check", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"entry 'web' would listen on http://127.0.0.1:{port}" in result.stdout
    assert "published as gw.example.com:80" in result.stdout


def test_invalid_config_stops_twistd_with_file_line_and_key(tmp_path):
    """A bad file: twistd exits 1 before binding, naming file, line, key and expectation."""
    path = tmp_path / "gateway.yml"
    path.write_text(
        textwrap.dedent(
            """\
            entry:
              - name: web
                network:
                  binding: "8000"
            """
        )
    )
    for extra in ([], ["--check"]):
        result = twistd("-n", "infini-gateway", "--config", str(path), *extra, cwd=tmp_path)
        assert result.returncode == 1
        assert f"{path}:4: entry[0].network.binding: expected HOST:PORT, got '8000'" in (
            result.stderr
        )


def test_example_config_runs(gateways, tmp_path):
    """examples/gateway.yml (with its ports moved to free ones) answers as documented."""
    text = (REPO / "examples" / "gateway.yml").read_text()
    text = text.replace("127.0.0.1:8000", "127.0.0.1:0").replace("127.0.0.1:8443", "127.0.0.1:0")
    gateway = gateways(text, entries=2)
    status, headers, body = request("127.0.0.1", gateway.port("web"))
    assert (status, body, headers["X-Gateway"]) == (
        200,
        b"Hello from infini-gateway\n",
        "infini-gateway",
    )
    status, _, body = request("127.0.0.1", gateway.port("web"), path="/health")
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    result = curl("-u", "admin:changeme", gateway.url("web", "/admin"))
    assert result.stdout == "Welcome, admin\n"
    ca = tmp_path / "data" / "tls" / "ca.crt"
    verify = ssl.create_default_context(cafile=str(ca))
    status, _, body = request("localhost", gateway.port("web_tls"), tls=verify)
    assert (status, body) == (200, b"Hello from infini-gateway\n")


def test_embedding_example_runs(tmp_path):
    """examples/embedding.py serves the gateway's entry and the mounted router."""
    import subprocess
    import sys

    from tests.e2e.conftest import gateway_env

    port = _two_free_ports()
    process = subprocess.Popen(
        [sys.executable, str(REPO / "examples" / "embedding.py"), str(port)],
        env=gateway_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            result = curl(f"http://127.0.0.1:{port + 1}/api/hello")
            if result.returncode == 0 or time.monotonic() > deadline:
                break
            if process.poll() is not None:
                raise AssertionError(process.stdout.read().decode(errors="replace"))
            time.sleep(0.1)
        assert result.stdout == "hello, embedded\n"
        assert curl(f"http://127.0.0.1:{port}/hello").stdout == "hello, embedded\n"
        assert curl(f"http://127.0.0.1:{port + 1}/").stdout == "the application's own page\n"
    finally:
        process.terminate()
        process.wait(10)


def _two_free_ports():
    """A port P such that P and P + 1 are both free on 127.0.0.1 (the example uses both)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = first.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
        return port
    raise AssertionError("no two consecutive free ports on 127.0.0.1")
