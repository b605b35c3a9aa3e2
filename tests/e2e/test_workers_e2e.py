"""
``twistd -n infini-gateway --workers 2``: two worker processes share each
entry's port (SO_REUSEPORT) and both answer; a worker killed with SIGKILL is
started again while the other keeps serving; SIGTERM to the supervisor
stops everything with status 0; a port the workers cannot share is refused.
"""

import http.client
import os
import signal
import socket
import subprocess
import textwrap
import time
from pathlib import Path
from typing import Dict, List, Optional, Set

import pytest

from tests.e2e.conftest import LISTENING, START_TIMEOUT, TWISTD, gateway_env, twistd

CONFIG = """
entry:
  - name: web
    router: default
    network: {binding: "127.0.0.1:%(port)d"}
router:
  - name: default
    default_flow: hello
flow:
  - name: hello
    filter:
      - echo: {message: "%(message)s\\n"}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int) -> Set[int]:
    """The live (not zombie) child processes of C{pid}, from /proc."""
    found = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        # The command may hold spaces and parentheses: split after the last ")".
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def socket_owners(port: int, client_ports: Set[int], pids: Set[int]) -> Dict[int, int]:
    """
    For each of C{client_ports} connected to C{port} on loopback, the pid
    among C{pids} holding the gateway's side of the connection.
    """
    inodes = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if int(local.split(":")[1], 16) == port:
            remote_port = int(remote.split(":")[1], 16)
            if remote_port in client_ports:
                inodes[f"socket:[{inode}]"] = remote_port
    owners = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target in inodes:
                owners[inodes[target]] = pid
    return owners


def get(
    port: int, conn: Optional[http.client.HTTPConnection] = None, expected: bytes = b"hello\n"
) -> int:
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/")
        response = conn.getresponse()
        assert response.read() == expected
        return response.status
    finally:
        if own:
            conn.close()


def answered_by(port: int, workers: Set[int], connections: int = 24) -> Set[int]:
    """The workers holding C{connections} keep-alive connections, each answered."""
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(connections)]
    try:
        for conn in conns:
            assert get(port, conn) == 200
        client_ports = {conn.sock.getsockname()[1] for conn in conns}
        owners = socket_owners(port, client_ports, workers)
        assert set(owners) == client_ports
        return set(owners.values())
    finally:
        for conn in conns:
            conn.close()


def wait_for(condition, timeout: float = START_TIMEOUT, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


class Supervisor:
    """A ``twistd -n infini-gateway --workers 2`` process in a session of its own."""

    def __init__(self, directory: Path, port: int, workers: int = 2) -> None:
        self.port = port
        self.config = config = directory / "gateway.yml"
        config.write_text(textwrap.dedent(CONFIG % {"port": port, "message": "hello"}))
        self.log_path = directory / "gateway.log"
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "infini-gateway", "--config", str(config)]
            + ["--workers", str(workers)],
            cwd=directory,
            env=gateway_env(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        return self.log_path.read_text()

    def listening(self) -> int:
        return len(LISTENING.findall(self.log()))

    def workers(self) -> Set[int]:
        return children(self.process.pid)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                pass
        # Whatever is left of the session (a worker, on a failure).
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except OSError:
            pass
        self.process.wait()
        self._log.close()


@pytest.fixture
def supervisor(tmp_path):
    started: List[Supervisor] = []

    def start(workers: int = 2) -> Supervisor:
        gateway = Supervisor(tmp_path, free_port(), workers)
        started.append(gateway)
        assert wait_for(lambda: gateway.listening() >= workers), gateway.log()
        assert wait_for(lambda: len(gateway.workers()) == workers), gateway.log()
        return gateway

    yield start
    for gateway in started:
        gateway.close()


def test_both_workers_answer_on_the_shared_port(supervisor):
    """The supervisor binds nothing; each of the two workers accepts connections."""
    gateway = supervisor()
    workers = gateway.workers()
    assert len(workers) == 2
    assert socket_owners(gateway.port, set(), {gateway.process.pid}) == {}
    # 24 connections all on one worker would be a 1 in 2**23 chance.
    assert answered_by(gateway.port, workers) == workers


def test_a_killed_worker_is_started_again_and_service_goes_on(supervisor):
    """
    SIGKILL to one worker: the other answers meanwhile, a new worker takes
    its place (the supervisor logs both), and both answer again.
    """
    gateway = supervisor()
    before = gateway.workers()
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    assert wait_for(lambda: not alive(victim), 10)
    assert all(get(gateway.port) == 200 for _ in range(20))
    assert wait_for(lambda: len(gateway.workers() - before) == 1, 15), gateway.log()
    assert wait_for(lambda: gateway.listening() >= 3), gateway.log()
    now = gateway.workers()
    assert len(now) == 2 and victim not in now
    assert f"(pid {victim}) died (signal 9)" in gateway.log()
    assert all(get(gateway.port) == 200 for _ in range(20))
    assert answered_by(gateway.port, now) == now


def test_sighup_reloads_every_worker(supervisor):
    """SIGHUP to the supervisor: it and both workers reload, and both serve the new file."""
    gateway = supervisor()
    workers = gateway.workers()
    gateway.config.write_text(
        textwrap.dedent(CONFIG % {"port": gateway.port, "message": "reloaded"})
    )
    gateway.process.send_signal(signal.SIGHUP)
    assert wait_for(lambda: gateway.log().count("configuration reloaded") >= 3, 15), gateway.log()

    def everyone_reloaded() -> bool:
        conns = [
            http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10) for _ in range(24)
        ]
        try:
            bodies = set()
            for conn in conns:
                conn.request("GET", "/")
                bodies.add(conn.getresponse().read())
            return bodies == {b"reloaded\n"}
        finally:
            for conn in conns:
                conn.close()

    assert wait_for(everyone_reloaded, 10, step=0.2), gateway.log()
    assert gateway.workers() == workers


def test_sigterm_stops_the_supervisor_and_its_workers_with_status_0(supervisor):
    gateway = supervisor()
    workers = gateway.workers()
    gateway.process.send_signal(signal.SIGTERM)
    assert gateway.process.wait(20) == 0, gateway.log()
    assert wait_for(lambda: not any(alive(pid) for pid in workers), 10)
    log = gateway.log()
    assert log.count("stopped: exit status 0") == 2, log
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", gateway.port), timeout=2).close()


def test_workers_refuse_an_entry_on_port_0(tmp_path):
    """Workers sharing a port need it fixed: port 0 would give each its own."""
    config = tmp_path / "gateway.yml"
    config.write_text(textwrap.dedent(CONFIG % {"port": 0, "message": "hello"}))
    result = twistd("-n", "--pidfile=", "infini-gateway", "--config", str(config), "--workers", "2")
    assert result.returncode == 1
    assert "entry 'web': --workers needs a fixed port, not 0" in result.stderr
    result = twistd("-n", "--pidfile=", "infini-gateway", "--config", str(config), "--workers", "0")
    assert result.returncode == 1
    assert "--workers must be at least 1" in result.stderr


def test_workers_stop_at_once_on_a_taken_port(tmp_path):
    """A port held by another socket (no SO_REUSEPORT) stops the supervisor, status 1."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        config = tmp_path / "gateway.yml"
        config.write_text(textwrap.dedent(CONFIG % {"port": port, "message": "hello"}))
        result = twistd(
            "-n", "--pidfile=", "infini-gateway", "--config", str(config), "--workers", "2"
        )
    assert result.returncode == 1
    assert f"entry 'web': cannot listen on 127.0.0.1:{port}" in result.stdout + result.stderr
