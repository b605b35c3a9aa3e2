"""
The floating IP: the election on a Clock, the service on fakes (a segment
in memory, an address manager that only remembers, recorded ARP), the
datagram, the plan resolved from interfaces, and the configuration.
"""

import ipaddress
import textwrap

import pytest
from twisted.internet.task import Clock

from infini_gateway._netif import (
    CAP_NET_ADMIN,
    CAP_NET_RAW,
    AddressError,
    IfconfigAddresses,
    IPRouteAddresses,
    _parse_ip_json,
    arp_frames,
    missing_capabilities,
)
from infini_gateway.config import ConfigError, config_from_dict, load_config
from infini_gateway.config.model import FloatingIPConfig
from infini_gateway.floating_ip import (
    HOLDER,
    STANDBY,
    STOPPED,
    Election,
    FakeAddresses,
    FakeAnnouncer,
    FakeNetwork,
    FloatingIPError,
    FloatingIPService,
    Heartbeat,
    capability_problem,
    check_config,
    fake_interfaces,
    resolve_plan,
)

VIP = ipaddress.IPv4Address("10.213.0.234")
A = ipaddress.IPv4Address("10.213.0.11")
B = ipaddress.IPv4Address("10.213.0.12")
C = ipaddress.IPv4Address("10.213.0.13")
TIMEOUT = 0.6
INTERVAL = 0.2


def beat(node, priority=100, holding=False, leaving=False, seq=1, incarnation=7):
    return Heartbeat(
        node=node,
        vip=VIP,
        priority=priority,
        holding=holding,
        leaving=leaving,
        incarnation=incarnation,
        seq=seq,
    )


class Recorder:
    """An election with its transitions and contentions recorded."""

    def __init__(self, clock, node=A, priority=100, preempt=True):
        self.clock = clock
        self.election = Election(node, priority, TIMEOUT, clock, preempt=preempt)
        self.transitions = []
        self.contentions = []
        self.election.on_transition = self.transitions.append
        self.election.on_contention = self.contentions.append
        self.seq = {}

    def hear(self, node, **kwargs):
        self.seq[node] = self.seq.get(node, 0) + 1
        return self.election.heard(beat(node, seq=self.seq[node], **kwargs))

    def run(self, seconds, step=0.05, each=None):
        """Advance the clock, checking every C{step}; C{each(t)} runs before each check."""
        for _ in range(int(round(seconds / step))):
            self.clock.advance(step)
            if each is not None:
                each(self.clock.seconds())
            self.election.check()

    @property
    def role(self):
        return self.election.role


# -- the election -------------------------------------------------------------


def test_start_without_holder_takes_over_after_timeout():
    """A standby that hears nobody holds the address after exactly C{timeout}."""
    r = Recorder(Clock())
    r.election.start()
    assert r.role == STANDBY
    r.run(TIMEOUT - 0.05)
    assert r.role == STANDBY
    r.run(0.05)
    assert r.role == HOLDER
    assert r.election.takeovers == 1
    assert [(t.old, t.new) for t in r.transitions] == [
        (STOPPED, STANDBY),
        (STANDBY, HOLDER),
    ]
    assert "no holder heard for 600 ms since starting" in r.transitions[-1].reason


def test_start_with_holder_stays_standby():
    """A standby that hears a live holder never takes the address."""
    r = Recorder(Clock(), priority=100)
    r.election.start()
    r.run(5.0, step=INTERVAL, each=lambda t: r.hear(B, priority=50, holding=True))
    # B is worse, but preempt only applies when this one is better than all;
    # here it is: so with preempt it takes over once settled.
    assert r.role == HOLDER
    r2 = Recorder(Clock(), priority=100)
    r2.election.start()
    r2.run(5.0, step=INTERVAL, each=lambda t: r2.hear(B, priority=150, holding=True))
    assert r2.role == STANDBY
    assert r2.election.holder == B
    assert r2.election.takeovers == 0


def test_start_with_worse_holder_and_no_preempt_stays_standby():
    """Without preempt, a better standby leaves a live holder alone."""
    r = Recorder(Clock(), priority=200, preempt=False)
    r.election.start()
    r.run(5.0, step=INTERVAL, each=lambda t: r.hear(B, priority=100, holding=True))
    assert r.role == STANDBY
    assert r.election.takeovers == 0


