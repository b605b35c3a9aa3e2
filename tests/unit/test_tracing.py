"""
The router's tracing_flow on a real Site fed raw bytes, on a Clock: it runs
after the response is written, detached, over a snapshot of the finished
exchange (L{TraceRecord}); its failures are logged and counted and never
reach the client; it delays neither the response nor the next request on
the connection.
"""

import json

from twisted.internet.error import ConnectionDone
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.web.server import Site

from infini_gateway.config import config_from_dict
from infini_gateway.config.model import RouterConfig, Rule
from infini_gateway.filters import Filter
from infini_gateway.router import Router
from infini_gateway.service import GatewayService, build_router
from infini_gateway.tracing import TraceRecord, Tracer, trace_record
from tests.unit._site import captured_logs, failures, make_flow, request


class Record(Filter):
    """Test-only: keeps each context's L{trace_record} and the context."""

    name = "record"

    def __init__(self, probe=None):
        super().__init__({}, None)
        self.records = []
        self.contexts = []
        self.probe = probe
        self.probed = []

    def filter(self, ctx):
        self.contexts.append(ctx)
        self.records.append(trace_record(ctx))
        if self.probe is not None:
            self.probed.append(self.probe())


class Wait(Filter):
    """Test-only: waits C{seconds} on the context's reactor."""

    name = "wait"

    def __init__(self, seconds):
        super().__init__({}, None)
        self.seconds = seconds
        self.done = 0

    def filter(self, ctx):
        def fired():
            self.done += 1

        return deferLater(ctx.reactor, self.seconds, fired)


class Boom(Filter):
    """Test-only: raises."""

    name = "boom"

    def __init__(self):
        super().__init__({}, None)

    def filter(self, ctx):
        raise RuntimeError("tracing boom")


class Pending(Filter):
    """Test-only: never fires."""

    name = "pending"

    def __init__(self):
        super().__init__({}, None)

    def filter(self, ctx):
        from twisted.internet.defer import Deferred

        return Deferred()


def make_router(main_steps, trace_steps, reactor, rules=True):
    """
    A Site whose router sends C{POST /items} to flow C{main} by a rule
    (also the default flow unless C{rules} is false: then other requests
    get no route), and traces with flow C{trace}.
    """
    main = make_flow(main_steps, name="main")
    tracing = make_flow(trace_steps, name="trace")
    flows = {"main": main, "trace": tracing}
    config = RouterConfig(
        name="test",
        rules=(Rule(methods=("POST",), patterns=("/items",), flows=("main",)),),
        default_flow="main" if rules else None,
        tracing_flow="trace",
    )
    tracer = Tracer(tracing, reactor)
    router = Router(config, flows, reactor, tracer=tracer)
    return Site(router, reactor=reactor), tracer


POST = (
    b"POST /items?color=red&size=2 HTTP/1.1\r\n"
    b"Host: api.example.com\r\n"
    b"User-Agent: probe/1.0\r\n"
    b"Authorization: Bearer abc\r\n"
    b"Content-Length: 5\r\n"
    b"\r\n"
    b"hello"
)


def test_tracing_flow_runs_after_the_response_is_written_and_sees_it_final():
    """
    The response is on the wire before the tracing flow starts (it is
    scheduled on the reactor); the flow then sees the final status, headers,
    byte counts, duration, rule, flow and client.
    """
    clock = MemoryReactorClock()
    seen_in_main = Record()
    wire = []
    traced = Record(probe=lambda: wire[0].transport.value())
    site, tracer = make_router(
        [
            seen_in_main,
            Wait(2.5),
            ("set_response_header", {"headers": ["X-Answer -> 42"]}),
            ("echo", {"message": "created", "status": 201}),
        ],
        [traced],
        clock,
    )
    exchange = request(site, POST)
    wire.append(exchange)
    clock.advance(2.5)
    exchange.read()
    assert exchange.status == 201
    assert exchange.body == b"created"
    # The whole response was on the wire when the tracing flow ran.
    assert traced.probed == [exchange.transport.value()]

    (record,) = traced.records
    assert isinstance(record, TraceRecord)
    assert record.complete and not record.aborted
    assert (record.method, record.path, record.uri, record.query) == (
        "POST",
        "/items",
        "/items?color=red&size=2",
        "color=red&size=2",
    )
    assert record.host == "api.example.com"
    assert (record.client_ip, record.client_port) == ("127.0.0.1", 40000)
    assert record.status == 201
    assert record.request_bytes == 5
    assert record.response_bytes == len(b"created")
    assert record.duration == 2.5
    assert (record.started, record.finished) == (0.0, 2.5)
    assert record.flow == "main"
    assert record.rule is not None
    assert record.rule == seen_in_main.contexts[0].rule
    assert record.user_agent == "probe/1.0"
    assert record.request_header("authorization") == "Bearer abc"
    assert record.response_header("x-answer") == "42"
    assert record.response_header("Content-Length") == "7"
    assert tracer.traced == 1 and tracer.errors == 0

    ctx = traced.contexts[0]
    assert ctx.trace is record
    assert ctx.response.sent and ctx.response.status == 201
    assert ctx.flow_name == "main" and ctx.flow == "trace"


def test_trace_record_in_an_ordinary_flow_holds_what_is_known_so_far():
    """
    Outside a tracing flow, L{trace_record} takes a snapshot now: the draft's
    status and body so far, C{complete} false.
    """
    clock = MemoryReactorClock()
    seen = Record()
    site, _ = make_router(
        [("set_response", {"status": 202, "body": "queued"}), seen], [], clock
    )
    request(site, POST)
    (record,) = seen.records
    assert not record.complete and not record.aborted
    assert (record.status, record.response_bytes) == (202, len(b"queued"))
    assert record.request_bytes == 5


