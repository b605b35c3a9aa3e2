"""
How filters and the flow meet on a real Site: a filter that raises, a client
that leaves while a filter waits, filters that stop or continue the flow.
"""

import json

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from infini_gateway.filters import Filter, filter_class
from tests.unit._site import captured_logs, failures, make_site, request


class Boom(Filter):
    """Test-only: raises."""

    name = "boom"

    def __init__(self):
        super().__init__({}, None)

    def filter(self, ctx):
        raise RuntimeError("boom")


class Wait(Filter):
    """Test-only: waits C{seconds} on the reactor, then adds C{b"waited"}."""

    name = "wait"

    def __init__(self, seconds=1.0):
        super().__init__({}, None)
        self.seconds = seconds
        self.cancelled = []

    def filter(self, ctx):
        d = deferLater(ctx.reactor, self.seconds, ctx.response.body.append, b"waited")
        d.addErrback(lambda f: self.cancelled.append(f) or f)
        return d


class Pending(Filter):
    """Test-only: returns a Deferred it never fires, and records its cancellation."""

    name = "pending"

    def __init__(self):
        super().__init__({}, None)
        self.cancelled = 0

    def filter(self, ctx):
        def cancel(d):
            self.cancelled += 1

        return Deferred(cancel)


class Record(Filter):
    """Test-only: records that it ran."""

    name = "record"

    def __init__(self):
        super().__init__({}, None)
        self.seen = []

    def filter(self, ctx):
        self.seen.append(ctx.path)


def test_test_filters_are_not_registered():
    """The test-only filters stay out of the package's registry."""
    for name in ("boom", "wait", "pending", "record"):
        assert filter_class(name) is None


def test_raising_filter_answers_500_naming_flow_and_filter():
    """
    A filter that raises gets a 500 JSON answer naming flow and filter; later
    filters do not run.
    """
    record = Record()
    site = make_site([("echo", {"message": "partial"}), Boom(), record])
    with captured_logs() as events:
        exchange = request(site)
    (logged,) = failures(events)
    assert logged["filter"] == "boom" and logged["flow"] == "test_flow"
    assert exchange.status == 500
    assert exchange.header("content-type") == "application/json"
    assert json.loads(exchange.body) == {
        "error": "filter failed",
        "flow": "test_flow",
        "filter": "boom",
    }
    assert b"partial" not in exchange.body
    assert record.seen == []


def test_waiting_filter_answers_once_the_clock_moves():
    """A filter's Deferred holds the answer back until it fires; the flow goes on."""
    clock = MemoryReactorClock()
    record = Record()
    site = make_site([Wait(2), record, ("echo", {"message": "!"})], reactor=clock)
    exchange = request(site)
    assert exchange.status is None
    assert record.seen == []
    clock.advance(2)
    exchange.read()
    assert exchange.status == 200
    assert exchange.body == b"waited!"
    assert record.seen == ["/"]


def test_client_leaving_cancels_the_pending_filter_and_writes_nothing():
    """
    A client that disconnects cancels the filter's Deferred: nothing is
    written, and later filters do not run.
    """
    clock = MemoryReactorClock()
    wait, pending, record = Wait(5), Pending(), Record()
    for first in (wait, pending):
        site = make_site([first, record], reactor=clock)
        with captured_logs() as events:
            exchange = request(site)
            exchange.channel.connectionLost(Failure(ConnectionDone()))
            clock.advance(10)
        assert exchange.transport.value() == b""
        assert record.seen == []
        assert failures(events) == []
    assert len(wait.cancelled) == 1
    assert pending.cancelled == 1
    assert clock.getDelayedCalls() == []


def test_flow_continues_through_filters_that_do_not_answer():
    """Filters that do not stop the flow let the next ones run, in order."""
    site = make_site(
        [
            ("echo", {"message": "a"}),
            ("set_response_header", {"headers": ["X-A -> 1"]}),
            ("echo", {"message": "b"}),
        ]
    )
    exchange = request(site)
    assert exchange.status == 200
    assert exchange.body == b"ab"
    assert exchange.header("x-a") == "1"


def test_every_builtin_module_registers_its_filter():
    """Every INFINI Gateway filter written so far is registered under its name."""
    for name in (
        "basic_auth",
        "drop",
        "dump",
        "echo",
        "redirect",
        "request_client_ip_filter",
        "request_header_filter",
        "request_method_filter",
        "request_path_filter",
        "set_request_header",
        "set_response",
        "set_response_header",
    ):
        assert filter_class(name) is not None, name