def test_holder_death_takes_over_within_timeout():
    """When the holder's heartbeats stop, the standby holds the address C{timeout} later."""
    clock = Clock()
    r = Recorder(clock)
    r.election.start()
    r.run(2.0, step=INTERVAL, each=lambda t: r.hear(B, priority=150, holding=True))
    assert r.role == STANDBY
    last = clock.seconds()
    r.run(TIMEOUT + 0.05, step=0.01)
    assert r.role == HOLDER
    took = r.transitions[-1].at - last
    assert TIMEOUT <= took <= TIMEOUT + 0.011
    assert f"no heartbeat from holder {B}" in r.transitions[-1].reason


def test_graceful_stop_of_holder_takes_over_at_once():
    """A holder that says it is leaving is replaced without waiting for the timeout."""
    clock = Clock()
    r = Recorder(clock)
    r.election.start()
    r.run(1.0, step=INTERVAL, each=lambda t: r.hear(B, priority=150, holding=True))
    clock.advance(0.01)
    r.hear(B, priority=150, leaving=True)
    assert r.role == HOLDER
    assert r.transitions[-1].at == clock.seconds()
    assert f"holder {B} released the address" in r.transitions[-1].reason


def test_graceful_stop_defers_to_a_better_standby():
    """Of two standbys, only the better takes a released address at once."""
    clock = Clock()
    r = Recorder(clock, priority=100)
    r.election.start()

    def peers(t):
        r.hear(B, priority=150, holding=True)
        r.hear(C, priority=120)

    r.run(1.0, step=INTERVAL, each=peers)
    r.hear(B, priority=150, leaving=True)
    assert r.role == STANDBY
    # C takes it and says so: this one stays a standby.
    r.run(1.0, step=INTERVAL, each=lambda t: r.hear(C, priority=120, holding=True))
    assert r.role == STANDBY
    assert r.election.holder == C


def test_better_standby_that_never_takes_over_is_not_waited_for_forever():
    """A better standby that stays silent about holding costs one extra timeout, no more."""
    clock = Clock()
    r = Recorder(clock, priority=100)
    r.election.start()
    r.run(2 * TIMEOUT + 0.05, step=INTERVAL, each=lambda t: r.hear(C, priority=120))
    assert r.role == HOLDER
    assert 2 * TIMEOUT <= r.transitions[-1].at < 2 * TIMEOUT + INTERVAL


def test_preemption_by_a_better_gateway():
    """
    A better standby takes over from a worse holder once it has listened for
    C{timeout}; the worse holder steps down as soon as it hears the better
    one hold.
    """
    clock = Clock()
    better = Recorder(clock, node=A, priority=200)
    worse = Recorder(clock, node=B, priority=100)
    worse.election.start()
    worse.run(TIMEOUT)
    assert worse.role == HOLDER
    better.election.start()
    better.hear(B, priority=100, holding=True)
    better.run(
        TIMEOUT - 0.1,
        step=0.1,
        each=lambda t: better.hear(B, priority=100, holding=True),
    )
    assert better.role == STANDBY  # still listening
    better.run(0.1, step=0.1, each=lambda t: better.hear(B, priority=100, holding=True))
    assert better.role == HOLDER
    assert f"preempting {B}" in better.transitions[-1].reason
    worse.hear(A, priority=200, holding=True)
    assert worse.role == STANDBY
    assert "holds it too and wins" in worse.transitions[-1].reason


def test_two_holders_the_worse_steps_down_even_without_preempt():
    """Two holders never stay two: the worse steps down; the better announces again."""
    clock = Clock()
    worse = Recorder(clock, node=B, priority=100, preempt=False)
    worse.election.start()
    worse.run(TIMEOUT)
    assert worse.role == HOLDER
    worse.hear(A, priority=200, holding=True)
    assert worse.role == STANDBY

    better = Recorder(clock, node=A, priority=200, preempt=False)
    better.election.start()
    better.run(TIMEOUT)
    assert better.role == HOLDER
    better.hear(B, priority=100, holding=True)
    assert better.role == HOLDER
    assert [p.node for p in better.contentions] == [B]
    better.hear(B, priority=100, holding=True)
    assert len(better.contentions) == 1  # told once per episode


