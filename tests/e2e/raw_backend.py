"""
A backend that records every byte it receives and answers from a script,
well or badly, for the front door's end-to-end tests and the soak benchmark.

    python -m tests.e2e.raw_backend --record FILE [--port 0]

prints ``listening on PORT`` once bound, and appends every byte received,
on every connection, to FILE as it arrives.  Requests are read as HTTP/1.1
(Content-Length or chunked bodies); the path says how to answer:

  - ``/bad-status``: an invalid status line, then close;
  - ``/bad-chunk``: a chunked 200 whose second chunk size is not hex;
  - ``/truncated``: Content-Length 100, 10 bytes, then close;
  - ``/split``: Content-Length 5 and 5 bytes, followed at once by the bytes
    of a second, unasked-for response (``SPLIT-SMUGGLED``);
  - ``/reset``: no answer, a TCP reset;
  - ``/big?size=N``: N bytes;
  - ``/drip?n=N&gap=S``: N body bytes, one every S seconds;
  - anything else: 200, ``{"path": ..., "body_length": ...}``.

Standard library only (threads), so that it parses nothing the way the
gateway does.
"""

import argparse
import json
import os
import socket
import socketserver
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Optional
from urllib.parse import parse_qs, urlsplit

REPO = Path(__file__).resolve().parents[2]


class RawBackend:
    """One raw backend subprocess; C{received()} is every byte it got."""

    def __init__(self, record: Path) -> None:
        self.record = Path(record)
        self.process: Optional[subprocess.Popen] = None
        self.port = 0

    def start(self) -> "RawBackend":
        env = dict(os.environ, PYTHONPATH=str(REPO))
        env.pop("PYTHONWARNINGS", None)
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.e2e.raw_backend",
                "--record",
                str(self.record),
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if line.startswith("listening on "):
                self.port = int(line.split()[-1])
                return self
            if not line and self.process.poll() is not None:
                break
        raise AssertionError("the raw backend did not start")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def received(self) -> bytes:
        return self.record.read_bytes() if self.record.exists() else b""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _answer(status: str, body: bytes, extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    ).encode() + body


class _Handler(socketserver.BaseRequestHandler):
    record_lock = threading.Lock()
    record_path = ""

    def setup(self) -> None:
        self.request.settimeout(60)
        self.buffer = b""

    def _recv(self) -> bool:
        data = self.request.recv(65536)
        if not data:
            return False
        with self.record_lock, open(self.record_path, "ab") as f:
            f.write(data)
        self.buffer += data
        return True

    def _until(self, marker: bytes) -> Optional[bytes]:
        while marker not in self.buffer:
            if len(self.buffer) > 1 << 20 or not self._recv():
                return None
        found, _, self.buffer = self.buffer.partition(marker)
        return found

    def _exactly(self, n: int) -> Optional[bytes]:
        while len(self.buffer) < n:
            if not self._recv():
                return None
        found, self.buffer = self.buffer[:n], self.buffer[n:]
        return found

    def _body(self, headers: dict) -> Optional[int]:
        if headers.get("transfer-encoding", "").lower() == "chunked":
            total = 0
            while True:
                line = self._until(b"\r\n")
                if line is None:
                    return None
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    while True:
                        trailer = self._until(b"\r\n")
                        if trailer is None:
                            return None
                        if not trailer:
                            return total
                data = self._exactly(size + 2)
                if data is None:
                    return None
                total += size
        length = int(headers.get("content-length", "0"))
        return None if self._exactly(length) is None else length

    def handle(self) -> None:
        try:
            while self._one():
                pass
        except OSError:
            pass

    def _one(self) -> bool:
        head = self._until(b"\r\n\r\n")
        if head is None:
            return False
        lines = head.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = self._body(headers)
        if length is None:
            return False
        url = urlsplit(target)
        query = parse_qs(url.query)
        path = url.path
        send = self.request.sendall
        if path == "/bad-status":
            send(b"HTTP/1.1 abc nonsense\r\nContent-Length: 2\r\n\r\nno")
            return False
        if path == "/bad-chunk":
            send(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nmore\r\n"
            )
            return False
        if path == "/truncated":
            send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
            return False
        if path == "/split":
            send(
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"
                b"HTTP/1.1 200 OK\r\nContent-Length: 14\r\n\r\nSPLIT-SMUGGLED"
            )
            return True
        if path == "/reset":
            self.request.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
            return False
        if path == "/big":
            size = int(query["size"][0])
            send(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
            chunk = b"x" * 65536
            while size > 0:
                send(chunk[:size])
                size -= min(size, len(chunk))
            return True
        if path == "/drip":
            n, gap = int(query["n"][0]), float(query["gap"][0])
            send(f"HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n".encode())
            for _ in range(n):
                time.sleep(gap)
                send(b"d")
            return True
        body = json.dumps(
            {"path": target, "method": method, "body_length": length}
        ).encode()
        send(_answer("200 OK", body))
        return headers.get("connection", "").lower() != "close"


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main(argv=None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--record", required=True)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    _Handler.record_path = args.record
    server = _Server(("127.0.0.1", args.port), _Handler)
    print(f"listening on {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
