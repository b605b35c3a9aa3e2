"""
Client address deny / permit lists, enforced by L{AcceptPolicy} when a
connection is accepted, on Twisted's fakes.
"""

import ipaddress

import pytest
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent, globalLogPublisher

from infini_gateway.config.model import ClientIPAccess, Entry, EntryTLS, Network
from infini_gateway.entry import EntryService
from infini_gateway.policy import (
    DENIED_LOG_INTERVAL,
    AcceptPolicy,
    ClientIPRules,
    OverloadedFactory,
    client_address,
)


def v4(host):
    return IPv4Address("TCP", host, 40000)


def v6(host):
    return IPv6Address("TCP", host, 40000)


class CountingFactory(Factory):
    """A factory recording every address it is asked to build a protocol for."""

    protocol = Protocol

    def __init__(self):
        self.asked = []

    def buildProtocol(self, addr):
        self.asked.append(addr)
        return super().buildProtocol(addr)


def policy_for(denied=(), permitted=(), max_concurrency=100, clock=None):
    wrapped = CountingFactory()
    policy = AcceptPolicy(
        wrapped,
        max_concurrency,
        OverloadedFactory(MemoryReactorClock()),
        access=ClientIPAccess(denied=denied, permitted=permitted),
        clock=clock or Clock(),
        name="web",
    )
    return policy, wrapped


def accepted(policy, addr):
    return policy.buildProtocol(addr) is not None


def connect(policy, addr):
    """Accept as the port does: build the protocol, then connect it."""
    protocol = policy.buildProtocol(addr)
    if protocol is not None:
        protocol.makeConnection(StringTransport())
    return protocol


# Matching


@pytest.mark.parametrize(
    "host, expected",
    [
        ("10.1.2.3", "10.1.2.3"),
        ("::1", "::1"),
        ("::ffff:10.1.2.3", "10.1.2.3"),
        ("::FFFF:127.0.0.1", "127.0.0.1"),
        ("fe80::1%eth0", "fe80::1"),
        ("2001:db8::1", "2001:db8::1"),
    ],
)
def test_client_address_normalises_mapped_and_scoped_peers(host, expected):
    """IPv4-mapped IPv6 peers are their IPv4 address; zones are dropped."""
    assert client_address(host) == ipaddress.ip_address(expected)


@pytest.mark.parametrize("host", ["", "localhost", "/tmp/socket", "10.0.0.300"])
def test_client_address_of_a_non_ip_is_none(host):
    assert client_address(host) is None


def test_denied_exact_ipv4_address():
    """A denied IPv4 address is closed; its neighbours are accepted."""
    rules = ClientIPRules(ClientIPAccess(denied=["133.37.55.22"]))
    assert not rules.allows("133.37.55.22")
    assert rules.allows("133.37.55.23")
    assert rules.allows("133.37.55.21")


def test_denied_ipv4_cidr():
    """Every address of a denied block is closed, none outside it."""
    rules = ClientIPRules(ClientIPAccess(denied=["10.0.0.0/8"]))
    for host in ("10.0.0.0", "10.0.0.1", "10.200.3.4", "10.255.255.255"):
        assert not rules.allows(host), host
    for host in ("9.255.255.255", "11.0.0.0", "192.168.0.1"):
        assert rules.allows(host), host


def test_denied_ipv6_address_and_cidr():
    rules = ClientIPRules(ClientIPAccess(denied=["::1", "2001:db8::/32"]))
    assert not rules.allows("::1")
    assert not rules.allows("2001:db8::1")
    assert not rules.allows("2001:db8:ffff::1")
    assert rules.allows("2001:db9::1")
    assert rules.allows("::2")


def test_ipv4_and_ipv6_rules_do_not_mix():
    """
    127.0.0.1 denied leaves ::1 accepted, and ::1 denied leaves 127.0.0.1
    accepted; ::/0 does not deny IPv4 clients, 0.0.0.0/0 not IPv6 ones.
    """
    assert ClientIPRules(ClientIPAccess(denied=["127.0.0.1"])).allows("::1")
    assert ClientIPRules(ClientIPAccess(denied=["::1/128"])).allows("127.0.0.1")
    assert ClientIPRules(ClientIPAccess(denied=["::/0"])).allows("10.0.0.1")
    assert ClientIPRules(ClientIPAccess(denied=["0.0.0.0/0"])).allows("::1")
    assert not ClientIPRules(ClientIPAccess(denied=["0.0.0.0/0"])).allows("1.2.3.4")


