"""
The L4 entries on fakes: an C{sni} and a C{tcp} entry built by the
GatewayService on a MemoryReactorClock, clients on StringTransports, the
endpoint connections the reactor was asked for driven by hand.
"""

from typing import Any, List, Tuple

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransportWithDisconnection
from twisted.python.failure import Failure

from infini_gateway.service import GatewayService
from infini_gateway.sni import SNIPassthroughFactory
from infini_gateway.tcp import HalfCloseableWrapper, TCPForwardFactory
from tests.unit.test_sni import client_hello

CLIENT = IPv4Address("TCP", "192.0.2.10", 40000)


class Transport(StringTransportWithDisconnection):
    """A StringTransport that can half-close, and counts pauses."""

    write_closed = False

    def loseWriteConnection(self) -> None:
        self.write_closed = True


def gateway(entry: dict, upstreams: List[dict]) -> Tuple[GatewayService, MemoryReactorClock]:
    reactor = MemoryReactorClock()
    config = {
        "entry": [dict({"name": "l4", "network": {"binding": "127.0.0.1:0"}}, **entry)],
        "upstream": upstreams,
    }
    service = GatewayService(_config(config), reactor)
    service.entries["l4"].prepare()
    return service, reactor


def _config(data):
    from infini_gateway.config import config_from_dict

    return config_from_dict(data)


def accept(service: GatewayService) -> Tuple[Any, Transport]:
    """A client connection accepted by the entry (through its accept policy)."""
    policy = service.entries["l4"].policy
    protocol = policy.buildProtocol(CLIENT)
    transport = Transport(peerAddress=CLIENT)
    transport.protocol = protocol
    protocol.makeConnection(transport)
    return protocol, transport


def connect_endpoint(reactor: MemoryReactorClock, index: int = -1) -> Tuple[Any, Transport]:
    """Complete the endpoint connection the reactor was asked for."""
    host, port, factory, _timeout, _bind = reactor.tcpClients[index]
    protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
    transport = Transport()
    transport.protocol = protocol
    protocol.makeConnection(transport)
    return protocol, transport


def refuse_endpoint(reactor: MemoryReactorClock, index: int = -1) -> None:
    connector = reactor.connectors[index]
    factory = reactor.tcpClients[index][2]
    factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))


SNI_UPSTREAMS = [
    {"name": "dc1", "endpoints": ["https://10.0.1.1:8443", "https://10.0.1.2:8443"]},
    {"name": "dc2", "endpoints": ["http://10.0.2.1:443"]},
]


def sni_gateway(default: bool = False):
    routes = {"web.default.dc1.internal.example.org": "dc1", "*.dc2.internal.example.org": "dc2"}
    if default:
        routes["default"] = "dc2"
    return gateway({"protocol": "sni", "sni_routes": routes}, SNI_UPSTREAMS)


def counters(service) -> dict:
    return dict(service.entries["l4"].site.counters)


def test_sni_entry_is_built_with_the_passthrough_factory_and_half_close():
    service, _ = sni_gateway()
    entry = service.entries["l4"]
    assert isinstance(entry.site, SNIPassthroughFactory)
    assert entry.policy.protocol is HalfCloseableWrapper
    assert entry.policy.overflow is None
    assert entry.scheme == "tcp"


def test_hello_is_routed_by_name_replayed_and_spliced_both_ways():
    service, reactor = sni_gateway()
    protocol, client = accept(service)
    hello = client_hello("db.default.dc2.internal.example.org")
    for i in range(len(hello)):
        protocol.dataReceived(hello[i : i + 1])
    assert client.producerState == "paused"
    ((host, port, *_),) = reactor.tcpClients
    # Plain TCP to the endpoint whatever its scheme: the bytes are TLS already.
    assert (host, port) == ("10.0.2.1", 443)
    upstream_protocol, upstream = connect_endpoint(reactor)
    assert upstream.value() == hello
    assert client.producerState == "producing"
    # Each side is the other's producer.
    assert upstream.producer is protocol and upstream.streaming
    assert client.producer is upstream and client.streaming

    protocol.dataReceived(b"more from the client")
    assert upstream.value().endswith(b"more from the client")
    upstream_protocol.dataReceived(b"server flight")
    assert client.value() == b"server flight"
    assert service.entries["l4"].site.forwarded == 1
    assert counters(service) == {}


