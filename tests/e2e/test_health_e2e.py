"""
Health checks end to end: a real twistd gateway in front of three real
backends on 127.0.0.1, under a steady (bounded) loop of client requests.
One backend is stopped, then started again on the same port: with active
probes it is marked unhealthy within the configured probes, after which no
client request fails, and it gets traffic again once probes see it back;
with passive checks only, it is ejected after the configured failures, and
comes back when the ejection time has passed.
"""

import http.client
import json
import socket
import textwrap
import time
from typing import Callable, List, NamedTuple, Optional

import pytest

from tests.e2e.backends import Backend


class Answer(NamedTuple):
    at: float
    status: int
    backend: Optional[str]
    body: bytes


@pytest.fixture
def backends():
    """Start backends with C{backends(name, port)}; all stop at the end."""
    started: List[Backend] = []

    def start(name: str, port: int) -> Backend:
        backend = Backend(name, "--port", str(port))
        started.append(backend)
        return backend.start()

    yield start
    for backend in started:
        backend.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config(urls: List[str], health_check: str) -> str:
    return (
        textwrap.dedent("""
        entry:
          - name: web
            network: {binding: "127.0.0.1:0"}
        router:
          - name: default
            default_flow: main
        flow:
          - name: main
            filter:
              - proxy: {upstream: api}
        upstream:
          - name: api
            endpoints: [%s]
            retries: 0
            timeout: {connect: 1s, read: 5s}
            health_check:
        """ % ", ".join(f'"{u}"' for u in urls))
        + textwrap.indent(textwrap.dedent(health_check).strip(), "      ")
        + "\n"
    )


def ask(gateway) -> Answer:
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port("web"), timeout=10)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    backend = json.loads(body).get("backend") if response.status == 200 else None
    return Answer(time.monotonic(), response.status, backend, body)


def loop(
    gateway, until: Callable[[List[Answer]], bool], seconds: float, count: int = 2000
) -> List[Answer]:
    """Requests one after another until C{until(answers)}, at most C{seconds} and C{count}."""
    answers: List[Answer] = []
    deadline = time.monotonic() + seconds
    while len(answers) < count and time.monotonic() < deadline:
        answers.append(ask(gateway))
        if until(answers):
            break
        time.sleep(0.005)
    return answers


def failures(answers: List[Answer]) -> List[Answer]:
    return [a for a in answers if a.status != 200]


def start_three(backends):
    ports = [free_port() for _ in range(3)]
    return [backends(name, port) for name, port in zip("abc", ports)]


def warm_up(gateway) -> None:
    answers = loop(gateway, lambda a: len({x.backend for x in a}) == 3 and len(a) >= 6, 20)
    assert failures(answers) == []
    assert {a.backend for a in answers} == {"a", "b", "c"}


def test_active_checks_take_a_stopped_backend_out_and_bring_it_back(gateways, backends):
    a, b, c = start_three(backends)
    gateway = gateways(
        config(
            [a.url, b.url, c.url],
            """
            active:
              type: http
              http_path: /health
              timeout: 500ms
              healthy: {interval: 200ms, successes: 2}
              unhealthy: {interval: 100ms, tcp_failures: 2}
            """,
        )
    )
    warm_up(gateway)
    marked = f"endpoint {b.url} healthy -> unhealthy"

    b.stop()
    stopped = time.monotonic()
    before = loop(gateway, lambda _: marked in gateway.log(), 15)
    assert marked in gateway.log(), gateway.log()
    # Two failed probes, 200 ms apart at most, each under its 500 ms timeout;
    # the rest is slack for a busy machine.
    assert time.monotonic() - stopped < 5.0
    assert all(a.status == 502 for a in failures(before))
    assert "tcp_failures=2" in gateway.log()

    after = loop(gateway, lambda answers: len(answers) >= 40, 10)
    assert len(after) >= 40
    assert failures(after) == []
    assert {a.backend for a in after} == {"a", "c"}

    b.start()
    restarted = time.monotonic()
    back = loop(gateway, lambda answers: answers[-1].backend == "b", 15)
    assert back and back[-1].backend == "b", gateway.log()
    # Two successful probes 100 ms apart (the unhealthy interval), plus slack.
    assert back[-1].at - restarted < 5.0
    assert failures(back) == []
    assert f"endpoint {b.url} unhealthy -> healthy" in gateway.log()


def test_passive_checks_alone_eject_a_stopped_backend_and_readmit_it(gateways, backends):
    a, b, c = start_three(backends)
    gateway = gateways(
        config(
            [a.url, b.url, c.url],
            """
            passive:
              consecutive_gateway_failure: 2
              base_ejection_time: 3s
              max_ejection_percent: 50
            """,
        )
    )
    warm_up(gateway)
    ejected = f"endpoint {b.url} healthy -> ejected"

    b.stop()
    before = loop(gateway, lambda _: ejected in gateway.log(), 15)
    seen = time.monotonic()
    assert ejected in gateway.log(), gateway.log()
    assert 1 <= len(failures(before)) <= 2
    for answer in failures(before):
        assert answer.status == 502
        assert json.loads(answer.body)["upstream"] == "api"

    # Inside the ejection (3 s), nothing fails and b gets nothing.
    during = loop(gateway, lambda answers: time.monotonic() - seen > 1.0, 1.5)
    assert len(during) >= 5
    assert failures(during) == []
    assert {a.backend for a in during} <= {"a", "c"}

    b.start()
    back = loop(gateway, lambda answers: answers[-1].backend == "b", 15)
    assert back and back[-1].backend == "b", gateway.log()
    # Re-admitted when the 3 s ejection has passed, without any probe.
    assert back[-1].at - seen < 3.0 + 5.0
    assert failures(back) == []
    assert f"endpoint {b.url} ejected -> healthy: ejection time passed" in gateway.log()