def test_mapped_peer_matches_ipv4_rules():
    """An IPv4 client of an [::] listener (::ffff:a.b.c.d) is matched as IPv4."""
    rules = ClientIPRules(ClientIPAccess(denied=["127.0.0.1", "10.0.0.0/8"]))
    assert not rules.allows("::ffff:127.0.0.1")
    assert not rules.allows("::ffff:10.9.8.7")
    assert rules.allows("::ffff:192.168.1.1")


def test_mapped_rule_matches_ipv4_peers():
    """A rule written as ::ffff:10.0.0.0/104 is the IPv4 block 10.0.0.0/8."""
    rules = ClientIPRules(ClientIPAccess(denied=["::ffff:10.0.0.0/104"]))
    assert not rules.allows("10.1.2.3")
    assert not rules.allows("::ffff:10.1.2.3")
    assert rules.allows("11.1.2.3")


def test_host_bits_set_means_the_network():
    """192.168.3.1/24 is taken as 192.168.3.0/24."""
    access = ClientIPAccess(denied=["192.168.3.1/24"])
    assert access.denied == (ipaddress.ip_network("192.168.3.0/24"),)
    rules = ClientIPRules(access)
    assert not rules.allows("192.168.3.200")
    assert rules.allows("192.168.4.1")


def test_permitted_only():
    """With a permitted list, only its addresses are accepted."""
    access = ClientIPAccess(permitted=["133.37.55.22", "10.0.0.0/8", "::1"])
    rules = ClientIPRules(access)
    assert rules.allows("133.37.55.22")
    assert rules.allows("10.3.3.3")
    assert rules.allows("::1")
    assert rules.allows("::ffff:10.3.3.3")
    assert not rules.allows("133.37.55.23")
    assert not rules.allows("127.0.0.1")
    assert not rules.allows("::2")


def test_denied_wins_over_permitted():
    rules = ClientIPRules(
        ClientIPAccess(denied=["10.0.0.5", "10.1.0.0/16"], permitted=["10.0.0.0/8"])
    )
    assert rules.allows("10.0.0.4")
    assert not rules.allows("10.0.0.5")
    assert not rules.allows("10.1.2.3")
    assert not rules.allows("11.0.0.1")


def test_many_networks_of_many_prefix_lengths():
    """Grouped by prefix length, every block still matches exactly its addresses."""
    blocks = [f"10.{i}.0.0/16" for i in range(0, 256, 2)]
    blocks += [f"172.16.{i}.0/24" for i in range(256)]
    blocks += [f"192.168.0.{i}" for i in range(0, 256, 3)]
    rules = ClientIPRules(ClientIPAccess(denied=blocks))
    assert not rules.allows("10.0.1.1")
    assert rules.allows("10.1.1.1")
    assert not rules.allows("10.254.255.255")
    assert not rules.allows("172.16.77.9")
    assert rules.allows("172.17.0.1")
    assert not rules.allows("192.168.0.3")
    assert rules.allows("192.168.0.4")


def test_non_ip_peer_is_denied_when_any_list_is_configured():
    """A UNIX socket peer (or no address) fails closed."""
    for access in (
        ClientIPAccess(denied=["10.0.0.1"]),
        ClientIPAccess(permitted=["0.0.0.0/0", "::/0"]),
    ):
        rules = ClientIPRules(access)
        assert not rules.allows_peer(UNIXAddress(b"/tmp/gateway.sock"))
        assert not rules.allows_peer(None)
        assert rules.allows_peer(v4("192.0.2.1"))


# Enforcement in AcceptPolicy


def test_denied_peer_gets_none_and_the_wrapped_factory_is_never_asked():
    policy, wrapped = policy_for(denied=["192.0.2.0/24", "2001:db8::/32"])
    assert policy.buildProtocol(v4("192.0.2.7")) is None
    assert policy.buildProtocol(v6("2001:db8::7")) is None
    assert policy.buildProtocol(v6("::ffff:192.0.2.8")) is None
    assert wrapped.asked == []
    assert policy.denied == 3
    assert policy.refused == 0
    assert policy.open_connections == 0


def test_permitted_peer_is_served_by_the_wrapped_factory():
    policy, wrapped = policy_for(denied=["192.0.2.7"])
    protocol = policy.buildProtocol(v4("192.0.2.8"))
    assert protocol is not None
    assert [a.host for a in wrapped.asked] == ["192.0.2.8"]
    assert policy.denied == 0


def test_permitted_list_denies_everyone_else_through_the_policy():
    policy, wrapped = policy_for(permitted=["127.0.0.1"])
    assert accepted(policy, v4("127.0.0.1"))
    assert not accepted(policy, v6("::1"))
    assert not accepted(policy, UNIXAddress(b"/tmp/s"))
    assert policy.denied == 2
    assert len(wrapped.asked) == 1


