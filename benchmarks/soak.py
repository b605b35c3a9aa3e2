"""
Soak: the gateway under mixed, partly hostile load for a long time, with its
resident memory and open file descriptors sampled every 10 seconds.

    python benchmarks/soak.py                 # 10 minutes, markdown on stdout
    python benchmarks/soak.py --duration 60   # a quick look

One ``twistd -n infini-gateway`` (this interpreter's) proxies to the raw
recording backend of the end-to-end tests (tests/e2e/raw_backend.py), with
the entry's default limits and timeouts (30 s each).  At once, each in its
own threads, until the time is up:

  - well-formed clients: keep-alive connections sending GETs, POSTs with a
    Content-Length and chunked POSTs, some pipelined two at a time; every
    answer must be the backend's 200 for that very request;
  - an upstream that resets: requests to ``/reset`` (the backend closes
    with a TCP reset), each must get a 502;
  - slowloris clients: a request head one byte a second (each is cut with
    a 408 at read_timeout, then reconnects);
  - clients that stop reading: an 8 MiB answer never read (cut at
    write_timeout), then reconnect;
  - malformed requests (smuggling pairs, bad chunking, bare LF, NUL...):
    each must get a 400;
  - idle keep-alive connections, left for idle_timeout to close.

When the load stops, the run waits for the timeouts to close what is left
and samples once more.  Flat means: RSS and descriptors over the last third
of the run within 10 % (and 16 descriptors) of the middle third's maximum,
and descriptors back to their idle count at the end.  Standard library only;
everything it starts is stopped when it ends.
"""

import argparse
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.raw_backend import RawBackend  # noqa: E402

H = b"Host: soak.example\r\n"
CONFIG = """
entry:
  - name: web
    network: {{binding: "127.0.0.1:0"}}
router:
  - name: default
    default_flow: main
flow:
  - name: main
    filter:
      - proxy: {{upstream: raw}}
upstream:
  - name: raw
    endpoints: ["{url}"]
    retries: 0
    # Shorter than the wait after the load, so that pooled connections to
    # the backend are closed by then too.
    keepalive_pool: {{size: 32, idle_timeout: 20s}}
"""
MALFORMED = [
    b"POST /m HTTP/1.1\r\n"
    + H
    + b"Content-Length: 35\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nX: y\r\n\r\n",
    b"POST /m HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\nGPOST / HTTP/1.1\r\n\r\n0\r\n\r\n",
    b"POST /m HTTP/1.1\r\n" + H + b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"POST /m HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET /m HTTP/1.1\r\n" + H + b"X: a\nY: b\r\n\r\n",
    b"GET /m HTTP/1.1\r\n" + H + b"X: a\x00b\r\n\r\n",
    b"GET /m HTTP/1.1\r\n" + H + b"X : y\r\n\r\n",
    b"GET /m HTTP/1.1\r\n" + H + b"X: a\r\n folded\r\n\r\n",
    b"G@T /m HTTP/1.1\r\n" + H + b"\r\n",
    b"GET http://elsewhere.example/ HTTP/1.1\r\n" + H + b"\r\n",
]


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Closed(Exception):
    pass


