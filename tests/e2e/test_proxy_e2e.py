"""
The proxy end to end: a real twistd gateway forwarding to real twisted.web
backends on 127.0.0.1 (tests/e2e/backends.py) that say which one answered.
"""

import base64
import http.client
import json
import os
import socket
import textwrap
import threading
import time
from pathlib import Path
from typing import Dict, List

import pytest

from tests.e2e.backends import Backend, make_pki
from tests.e2e.conftest import REPO


@pytest.fixture
def backends():
    """Start backends with C{backends(name, *args)}; all stop at the end."""
    started: List[Backend] = []

    def start(name: str, *args: str) -> Backend:
        backend = Backend(name, *args)
        started.append(backend)
        return backend.start()

    yield start
    for backend in started:
        backend.stop()


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gateway_config(upstreams: str, filters: str = "- proxy: {upstream: api}") -> str:
    return (
        textwrap.dedent(
            """
            entry:
              - name: web
                network: {binding: "127.0.0.1:0"}
            router:
              - name: default
                default_flow: main
            flow:
              - name: main
                filter:
            """
        )
        + textwrap.indent(textwrap.dedent(filters).strip(), "      ")
        + "\n"
        + textwrap.dedent(upstreams)
    )


def one_upstream(url: str) -> str:
    """The C{upstream:} section of one upstream, C{api}, with one endpoint."""
    return f"""
            upstream:
              - name: api
                endpoints: ["{url}"]
            """


def get(gateway, path="/", method="GET", headers=None, body=None, timeout=15):
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port("web"), timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.getheaders(), response.read()
    finally:
        conn.close()


def who(gateway, path="/", **kwargs) -> str:
    status, _, body = get(gateway, path, **kwargs)
    assert status == 200, body
    return json.loads(body)["backend"]


def test_smooth_weighted_round_robin_sequence(gateways, backends):
    """Weights 5/1/1 give nginx's smooth sequence a a b a c a a over 7 requests."""
    a, b, c = backends("a"), backends("b"), backends("c")
    gateway = gateways(
        gateway_config(
            f"""
            upstream:
              - name: api
                endpoints:
                  - {{url: "{a.url}", weight: 5}}
                  - {{url: "{b.url}", weight: 1}}
                  - {{url: "{c.url}", weight: 1}}
            """
        )
    )
    assert [who(gateway) for _ in range(7)] == list("aabacaa")


def test_least_conn_avoids_a_backend_holding_slow_requests(gateways, backends):
    """While one backend holds a slow request, least_conn sends the rest elsewhere."""
    a, b = backends("a"), backends("b")
    gateway = gateways(
        gateway_config(
            f"""
            upstream:
              - name: api
                balancer: least_conn
                endpoints: ["{a.url}", "{b.url}"]
            """
        )
    )
    slow: Dict[str, str] = {}
    thread = threading.Thread(target=lambda: slow.update(who=who(gateway, "/slow?seconds=2")))
    thread.start()
    time.sleep(0.5)
    fast = [who(gateway) for _ in range(5)]
    thread.join(10)
    busy = slow["who"]
    assert busy in ("a", "b")
    assert busy not in fast


def test_ewma_shifts_load_away_from_a_slow_backend(gateways, backends):
    """A backend answering in 300ms gets few requests next to one answering at once."""
    slow, fast = backends("slow", "--delay", "0.3"), backends("fast")
    gateway = gateways(
        gateway_config(
            f"""
            upstream:
              - name: api
                balancer: ewma
                endpoints: ["{slow.url}", "{fast.url}"]
            """
        )
    )
    answers = [who(gateway) for _ in range(20)]
    assert answers.count("fast") >= 16, answers


def test_chash_keeps_each_key_on_its_endpoint(gateways, backends):
    """hash_on header: a user's requests all reach one backend; users spread."""
    names = [backends(n).url for n in "abc"]
    gateway = gateways(
        gateway_config(
            f"""
            upstream:
              - name: api
                balancer: chash
                hash_on: header
                key: X-User
                endpoints: {json.dumps(names)}
            """
        )
    )
    placed = {}
    for user in range(12):
        seen = {who(gateway, headers={"X-User": f"user-{user}"}) for _ in range(3)}
        assert len(seen) == 1
        placed[user] = seen.pop()
    assert len(set(placed.values())) > 1