def test_denied_peers_never_take_a_connection_slot():
    """
    The deny check comes before max_concurrency: at the limit, a denied
    client is still just closed (not counted as refused, given no 503).
    """
    policy, wrapped = policy_for(denied=["192.0.2.1"], max_concurrency=1)
    assert connect(policy, v4("198.51.100.1")) is not None
    assert policy.open_connections == 1
    assert connect(policy, v4("192.0.2.1")) is None
    assert (policy.denied, policy.refused) == (1, 0)
    # A permitted client past the limit is the one refused (with the 503 protocol).
    overflow = connect(policy, v4("198.51.100.2"))
    assert overflow is not None
    assert (policy.denied, policy.refused) == (1, 1)
    assert len(wrapped.asked) == 1


def test_no_lists_accepts_everyone_including_non_ip_peers():
    wrapped = CountingFactory()
    for access in (None, ClientIPAccess()):
        policy = AcceptPolicy(wrapped, 10, access=access)
        assert policy.rules is None
        assert accepted(policy, UNIXAddress(b"/tmp/s"))
        assert accepted(policy, v4("192.0.2.1"))
        assert policy.denied == 0


# Logging


@pytest.fixture
def logged():
    events = []
    globalLogPublisher.addObserver(events.append)
    yield lambda: [
        e for e in events if e.get("log_namespace") == "infini_gateway.policy"
    ]
    globalLogPublisher.removeObserver(events.append)


def test_denials_are_logged_first_then_at_most_once_per_interval(logged):
    """
    The first denial is logged at once; a flood after it is counted and
    summed up in one line per DENIED_LOG_INTERVAL.
    """
    clock = Clock()
    policy, _ = policy_for(denied=["192.0.2.0/24"], clock=clock)
    policy.buildProtocol(v4("192.0.2.1"))
    assert len(logged()) == 1
    first = logged()[0]
    assert first["peer"] == "192.0.2.1"
    assert first["entry"] == "entry web"
    assert "closed a connection from" in first["log_format"]

    for i in range(1000):
        policy.buildProtocol(v4(f"192.0.2.{i % 250 + 1}"))
        clock.advance(DENIED_LOG_INTERVAL / 2000)
    assert len(logged()) == 1
    assert policy.denied == 1001

    clock.advance(DENIED_LOG_INTERVAL)
    policy.buildProtocol(v4("192.0.2.99"))
    assert len(logged()) == 2
    summary = logged()[1]
    assert summary["count"] == 1001
    assert summary["peer"] == "192.0.2.99"
    assert formatEvent(summary) == (
        "entry web: closed 1001 connections from denied client addresses"
        " in 15s, the latest from 192.0.2.99"
    )
    assert policy.denied == 1002


# Wiring


def test_entry_service_gives_its_policy_the_router_access():
    reactor = MemoryReactorClock()
    entry = Entry(name="web", network=Network(host="127.0.0.1", port=0), tls=EntryTLS())
    service = EntryService(
        entry,
        CountingFactory(),
        reactor,
        access=ClientIPAccess(denied=["127.0.0.1"]),
    )
    service.prepare()
    assert service.policy.buildProtocol(v4("127.0.0.1")) is None
    assert service.policy.buildProtocol(v4("127.0.0.2")) is not None
    assert service.policy.denied == 1


def test_gateway_service_wires_each_entry_to_its_router_lists():
    from infini_gateway.service import build_service

    config = {
        "entry": [
            {"name": "a", "router": "open", "network": {"binding": "127.0.0.1:0"}},
            {"name": "b", "router": "closed", "network": {"binding": "127.0.0.1:0"}},
        ],
        "router": [
            {"name": "open", "default_flow": "f"},
            {
                "name": "closed",
                "default_flow": "f",
                "denied_client_ip_list": ["127.0.0.1"],
                "ip_access_control": {"client_ip": {"permitted": ["127.0.0.0/8"]}},
            },
        ],
        "flow": [{"name": "f", "filter": [{"echo": {"message": "hi"}}]}],
    }
    gateway = build_service(config, reactor=MemoryReactorClock())
    gateway.prepare()
    open_policy = gateway.entries["a"].policy
    closed_policy = gateway.entries["b"].policy
    assert open_policy.rules is None
    assert closed_policy.buildProtocol(v4("127.0.0.1")) is None
    assert closed_policy.buildProtocol(v4("127.0.0.2")) is not None
    assert closed_policy.buildProtocol(v4("10.0.0.1")) is None
    assert closed_policy.denied == 2
