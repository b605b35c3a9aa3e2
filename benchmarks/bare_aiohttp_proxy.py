"""
The bare aiohttp proxy: the least a reverse proxy on aiohttp can be, the
Python peer the gateway's throughput is compared with.

An aiohttp.web server with one catch-all handler, and one shared
C{aiohttp.ClientSession} (a persistent connection pool, no cookie jar, no
decompression) that sends each request on: method, path and query as they
came, headers less the hop-by-hop ones (and none of the session's default
headers added), the body streamed.  The answer is streamed back with a
C{web.StreamResponse}, status and headers copied (Content-Length kept); an
upstream that cannot be reached gets a 502.  No routing, no filters, no
access log, no retries, the standard asyncio event loop::

    python benchmarks/bare_aiohttp_proxy.py --port 8080 --upstream http://127.0.0.1:9000

It needs aiohttp (pip install aiohttp) and runs in the foreground until
SIGINT or SIGTERM.
"""

import argparse

# Hop-by-hop headers (RFC 9110, 7.6.1) are not forwarded either way.  Host
# goes too on the way in: the client session sets the upstream's.
HOP_BY_HOP = frozenset(
    (
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    )
)
NOT_FORWARDED = HOP_BY_HOP | {"host"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, required=True, help="port to listen on")
    parser.add_argument(
        "--upstream", required=True, help="base URL requests go to, such as http://127.0.0.1:9000"
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=100,
        help="connections open to the upstream at once, 0 for no limit (default %(default)s)",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="upstream timeout, seconds")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)

    import aiohttp
    from aiohttp import web
    from yarl import URL

    upstream = args.upstream.rstrip("/")
    client_key = web.AppKey("client", aiohttp.ClientSession)

    async def client_session(app):
        connector = aiohttp.TCPConnector(limit=args.limit, keepalive_timeout=60)
        app[client_key] = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            # Send the client's headers, not the session's defaults.
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent"),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=args.timeout, sock_read=args.timeout
            ),
        )
        yield
        await app[client_key].close()

    async def proxy(request):
        headers = [
            (name, value)
            for name, value in request.headers.items()
            if name.lower() not in NOT_FORWARDED
        ]
        try:
            answer = await request.app[client_key].request(
                request.method,
                URL(upstream + request.raw_path, encoded=True),
                headers=headers,
                data=request.content if request.body_exists else None,
                allow_redirects=False,
            )
        except aiohttp.ClientError:
            return web.json_response({"error": "bad gateway"}, status=502)
        async with answer:
            response = web.StreamResponse(status=answer.status, reason=answer.reason)
            for name, value in answer.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    response.headers.add(name, value)
            try:
                await response.prepare(request)
                async for chunk in answer.content.iter_any():
                    await response.write(chunk)
            except ConnectionResetError:
                if request.transport is None or request.transport.is_closing():
                    return response  # the client has gone: nothing more to send
                raise
        return response

    app = web.Application()
    app.cleanup_ctx.append(client_session)
    app.router.add_route("*", "/{tail:.*}", proxy)
    web.run_app(app, host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
