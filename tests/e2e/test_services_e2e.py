"""
Services end to end: a real twistd gateway whose ``service:`` section is
compiled into its router, forwarding to real twisted.web backends on
127.0.0.1 (tests/e2e/backends.py) that say which one answered and which
path they were sent.
"""

import http.client
import json
import socket
import ssl
import textwrap
from typing import List, Tuple

import pytest

from tests.e2e.backends import Backend
from tests.e2e.conftest import REPO, Gateway


def services_config(v1: Backend, v2: Backend) -> str:
    v2_inline = f'{{endpoints: ["{v2.url}"]}}'
    return textwrap.dedent(f"""
        entry:
          - name: web
            network: {{binding: "127.0.0.1:0"}}
          - name: secure
            network: {{binding: "127.0.0.1:0"}}
            tls: {{enabled: true}}
        router:
          - name: default
            rules:
              - {{pattern: ["/plain"], flow: [plain]}}
        flow:
          - name: plain
            filter:
              - echo: {{message: "plain\\n"}}
        upstream:
          - name: v1
            endpoints: ["{v1.url}"]
        service:
          - name: pets
            description: The pet store.
            hosts: [api.example.com, "*.pets.example.org"]
            path_prefix: /v1
            plugins:
              - set_request_header: {{headers: ["X-Service -> pets"]}}
              - set_response_header: {{headers: ["X-Served-By -> pets"]}}
            upstreams:
              - {{version: default, upstream: v1}}
              - {{version: v2, upstream: {v2_inline}}}
            routes:
              - name: pets
                paths: ["/pets", "/pets/{{id}}"]
                methods: [GET, POST]
                strip_path_prefix: true
                plugins:
                  - set_response_header: {{headers: ["X-Served-By -> pets/$[[id]]"]}}
              - name: kept
                paths: ["/kept/{{rest:*}}"]
              - name: hidden
                paths: ["/hidden"]
                published: false
          - name: draft
            published: false
            hosts: [api.example.com]
            path_prefix: /draft
            upstreams: [{{version: default, upstream: v1}}]
            routes: [{{paths: ["/{{rest:*}}"]}}]
          - name: secure
            protocol: https
            hosts: [secure.example.com]
            trusted_proxies: [127.0.0.1/32]
            upstreams: [{{version: default, upstream: v1}}]
            routes: [{{name: all, paths: ["/{{rest:*}}"]}}]
          - name: percent
            hosts: [percent.example.com]
            upstreams:
              - {{version: default, upstream: v1}}
              - {{version: v2, upstream: {v2_inline}}}
            canary: {{version: v2, percent: 20}}
            routes: [{{paths: ["/{{rest:*}}"]}}]
          - name: header
            hosts: [header.example.com]
            upstreams:
              - {{version: default, upstream: v1}}
              - {{version: v2, upstream: {v2_inline}}}
            canary:
              version: v2
              rules: [{{header: X-Canary, operator: "==", value: "yes"}}]
            routes: [{{paths: ["/{{rest:*}}"]}}]
          - name: sticky
            hosts: [sticky.example.com]
            upstreams:
              - {{version: default, upstream: v1}}
              - {{version: v2, upstream: {v2_inline}}}
            canary: {{version: v2, percent: 30, sticky: {{header: X-User}}}}
            routes: [{{paths: ["/{{rest:*}}"]}}]
        """)


class Client:
    """One keep-alive connection to an entry of the gateway."""

    def __init__(self, port: int, tls: bool = False) -> None:
        if tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            self.conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=15, context=context)
        else:
            self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)

    def call(
        self, host: str, path: str, method: str = "GET", headers=None, body=None
    ) -> Tuple[int, dict, bytes]:
        self.conn.request(method, path, body=body, headers={"Host": host, **(headers or {})})
        response = self.conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()

    def who(self, host: str, path: str = "/", **kwargs) -> str:
        status, _, body = self.call(host, path, **kwargs)
        assert status == 200, body
        return json.loads(body)["backend"]

    def close(self) -> None:
        self.conn.close()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    """One gateway (and its two backends) for the tests of this module."""
    v1, v2 = Backend("v1"), Backend("v2")
    gateway = None
    try:
        v1.start()
        v2.start()
        gateway = Gateway(tmp_path_factory.mktemp("services"), services_config(v1, v2))
        yield gateway.start(entries=2)
    finally:
        if gateway is not None:
            gateway.stop()
        v1.stop()
        v2.stop()


@pytest.fixture
def client(gateway):
    client = Client(gateway.port("web"))
    yield client
    client.close()


def _answer(body: bytes) -> dict:
    return json.loads(body)


def test_hosts_exact_and_wildcard(client):
    """A service answers on its exact host and any name below its wildcard, nowhere else."""
    for host in [
        "api.example.com",
        "API.Example.com:8080",
        "a.pets.example.org",
        "x.y.pets.example.org",
    ]:
        status, _, body = client.call(host, "/v1/pets")
        assert status == 200, (host, body)
        assert _answer(body)["backend"] == "v1"
    for host in ["pets.example.org", "other.example.com", "127.0.0.1"]:
        status, _, body = client.call(host, "/v1/pets")
        assert status == 404, host
        assert _answer(body) == {"error": "no route", "method": "GET", "path": "/v1/pets"}
    # The router's own rules still answer beside the services.
    assert client.call("anything", "/plain")[2] == b"plain\n"


