"""
A backend that reads each request's body, keeps none of it, and answers
C{200} with the number of bytes it read, as JSON: the far end of the large
upload benchmark.  Standard library only; bodies framed by Content-Length or
chunked::

    python benchmarks/backends/discard.py --port 9100
"""

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = 256 * 1024


class Discard(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _drain(self):
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return total
                left = size
                while left:
                    left -= len(self.rfile.read(min(left, CHUNK)))
                self.rfile.readline()
                total += size
        left = total = int(self.headers.get("Content-Length") or 0)
        while left:
            data = self.rfile.read(min(left, CHUNK))
            if not data:
                break
            left -= len(data)
        return total - left

    def _answer(self):
        body = json.dumps({"received": self._drain()}).encode() + b"\n"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_PUT = do_GET = _answer

    def log_message(self, format, *args):
        pass


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    ThreadingHTTPServer((args.host, args.port), Discard).serve_forever()


if __name__ == "__main__":
    main()