def test_equal_priorities_lower_address_wins():
    """Two gateways of equal priority started together: the lower address holds it."""
    clock = Clock()
    low = Recorder(clock, node=A, priority=100)
    high = Recorder(clock, node=B, priority=100)
    low.election.start()
    high.election.start()

    def exchange(t):
        low.hear(B, priority=100, holding=high.role == HOLDER)
        high.hear(A, priority=100, holding=low.role == HOLDER)

    low.run(3.0, step=INTERVAL, each=lambda t: (exchange(t), high.election.check()))
    assert low.role == HOLDER
    assert high.role == STANDBY
    assert high.election.takeovers == 0


def test_equal_priorities_when_both_took_it_the_higher_address_yields():
    clock = Clock()
    high = Recorder(clock, node=B, priority=100)
    high.election.start()
    high.run(TIMEOUT)
    assert high.role == HOLDER
    high.hear(A, priority=100, holding=True)
    assert high.role == STANDBY


def test_flapping_holder_short_gaps_never_cause_a_takeover():
    """Heartbeats of the holder that arrive late, but within the timeout, change nothing."""
    clock = Clock()
    r = Recorder(clock)
    r.election.start()
    gaps = [0.2, 0.55, 0.1, 0.58, 0.3, 0.59, 0.2] * 5
    for gap in gaps:
        r.run(gap, step=0.01)
        r.hear(B, priority=150, holding=True)
    assert r.role == STANDBY
    assert r.election.takeovers == 0


def test_flapping_better_peer_every_change_waits_for_the_timeout():
    """
    A better peer that comes and goes: this gateway takes over only after a
    whole timeout of silence, steps down as soon as the peer holds again,
    and counts every take-over.
    """
    clock = Clock()
    r = Recorder(clock, priority=100)
    r.election.start()
    for cycle in range(4):
        r.run(1.0, step=INTERVAL, each=lambda t: r.hear(B, priority=200, holding=True))
        assert r.role == STANDBY
        silent_from = clock.seconds()
        r.run(1.0, step=0.01)
        assert r.role == HOLDER
        assert r.transitions[-1].at - silent_from >= TIMEOUT
        assert r.election.takeovers == cycle + 1
    r.hear(B, priority=200, holding=True)
    assert r.role == STANDBY


def test_flapping_worse_peer_never_dislodges_the_holder():
    """A worse peer that keeps claiming the address never makes the holder step down."""
    clock = Clock()
    r = Recorder(clock, priority=200)
    r.election.start()
    r.run(TIMEOUT)
    assert r.role == HOLDER
    for _ in range(5):
        r.run(0.3, step=0.1, each=lambda t: r.hear(B, priority=100, holding=True))
        r.run(1.0, step=0.1)
    assert r.role == HOLDER
    assert r.election.takeovers == 1
    assert len(r.contentions) == 5


def test_stale_and_repeated_heartbeats_are_ignored():
    """A heartbeat older than one already heard says nothing; a new incarnation does."""
    clock = Clock()
    r = Recorder(clock)
    r.election.start()
    assert r.election.heard(beat(B, priority=150, holding=True, seq=10))
    assert not r.election.heard(beat(B, priority=150, holding=False, seq=10))
    assert not r.election.heard(beat(B, priority=150, holding=False, seq=9))
    assert r.election.holder == B
    assert r.election.heard(beat(B, priority=150, holding=False, seq=1, incarnation=8))
    assert r.election.holder is None
    assert r.election.heard(beat(B, priority=150, seq=2**32 - 1, incarnation=9))
    assert r.election.heard(beat(B, priority=150, seq=0, incarnation=9))  # wrapped
    assert not r.election.heard(beat(A, priority=150, seq=100))  # our own
    assert r.election.ignored == 3