def test_prefix_strip_and_plugins(client):
    """strip_path_prefix forwards /pets/7 for /v1/pets/7; a route plugin replaces the service's."""
    status, headers, body = client.call(
        "api.example.com", "/v1/pets/7?color=red", method="POST", body=b"x=1"
    )
    answer = _answer(body)
    assert status == 200
    assert (answer["method"], answer["path"]) == ("POST", "/pets/7")
    assert answer["headers"]["x-service"] == ["pets"]
    assert headers["X-Served-By"] == "pets/7"

    # Without strip_path_prefix the path goes as it came.
    status, headers, body = client.call("api.example.com", "/v1/kept/a/b")
    assert _answer(body)["path"] == "/v1/kept/a/b"
    assert headers["X-Served-By"] == "pets"

    # Methods outside the route's, and paths outside the prefix, are unknown.
    assert client.call("api.example.com", "/v1/pets/7", method="DELETE")[0] == 404
    assert client.call("api.example.com", "/pets/7")[0] == 404


def test_unpublished_service_and_route_answer_404(client):
    """An unpublished route, and every route of an unpublished service, are unknown paths."""
    for path in ["/v1/hidden", "/draft/anything"]:
        status, _, body = client.call("api.example.com", path)
        assert status == 404, path
        assert _answer(body)["error"] == "no route"


def test_https_only_service_redirects_plain_http(gateway, client):
    """301 for GET/HEAD, 308 for POST, to the TLS entry's port, path and query kept."""
    tls_port = gateway.port("secure")
    status, headers, _ = client.call("secure.example.com", "/a/b?x=1&y=2")
    assert status == 301
    assert headers["Location"] == f"https://secure.example.com:{tls_port}/a/b?x=1&y=2"
    status, headers, _ = client.call("secure.example.com:8080", "/h", method="HEAD")
    assert (status, headers["Location"]) == (301, f"https://secure.example.com:{tls_port}/h")
    for method in ["POST", "PUT", "DELETE"]:
        status, headers, _ = client.call(
            "secure.example.com", "/orders?id=3", method=method, body=b"{}"
        )
        assert status == 308, method
        assert headers["Location"] == f"https://secure.example.com:{tls_port}/orders?id=3"

    # A trusted front (127.0.0.1 here) that terminated TLS says so.
    status, _, body = client.call(
        "secure.example.com", "/a", headers={"X-Forwarded-Proto": "https"}
    )
    assert (status, _answer(body)["backend"]) == (200, "v1")

    # Over the TLS entry itself the service is served, the method kept.
    tls = Client(tls_port, tls=True)
    try:
        status, _, body = tls.call("secure.example.com", "/orders?id=3", method="POST", body=b"{}")
        assert status == 200
        assert (_answer(body)["method"], _answer(body)["path"]) == ("POST", "/orders")
    finally:
        tls.close()


def test_canary_percent_split_over_2000_requests(gateway):
    """percent: 20 sends 20% +- 3 points of 2,000 requests to the canary version."""
    clients = [Client(gateway.port("web")) for _ in range(2)]
    counts = {"v1": 0, "v2": 0}
    try:
        for n in range(2000):
            counts[clients[n % 2].who("percent.example.com", "/x")] += 1
    finally:
        for c in clients:
            c.close()
    share = counts["v2"] * 100 / 2000
    assert abs(share - 20) <= 3, counts


def test_canary_header_rule_is_exact(client):
    """Every request with X-Canary: yes reaches the canary, every other one the version in use."""
    for n in range(60):
        flag = n % 3 == 0
        headers = {"X-Canary": "yes"} if flag else ({"X-Canary": "no"} if n % 3 == 1 else {})
        assert client.who("header.example.com", "/r", headers=headers) == ("v2" if flag else "v1")


def test_sticky_canary_never_moves_a_user(client):
    """Over 200 requests from 40 users, each user always reaches one version; both are used."""
    placed: dict = {}
    for n in range(200):
        user = f"user-{n % 40}"
        version = client.who("sticky.example.com", "/r", headers={"X-User": user})
        assert placed.setdefault(user, version) == version, user
    assert set(placed.values()) == {"v1", "v2"}


def _free_ports(count: int) -> List[int]:
    """Ports nothing listens on (bound together, then released)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def test_services_example_runs(gateways):
    """examples/services.yml (ports moved to free ones) serves its services as documented."""
    text = (REPO / "examples" / "services.yml").read_text()
    for fixed, free in zip(["8000", "8443", "9101", "9102"], _free_ports(4)):
        text = text.replace(f"127.0.0.1:{fixed}", f"127.0.0.1:{free}")
    gateway = gateways(text, entries=4)
    client = Client(gateway.port("web"))
    try:
        versions = []
        for _ in range(20):
            status, headers, body = client.call("api.example.com", "/v1/pets/7")
            assert status == 200, body
            assert headers["X-Service"] == "petstore"
            answer = json.loads(body)
            assert answer["path"] == "/pets/7"
            versions.append(answer["version"])
        assert versions.count("v2") == 2, versions
        alice = {
            json.loads(client.call("localhost", "/v1/pets", headers={"X-User": "alice"})[2])[
                "version"
            ]
            for _ in range(10)
        }
        assert len(alice) == 1
        assert client.call("api.example.com", "/v1/beta/pets")[0] == 404
        status, headers, _ = client.call("api.example.com", "/v1/orders", method="POST", body=b"{}")
        assert status == 308
        assert headers["Location"] == f"https://api.example.com:{gateway.port('secure')}/v1/orders"
    finally:
        client.close()
    tls = Client(gateway.port("secure"), tls=True)
    try:
        status, _, body = tls.call("localhost", "/v1/orders/3", method="POST", body=b"{}")
        assert (status, json.loads(body)) == (200, {"version": "v1", "path": "/v1/orders/3"})
    finally:
        tls.close()
