"""
Entries, the accept policy and the service tree, on Twisted's fakes.
"""

import errno

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransportWithDisconnection
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.server import Site

from infini_gateway.config.model import (
    Entry,
    EntryTLS,
    FilterSpec,
    FlowConfig,
    GatewayConfig,
    Network,
    RouterConfig,
)
from infini_gateway.entry import BACKLOG, EntryBindError, EntryService, listen_network
from infini_gateway.policy import LINGER_SECONDS, OVERLOAD_RESPONSE, AcceptPolicy, OverloadedFactory
from infini_gateway.service import GatewayService, build_router

ADDRESS = IPv4Address("TCP", "127.0.0.1", 50000)


def connect(factory):
    """Build a protocol from C{factory} and connect it to a fresh transport."""
    protocol = factory.buildProtocol(ADDRESS)
    if protocol is None:
        return None, None
    transport = StringTransportWithDisconnection()
    transport.protocol = protocol
    protocol.makeConnection(transport)
    return protocol, transport


def test_policy_counts_connections_and_overflows_past_the_limit():
    """The third connection over a limit of two gets the overload answer."""
    reactor = MemoryReactorClock()
    policy = AcceptPolicy(Factory.forProtocol(Protocol), 2, OverloadedFactory(reactor))
    first, _ = connect(policy)
    second, _ = connect(policy)
    assert policy.open_connections == 2

    third, transport = connect(policy)
    assert transport.value() == OVERLOAD_RESPONSE
    assert b"HTTP/1.1 503 " in transport.value()
    assert b"\r\nConnection: close\r\n" in transport.value()
    assert policy.refused == 1
    assert policy.open_connections == 2
    # It closes once the request head has arrived.
    assert transport.connected
    third.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n")
    assert transport.connected
    third.dataReceived(b"\r\n")
    assert not transport.connected

    # Once one closes, the next connection is served.
    first.transport.loseConnection()
    assert policy.open_connections == 1
    fourth, transport = connect(policy)
    assert transport.value() == b""
    assert policy.open_connections == 2


def test_overloaded_connection_closes_after_linger_without_request():
    """A refused client that sends nothing is closed after the linger time."""
    reactor = MemoryReactorClock()
    protocol, transport = connect(OverloadedFactory(reactor))
    assert transport.connected
    reactor.advance(LINGER_SECONDS)
    assert not transport.connected
    assert not reactor.getDelayedCalls()


def test_policy_without_overflow_refuses_with_none():
    policy = AcceptPolicy(Factory.forProtocol(Protocol), 0)
    assert policy.buildProtocol(ADDRESS) is None
    assert policy.refused == 1


def _in_use(host, port):
    return CannotListenError(host, port, OSError(errno.EADDRINUSE, "Address already in use"))


def test_skip_occupied_port_tries_the_next_ports():
    """Occupied ports are skipped; the first free one is used."""
    tried = []

    def listen(reactor, host, port, factory, reuse_port):
        tried.append(port)
        if port < 8002:
            raise _in_use(host, port)
        return ("listening", host, port)

    network = Network(host="127.0.0.1", port=8000, skip_occupied_port=True)
    assert listen_network(None, network, None, listen=listen) == ("listening", "127.0.0.1", 8002)
    assert tried == [8000, 8001, 8002]


def test_occupied_port_without_skip_raises():
    def listen(reactor, host, port, factory, reuse_port):
        raise _in_use(host, port)

    with pytest.raises(CannotListenError):
        listen_network(None, Network(host="127.0.0.1", port=8000), None, listen=listen)


def test_skip_occupied_port_does_not_hide_other_errors():
    """Only 'address in use' moves on; a permission error stops at once."""
    tried = []

    def listen(reactor, host, port, factory, reuse_port):
        tried.append(port)
        raise CannotListenError(host, port, OSError(errno.EACCES, "Permission denied"))

    network = Network(host="127.0.0.1", port=80, skip_occupied_port=True)
    with pytest.raises(CannotListenError):
        listen_network(None, network, None, listen=listen)
    assert tried == [80]


def _config(*entries):
    return GatewayConfig(
        entries=entries,
        routers=(RouterConfig(name="default", default_flow="hello"),),
        flows=(
            FlowConfig(name="hello", filters=(FilterSpec(name="echo", params={"message": "hi"}),)),
        ),
    )


def test_gateway_service_listens_for_enabled_entries_only():
    """Starting the tree binds each enabled entry, with its address and backlog."""
    reactor = MemoryReactorClock()
    config = _config(
        Entry(name="a", network=Network(host="127.0.0.1", port=8000), max_concurrency=5),
        Entry(name="b", network=Network(host="::1", port=8001)),
        Entry(name="off", enabled=False, network=Network(host="127.0.0.1", port=8002)),
    )
    service = GatewayService(config, reactor)
    assert reactor.tcpServers == []  # building binds nothing
    service.privilegedStartService()
    service.startService()
    bound = [(port, interface, backlog) for port, _, backlog, interface in reactor.tcpServers]
    assert bound == [(8000, "127.0.0.1", BACKLOG), (8001, "::1", BACKLOG)]
    policy = reactor.tcpServers[0][1]
    assert isinstance(policy, AcceptPolicy)
    assert policy.max_concurrency == 5
    assert isinstance(policy.wrappedFactory, Site)
    assert set(service.entries) == {"a", "b"}


def test_tls_entry_wraps_the_site_in_tls(tmp_path):
    reactor = MemoryReactorClock()
    config = _config(
        Entry(name="s", network=Network(host="127.0.0.1", port=8443), tls=EntryTLS(enabled=True)),
    )
    config = GatewayConfig(
        source=config.source,
        base_dir=str(tmp_path),
        entries=config.entries,
        routers=config.routers,
        flows=config.flows,
    )
    service = GatewayService(config, reactor)
    service.startService()
    policy = reactor.tcpServers[0][1]
    assert isinstance(policy.wrappedFactory, TLSMemoryBIOFactory)
    assert isinstance(policy.wrappedFactory.wrappedFactory, Site)
    assert isinstance(policy.overflow, TLSMemoryBIOFactory)
    assert (tmp_path / "data" / "tls" / "ca.crt").exists()


def test_bind_failure_names_entry_and_address():
    class Busy(MemoryReactorClock):
        def listenTCP(self, port, factory, backlog=50, interface=""):
            raise _in_use(interface, port)

    entry = Entry(name="web", network=Network(host="127.0.0.1", port=8000))
    service = EntryService(entry, Site(None), Busy())
    with pytest.raises(EntryBindError) as raised:
        service.bind()
    assert str(raised.value) == (
        "entry 'web': cannot listen on 127.0.0.1:8000: Address already in use"
    )


def test_router_mounted_below_a_path_matches_the_rest_of_the_path():
    """build_router's Resource routes on the path below where it is mounted."""
    from twisted.web.test.requesthelper import DummyRequest

    from infini_gateway.config.model import Rule

    config = GatewayConfig(
        routers=(
            RouterConfig(
                name="default",
                rules=(Rule(methods=("GET",), patterns=("/hello",), flows=("hello",)),),
            ),
        ),
        flows=_config().flows,
    )
    router = build_router(config, reactor=MemoryReactorClock())

    mounted = DummyRequest([b"hello"])
    mounted.prepath = [b"api"]
    router.render(mounted)
    assert (mounted.responseCode or 200, b"".join(mounted.written)) == (200, b"hi")

    unknown = DummyRequest([b"api"])
    unknown.prepath = [b"api"]
    unknown.postpath = []
    router.render(unknown)
    assert unknown.responseCode == 404