def test_retries_skip_a_dead_port(gateways, backends):
    """A refused connection is retried on the live endpoint: every request succeeds."""
    live = backends("live")
    gateway = gateways(
        gateway_config(
            f"""
            upstream:
              - name: api
                endpoints: ["http://127.0.0.1:{free_port()}", "{live.url}"]
            """
        )
    )
    assert [who(gateway) for _ in range(4)] == ["live"] * 4


def test_failures_answer_json_naming_upstream_and_reason(gateways, backends):
    """Refused -> 502; stalled -> 504 after the read timeout; nothing available -> 503."""
    live = backends("live")
    config = gateway_config(
        f"""
        upstream:
          - name: api
            endpoints: ["http://127.0.0.1:{free_port()}"]
          - name: slow
            timeout: {{read: 1s}}
            retries: 0
            endpoints: ["{live.url}"]
          - name: drained
            endpoints: [{{url: "{live.url}", weight: 0}}]
        """
    )
    config = config.replace(
        "    default_flow: main\n",
        "    default_flow: main\n    rules:\n"
        "      - {pattern: [/stall], flow: [slow]}\n"
        "      - {pattern: [/drained], flow: [drained]}\n",
    )
    config = config.replace(
        "flow:\n",
        "flow:\n  - name: slow\n    filter:\n      - proxy: {upstream: slow}\n"
        "  - name: drained\n    filter:\n      - proxy: {upstream: drained}\n",
        1,
    )
    gateway = gateways(config)

    status, headers, body = get(gateway, "/anything")
    assert status == 502
    assert json.loads(body) == {
        "error": "bad gateway",
        "upstream": "api",
        "reason": "connection refused",
    }

    started = time.monotonic()
    status, _, body = get(gateway, "/stall")
    assert status == 504
    assert json.loads(body)["reason"] == "read timeout"
    assert 0.9 < time.monotonic() - started < 5

    status, _, body = get(gateway, "/drained")
    assert status == 503
    assert json.loads(body)["upstream"] == "drained"


def test_a_post_is_not_retried_after_it_was_sent(gateways, backends):
    """A POST that timed out on one endpoint is not sent to the other; a GET is."""
    first, second = backends("first"), backends("second")
    gateway = gateways(
        gateway_config(
            f"""
            upstream:
              - name: api
                timeout: {{read: 1s}}
                endpoints: ["{first.url}", "{second.url}"]
            """
        )
    )
    status, _, body = get(gateway, "/stall", method="POST", body=b"order=1")
    assert status == 504, body
    assert _stats(first).get("POST") == 1
    assert _stats(second).get("POST") is None

    # The same request as a GET goes on to the second endpoint (which stalls too).
    status, _, _ = get(gateway, "/stall")
    assert status == 504
    assert _stats(first).get("GET") == 1
    assert _stats(second).get("GET") == 1


def _stats(backend: Backend) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", backend.port, timeout=5)
    try:
        conn.request("GET", "/stats")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def test_headers_both_ways(gateways, backends):
    """
    Hop-by-hop headers are dropped, X-Forwarded-* set, repeated Set-Cookie
    kept, and a set_response_header earlier in the flow wins over the upstream.
    """
    live = backends("live")
    gateway = gateways(
        gateway_config(
            one_upstream(live.url),
            filters="""
            - set_response_header: {headers: ["Content-Type -> text/x-gateway"]}
            - proxy: {upstream: api}
            """,
        )
    )
    status, headers, body = get(
        gateway,
        "/x?q=1",
        headers={
            "Connection": "keep-alive, X-Private",
            "X-Private": "no",
            "Keep-Alive": "timeout=5",
            "X-Forwarded-For": "10.0.0.1",
            "Host": "front.example",
        },
    )
    seen = json.loads(body)["headers"]
    assert "x-private" not in seen and "keep-alive" not in seen
    assert seen["x-forwarded-for"] == ["10.0.0.1, 127.0.0.1"]
    assert seen["x-forwarded-host"] == ["front.example"]
    assert seen["host"] == ["front.example"]
    assert dict(headers)["Content-Type"] == "text/x-gateway"
    assert dict(headers)["Content-Length"] == str(len(body))


