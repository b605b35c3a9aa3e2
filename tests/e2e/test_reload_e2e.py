"""
Reloading and stopping a real ``twistd -n infini-gateway`` while it serves:
no request fails during reloads, a broken file changes nothing, entries
come and go, the file is watched, and SIGTERM lets slow requests finish.
"""

import http.client
import json
import os
import signal
import socket
import textwrap
import threading
import time

import pytest

from tests.e2e.backends import Backend
from tests.e2e.test_admin_e2e import admin_address, call, get_json

CONFIG = """
api:
  network: {{binding: "127.0.0.1:0"}}
{extra}
entry:
  - name: web
    network: {{binding: "127.0.0.1:0"}}
{entries}
router:
  - name: default
    default_flow: hello
    rules:
      - method: [GET]
        pattern: ["/slow"]
        flow: [slow]
flow:
  - name: hello
    filter:
      - echo: {{message: "{message}"}}
  - name: slow
    filter:
      - proxy: {{upstream: slow}}
upstream:
  - name: slow
    endpoints: ["http://127.0.0.1:{backend}"]
    timeout: {{read: 20s}}
"""


def config(message="v1", entries="", extra="", backend=9):
    return textwrap.dedent(
        CONFIG.format(message=message, entries=entries, extra=extra, backend=backend)
    )


def test_no_request_fails_while_reloading(gateways):
    """
    2,000 requests from 20 concurrent clients (half on keep-alive
    connections, half on a new connection each) while the configuration is
    reloaded every 100 ms, by SIGHUP and by the API in turn: every request
    is answered 200 by the old or the new configuration.
    """
    gateway = gateways(config("v1"))
    admin = admin_address(gateway)
    web = ("127.0.0.1", gateway.port("web"))
    texts = [config("v1"), config("v2")]
    failures = []
    answered = []
    done = threading.Event()
    deadline = time.monotonic() + 60

    def client(keep_alive: bool) -> None:
        conn = None
        for _ in range(100):
            if time.monotonic() > deadline:
                failures.append("out of time")
                return
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(*web, timeout=20)
                conn.request(
                    "GET", "/", headers={} if keep_alive else {"Connection": "close"}
                )
                response = conn.getresponse()
                body = response.read()
                if response.status != 200 or body not in (b"v1", b"v2"):
                    failures.append((response.status, body))
                answered.append(body)
            except Exception as e:
                failures.append(repr(e))
                conn = None
                continue
            if not keep_alive:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    reloads = []

    def reloader() -> None:
        n = 0
        while not done.is_set() and time.monotonic() < deadline:
            n += 1
            write_atomically(gateway.config_path, texts[n % 2])
            if n % 2:
                gateway.process.send_signal(signal.SIGHUP)
            else:
                status, _, body = call(admin, "POST", "/config/_reload")
                if status != 200:
                    failures.append(("reload", status, body))
            reloads.append(n)
            done.wait(0.1)

    threads = [threading.Thread(target=client, args=(i % 2 == 0,)) for i in range(20)]
    reloading = threading.Thread(target=reloader)
    reloading.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(70)
    done.set()
    reloading.join(10)

    assert failures == []
    assert len(answered) == 2000
    assert len(reloads) >= 5
    assert set(answered) == {b"v1", b"v2"}
    stats = get_json(admin, "/stats")[1]
    assert stats["reloads"]["failure"] == 0
    assert stats["reloads"]["success"] >= len(reloads) // 2


def test_reload_adds_and_removes_entries_and_refuses_broken_files(gateways, tmp_path):
    """
    An added entry listens and a removed one stops; a broken file sent by
    SIGHUP changes nothing and is logged; the kept entry never rebinds.
    """
    gateway = gateways(config("v1"))
    admin = admin_address(gateway)
    web = ("127.0.0.1", gateway.port("web"))
    second = '  - name: second\n    network: {binding: "127.0.0.1:0"}\n'

    gateway.config_path.write_text(config("v2", entries=second))
    status, answer = get_json(admin, "/config/_reload", method="POST")
    assert status == 200, answer
    assert answer["entries"] == {
        "kept": ["web"],
        "added": ["second"],
        "removed": [],
        "restarted": [],
    }
    info = get_json(admin, "/_info")[1]
    bound = {e["name"]: e["bound"] for e in info["entries"]}
    assert bound["web"] == f"127.0.0.1:{web[1]}"
    host, _, port = bound["second"].rpartition(":")
    assert call((host, int(port)), "GET", "/")[2] == b"v2"
    assert call(web, "GET", "/")[2] == b"v2"

    gateway.config_path.write_text(config("v3") + "\nbogus_key: 1\n")
    gateway.process.send_signal(signal.SIGHUP)
    wait_for(lambda: "configuration not reloaded" in gateway.log())
    assert "bogus_key" in gateway.log()
    assert call(web, "GET", "/")[2] == b"v2"
    assert call((host, int(port)), "GET", "/")[2] == b"v2"

    gateway.config_path.write_text(config("v4"))
    status, answer = get_json(admin, "/config/_reload", method="POST")
    assert status == 200 and answer["entries"]["removed"] == ["second"], answer
    wait_for(lambda: refused((host, int(port))))
    assert call(web, "GET", "/")[2] == b"v4"


def test_auto_reload_watches_the_file(gateways):
    """With configs.auto_reload, a changed file is reloaded within the interval."""
    extra = "configs: {auto_reload: true, interval: 100ms}"
    gateway = gateways(config("v1", extra=extra))
    web = ("127.0.0.1", gateway.port("web"))
    assert call(web, "GET", "/")[2] == b"v1"
    time.sleep(0.2)
    gateway.config_path.write_text(config("v2", extra=extra))
    wait_for(lambda: call(web, "GET", "/")[2] == b"v2")


def test_sigterm_lets_slow_requests_finish(gateways):
    """
    SIGTERM with slow requests in flight: the gateway stops accepting
    connections, the requests complete, and it exits 0.
    """
    backend = Backend("slow").start()
    try:
        gateway = gateways(
            config("v1", extra="shutdown_timeout: 10s", backend=backend.port)
        )
        web = ("127.0.0.1", gateway.port("web"))
        results = []

        def slow() -> None:
            try:
                status, _, body = call(web, "GET", "/slow?seconds=2", timeout=15)
                results.append((status, json.loads(body)["path"]))
            except Exception as e:
                results.append(repr(e))

        threads = [threading.Thread(target=slow) for _ in range(3)]
        for thread in threads:
            thread.start()
        wait_for(lambda: "GET" in backend_seen(backend))
        started = time.monotonic()
        gateway.process.send_signal(signal.SIGTERM)
        wait_for(lambda: refused(web), timeout=5)
        for thread in threads:
            thread.join(20)
        assert results == [(200, "/slow")] * 3
        assert gateway.process.wait(20) == 0
        assert time.monotonic() - started < 10
    finally:
        backend.stop()


def write_atomically(path, text):
    """Replace the file by a rename: a reload never reads it half-written."""
    partial = path.with_name(path.name + ".new")
    partial.write_text(text)
    os.replace(partial, path)


def backend_seen(backend):
    try:
        return json.loads(call(("127.0.0.1", backend.port), "GET", "/stats")[2])
    except OSError:
        return {}


def refused(address) -> bool:
    try:
        with socket.create_connection(address, timeout=2):
            return False
    except OSError:
        return True


def wait_for(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


@pytest.fixture(autouse=True)
def _bounded():
    start = time.monotonic()
    yield
    assert time.monotonic() - start < 120