def test_exact_name_goes_to_its_upstream_balanced_over_endpoints():
    service, reactor = sni_gateway()
    hello = client_hello("web.default.dc1.internal.example.org")
    for _ in range(2):
        protocol, _client = accept(service)
        protocol.dataReceived(hello)
    assert sorted(c[0] for c in reactor.tcpClients) == ["10.0.1.1", "10.0.1.2"]


@pytest.mark.parametrize(
    "name, reason",
    [("unknown.example.org", "no_route"), (None, "no_server_name")],
)
def test_unknown_or_missing_name_without_default_is_closed_and_counted(name, reason):
    service, reactor = sni_gateway()
    protocol, client = accept(service)
    protocol.dataReceived(client_hello(name))
    assert not client.connected
    assert reactor.tcpClients == []
    assert counters(service) == {reason: 1}


def test_default_takes_unknown_and_missing_names():
    service, reactor = sni_gateway(default=True)
    for name in ("unknown.example.org", None):
        protocol, client = accept(service)
        protocol.dataReceived(client_hello(name))
        assert client.connected
    assert [c[0] for c in reactor.tcpClients] == ["10.0.2.1", "10.0.2.1"]


def test_malformed_hello_is_closed_and_counted():
    service, reactor = sni_gateway(default=True)
    protocol, client = accept(service)
    protocol.dataReceived(b"GET / HTTP/1.1\r\n\r\n")
    assert not client.connected
    assert reactor.tcpClients == []
    assert counters(service) == {"malformed": 1}


def test_a_client_without_a_whole_hello_is_closed_at_the_timeout():
    service, reactor = sni_gateway(default=True)
    protocol, client = accept(service)
    protocol.dataReceived(client_hello("a.example.org")[:20])
    reactor.advance(4.9)
    assert client.connected
    reactor.advance(0.2)
    assert not client.connected
    assert counters(service) == {"timeout": 1}
    assert reactor.getDelayedCalls() == []


def test_the_hello_timer_stops_once_the_hello_is_whole():
    service, reactor = sni_gateway(default=True)
    protocol, client = accept(service)
    protocol.dataReceived(client_hello("a.example.org"))
    connect_endpoint(reactor)
    reactor.advance(10)
    assert client.connected
    assert counters(service) == {}


def test_a_refused_endpoint_moves_on_to_the_next():
    service, reactor = sni_gateway()
    protocol, client = accept(service)
    hello = client_hello("web.default.dc1.internal.example.org")
    protocol.dataReceived(hello)
    first = reactor.tcpClients[0][0]
    refuse_endpoint(reactor, 0)
    assert len(reactor.tcpClients) == 2
    assert reactor.tcpClients[1][0] != first
    _, upstream = connect_endpoint(reactor, 1)
    assert upstream.value() == hello
    assert client.connected


def test_no_reachable_endpoint_closes_the_client_and_counts_it():
    service, reactor = sni_gateway()
    protocol, client = accept(service)
    protocol.dataReceived(client_hello("web.default.dc1.internal.example.org"))
    refuse_endpoint(reactor, 0)
    refuse_endpoint(reactor, 1)
    assert not client.connected
    assert counters(service) == {"no_endpoint": 1}
    endpoints = service.upstreams["dc1"].endpoints
    assert [e.in_flight for e in endpoints] == [0, 0]


def test_unhealthy_endpoints_are_skipped():
    service, reactor = sni_gateway()
    service.upstreams["dc1"].endpoints[0].healthy = False
    for _ in range(2):
        protocol, _client = accept(service)
        protocol.dataReceived(client_hello("web.default.dc1.internal.example.org"))
    assert [c[0] for c in reactor.tcpClients] == ["10.0.1.2", "10.0.1.2"]


def test_client_going_away_while_connecting_cancels_the_connection():
    service, reactor = sni_gateway()
    protocol, client = accept(service)
    protocol.dataReceived(client_hello("web.default.dc1.internal.example.org"))
    client.loseConnection()
    assert reactor.connectors[0].stoppedConnecting
    assert [e.in_flight for e in service.upstreams["dc1"].endpoints] == [0, 0]


