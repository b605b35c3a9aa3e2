"""
The bare treq proxy: the least a reverse proxy on Twisted can be, the
reference the gateway's throughput is compared with.

One twisted.web Resource whose render sends the request on with one
C{treq} request over a persistent C{HTTPConnectionPool} (a cookie jar that
keeps nothing, so no user's cookie is replayed to the next one) and streams
the answer back with C{treq.collect}.  No routing, no filters, no access
log, no retries::

    python benchmarks/bare_treq_proxy.py --port 8080 --upstream http://127.0.0.1:9000

It runs in the foreground until SIGINT or SIGTERM.
"""

import argparse
from http.cookiejar import CookieJar, DefaultCookiePolicy

# Hop-by-hop headers (RFC 9110, 7.6.1) are not forwarded either way;
# Content-Length goes too, since twisted.web frames the body itself.
HOP_BY_HOP = frozenset(
    (
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
        b"content-length",
        b"host",
    )
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, required=True, help="port to listen on")
    parser.add_argument(
        "--upstream", required=True, help="base URL requests go to, such as http://127.0.0.1:9000"
    )
    parser.add_argument(
        "--max-persistent",
        type=int,
        default=64,
        help="idle connections kept to the upstream (nginx's keepalive 64; default %(default)s)",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="upstream timeout, seconds")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)

    import treq
    from treq.client import HTTPClient
    from twisted.internet import reactor
    from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool
    from twisted.web.resource import Resource
    from twisted.web.server import NOT_DONE_YET, Site

    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = args.max_persistent
    client = HTTPClient(
        Agent(reactor, pool=pool),
        cookiejar=CookieJar(DefaultCookiePolicy(allowed_domains=[])),
    )
    upstream = args.upstream.rstrip("/").encode("ascii")

    class BareProxy(Resource):
        isLeaf = True

        def render(self, request):
            headers = {
                name: values
                for name, values in request.requestHeaders.getAllRawHeaders()
                if name.lower() not in HOP_BY_HOP
            }
            request.content.seek(0, 2)
            has_body = request.content.tell() > 0
            request.content.seek(0)
            d = client.request(
                request.method.decode("ascii"),
                (upstream + request.uri).decode("ascii"),
                headers=headers,
                data=FileBodyProducer(request.content) if has_body else None,
                allow_redirects=False,
                timeout=args.timeout,
            )
            gone = []

            def respond(response):
                request.setResponseCode(response.code, response.phrase)
                for name, values in response.headers.getAllRawHeaders():
                    if name.lower() not in HOP_BY_HOP:
                        request.responseHeaders.setRawHeaders(name, values)
                return treq.collect(response, request.write)

            def failed(failure):
                if gone:
                    return
                request.setResponseCode(502)
                request.setHeader(b"content-type", b"application/json")
                request.write(b'{"error": "bad gateway"}\n')

            def done(_):
                if not gone:
                    request.finish()

            def client_gone(_):
                gone.append(True)
                d.cancel()

            d.addCallback(respond).addErrback(failed).addCallback(done)
            request.notifyFinish().addErrback(client_gone)
            return NOT_DONE_YET

    class QuietSite(Site):
        def log(self, request):
            """No access log: the bare proxy measures proxying alone."""

    reactor.listenTCP(args.port, QuietSite(BareProxy()), interface=args.host)
    reactor.addSystemEventTrigger("before", "shutdown", pool.closeCachedConnections)
    reactor.run()


if __name__ == "__main__":
    main()