def test_set_cookie_never_reaches_another_client(gateways, backends):
    """Cookies an upstream sets go to their client only; the next request carries none."""
    live = backends("live")
    gateway = gateways(gateway_config(one_upstream(live.url)))
    status, headers, _ = get(gateway, "/cookie")
    assert [v for k, v in headers if k == "Set-Cookie"] == [
        "session=secret-1",
        "other=secret-2",
    ]
    _, _, body = get(gateway, "/")
    assert "cookie" not in json.loads(body)["headers"]


@pytest.fixture
def pki(tmp_path):
    return make_pki(tmp_path)


def test_mutual_tls_with_the_gateway_client_certificate(gateways, backends, pki):
    """A backend asking for a client certificate accepts the gateway's, and only it."""
    backend = backends(
        "mtls",
        "--tls",
        f"{pki['server']}.crt",
        f"{pki['server']}.key",
        "--client-ca",
        f"{pki['ca']}.crt",
    )
    upstreams = f"""
        upstream:
          - name: api
            retries: 0
            endpoints: ["{backend.url}"]
            tls:
              ca_file: {pki['ca']}.crt
              cert_file: {pki['client']}.crt
              key_file: {pki['client']}.key
        """
    gateway = gateways(gateway_config(upstreams))
    assert who(gateway) == "mtls"

    without = "\n".join(
        line for line in upstreams.splitlines() if "cert_file" not in line and "key_file" not in line
    )
    status, _, body = get(gateways(gateway_config(without)), "/")
    assert status == 502, body
    assert json.loads(body)["error"] == "bad gateway"


def test_self_signed_backend_refused_unless_its_ca_is_configured(gateways, backends, pki):
    """Upstream certificates are verified: an unknown CA is refused, its CA accepted."""
    backend = backends("tls", "--tls", f"{pki['server']}.crt", f"{pki['server']}.key")
    unverified = gateways(
        gateway_config(
            f"""
            upstream:
              - name: api
                endpoints: ["{backend.url}"]
            """
        )
    )
    status, _, body = get(unverified, "/")
    assert status == 502
    assert "TLS" in json.loads(body)["reason"]

    trusting = gateways(
        gateway_config(
            f"""
            upstream:
              - name: api
                endpoints: ["{backend.url}"]
                tls: {{ca_file: "{pki['ca']}.crt"}}
            """
        )
    )
    assert who(trusting) == "tls"

    skipping = gateways(
        gateway_config(
            f"""
            upstream:
              - name: api
                endpoints: ["{backend.url}"]
                tls: {{skip_insecure_verify: true}}
            """
        )
    )
    assert who(skipping) == "tls"


def _ws_frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x81, 0x80 | len(payload)]) + mask + masked


