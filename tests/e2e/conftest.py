"""
End-to-end harness: the real ``twistd -n infini-gateway`` in a subprocess,
driven over real sockets.

Entries bind port 0 unless a test needs a fixed port; the harness reads the
addresses actually bound from the gateway's log.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest

REPO = Path(__file__).resolve().parents[2]
TWISTD = str(Path(sys.executable).parent / "twistd")
LISTENING = re.compile(r"entry (\S+) listening on ([a-z]+)://(\S+)")
START_TIMEOUT = 30.0


def gateway_env() -> Dict[str, str]:
    """The subprocess runs this checkout's code (and finds its plugin on sys.path)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.pop("PYTHONWARNINGS", None)
    return env


def twistd(*args: str, cwd: Optional[Path] = None, **kwargs) -> subprocess.CompletedProcess:
    """Run twistd to completion (for --help, --check and start-up failures)."""
    return subprocess.run(
        [TWISTD, *args],
        cwd=cwd,
        env=gateway_env(),
        capture_output=True,
        text=True,
        timeout=60,
        **kwargs,
    )


class Gateway:
    """
    One ``twistd -n infini-gateway`` process.

    @ivar addresses: entry name -> (scheme, host, port) as bound.
    """

    def __init__(self, directory: Path, config: str, name: str = "gateway") -> None:
        self.directory = directory
        self.config_path = directory / f"{name}.yml"
        self.config_path.write_text(config)
        self.log_path = directory / f"{name}.log"
        self.process: Optional[subprocess.Popen] = None
        self.addresses: Dict[str, tuple] = {}

    def start(self, entries: int = 1) -> "Gateway":
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "infini-gateway", "--config", str(self.config_path)],
            cwd=self.directory,
            env=gateway_env(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            self._read_addresses()
            if len(self.addresses) >= entries:
                return self
            if self.process.poll() is not None:
                raise AssertionError(f"gateway exited {self.process.returncode}:\n{self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"gateway did not listen within {START_TIMEOUT}s:\n{self.log()}")

    def _read_addresses(self) -> None:
        for match in LISTENING.finditer(self.log()):
            name, scheme, address = match.groups()
            host, _, port = address.rpartition(":")
            self.addresses[name] = (scheme, host.strip("[]"), int(port))

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""

    def port(self, entry: str) -> int:
        return self.addresses[entry][2]

    def url(self, entry: str, path: str = "/", host: Optional[str] = None) -> str:
        scheme, bound, port = self.addresses[entry]
        host = host or bound
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{port}{path}"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
        return self.process.returncode


@pytest.fixture
def gateways(tmp_path):
    """Start gateways with C{gateways(config_text)}; all are stopped at the end."""
    started: List[Gateway] = []

    def start(config: str, entries: int = 1, name: str = "gateway") -> Gateway:
        gateway = Gateway(tmp_path, config, name=f"{name}{len(started)}")
        started.append(gateway)
        return gateway.start(entries)

    yield start
    for gateway in started:
        gateway.stop()


def ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def curl(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess:
    """Run curl; C{-sS} and a bounded time are always added."""
    return subprocess.run(
        ["curl", "-sS", "--max-time", "10", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
