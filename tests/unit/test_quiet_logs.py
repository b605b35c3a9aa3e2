"""
What the gateway does not log per request or per upstream connection: the
access log is the C{logging} filter alone (twisted.web's own line is off for
gateway Sites), and new upstream connections log no "Starting factory".
"""

from twisted.internet.defer import succeed
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock

from infini_gateway.config.model import RouterConfig
from infini_gateway.http import GatewaySite
from infini_gateway.router import Router
from infini_gateway.upstream.pool import QuietEndpoint
from tests.unit._site import make_flow, request


def test_gateway_site_writes_no_access_log_line(tmp_path):
    flow = make_flow([("echo", {"message": "hi"})])
    reactor = MemoryReactorClock()
    router = Router(RouterConfig(name="r", default_flow=flow.name), {flow.name: flow}, reactor)
    path = tmp_path / "access.log"
    site = GatewaySite(router, reactor=reactor, logPath=str(path))
    site.startFactory()
    try:
        answer = request(site)
    finally:
        site.stopFactory()
    assert answer.status == 200
    assert path.read_bytes() == b""


class Endpoint:
    """Records the factories it is asked to connect."""

    def __init__(self):
        self.factories = []

    def connect(self, factory):
        self.factories.append(factory)
        return succeed(None)


def test_quiet_endpoint_makes_its_factories_silent():
    inner = Endpoint()
    factory = Factory()
    assert factory.noisy
    QuietEndpoint(inner).connect(factory)
    assert inner.factories == [factory]
    assert not factory.noisy


def test_health_probes_connect_with_silent_factories():
    """Each probe is a new connection: its factory logs no start and stop."""
    from twisted.web.client import URI

    from infini_gateway.config.model import EndpointConfig, UpstreamConfig
    from infini_gateway.upstream.health.active import _ProbeEndpoints
    from infini_gateway.upstream.pool import EndpointFactory

    config = UpstreamConfig(name="api", endpoints=(EndpointConfig("http://127.0.0.1:9"),))
    tcp = EndpointFactory(MemoryReactorClock(), config, None)
    endpoint = _ProbeEndpoints(tcp, None, None).endpointForURI(
        URI.fromBytes(b"http://127.0.0.1:9/health")
    )
    inner = Endpoint()
    endpoint.endpoint = inner
    factory = Factory()
    endpoint.connect(factory)
    assert inner.factories == [factory]
    assert not factory.noisy