def test_websocket_echo_through_the_gateway(gateways, backends):
    """An Upgrade gets the backend's 101, then frames pass both ways."""
    live = backends("ws")
    gateway = gateways(gateway_config(one_upstream(live.url)))
    key = base64.b64encode(os.urandom(16))
    with socket.create_connection(("127.0.0.1", gateway.port("web")), timeout=10) as s:
        s.sendall(
            b"GET /chat HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\n\r\n" + _ws_frame(b"early")
        )
        received = b""
        deadline = time.monotonic() + 10
        while b"early" not in received and time.monotonic() < deadline:
            received += s.recv(4096)
        head = received.split(b"\r\n\r\n")[0]
        assert head.startswith(b"HTTP/1.1 101")
        assert b"upgrade: websocket" in head.lower()
        assert received.endswith(b"\x81\x05early")
        for text in (b"hello", b"world" * 10):
            s.sendall(_ws_frame(text))
            expected = bytes([0x81, len(text)]) + text
            got = b""
            while len(got) < len(expected) and time.monotonic() < deadline:
                got += s.recv(4096)
            assert got == expected


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_large_download_keeps_memory_bounded(gateways, backends):
    """
    64 MiB read slowly through the gateway: its RSS stays within 50 MiB of
    what it was idle, and the body arrives whole with its Content-Length.
    """
    live = backends("big")
    gateway = gateways(gateway_config(one_upstream(live.url)))
    who(gateway)
    pid = gateway.process.pid
    idle = _rss_kib(pid)
    size = 64 * 1024 * 1024
    peak = idle
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port("web"), timeout=30)
    try:
        conn.request("GET", f"/big?size={size}")
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Length") == str(size)
        assert response.getheader("Transfer-Encoding") is None
        total = 0
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            chunk = response.read(1024 * 1024)
            if not chunk:
                break
            total += len(chunk)
            if total % (8 * 1024 * 1024) < 1024 * 1024:
                time.sleep(0.2)
                peak = max(peak, _rss_kib(pid))
        assert total == size
    finally:
        conn.close()
    print(f"gateway RSS: idle {idle} KiB, peak {peak} KiB")
    assert peak - idle < 50 * 1024, (idle, peak)


def test_head_answers_with_the_length_of_the_get(gateways, backends):
    """
    HEAD through the gateway: the upstream's Content-Length, no body, and
    the keep-alive connection carries a GET afterwards.
    """
    live = backends("head")
    gateway = gateways(gateway_config(one_upstream(live.url)))
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port("web"), timeout=15)
    try:
        conn.request("HEAD", "/big?size=12345")
        response = conn.getresponse()
        assert response.status == 200
        assert response.getheader("Content-Length") == "12345"
        assert response.getheader("Transfer-Encoding") is None
        assert response.read() == b""
        conn.request("GET", "/big?size=12345")
        response = conn.getresponse()
        assert response.getheader("Content-Length") == "12345"
        assert len(response.read()) == 12345
    finally:
        conn.close()


def test_http_and_elasticsearch_filters_share_the_engine(gateways, backends):
    """http's inline hosts and an elasticsearch cluster (basic_auth sent) forward too."""
    a, b = backends("a"), backends("b")
    config = gateway_config(
        f"""
        elasticsearch:
          - name: prod
            enabled: true
            endpoint: {b.url}
            basic_auth: {{username: elastic, password: pass}}
        """,
        filters=f"""
        - http: {{schema: http, hosts: ["127.0.0.1:{a.port}"]}}
        """,
    )
    config = config.replace(
        "    default_flow: main\n",
        "    default_flow: main\n    rules:\n      - {pattern: [/es], flow: [es]}\n",
    ).replace(
        "flow:\n",
        "flow:\n  - name: es\n    filter:\n      - elasticsearch: {elasticsearch: prod}\n",
        1,
    )
    gateway = gateways(config)
    assert who(gateway, "/") == "a"
    _, _, body = get(gateway, "/es")
    answer = json.loads(body)
    assert answer["backend"] == "b"
    token = base64.b64encode(b"elastic:pass").decode()
    assert answer["headers"]["authorization"] == [f"Basic {token}"]


def test_examples_proxy_yml_runs(gateways, backends):
    """examples/proxy.yml, with its backends' ports, balances over both."""
    a, b = backends("a"), backends("b")
    text = (REPO / "examples" / "proxy.yml").read_text()
    text = text.replace("127.0.0.1:9001", f"127.0.0.1:{a.port}")
    text = text.replace("127.0.0.1:9002", f"127.0.0.1:{b.port}")
    text = text.replace("127.0.0.1:8000", "127.0.0.1:0")
    gateway = gateways(text)
    assert sorted(who(gateway) for _ in range(4)) == ["a", "a", "b", "b"]