class Reader:
    """Reads HTTP/1.1 responses off a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _more(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise Closed()
        self.buffer += data

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            self._more()
        found, _, self.buffer = self.buffer.partition(marker)
        return found

    def _exactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._more()
        found, self.buffer = self.buffer[:n], self.buffer[n:]
        return found

    def response(self):
        head = self._until(b"\r\n\r\n").split(b"\r\n")
        status = int(head[0].split(b" ")[1])
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if b"content-length" in headers:
            body = self._exactly(int(headers[b"content-length"]))
        elif headers.get(b"transfer-encoding") == b"chunked":
            body = b""
            while True:
                size = int(self._until(b"\r\n"), 16)
                if size == 0:
                    self._until(b"\r\n")
                    break
                body += self._exactly(size + 2)[:-2]
        else:
            body = b""
        return status, headers, body


class Load:
    def __init__(self, port: int, end: float) -> None:
        self.port = port
        self.end = end
        self.counts: Counter = Counter()
        self.problems: list = []
        self.lock = threading.Lock()

    def count(self, what: str, problem: str = "") -> None:
        with self.lock:
            self.counts[what] += 1
            if problem and len(self.problems) < 20:
                self.problems.append(problem)

    def connect(self, timeout: float = 60.0) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def running(self) -> bool:
        return time.monotonic() < self.end

    def well_formed(self, seed: int) -> None:
        rng = random.Random(seed)
        while self.running():
            try:
                with self.connect() as s:
                    reader = Reader(s)
                    for _ in range(rng.randint(1, 50)):
                        if not self.running():
                            break
                        self._exchange(s, reader, rng)
                        time.sleep(0.01)
            except (OSError, Closed) as e:
                self.count("well-formed failed", f"connection: {e!r}")

    def _exchange(self, s, reader, rng) -> None:
        batch = []
        for _ in range(2 if rng.random() < 0.2 else 1):
            n = rng.randint(0, 1 << 30)
            kind = rng.choice(["get", "post", "chunked"])
            path = f"/ok/{kind}/{n}".encode()
            if kind == "get":
                data = b"GET " + path + b" HTTP/1.1\r\n" + H + b"\r\n"
                length = 0
            elif kind == "post":
                body = os.urandom(rng.randint(1, 4096))
                data = (
                    b"POST "
                    + path
                    + b" HTTP/1.1\r\n"
                    + H
                    + b"Content-Length: %d\r\n\r\n" % len(body)
                    + body
                )
                length = len(body)
            else:
                pieces = [
                    os.urandom(rng.randint(1, 1000)) for _ in range(rng.randint(1, 4))
                ]
                data = (
                    b"POST "
                    + path
                    + b" HTTP/1.1\r\n"
                    + H
                    + b"Transfer-Encoding: chunked\r\n\r\n"
                )
                data += (
                    b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces)
                    + b"0\r\n\r\n"
                )
                length = sum(map(len, pieces))
            batch.append((path, length))
            s.sendall(data)
        for path, length in batch:
            status, _, body = reader.response()
            expected = b'"path": "%s"' % path
            if (
                status == 200
                and expected in body
                and b'"body_length": %d' % length in body
            ):
                self.count("well-formed ok")
            else:
                self.count("well-formed failed", f"{path!r}: {status} {body[:200]!r}")

    def resets(self) -> None:
        while self.running():
            try:
                with self.connect() as s:
                    s.sendall(
                        b"GET /reset HTTP/1.1\r\n" + H + b"Connection: close\r\n\r\n"
                    )
                    status = Reader(s).response()[0]
                self.count("reset answered 502" if status == 502 else "reset other")
            except (OSError, Closed):
                self.count("reset other")
            time.sleep(0.2)

    def slowloris(self) -> None:
        head = b"GET /slow HTTP/1.1\r\n" + H + b"X-Slow: " + b"a" * 200
        while self.running():
            try:
                with self.connect() as s:
                    s.settimeout(1.0)
                    for i in range(len(head)):
                        if not self.running():
                            return
                        s.sendall(head[i : i + 1])
                        try:
                            data = s.recv(4096)
                        except socket.timeout:
                            continue
                        self.count(
                            "slowloris cut with 408"
                            if data.startswith(b"HTTP/1.1 408")
                            else "slowloris cut"
                        )
                        break
            except OSError:
                self.count("slowloris cut")

    def not_reading(self) -> None:
        while self.running():
            try:
                with self.connect() as s:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                    s.sendall(b"GET /big?size=8388608 HTTP/1.1\r\n" + H + b"\r\n")
                    deadline = time.monotonic() + 40
                    while self.running() and time.monotonic() < deadline:
                        time.sleep(1)
                    s.settimeout(2)
                    received = 0
                    try:
                        while True:
                            data = s.recv(65536)
                            if not data:
                                break
                            received += len(data)
                    except OSError:
                        pass
                    if received < 8388608:
                        self.count("non-reader cut")
                    else:
                        self.count("non-reader not cut")
            except OSError:
                self.count("non-reader cut")

    def malformed(self, seed: int) -> None:
        rng = random.Random(seed)
        while self.running():
            try:
                with self.connect() as s:
                    s.sendall(rng.choice(MALFORMED))
                    status = Reader(s).response()[0]
                self.count(
                    "malformed answered 400" if status == 400 else f"malformed {status}"
                )
            except (OSError, Closed):
                self.count("malformed other")
            time.sleep(0.05)

    def idle(self) -> None:
        while self.running():
            try:
                with self.connect() as s:
                    s.sendall(b"GET /idle HTTP/1.1\r\n" + H + b"\r\n")
                    reader = Reader(s)
                    reader.response()
                    try:
                        reader.response()
                    except Closed:
                        self.count("idle closed")
            except (OSError, Closed):
                self.count("idle other")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def flat(values, slack: float) -> bool:
    n = len(values)
    if n < 6:
        return True
    middle, last = values[n // 3 : 2 * n // 3], values[2 * n // 3 :]
    return max(last) <= max(middle) * 1.10 + slack


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--well-formed", type=int, default=6)
    parser.add_argument("--slowloris", type=int, default=20)
    parser.add_argument("--not-reading", type=int, default=4)
    args = parser.parse_args()

    directory = Path(tempfile.mkdtemp(prefix="soak-"))
    backend = RawBackend(directory / "received.bin").start()
    config = directory / "gateway.yml"
    config.write_text(CONFIG.format(url=backend.url))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    log = open(directory / "gateway.log", "w")
    twistd = str(Path(sys.executable).parent / "twistd")
    gateway = subprocess.Popen(
        [twistd, "-n", "--pidfile=", "infini-gateway", "--config", str(config)],
        cwd=directory,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        port = None
        deadline = time.monotonic() + 30
        while port is None and time.monotonic() < deadline:
            time.sleep(0.1)
            for line in (directory / "gateway.log").read_text().splitlines():
                if "listening on http://" in line:
                    port = int(line.rsplit(":", 1)[1].split()[0])
        if port is None:
            raise SystemExit(
                "the gateway did not start:\n" + (directory / "gateway.log").read_text()
            )
        pid = gateway.pid
        say(f"gateway pid {pid} on port {port}, load {loadavg()}")
        baseline_fds = fds(pid)
        started = time.monotonic()
        load = Load(port, started + args.duration)
        threads = [
            threading.Thread(target=load.well_formed, args=(i,))
            for i in range(args.well_formed)
        ]
        threads += [
            threading.Thread(target=load.slowloris) for _ in range(args.slowloris)
        ]
        threads += [
            threading.Thread(target=load.not_reading) for _ in range(args.not_reading)
        ]
        threads += [
            threading.Thread(target=load.malformed, args=(i,)) for i in range(2)
        ]
        threads += [
            threading.Thread(target=load.resets),
            threading.Thread(target=load.idle),
        ]
        for thread in threads:
            thread.daemon = True
            thread.start()
        samples = []
        loads = [loadavg()]
        while time.monotonic() < load.end:
            time.sleep(min(args.interval, max(load.end - time.monotonic(), 0.1)))
            sample = (round(time.monotonic() - started), rss_kib(pid), fds(pid))
            samples.append(sample)
            say(
                f"t={sample[0]}s rss={sample[1] // 1024} MiB fds={sample[2]} {dict(load.counts)}"
            )
        loads.append(loadavg())
        for thread in threads:
            thread.join(60)
        # Let the gateway's timeouts close what the clients left open.
        time.sleep(35)
        after = (round(time.monotonic() - started), rss_kib(pid), fds(pid))
        say(f"after the load: rss={after[1] // 1024} MiB fds={after[2]}")
    finally:
        gateway.send_signal(signal.SIGTERM)
        try:
            gateway.wait(15)
        except subprocess.TimeoutExpired:
            gateway.kill()
            gateway.wait()
        backend.stop()
        log.close()

    rss = [s[1] for s in samples]
    fd = [s[2] for s in samples]
    rss_flat = flat(rss, 0)
    fd_flat = flat(fd, 16)
    fd_back = after[2] <= baseline_fds + 2
    counts = load.counts
    well_failed = counts["well-formed failed"]
    print(
        f"duration {args.duration:.0f}s; load average {loads[0]} at the start, {loads[1]} at the end"
    )
    print()
    print("| t (s) | RSS (MiB) | open fds |")
    print("|---|---|---|")
    for t, r, f in samples:
        print(f"| {t} | {r / 1024:.1f} | {f} |")
    print(
        f"| after the load (+35 s) | {after[1] / 1024:.1f} | {after[2]} (idle before: {baseline_fds}) |"
    )
    print()
    print("| outcome | count |")
    print("|---|---|")
    for what, n in sorted(counts.items()):
        print(f"| {what} | {n} |")
    print()
    print(
        f"RSS flat: {'yes' if rss_flat else 'NO'}; fds flat: {'yes' if fd_flat else 'NO'};"
        f" fds back to idle: {'yes' if fd_back else 'NO'};"
        f" every well-formed request answered: {'yes' if not well_failed else 'NO'}"
    )
    for problem in load.problems:
        print(f"- {problem}")
    ok = rss_flat and fd_flat and fd_back and not well_failed
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