def test_take_failed_holds_off_and_lets_others_take_it():
    clock = Clock()
    r = Recorder(clock)
    r.election.start()
    r.run(TIMEOUT)
    assert r.role == HOLDER
    r.election.take_failed("ip: Operation not permitted")
    assert r.role == STANDBY
    assert "Operation not permitted" in r.transitions[-1].reason
    r.run(r.election.hold_off - 0.05)
    assert r.role == STANDBY
    r.run(0.1)
    assert r.role == HOLDER


# -- the datagram -------------------------------------------------------------


def test_heartbeat_round_trip_and_layout():
    hb = Heartbeat(A, VIP, 200, holding=True, incarnation=0xDEADBEEF, seq=5)
    data = hb.encode()
    assert len(data) == 24
    assert data[:4] == b"IGFI" and data[4] == 1 and data[5] == 1 and data[6] == 200
    assert data[8:12] == A.packed and data[12:16] == VIP.packed
    assert Heartbeat.decode(data) == hb
    assert Heartbeat.decode(data + b"future fields") == hb
    leaving = Heartbeat(A, VIP, 1, leaving=True).encode()
    assert Heartbeat.decode(leaving).leaving


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"IGFI",
        b"XXXX" + bytes(20),
        b"IGFI\x02" + bytes(19),
        bytes(24),
        b"GET / HTTP/1.1\r\n\r\n" * 3,
    ],
)
def test_malformed_or_foreign_datagrams_decode_to_nothing(data):
    assert Heartbeat.decode(data) is None


# -- the service on fakes -----------------------------------------------------


class Node:
    """One gateway on the fake segment: its service, addresses and ARP."""

    def __init__(self, clock, network, address, priority, preempt=True, extra=()):
        self.clock = clock
        self.addresses = FakeAddresses()
        self.announcer = FakeAnnouncer(clock)
        config = FloatingIPConfig(
            enabled=True,
            priority=priority,
            preempt=preempt,
            heartbeat_interval=INTERVAL,
        )
        self.service = FloatingIPService(
            config,
            clock,
            addresses=self.addresses,
            announcer=self.announcer,
            link=network.link,
            interfaces=fake_interfaces(address=f"{address}/24", extra=extra),
        )
        self.node = address

    @property
    def holds(self):
        return ("eth0", f"{VIP}/24") in self.addresses.addresses

    @property
    def role(self):
        return self.service.election.role


class Segment:
    """Gateways on a fake segment, a clock, and how long two held the address at once."""

    def __init__(self):
        self.clock = Clock()
        self.network = FakeNetwork(self.clock)
        self.nodes = {}
        self.overlap = 0.0
        self.longest_overlap = 0.0

    def add(self, address, priority, **kwargs):
        node = Node(self.clock, self.network, address, priority, **kwargs)
        self.nodes[address] = node
        return node

    def run(self, seconds, step=0.001):
        for _ in range(int(round(seconds / step))):
            self.clock.advance(step)
            if sum(node.holds for node in self.nodes.values()) > 1:
                self.overlap += step
                self.longest_overlap = max(self.longest_overlap, self.overlap)
            else:
                self.overlap = 0.0

    def until(self, predicate, limit=5.0, step=0.001):
        """Seconds until C{predicate()} holds (advancing the clock), or fail."""
        began = self.clock.seconds()
        for _ in range(int(limit / step)):
            if predicate():
                return self.clock.seconds() - began
            self.run(step, step)
        raise AssertionError(f"not within {limit}s")

    def crash(self, node):
        """kill -9: silent at once, its timers gone, its address left behind."""
        self.network.cut.add(node.node)
        for timer in list(node.service):
            timer._loop.stop()


