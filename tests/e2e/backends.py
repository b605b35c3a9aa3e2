"""
Small twisted.web backends for the proxy's end-to-end tests, each run as a
subprocess on 127.0.0.1 that says which backend answered.

    python -m tests.e2e.backends --name a [--port 0] [--delay 0.3]
        [--tls CERT KEY [--client-ca CA]]

prints ``listening on PORT`` once bound.  Paths:

  - any path: JSON ``{"backend", "method", "path", "headers", "body_length"}``
    (after ``--delay`` seconds, if given);
  - ``/slow?seconds=N``: the same, N seconds later;
  - ``/stall``: reads the request and never answers;
  - ``/cookie``: two ``Set-Cookie`` headers;
  - ``/big?size=N``: N bytes with a Content-Length, written as the client reads;
  - ``/stats``: requests seen by method (these left out);
  - an ``Upgrade: websocket`` request: the handshake, then each text frame
    (payload under 126 bytes) is echoed.

L{Backend} starts one from a test and stops it at the end; L{make_pki}
writes a CA, a server certificate for 127.0.0.1 and a client certificate.
"""

import argparse
import base64
import datetime
import hashlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[2]
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC11B65"


class Backend:
    """One backend subprocess; C{port} is known once L{start} returns."""

    def __init__(self, name: str, *args: str) -> None:
        self.name = name
        self.args = list(args)
        self.process: Optional[subprocess.Popen] = None
        self.port = 0

    def start(self) -> "Backend":
        env = dict(os.environ, PYTHONPATH=str(REPO))
        env.pop("PYTHONWARNINGS", None)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.backends", "--name", self.name, *self.args],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 20
        assert self.process.stdout is not None
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if line.startswith("listening on "):
                self.port = int(line.split()[-1])
                return self
            if not line and self.process.poll() is not None:
                break
        raise AssertionError(f"backend {self.name} did not start")

    @property
    def url(self) -> str:
        scheme = "https" if "--tls" in self.args else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def make_pki(directory: Path) -> Dict[str, Path]:
    """A CA, a server certificate (127.0.0.1, localhost) and a client one."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)

    def name(text: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])

    def write(stem: str, key, cert) -> None:
        (directory / f"{stem}.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        (directory / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def issue(stem, subject, ca_key, issuer, usage, san=None, ca=False):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(name(subject))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if usage is not None:
            builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        if san is not None:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(ca_key or key, hashes.SHA256())
        write(stem, key, cert)
        return key, cert

    ca_key, ca_cert = issue("ca", "test CA", None, name("test CA"), None, ca=True)
    san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    issue("server", "backend", ca_key, ca_cert.subject, ExtendedKeyUsageOID.SERVER_AUTH, san)
    issue("client", "gateway", ca_key, ca_cert.subject, ExtendedKeyUsageOID.CLIENT_AUTH)
    return {stem: directory / stem for stem in ("ca", "server", "client")}


def _serve(args: argparse.Namespace) -> None:
    from twisted.internet import reactor, ssl
    from twisted.web.resource import Resource
    from twisted.web.server import NOT_DONE_YET, Site

    seen: Counter = Counter()

    class Root(Resource):
        isLeaf = True

        def render(self, request):
            path = request.path.decode()
            if path != "/stats":
                seen[request.method.decode()] += 1
            if request.requestHeaders.hasHeader(b"upgrade"):
                return _websocket(request)
            if path == "/stats":
                return json.dumps(dict(seen)).encode()
            if path == "/stall":
                return NOT_DONE_YET
            if path == "/cookie":
                request.responseHeaders.addRawHeader(b"Set-Cookie", b"session=secret-1")
                request.responseHeaders.addRawHeader(b"Set-Cookie", b"other=secret-2")
            if path == "/big":
                _big(request, int(request.args[b"size"][0]))
                return NOT_DONE_YET
            delay = args.delay
            if path == "/slow":
                delay = float(request.args[b"seconds"][0])
            body = json.dumps(
                {
                    "backend": args.name,
                    "method": request.method.decode(),
                    "path": path,
                    "headers": {
                        k.decode().lower(): [v.decode() for v in vs]
                        for k, vs in request.requestHeaders.getAllRawHeaders()
                    },
                    "body_length": len(request.content.read()),
                }
            ).encode()
            request.setHeader(b"content-type", b"application/json")
            if delay:
                def later():
                    if not request._disconnected:
                        request.write(body)
                        request.finish()

                reactor.callLater(delay, later)
                return NOT_DONE_YET
            return body

    def _big(request, size: int) -> None:
        from zope.interface import implementer
        from twisted.internet.interfaces import IPushProducer

        request.setHeader(b"content-length", b"%d" % size)
        chunk = b"x" * 65536

        @implementer(IPushProducer)
        class Producer:
            left = size
            paused = False

            def resumeProducing(self):
                self.paused = False
                while not self.paused and self.left > 0:
                    data = chunk[: self.left]
                    self.left -= len(data)
                    request.write(data)
                if self.left == 0 and not self.paused:
                    request.unregisterProducer()
                    request.finish()
                    self.left = -1

            def pauseProducing(self):
                self.paused = True

            def stopProducing(self):
                self.left = -1

        producer = Producer()
        request.registerProducer(producer, True)
        producer.resumeProducing()

    def _websocket(request):
        key = request.getHeader(b"sec-websocket-key") or b""
        accept = base64.b64encode(hashlib.sha1(key + _WS_GUID).digest())
        channel = request.channel
        channel.setTimeout(None)
        buffer = bytearray(b"".join(getattr(channel, "_dataBuffer", [])))
        transport = channel.transport

        def received(data: bytes) -> None:
            buffer.extend(data)
            while len(buffer) >= 6:
                length = buffer[1] & 0x7F
                masked = buffer[1] & 0x80
                need = 2 + (4 if masked else 0) + length
                if len(buffer) < need:
                    return
                mask = buffer[2:6] if masked else b"\0\0\0\0"
                start = 6 if masked else 2
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(buffer[start:need]))
                opcode = buffer[0] & 0x0F
                del buffer[:need]
                if opcode == 8:
                    transport.write(b"\x88\x00")
                    transport.loseConnection()
                    return
                transport.write(bytes([0x81, len(payload)]) + payload)

        channel.dataReceived = received
        transport.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n"
        )
        received(b"")
        return NOT_DONE_YET

    site = Site(Root())
    if args.tls:
        cert, key = (Path(p).read_text() for p in args.tls)
        identity = ssl.PrivateCertificate.loadPEM(cert + key)
        if args.client_ca:
            ca = ssl.Certificate.loadPEM(Path(args.client_ca).read_text())
            options = identity.options(ca)
        else:
            options = identity.options()
        port = reactor.listenSSL(args.port, site, options, interface="127.0.0.1")
    else:
        port = reactor.listenTCP(args.port, site, interface="127.0.0.1")
    print(f"listening on {port.getHost().port}", flush=True)
    reactor.run()


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay", type=float, default=0.0)
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    parser.add_argument("--client-ca")
    args = parser.parse_args(argv)
    import warnings

    warnings.simplefilter("ignore")
    _serve(args)


if __name__ == "__main__":
    main()
