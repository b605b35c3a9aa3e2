"""
The tracing_flow as an operator runs it: twistd with a router whose
tracing flow is a ``logging`` filter, curl as the client, and the JSON
lines read back from the file.
"""

import json
import signal
import textwrap
import time

from tests.e2e.conftest import curl

CONFIG = """
path:
  logs: ./logs
entry:
  - name: web
    router: default
    network: {binding: "127.0.0.1:0"}
router:
  - name: default
    default_flow: hello
    tracing_flow: requests
    rules:
      - method: [POST]
        pattern: ["/admin"]
        flow: [admin]
      - method: ["*"]
        pattern: ["/teapot"]
        flow: [teapot]
flow:
  - name: hello
    filter:
      - set_response_header: {headers: ["Set-Cookie -> session=s3cr3t-cookie"]}
      - echo: {message: "hello"}
  - name: teapot
    filter:
      - echo: {message: "short and stout", status: 418, continue: false}
  - name: admin
    filter:
      - basic_auth: {valid_users: {admin: s3cret}}
      - echo: {message: "welcome"}
  - name: requests
    filter:
      - logging: {max_file_size: 10mb, max_files: 3}
"""


def read_lines(path, count, timeout=10.0):
    """The file's JSON lines, once it holds C{count} (bounded wait)."""
    deadline = time.monotonic() + timeout
    lines = []
    while time.monotonic() < deadline:
        if path.exists():
            lines = [json.loads(line) for line in path.read_text().splitlines()]
            if len(lines) >= count:
                return lines
        time.sleep(0.05)
    raise AssertionError(f"expected {count} lines in {path}, got {lines!r}")


def test_tracing_flow_logs_every_request_with_credentials_redacted(gateways, tmp_path):
    """
    Each request, whatever its status, gives one JSON line in
    logs/requests.log after its response; Authorization and cookies never
    reach the file; SIGTERM stops the gateway cleanly with the file whole.
    """
    gateway = gateways(textwrap.dedent(CONFIG))
    status = ["-o", "/dev/null", "-w", "%{http_code}"]

    bearer = curl(*status, "-H", "Authorization: Bearer t0ps3cret", gateway.url("web", "/a?x=1"))
    assert bearer.stdout == "200", bearer.stderr
    denied = curl(*status, "-X", "POST", gateway.url("web", "/admin"))
    assert denied.stdout == "401", denied.stderr
    admitted = curl(*status, "-u", "admin:s3cret", "-d", "hello=1", gateway.url("web", "/admin"))
    assert admitted.stdout == "200", admitted.stderr
    teapot = curl(*status, gateway.url("web", "/teapot"))
    assert teapot.stdout == "418", teapot.stderr

    path = tmp_path / "logs" / "requests.log"
    lines = read_lines(path, 4)
    assert gateway.stop(signal.SIGTERM) == 0

    raw = path.read_text()
    for secret in ("t0ps3cret", "YWRtaW46czNjcmV0", "s3cr3t-cookie"):
        assert secret not in raw
    assert [(line["method"], line["uri"], line["status"]) for line in lines] == [
        ("GET", "/a?x=1", 200),
        ("POST", "/admin", 401),
        ("POST", "/admin", 200),
        ("GET", "/teapot", 418),
    ]
    first, _, admin, teapot_line = lines
    assert first["request_headers"]["authorization"] == "Bearer <redacted>"
    assert first["response_headers"]["set-cookie"] == "<redacted>"
    assert first["flow"] == "hello" and first["rule"] is None
    assert first["response_bytes"] == len("hello")
    assert admin["request_headers"]["authorization"] == "Basic <redacted>"
    assert admin["request_bytes"] == len("hello=1")
    assert admin["flow"] == "admin" and admin["rule"]
    assert admin["response_bytes"] == len("welcome")
    assert teapot_line["flow"] == "teapot"
    for line in lines:
        assert line["client_ip"] == "127.0.0.1"
        assert line["user_agent"].startswith("curl/")
        assert line["host"] == f"127.0.0.1:{gateway.port('web')}"
        assert line["complete"] is True and line["aborted"] is False
        assert 0 <= line["duration_ms"] < 10000
        assert line["time"].endswith("Z")