def test_service_elects_takes_address_and_announces():
    """The better gateway adds the address and sends gratuitous ARP at 0, 200 ms and 1 s."""
    s = Segment()
    a = s.add("10.213.0.11", 200)
    b = s.add("10.213.0.12", 100)
    a.service.startService()
    b.service.startService()
    took = s.until(lambda: a.holds)
    assert TIMEOUT <= took <= TIMEOUT + 0.1
    s.run(2.0)
    assert a.holds and not b.holds
    assert a.role == HOLDER and b.role == STANDBY
    times = [t - a.announcer.sent[0][0] for t, _ in a.announcer.sent]
    assert times == pytest.approx([0.0, 0.2, 1.0], abs=0.002)
    assert {ip for _, ip in a.announcer.sent} == {str(VIP)}
    assert b.announcer.sent == []
    state = b.service.state()
    assert state["role"] == STANDBY and state["holder"] == "10.213.0.11"
    assert state["peers"][0]["node"] == "10.213.0.11" and state["peers"][0]["holding"]
    assert state["peers"][0]["age"] < INTERVAL + 0.01
    assert a.service.state()["takeovers"] == 1
    assert a.service.state()["holding_address"] is True


def test_service_holder_crash_fails_over_within_a_second():
    s = Segment()
    a = s.add("10.213.0.11", 200)
    b = s.add("10.213.0.12", 100)
    a.service.startService()
    b.service.startService()
    s.run(2.0)
    s.crash(a)
    took = s.until(lambda: b.holds and b.announcer.sent)
    # counted from the crash: the last heartbeat came up to one interval before
    assert TIMEOUT - INTERVAL <= took < TIMEOUT + 0.1 < 1.0


def test_service_graceful_stop_fails_over_at_once_and_releases():
    """
    A stopping holder tells the others, keeps the address until one has
    taken it, then removes it: the standby holds it within milliseconds.
    """
    s = Segment()
    a = s.add("10.213.0.11", 200)
    b = s.add("10.213.0.12", 100)
    a.service.startService()
    b.service.startService()
    s.run(2.0)
    stopped = a.service.stopService()
    took = s.until(lambda: b.holds and not a.holds)
    assert took < 0.02
    assert stopped.called
    assert s.longest_overlap < 0.01
    assert ("remove", f"{VIP}/24", "eth0") in a.addresses.calls
    assert a.role == STOPPED


def test_service_graceful_stop_alone_releases_at_once():
    s = Segment()
    a = s.add("10.213.0.11", 200)
    a.service.startService()
    s.run(1.0)
    assert a.holds
    stopped = a.service.stopService()
    assert stopped.called and not a.holds


def test_service_restart_after_crash_removes_leftover_and_preempts():
    """
    The old holder, killed with its address left on the interface, comes
    back: it removes the leftover at once, preempts once settled, and the two
    never hold the address together for longer than one heartbeat timeout.
    """
    s = Segment()
    a = s.add("10.213.0.11", 200)
    b = s.add("10.213.0.12", 100)
    a.service.startService()
    b.service.startService()
    s.run(2.0)
    s.crash(a)
    s.run(2.0)
    assert b.holds and a.holds  # the leftover
    s.network.cut.clear()
    s.network.links.pop("10.213.0.11", None)
    a2 = s.add("10.213.0.11", 200, extra=[f"{VIP}/24"])
    a2.addresses.addresses = set(a.addresses.addresses)
    s.overlap = s.longest_overlap = 0.0
    a2.service.startService()
    assert not a2.holds  # removed at start
    assert a2.addresses.calls[0] == ("remove", f"{VIP}/24", "eth0")
    s.until(lambda: a2.holds and not b.holds, limit=3.0)
    s.run(1.0)
    assert a2.role == HOLDER and b.role == STANDBY
    assert s.longest_overlap <= TIMEOUT
    assert s.longest_overlap < 0.01


def test_service_never_removes_an_address_it_did_not_add():
    s = Segment()
    a = s.add("10.213.0.11", 200)
    a.service.startService()
    s.run(0.1)
    a.addresses.addresses.add(("eth0", f"{VIP}/24"))  # appeared meanwhile
    s.run(1.0)
    assert a.role == HOLDER
    a.service.stopService()
    s.run(0.1)
    assert a.holds
    assert ("remove", f"{VIP}/24", "eth0") not in a.addresses.calls


def test_service_add_failure_lets_the_other_take_it():
    s = Segment()
    a = s.add("10.213.0.11", 200)
    b = s.add("10.213.0.12", 100)
    a.addresses.fail_add = AddressError(
        "ip: RTNETLINK answers: Operation not permitted"
    )
    a.service.startService()
    b.service.startService()
    s.run(3.0)
    assert b.holds and not a.holds
    assert b.role == HOLDER
    assert any("could not take" in t.reason for t in a.service.transitions)