def test_no_route_is_traced_with_its_404():
    """A request no rule takes (and no default flow) is traced too: flow None, 404."""
    clock = MemoryReactorClock()
    traced = Record()
    site, _ = make_router([("echo", {"message": "x"})], [traced], clock, rules=False)
    exchange = request(site, b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
    assert exchange.status == 404
    clock.advance(0)
    (record,) = traced.records
    assert (record.status, record.flow, record.rule) == (404, None, None)
    assert record.request_bytes == 0
    assert record.response_bytes == len(exchange.body)


def test_tracing_errors_are_logged_counted_and_never_reach_the_client():
    """
    A tracing filter that raises: the client still gets its answer, the log
    names the tracing flow and filter, C{errors} counts it, later filters of
    the tracing flow do not run, and the next request is served and traced.
    """
    clock = MemoryReactorClock()
    after = Record()
    site, tracer = make_router([("echo", {"message": "fine"})], [Boom(), after], clock)
    with captured_logs() as events:
        first = request(site, b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
        clock.advance(0)
        second = request(site, b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        clock.advance(0)
    assert (first.status, first.body) == (200, b"fine")
    assert (second.status, second.body) == (200, b"fine")
    assert tracer.errors == 2 and tracer.traced == 2
    assert after.records == []
    logged = failures(events)
    assert len(logged) == 2
    assert logged[0]["flow"] == "trace" and logged[0]["filter"] == "boom"
    assert logged[0]["log_failure"].check(RuntimeError)
    assert b"tracing boom" not in first.transport.value()


def test_pipelined_keep_alive_request_is_not_delayed_by_a_waiting_tracing_flow():
    """
    Two pipelined requests on one connection while the tracing flow waits
    5 seconds on the clock: both responses are written before any tracing
    run finishes (INFINI runs the tracing flow inline, holding the next one).
    """
    clock = MemoryReactorClock()
    wait = Wait(5)
    traced = Record()
    site, tracer = make_router([("echo", {"message": "ok"})], [wait, traced], clock)
    exchange = request(
        site,
        b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    assert exchange.transport.value().count(b"HTTP/1.1 200 OK") == 2
    clock.advance(0)
    assert wait.done == 0 and traced.records == []

    # A third request on the same connection while both traces are pending.
    exchange.transport.clear()
    exchange.channel.dataReceived(b"GET /three HTTP/1.1\r\nHost: x\r\n\r\n")
    assert exchange.read().status == 200 and exchange.body == b"ok"
    clock.advance(0)
    assert wait.done == 0 and traced.records == []

    clock.advance(5)
    assert [r.uri for r in traced.records] == ["/one", "/two", "/three"]
    assert all(r.duration == 0.0 for r in traced.records)
    assert tracer.errors == 0


def test_client_going_away_is_traced_as_aborted():
    """
    A client that disconnects while the flow waits is still traced, once,
    with C{aborted} and no status (nothing was written).
    """
    clock = MemoryReactorClock()
    traced = Record()
    site, tracer = make_router([Pending()], [traced], clock)
    exchange = request(site, POST)
    clock.advance(3)
    exchange.channel.connectionLost(Failure(ConnectionDone()))
    clock.advance(0)
    clock.advance(10)
    assert exchange.transport.value() == b""
    (record,) = traced.records
    assert record.aborted and record.complete
    assert record.status is None
    assert record.response_bytes == 0
    assert record.duration == 3.0
    assert record.uri == "/items?color=red&size=2"
    assert tracer.errors == 0


def test_pending_tracing_flow_is_left_alone():
    """
    The tracing flow starts once the answer is written; one that never
    fires is no error and blocks nothing: the next requests are answered.
    """
    clock = MemoryReactorClock()
    site, tracer = make_router([("echo", {"message": "ok"})], [Pending()], clock)
    for count in range(1, 4):
        assert request(site).status == 200
        assert (tracer.traced, tracer.errors) == (count, 0)


GATEWAY = {
    "router": [
        {"name": "default", "default_flow": "main", "tracing_flow": "requests"},
        {"name": "plain", "default_flow": "main"},
    ],
    "flow": [
        {"name": "main", "filter": [{"echo": {"message": "hi"}}]},
        {"name": "requests", "filter": [{"dump": None}]},
    ],
}


def test_service_and_build_router_give_routers_their_tracer():
    """A router with tracing_flow gets a Tracer over that flow; one without, none."""
    config = config_from_dict(GATEWAY)
    clock = MemoryReactorClock()
    service = GatewayService(config, clock)
    assert isinstance(service.routers["default"].tracer, Tracer)
    assert service.routers["default"].tracer.flow is service.flows["requests"]
    assert service.routers["plain"].tracer is None

    router = build_router(config, "default", reactor=clock)
    assert isinstance(router.tracer, Tracer)
    assert router.tracer.flow.name == "requests"
    with captured_logs() as events:
        assert request(Site(router, reactor=clock)).status == 200
        clock.advance(0)
    assert router.tracer.traced == 1
    dumped = [e for e in events if e.get("log_format", "").startswith("dump:")]
    assert len(dumped) == 1 and dumped[0]["flow"] == "requests"


def test_record_is_json_friendly():
    """Every field of a TraceRecord is a plain value (the logging filter dumps them)."""
    import attrs

    clock = MemoryReactorClock()
    traced = Record()
    site, _ = make_router([("echo", {"message": "ok"})], [traced], clock)
    request(site, POST)
    clock.advance(0)
    json.dumps(attrs.asdict(traced.records[0]))