def test_half_close_passes_both_ways_then_closes():
    service, reactor = sni_gateway(default=True)
    wrapper, client = accept(service)
    wrapper.dataReceived(client_hello("a.example.org"))
    upstream_protocol, upstream = connect_endpoint(reactor)
    # The client's FIN: the endpoint gets a FIN, the answer still flows.
    wrapper.readConnectionLost()
    assert upstream.write_closed
    assert client.connected
    upstream_protocol.dataReceived(b"answer")
    assert client.value() == b"answer"
    # The endpoint's FIN too: both directions are done.
    upstream_protocol.readConnectionLost()
    assert client.write_closed
    assert not client.connected and not upstream.connected


def test_endpoint_closing_closes_the_client_and_ends_the_balancer_count():
    service, reactor = sni_gateway(default=True)
    protocol, client = accept(service)
    protocol.dataReceived(client_hello("a.example.org"))
    _upstream_protocol, upstream = connect_endpoint(reactor)
    endpoint = service.upstreams["dc2"].endpoints[0]
    assert endpoint.in_flight == 1
    upstream.loseConnection()
    assert not client.connected
    assert endpoint.in_flight == 0


def test_idle_connections_are_closed_after_the_idle_timeout():
    service, reactor = gateway(
        {"protocol": "sni", "sni_routes": {"default": "dc2"}, "idle_timeout": "10s"},
        SNI_UPSTREAMS,
    )
    protocol, client = accept(service)
    protocol.dataReceived(client_hello("a.example.org"))
    upstream_protocol, upstream = connect_endpoint(reactor)
    reactor.advance(9)
    upstream_protocol.dataReceived(b"x")
    reactor.advance(9)
    assert client.connected
    reactor.advance(1.5)
    assert not client.connected and not upstream.connected


# tcp entries


def tcp_gateway(**extra):
    return gateway(
        dict({"protocol": "tcp", "upstream": "db"}, **extra),
        [{"name": "db", "endpoints": ["http://10.0.3.1:5432", "http://10.0.3.2:5432"]}],
    )


def test_tcp_entry_connects_at_once_and_forwards_early_bytes():
    service, reactor = tcp_gateway()
    assert isinstance(service.entries["l4"].site, TCPForwardFactory)
    protocol, client = accept(service)
    assert len(reactor.tcpClients) == 1
    protocol.dataReceived(b"early")
    upstream_protocol, upstream = connect_endpoint(reactor)
    assert upstream.value() == b"early"
    upstream_protocol.dataReceived(b"hello")
    assert client.value() == b"hello"


def test_tcp_entry_on_a_chash_upstream_keeps_a_client_on_one_endpoint():
    service, reactor = gateway(
        {"protocol": "tcp", "upstream": "db"},
        [
            {
                "name": "db",
                "balancer": "chash",
                "endpoints": [f"http://10.0.3.{i}:5432" for i in range(1, 6)],
            }
        ],
    )
    for _ in range(4):
        accept(service)
    assert len({c[0] for c in reactor.tcpClients}) == 1


def test_tcp_entry_limits_close_without_an_http_answer():
    service, _reactor = tcp_gateway(max_concurrency=1)
    accept(service)
    policy = service.entries["l4"].policy
    assert policy.buildProtocol(CLIENT) is None
    assert policy.refused == 1


def test_half_close_under_tls_closes_instead_of_looping():
    """Twisted's TLS protocol copies the wrapper's interfaces onto itself:
    the wrapper must not hand it a half-close it would send straight back."""
    from twisted.internet.interfaces import IHalfCloseableProtocol
    from twisted.internet.protocol import Factory, Protocol
    from twisted.internet.ssl import CertificateOptions
    from twisted.protocols.policies import WrappingFactory
    from twisted.protocols.tls import TLSMemoryBIOFactory

    tls = TLSMemoryBIOFactory(CertificateOptions(), False, Factory.forProtocol(Protocol))
    policy = WrappingFactory(tls)
    policy.protocol = HalfCloseableWrapper
    wrapper = policy.buildProtocol(CLIENT)
    transport = Transport()
    transport.protocol = wrapper
    wrapper.makeConnection(transport)
    assert IHalfCloseableProtocol.providedBy(wrapper.wrappedProtocol)
    wrapper.readConnectionLost()
    assert not transport.connected