def test_service_timed_calls_survive_exceptions():
    """An exception in a timed call is logged; heartbeats and watching go on."""
    s = Segment()
    a = s.add("10.213.0.11", 200)
    b = s.add("10.213.0.12", 100)
    a.service.startService()
    b.service.startService()
    s.run(1.0)
    broken = {"n": 0}
    check = b.service.election.check

    def failing():
        broken["n"] += 1
        if broken["n"] <= 3:
            raise RuntimeError("boom")
        check()

    b.service.election.check = failing
    s.run(1.0)
    assert broken["n"] > 3
    assert all(timer._loop.running for timer in b.service)
    s.crash(a)
    s.until(lambda: b.holds)


def test_service_ignores_foreign_datagrams():
    s = Segment()
    a = s.add("10.213.0.11", 200)
    a.service.startService()
    other_vip = Heartbeat(
        B, ipaddress.IPv4Address("10.213.0.99"), 255, holding=True, seq=1
    )
    a.service._received(other_vip.encode())
    a.service._received(b"garbage")
    s.run(1.0)
    assert a.role == HOLDER
    assert a.service.state()["ignored_datagrams"] == 2


# -- the plan, capabilities, the configuration ---------------------------------


def test_plan_defaults_from_the_first_non_loopback_interface():
    plan = resolve_plan(FloatingIPConfig(enabled=True), fake_interfaces()())
    assert plan.interface == "eth0"
    assert str(plan.address) == "10.213.0.234/24"
    assert str(plan.node) == "10.213.0.11"
    assert str(plan.group) == "224.0.0.234" and plan.peers == ()
    assert plan.timeout == pytest.approx(0.6)


def test_plan_explicit_values_and_peers_without_self():
    config = FloatingIPConfig(
        enabled=True,
        ip="10.213.0.200",
        netmask="255.255.0.0",
        interface="eth0",
        peers=("10.213.0.11", "10.213.0.12"),
    )
    plan = resolve_plan(config, fake_interfaces()())
    assert str(plan.address) == "10.213.0.200/16"
    assert [str(p) for p in plan.peers] == ["10.213.0.12"]
    assert plan.group is None
    assert "peers 10.213.0.12" in "\n".join(plan.describe())


def test_plan_refuses_a_primary_address_and_unknown_interfaces():
    with pytest.raises(FloatingIPError, match="primary address of eth0"):
        resolve_plan(
            FloatingIPConfig(enabled=True, ip="10.213.0.11"), fake_interfaces()()
        )
    with pytest.raises(FloatingIPError, match="no interface 'wlan9'"):
        resolve_plan(
            FloatingIPConfig(enabled=True, interface="wlan9"), fake_interfaces()()
        )
    with pytest.raises(FloatingIPError, match="outside"):
        resolve_plan(
            FloatingIPConfig(enabled=True), fake_interfaces(address="10.0.0.1/29")()
        )
    lo_only = fake_interfaces()()[:1]
    with pytest.raises(FloatingIPError, match="no interface with a non-loopback"):
        resolve_plan(FloatingIPConfig(enabled=True), lo_only)


def test_plan_finds_a_leftover_on_its_interface():
    interfaces = fake_interfaces(extra=["10.213.0.234/24"])()
    plan = resolve_plan(FloatingIPConfig(enabled=True), interfaces)
    assert str(plan.leftover) == "10.213.0.234/24"
    assert "removed at start" in plan.describe()[-1]


def test_parse_ip_json_knows_secondary_addresses():
    text = (
        '[{"ifindex":1,"ifname":"lo","flags":["LOOPBACK","UP"],"addr_info":'
        '[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},'
        '{"ifindex":2,"ifname":"eth0","flags":["UP"],"addr_info":'
        '[{"family":"inet","local":"10.213.0.234","prefixlen":24,"secondary":true},'
        '{"family":"inet","local":"10.213.0.11","prefixlen":24}]}]'
    )
    lo, eth0 = _parse_ip_json(text)
    assert lo.loopback and not eth0.loopback
    assert str(eth0.primary) == "10.213.0.11/24"
    assert not eth0.has(VIP).primary


