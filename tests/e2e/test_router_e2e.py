"""
The router in a real twistd process: hosts picked with curl's Host header,
a captured variable echoed through a template, a ``..`` path refused, and
examples/router.yml serving both of its entries.
"""

import json
import textwrap

from tests.e2e.conftest import REPO, curl

CONFIG = textwrap.dedent(
    """\
    entry:
      - name: web
        router: default
        network: {binding: "127.0.0.1:0"}
    router:
      - name: default
        default_flow: fallback
        rules:
          - method: [GET]
            pattern: ["/user/{user}", "/user/{user}_admin"]
            flow: [user]
          - pattern: ["/"]
            host: [api.example.com]
            flow: [api]
          - pattern: ["/"]
            host: ["*.example.org"]
            flow: [tenant]
    flow:
      - name: user
        filter:
          - set_response_header: {headers: ["X-User -> $[[user]]"]}
          - echo: {message: "hello $[[user]] via $[[_ctx.request.method]]\\n"}
      - name: api
        filter:
          - echo: {message: "api\\n"}
      - name: tenant
        filter:
          - echo: {message: "tenant $[[_ctx.request.host]]\\n"}
      - name: fallback
        filter:
          - echo: {message: "fallback\\n"}
    """
)


def test_router_in_twistd(gateways):
    """Hosts, captures through templates, and the 400 for a .. segment."""
    gateway = gateways(CONFIG)
    result = curl("-i", gateway.url("web", "/user/gordon_admin"))
    assert "X-User: gordon" in result.stdout
    assert result.stdout.endswith("hello gordon via GET\n")
    assert curl(gateway.url("web", "/user/caf%C3%A9")).stdout == "hello café via GET\n"
    assert curl(gateway.url("web", "/user/gordon/profile")).stdout == "fallback\n"

    assert curl("-H", "Host: API.example.com:9999", gateway.url("web", "/")).stdout == "api\n"
    assert (
        curl("-H", "Host: a.b.example.org", gateway.url("web", "/")).stdout
        == "tenant a.b.example.org\n"
    )
    assert curl("-H", "Host: example.org", gateway.url("web", "/")).stdout == "fallback\n"

    for path in ["/user/../etc/passwd", "/user/%2e%2e/x", "/user/a%00b"]:
        result = curl("--path-as-is", "-w", "\n%{http_code}", gateway.url("web", path))
        body, _, status = result.stdout.rpartition("\n")
        assert status == "400", path
        assert json.loads(body)["error"] == "bad path"


def test_router_example_runs(gateways):
    """examples/router.yml (ports moved to free ones) separates writes from searches."""
    text = (REPO / "examples" / "router.yml").read_text()
    text = text.replace("127.0.0.1:8100", "127.0.0.1:0").replace("127.0.0.1:8200", "127.0.0.1:0")
    gateway = gateways(text, entries=2)

    def call(entry, path, *args):
        result = curl("-w", "\n%{http_code}", *args, gateway.url(entry, path))
        body, _, status = result.stdout.rpartition("\n")
        return int(status), body

    status, body = call("es_ingest", "/logs/_bulk", "-XPUT", "-d", "{}")
    assert (status, json.loads(body)["index"], json.loads(body)["method"]) == (200, "logs", "PUT")
    status, body = call("es_ingest", "/_bulk", "-XPOST", "-d", "{}")
    assert (status, json.loads(body)["index"]) == (200, "")
    status, body = call("es_ingest", "/logs/_search")
    assert status == 405
    status, body = call("es_search", "/logs/_search")
    assert (status, json.loads(body)["index"]) == (200, "logs")
    status, body = call("es_search", "/logs/_doc/42")
    assert (status, json.loads(body)) == (404, {"_index": "logs", "_id": "42", "found": False})
    status, body = call("es_search", "/", "-H", "Host: t1.search.example.org")
    assert (status, body) == (200, "search gateway for t1.search.example.org\n")
    status, body = call("es_search", "/logs/../secret", "--path-as-is")
    assert status == 400
