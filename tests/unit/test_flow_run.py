"""
L{Flow.run} on its own: filters that answer at once run in a plain loop and
give an already-fired Deferred; a filter that returns something to wait for
is waited for, and the filters after it run afterwards; a failure names the
filter where it happened, whichever way the flow got there.
"""

from twisted.internet.defer import CancelledError, Deferred, succeed

from infini_gateway.flow import FilterFailed, Flow


class Ctx:
    """The two fields a flow reads and writes, and C{stopped}."""

    def __init__(self):
        self.stopped = False
        self.flow = self.filter = None
        self.ran = []


class Step:
    """Records its name on the context, then does C{then(ctx)}."""

    def __init__(self, name, then=lambda ctx: None):
        self.name = name
        self.then = then

    def filter(self, ctx):
        ctx.ran.append(self.name)
        return self.then(ctx)


def flow(*steps):
    return Flow("f", [("f", step.name, step) for step in steps])


def result(d):
    out = []
    d.addBoth(out.append)
    return out


def test_synchronous_filters_give_a_fired_deferred():
    ctx = Ctx()
    out = result(flow(Step("a"), Step("b"), Step("c")).run(ctx))
    assert out == [None]
    assert ctx.ran == ["a", "b", "c"]
    assert (ctx.flow, ctx.filter) == ("f", "c")


def test_a_stopping_filter_ends_the_flow():
    def stop(ctx):
        ctx.stopped = True

    ctx = Ctx()
    assert result(flow(Step("a", stop), Step("b")).run(ctx)) == [None]
    assert ctx.ran == ["a"]


def test_filters_after_a_waiting_one_run_once_it_fires():
    waiting = Deferred()
    ctx = Ctx()
    out = result(flow(Step("a"), Step("b", lambda ctx: waiting), Step("c")).run(ctx))
    assert (out, ctx.ran) == ([], ["a", "b"])
    waiting.callback(None)
    assert (out, ctx.ran) == ([None], ["a", "b", "c"])


def test_a_fired_deferred_and_a_coroutine_are_waited_for_in_turn():
    async def later():
        return None

    ctx = Ctx()
    steps = [Step("a", lambda ctx: succeed(None)), Step("b", lambda ctx: later()), Step("c")]
    assert result(flow(*steps).run(ctx)) == [None]
    assert ctx.ran == ["a", "b", "c"]


def test_a_raising_filter_is_named_before_and_after_a_wait():
    def boom(ctx):
        raise RuntimeError("boom")

    out = result(flow(Step("a"), Step("b", boom)).run(Ctx()))
    assert out[0].check(FilterFailed) and out[0].value.filter == "b"
    out = result(flow(Step("a", lambda ctx: succeed(None)), Step("b", boom)).run(Ctx()))
    assert out[0].check(FilterFailed) and out[0].value.filter == "b"
    out[0].value.failure.trap(RuntimeError)


def test_a_failing_deferred_is_named_after_its_filter():
    waiting = Deferred()
    out = result(flow(Step("a", lambda ctx: waiting), Step("b")).run(Ctx()))
    waiting.errback(RuntimeError("late"))
    assert out[0].check(FilterFailed) and out[0].value.filter == "a"


def test_cancelling_cancels_the_filter_waited_for():
    cancelled = []
    waiting = Deferred(cancelled.append)
    ctx = Ctx()
    d = flow(Step("a", lambda ctx: waiting), Step("b")).run(ctx)
    out = result(d)
    d.cancel()
    assert cancelled == [waiting]
    assert out[0].check(CancelledError)
    assert ctx.ran == ["a"]
