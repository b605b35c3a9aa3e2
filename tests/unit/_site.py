"""
A real twisted.web Site over a Router, fed raw request bytes through a
StringTransport: the filters' tests drive whole requests with it.
"""

from typing import Any, List, Optional, Sequence, Tuple, Union

import attrs
import jsonschema

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.web.server import Site

from infini_gateway.config.model import FilterSpec, FlowConfig, RouterConfig
from infini_gateway.filters import Filter, filter_class
from infini_gateway.flow import Flow, build_flows
from infini_gateway.router import Router

FLOW = "test_flow"
Step = Union[Tuple[str, Any], Filter]


def make_filter(name: str, params: Any = None) -> Filter:
    """
    The registered filter C{name} built from C{params}, after checking them
    against its schema as the configuration loader does.
    """
    cls = filter_class(name)
    params = {} if params is None else params
    jsonschema.validate(params, cls.schema)
    (flow,) = build_flows(
        [FlowConfig(FLOW, (FilterSpec(name, params),))], None
    ).values()
    return flow.steps[0][2]


def make_flow(steps: Sequence[Step], name: str = FLOW) -> Flow:
    """
    A flow from C{(filter name, params)} pairs, built as gateway.yml's would
    be, and from Filter instances (test-only filters, named by C{name}).
    """
    built = []
    for step in steps:
        if isinstance(step, Filter):
            built.append((name, step.name, step))
        else:
            filter_name, params = step
            built.append((name, filter_name, make_filter(filter_name, params)))
    return Flow(name, built)


def make_site(
    steps: Union[Flow, Sequence[Step]], reactor: Optional[MemoryReactorClock] = None
) -> Site:
    """A Site whose router runs C{steps} (or a Flow) for every request."""
    flow = steps if isinstance(steps, Flow) else make_flow(steps)
    if reactor is None:
        reactor = MemoryReactorClock()
    router = Router(
        RouterConfig(name="test", default_flow=flow.name), {flow.name: flow}, reactor
    )
    return Site(router, reactor=reactor)


@attrs.define
class Exchange:
    """One request sent over a fresh connection, and what came back."""

    transport: StringTransport
    channel: Any
    status: Optional[int] = None
    headers: List[Tuple[str, str]] = attrs.field(factory=list)
    body: bytes = b""

    def header(self, name: str) -> Optional[str]:
        values = self.header_values(name)
        return values[-1] if values else None

    def header_values(self, name: str) -> List[str]:
        return [v for n, v in self.headers if n == name.lower()]

    def read(self) -> "Exchange":
        """Parse what the server wrote so far (one response, if any)."""
        raw = self.transport.value()
        if not raw:
            return self
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split(" ")[1])
        self.headers = []
        for line in lines[1:]:
            name, _, value = line.partition(":")
            self.headers.append((name.strip().lower(), value.strip()))
        length = self.header("content-length")
        self.body = rest[: int(length)] if length is not None else rest
        return self


def request(
    site: Site,
    raw: bytes = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    peer: Union[IPv4Address, IPv6Address, Any] = None,
) -> Exchange:
    """Open a connection from C{peer} to C{site}, send C{raw}, read the answer."""
    if peer is None:
        peer = IPv4Address("TCP", "127.0.0.1", 40000)
    transport = StringTransport(
        hostAddress=IPv4Address("TCP", "127.0.0.1", 8000), peerAddress=peer
    )
    channel = site.buildProtocol(peer)
    channel.makeConnection(transport)
    channel.dataReceived(raw)
    return Exchange(transport, channel).read()


class captured_logs:
    """
    A context manager collecting the twisted.logger events emitted inside it.
    """

    def __enter__(self) -> List[dict]:
        from twisted.logger import globalLogPublisher

        self.events: List[dict] = []
        self._publisher = globalLogPublisher
        self._publisher.addObserver(self.events.append)
        return self.events

    def __exit__(self, *exc_info: Any) -> None:
        self._publisher.removeObserver(self.events.append)


def failures(events: List[dict]) -> List[dict]:
    """The events among C{events} that carry a failure."""
    return [event for event in events if "log_failure" in event]