def test_missing_capabilities_from_capeff():
    both = 1 << CAP_NET_ADMIN | 1 << CAP_NET_RAW
    assert missing_capabilities(both) == []
    assert missing_capabilities(1 << CAP_NET_ADMIN) == ["CAP_NET_RAW"]
    assert missing_capabilities(0) == ["CAP_NET_ADMIN", "CAP_NET_RAW"]
    message = capability_problem(["CAP_NET_ADMIN", "CAP_NET_RAW"])
    assert "CAP_NET_ADMIN and CAP_NET_RAW" in message and "root" in message
    assert capability_problem([]) is None


def test_check_config_prints_the_plan_or_the_problem():
    config = config_from_dict({"floating_ip": {"enabled": True, "priority": 150}})
    lines, problems = check_config(config, fake_interfaces()(), missing=[])
    assert problems == []
    assert lines[0].startswith("floating IP 10.213.0.234/24 on eth0")
    assert "priority 150" in lines[0]
    lines, problems = check_config(config, fake_interfaces()(), missing=["CAP_NET_RAW"])
    assert "lacks CAP_NET_RAW" in problems[0]
    assert check_config(config_from_dict({}), [], missing=["X"]) == ([], [])


def test_service_refuses_to_start_without_capabilities(monkeypatch):
    import infini_gateway.floating_ip as module

    monkeypatch.setattr(module, "missing_capabilities", lambda: ["CAP_NET_ADMIN"])
    service = FloatingIPService(FloatingIPConfig(enabled=True), Clock())
    with pytest.raises(FloatingIPError, match="lacks CAP_NET_ADMIN"):
        service.prepare()


def test_arp_frames():
    mac = bytes.fromhex("021300000011")
    request, reply = arp_frames(mac, VIP)
    assert len(request) == len(reply) == 42
    assert (
        request[:6] == b"\xff" * 6
        and request[6:12] == mac
        and request[12:14] == b"\x08\x06"
    )
    assert request[20:22] == b"\x00\x01" and reply[20:22] == b"\x00\x02"
    # sender and target protocol addresses are both the floating IP
    assert request[28:32] == VIP.packed and request[38:42] == VIP.packed
    assert request[22:28] == mac and request[32:38] == bytes(6)
    assert reply[32:38] == b"\xff" * 6


def test_address_commands():
    calls = []

    def runner(reactor, argv):
        from twisted.internet import defer

        calls.append(argv)
        return defer.succeed(("", "Error: ipv4: Address already assigned.", 2))

    address = ipaddress.IPv4Interface("10.213.0.234/24")
    ip = IPRouteAddresses(None, "/sbin/ip", runner)
    result = []
    ip.add(address, "eth0").addCallback(result.append)
    assert result == [False]
    assert calls[-1] == [
        "/sbin/ip",
        "-4",
        "addr",
        "add",
        "10.213.0.234/24",
        "dev",
        "eth0",
    ]
    ifconfig = IfconfigAddresses(None, "/sbin/ifconfig", runner)
    assert ifconfig._argv("add", address, "eth0") == [
        "/sbin/ifconfig",
        "eth0:234",
        "10.213.0.234",
        "netmask",
        "255.255.255.0",
        "up",
    ]
    assert ifconfig._argv("del", address, "eth0") == [
        "/sbin/ifconfig",
        "eth0:234",
        "down",
    ]


def test_config_defaults_and_keys():
    config = config_from_dict({})
    assert config.floating_ip.enabled is False
    config = config_from_dict(
        {
            "floating_ip": {
                "enabled": True,
                "ip": "192.168.3.234",
                "netmask": "255.255.255.0",
                "interface": "en1",
                "priority": 7,
                "peers": "192.168.3.2",
                "heartbeat": {"interval": "100ms", "timeout": "1s"},
                "port": 7000,
                "preempt": False,
            }
        }
    )
    f = config.floating_ip
    assert (f.ip, f.netmask, f.interface, f.priority, f.peers) == (
        "192.168.3.234",
        "255.255.255.0",
        "en1",
        7,
        ("192.168.3.2",),
    )
    assert (f.heartbeat_interval, f.heartbeat_timeout, f.port, f.preempt) == (
        0.1,
        1.0,
        7000,
        False,
    )
    assert (
        config_from_dict(
            {"floating_ip": {"heartbeat": {"interval": "1s"}}}
        ).floating_ip.heartbeat_timeout
        == 3.0
    )


