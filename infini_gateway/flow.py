"""
Flows: filters run in order over a request context, as one Deferred.
"""

from typing import Any, Iterable, Mapping, Sequence, Tuple

from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, fail, succeed
from twisted.python.failure import Failure

from infini_gateway.config import ConfigError
from infini_gateway.config.model import FlowConfig
from infini_gateway.context import RequestContext
from infini_gateway.filters import Filter, filter_class


class FilterFailed(Exception):
    """
    A filter raised (or its Deferred failed): names the flow and the filter,
    and keeps the original failure for the log.
    """

    def __init__(self, flow: str, filter: str, failure: Failure) -> None:
        super().__init__(f"filter {filter!r} of flow {flow!r} failed: {failure.value!r}")
        self.flow = flow
        self.filter = filter
        self.failure = failure


class Flow:
    """
    A named sequence of (flow name, filter name, filter) steps.

    Steps keep the name of the flow they were configured in, so that a rule
    running several flows one after another still reports the right one.
    """

    def __init__(self, name: str, steps: Sequence[Tuple[str, str, Filter]]) -> None:
        self.name = name
        self.steps = tuple(steps)

    @classmethod
    def chain(cls, flows: Iterable["Flow"]) -> "Flow":
        """Several flows run one after another as one flow."""
        flows = list(flows)
        steps = [step for flow in flows for step in flow.steps]
        return cls("+".join(flow.name for flow in flows), steps)

    def run(self, ctx: RequestContext) -> Deferred:
        """
        Run the filters over C{ctx} until one stops the flow.

        @return: a Deferred that fires with None, or fails with
            L{FilterFailed}; cancelling it cancels the filter now waiting.
        """
        # Most filters answer at once: they run in a plain loop, and a
        # coroutine is made only from the first filter that returns
        # something to wait for (a coroutine and its Deferred cost more
        # than the filters themselves).
        steps = self.steps
        for index, (flow_name, filter_name, step) in enumerate(steps):
            if ctx.stopped:
                break
            ctx.flow, ctx.filter = flow_name, filter_name
            try:
                result = step.filter(ctx)
            except CancelledError:
                return fail()
            except Exception:
                return fail(FilterFailed(flow_name, filter_name, Failure()))
            if result is not None:
                return ensureDeferred(self._resume(ctx, index, result))
        return succeed(None)

    async def _resume(self, ctx: RequestContext, index: int, result: Any) -> None:
        """Wait for the step at C{index}'s C{result}, then run the rest."""
        steps = self.steps
        while True:
            flow_name, filter_name, _ = steps[index]
            try:
                if result is not None:
                    await result
            except CancelledError:
                raise
            except Exception:
                raise FilterFailed(flow_name, filter_name, Failure())
            index += 1
            if index == len(steps) or ctx.stopped:
                return
            flow_name, filter_name, step = steps[index]
            ctx.flow, ctx.filter = flow_name, filter_name
            try:
                result = step.filter(ctx)
            except CancelledError:
                raise
            except Exception:
                raise FilterFailed(flow_name, filter_name, Failure())


def build_flows(flows: Iterable[FlowConfig], runtime: Any) -> Mapping[str, Flow]:
    """
    Instantiate every configured flow's filters, by flow name.

    @raise ConfigError: a filter refused its parameters (a regular
        expression that does not compile, say); each problem names the
        file, line and filter.
    """
    built = {}
    problems = []
    for config in flows:
        steps = []
        for spec in config.filters:
            try:
                steps.append((config.name, spec.name, filter_class(spec.name)(spec.params, runtime)))
            except ValueError as e:
                problems.append(f"{spec.where or config.name + ': ' + spec.name}: {e}")
        built[config.name] = Flow(config.name, steps)
    if problems:
        raise ConfigError(problems)
    return built