def test_config_errors_name_file_line_and_key(tmp_path):
    path = tmp_path / "gateway.yml"
    path.write_text(textwrap.dedent("""\
            floating_ip:
              enabled: true
              ip: 10.0.0.300
              netmask: 255.0.255.0
              priority: 0
              peers: [10.0.0.2, 10.0.0.2, 224.0.0.1]
              heartbeat:
                interval: 1s
                timeout: 500ms
              colour: blue
            """))
    with pytest.raises(ConfigError) as raised:
        load_config(str(path))
    text = str(raised.value)
    source = str(path)
    assert f"{source}:3: floating_ip.ip: expected an IPv4 address" in text
    assert f"{source}:4: floating_ip.netmask: expected a netmask" in text
    assert f"{source}:5: floating_ip.priority:" in text
    assert f"{source}:6: floating_ip.peers[1]: expected each peer once" in text
    assert f"{source}:6: floating_ip.peers[2]: expected a unicast IPv4 address" in text
    assert (
        f"{source}:9: floating_ip.heartbeat.timeout: expected a timeout longer" in text
    )
    assert f"{source}:10: floating_ip" in text and "colour" in text


def test_config_ip_may_not_be_the_network_address():
    with pytest.raises(ConfigError, match="network address"):
        config_from_dict(
            {"floating_ip": {"ip": "10.0.0.0", "netmask": "255.255.255.0"}}
        )


def test_stop_is_bounded_when_the_address_cannot_be_removed():
    """A removal that keeps failing is retried, but the stop ends all the same."""
    s = Segment()
    a = s.add("10.213.0.11", 200)
    a.service.startService()
    s.run(1.0)
    assert a.holds
    a.addresses.fail_remove = AddressError("ip: Operation not permitted")
    stopped = a.service.stopService()
    s.run(5.0, step=0.01)
    assert not stopped.called
    s.run(2.0, step=0.01)
    assert stopped.called
    removes = [call for call in a.addresses.calls if call[0] == "remove"]
    assert len(removes) >= 2


def test_gateway_service_adds_the_floating_ip_only_when_enabled():
    """Building the tree touches nothing on the host; state() is there for the admin API."""
    from infini_gateway.service import GatewayService

    assert GatewayService(config_from_dict({}), Clock()).floating_ip is None
    gateway = GatewayService(
        config_from_dict({"floating_ip": {"enabled": True}}), Clock()
    )
    assert isinstance(gateway.floating_ip, FloatingIPService)
    assert gateway.floating_ip.parent is gateway
    assert gateway.floating_ip.plan is None
    assert gateway.floating_ip.state() == {"enabled": True, "role": STOPPED}


def test_twistd_refuses_to_start_without_capabilities(tmp_path, monkeypatch, capsys):
    """Without the capabilities, twistd's options end the process with exit status 1."""
    import infini_gateway.floating_ip as module
    from infini_gateway.tap import Options

    monkeypatch.setattr(
        module, "missing_capabilities", lambda: ["CAP_NET_ADMIN", "CAP_NET_RAW"]
    )
    path = tmp_path / "gateway.yml"
    path.write_text("floating_ip:\n  enabled: true\n")
    with pytest.raises(SystemExit) as raised:
        Options().parseOptions(["--config", str(path)])
    assert raised.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("infini-gateway: floating_ip is enabled, but this process lacks")
    with pytest.raises(SystemExit) as raised:
        Options().parseOptions(["--config", str(path), "--check"])
    assert raised.value.code == 1
    assert "lacks CAP_NET_ADMIN and CAP_NET_RAW" in capsys.readouterr().err
