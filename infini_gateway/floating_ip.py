"""
Floating IP: gateways in hot standby share one IPv4 address.

Every gateway of a group sends a small heartbeat datagram each
C{heartbeat.interval} (to its C{peers}, else to a link-local multicast
group) and watches the others'.  L{Election}, a pure state machine driven by
those heartbeats and a clock, decides who holds the address: the highest
priority alive, ties going to the lower node address.  L{FloatingIPService}
carries the decisions out: it adds the address to the interface, announces
it at once by gratuitous ARP (Linux sends none, and clients would keep the
old holder's MAC for most of a minute), and on stepping down or stopping
removes it again and tells the others, so that a graceful stop fails over
at once and a crash within C{heartbeat.timeout}.

The heartbeat datagram (version 1, 24 bytes, network byte order)::

    magic "IGFI" | version 1 | flags | priority | 0 |
    node IPv4 (4) | floating IP (4) | incarnation (4) | sequence (4)

C{flags}: 1 = holding the address, 2 = leaving (a graceful stop).  The
incarnation is random at each start, so a restarted peer's sequence starts
afresh.  Datagrams with another magic, version or floating IP, shorter ones,
and stale or repeated sequence numbers are ignored (and counted).
"""

import collections
import ipaddress
import os
import random
import struct
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple

import attrs
from twisted.application.internet import TimerService
from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from infini_gateway._netif import (
    COMMAND_TIMEOUT,
    AddressError,
    GratuitousARP,
    Interface,
    address_manager,
    list_interfaces,
    missing_capabilities,
)
from infini_gateway.config.model import FloatingIPConfig, GatewayConfig

log = Logger()

IPv4 = ipaddress.IPv4Address

#: Link-local (never routed, always flooded by switches), so no IGMP querier
#: is needed for the group to keep working.
DEFAULT_GROUP = "224.0.0.234"

#: Gratuitous ARP after taking the address: at once, then again at these
#: delays, for a client that missed the first.
ANNOUNCE_AT = (0.0, 0.2, 1.0)

HOLDER = "holder"
STANDBY = "standby"
STOPPED = "stopped"

MAGIC = b"IGFI"
VERSION = 1
HOLDING = 0x01
LEAVING = 0x02
_DATAGRAM = struct.Struct("!4sBBBB4s4sII")


class FloatingIPError(Exception):
    """The floating IP cannot be used here; the message says why and what to do."""


# -- the heartbeat datagram -------------------------------------------------


@attrs.frozen
class Heartbeat:
    """One heartbeat: who sends it, for which address, and whether it holds it."""

    node: IPv4
    vip: IPv4
    priority: int
    holding: bool = False
    leaving: bool = False
    incarnation: int = 0
    seq: int = 0

    def encode(self) -> bytes:
        flags = (HOLDING if self.holding else 0) | (LEAVING if self.leaving else 0)
        return _DATAGRAM.pack(
            MAGIC,
            VERSION,
            flags,
            self.priority,
            0,
            self.node.packed,
            self.vip.packed,
            self.incarnation & 0xFFFFFFFF,
            self.seq & 0xFFFFFFFF,
        )

    @classmethod
    def decode(cls, data: bytes) -> Optional["Heartbeat"]:
        """The heartbeat in C{data}, or None for anything else."""
        if len(data) < _DATAGRAM.size or data[:4] != MAGIC:
            return None
        magic, version, flags, priority, _, node, vip, incarnation, seq = (
            _DATAGRAM.unpack_from(data)
        )
        # A later version may append fields; one of another number is not ours.
        if version != VERSION:
            return None
        return cls(
            node=IPv4(node),
            vip=IPv4(vip),
            priority=priority,
            holding=bool(flags & HOLDING),
            leaving=bool(flags & LEAVING),
            incarnation=incarnation,
            seq=seq,
        )


def _newer(seq: int, than: int) -> bool:
    """Serial number order (RFC 1982), so that the sequence may wrap."""
    return 0 < (seq - than) % 2**32 < 2**31


# -- the election -----------------------------------------------------------


@attrs.define
class Peer:
    """What the last heartbeat from another gateway said, and when it came."""

    node: IPv4
    priority: int
    holding: bool
    incarnation: int
    seq: int
    last_heartbeat: float
    left: bool = False


@attrs.frozen
class Transition:
    """A change of role, when and why."""

    at: float
    old: str
    new: str
    reason: str


def _rank(priority: int, node: IPv4) -> Tuple[int, int]:
    # Higher is better: priority first, then the lower address.
    return (priority, -int(node))


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


class Election:
    """
    Who should hold the address, decided from heartbeats and a clock; no
    I/O.  Feed it events (L{start}, L{heard}, L{check}, L{take_failed},
    L{stop}); it calls C{on_transition(transition)} at each change of
    L{role}, and C{on_contention(peer)} when it holds the address and hears
    a worse peer claim it too (that peer steps down; clients it reached
    need to be told again).

    Rules: the highest priority alive holds the address, ties going to the
    lower node address.  A standby that hears no holder for C{timeout} takes
    over (deferring for one more C{timeout} to a better standby it hears);
    one whose holder says it is leaving does not wait.  Of two holders the
    worse steps down as soon as it hears the better.  With C{preempt}, a
    standby better than every gateway it hears takes over from a worse
    holder, once it has listened for C{timeout} since starting.

    @ivar peers: what each other gateway said last, by node address.
    @ivar takeovers: how many times this gateway became the holder.
    """

    def __init__(
        self,
        node: IPv4,
        priority: int,
        timeout: float,
        clock: Any,
        preempt: bool = True,
        hold_off: Optional[float] = None,
    ) -> None:
        self.node = IPv4(node)
        self.priority = priority
        self.timeout = timeout
        self.preempt = preempt
        self.hold_off = hold_off if hold_off is not None else 5 * timeout
        self.clock = clock
        self.role = STOPPED
        self.since = clock.seconds()
        self.peers: Dict[IPv4, Peer] = {}
        self.takeovers = 0
        self.ignored = 0
        self.on_transition: Callable[[Transition], None] = lambda transition: None
        self.on_contention: Callable[[Peer], None] = lambda peer: None
        self._started = self.since
        self._holder_seen = self.since
        self._last_holder: Optional[IPv4] = None
        self._vacated = False
        self._hold_off_until = 0.0
        self._contending: set = set()

    # The events.

    def start(self) -> None:
        """Begin as a standby, listening."""
        now = self.clock.seconds()
        self._started = self._holder_seen = now
        self._vacated = False
        self._move(STANDBY, "started; listening for a holder")

    def stop(self) -> None:
        """Stop taking part (the caller releases the address)."""
        self._move(STOPPED, "stopping")

    def heard(self, heartbeat: Heartbeat) -> bool:
        """
        A heartbeat arrived (for our address: the caller has checked).
        Returns False when it was ignored (our own, or stale).
        """
        now = self.clock.seconds()
        if heartbeat.node == self.node:
            self.ignored += 1
            return False
        peer = self.peers.get(heartbeat.node)
        if (
            peer is not None
            and peer.incarnation == heartbeat.incarnation
            and not _newer(heartbeat.seq, peer.seq)
        ):
            self.ignored += 1
            return False
        if peer is None:
            peer = self.peers[heartbeat.node] = Peer(
                node=heartbeat.node,
                priority=heartbeat.priority,
                holding=False,
                incarnation=heartbeat.incarnation,
                seq=heartbeat.seq,
                last_heartbeat=now,
            )
        was_holding = peer.holding and self._alive(peer, now)
        peer.priority = heartbeat.priority
        peer.incarnation = heartbeat.incarnation
        peer.seq = heartbeat.seq
        peer.last_heartbeat = now
        peer.left = heartbeat.leaving
        peer.holding = heartbeat.holding and not heartbeat.leaving
        if peer.holding:
            self._holder_seen = now
            self._last_holder = peer.node
            self._vacated = False
        elif heartbeat.leaving and (was_holding or heartbeat.holding):
            self._holder_seen = now
            self._last_holder = peer.node
            self._vacated = True
        if not peer.holding:
            self._contending.discard(peer.node)
        self._decide(now)
        return True

    def check(self) -> None:
        """Time passed: a holder may have gone silent."""
        self._decide(self.clock.seconds())

    def take_failed(self, reason: str) -> None:
        """The address could not be taken: stand by, and let others try first."""
        if self.role != HOLDER:
            return
        now = self.clock.seconds()
        self._hold_off_until = now + self.hold_off
        self._holder_seen = now
        self._move(STANDBY, f"could not take the address: {reason}")

    # What it knows.

    def alive(self) -> List[Peer]:
        """The peers heard within C{timeout} that have not left."""
        now = self.clock.seconds()
        return [peer for peer in self.peers.values() if self._alive(peer, now)]

    @property
    def holder(self) -> Optional[IPv4]:
        """Who holds the address, as far as this gateway knows."""
        if self.role == HOLDER:
            return self.node
        holders = [peer for peer in self.alive() if peer.holding]
        if not holders:
            return None
        return max(holders, key=lambda p: _rank(p.priority, p.node)).node

    # The rules.

    def _alive(self, peer: Peer, now: float) -> bool:
        return not peer.left and now - peer.last_heartbeat < self.timeout

    def _beats_me(self, peer: Peer) -> bool:
        return _rank(peer.priority, peer.node) > _rank(self.priority, self.node)

    def _move(self, role: str, reason: str) -> None:
        if role == self.role:
            return
        transition = Transition(self.clock.seconds(), self.role, role, reason)
        self.role = role
        self.since = transition.at
        if role == HOLDER:
            self.takeovers += 1
        self._contending.clear()
        self.on_transition(transition)

    def _decide(self, now: float) -> None:
        if self.role == STOPPED:
            return
        for node in [n for n, p in self.peers.items() if now - p.last_heartbeat > 3600]:
            del self.peers[node]
        alive = [peer for peer in self.peers.values() if self._alive(peer, now)]
        holders = [peer for peer in alive if peer.holding]
        if self.role == HOLDER:
            self._decide_as_holder(now, holders)
        else:
            self._decide_as_standby(now, alive, holders)

    def _decide_as_holder(self, now: float, holders: List[Peer]) -> None:
        better = [peer for peer in holders if self._beats_me(peer)]
        if better:
            best = max(better, key=lambda p: _rank(p.priority, p.node))
            self._holder_seen = now
            self._move(
                STANDBY,
                f"{best.node} (priority {best.priority}) holds it too and wins"
                f" over {self.node} (priority {self.priority})",
            )
            return
        # A claimant gone silent and back is a new episode: announce again.
        self._contending &= {peer.node for peer in holders}
        for peer in holders:
            if peer.node not in self._contending:
                self._contending.add(peer.node)
                self.on_contention(peer)

    def _decide_as_standby(
        self, now: float, alive: List[Peer], holders: List[Peer]
    ) -> None:
        if now < self._hold_off_until:
            return
        if holders:
            best = max(holders, key=lambda p: _rank(p.priority, p.node))
            if (
                self.preempt
                and now - self._started >= self.timeout
                and not any(self._beats_me(peer) for peer in alive)
            ):
                self._move(
                    HOLDER,
                    f"preempting {best.node} (priority {best.priority};"
                    f" this gateway's is {self.priority})",
                )
            return
        quiet = now - self._holder_seen
        if not self._vacated and quiet < self.timeout:
            return
        if quiet < 2 * self.timeout and any(self._beats_me(peer) for peer in alive):
            return  # a better standby is about to take it
        if self._vacated:
            reason = f"holder {self._last_holder} released the address"
        elif self._last_holder is not None:
            reason = f"no heartbeat from holder {self._last_holder} for {_ms(quiet)}"
        else:
            reason = f"no holder heard for {_ms(quiet)} since starting"
        self._vacated = False
        self._move(HOLDER, reason)


# -- the plan: the configuration resolved against this host ------------------


@attrs.frozen
class FloatingIPPlan:
    """
    The floating IP as this host will run it: every default resolved.

    @ivar address: the floating IP with its prefix (from C{netmask}).
    @ivar node: this gateway's own address on C{interface}: its identity in
        heartbeats, and the tie-breaker.
    @ivar leftover: the floating IP already on C{interface} (not as its
        primary address) at start: left by an earlier run that could not
        stop (kill -9), and removed at start.
    """

    interface: str
    address: ipaddress.IPv4Interface
    node: IPv4
    priority: int
    peers: Tuple[IPv4, ...]
    group: Optional[IPv4]
    port: int
    interval: float
    timeout: float
    preempt: bool
    leftover: Optional[ipaddress.IPv4Interface] = None

    @property
    def ip(self) -> IPv4:
        return self.address.ip

    def describe(self) -> List[str]:
        """The plan in words, as C{--check} prints it."""
        if self.peers:
            to = "peers " + ", ".join(str(peer) for peer in self.peers)
        else:
            to = f"multicast group {self.group}"
        lines = [
            f"floating IP {self.address.with_prefixlen} on {self.interface}"
            f" (this gateway: {self.node}, priority {self.priority},"
            f" preempt {'on' if self.preempt else 'off'})",
            f"floating IP heartbeats every {_ms(self.interval)} to {to}, UDP port"
            f" {self.port}; a holder silent for {_ms(self.timeout)} is replaced",
        ]
        if self.leftover is not None:
            lines.append(
                f"floating IP {self.leftover.with_prefixlen} is on {self.interface}"
                " already (left by an earlier run?): it will be removed at start"
            )
        return lines


def _default_interface(interfaces: Sequence[Interface]) -> Interface:
    for interface in interfaces:
        primary = interface.primary
        if (
            primary is not None
            and not interface.loopback
            and not primary.ip.is_loopback
        ):
            return interface
    raise FloatingIPError(
        "floating_ip: no interface with a non-loopback IPv4 address was found;"
        " set floating_ip.interface"
    )


def resolve_plan(
    config: FloatingIPConfig, interfaces: Optional[Sequence[Interface]] = None
) -> FloatingIPPlan:
    """
    Resolve C{config}'s defaults against this host's interfaces: the
    interface, the address and its netmask, and this gateway's node address.

    @raise FloatingIPError: when they cannot be resolved, or the floating IP
        is some interface's primary address (it is never taken or removed).
    """
    if interfaces is None:
        try:
            interfaces = list_interfaces()
        except OSError as e:
            raise FloatingIPError(
                f"floating_ip: cannot list the interfaces: {e}"
            ) from None
    if config.interface is not None:
        named = [i for i in interfaces if i.name == config.interface]
        if not named:
            known = ", ".join(i.name for i in interfaces) or "none"
            raise FloatingIPError(
                f"floating_ip.interface: no interface {config.interface!r} here"
                f" (interfaces: {known})"
            )
        interface = named[0]
    else:
        interface = _default_interface(interfaces)
    own = interface.primary
    if own is None:
        raise FloatingIPError(
            f"floating_ip: interface {interface.name} has no IPv4 address"
            " (this gateway's own address identifies it to its peers)"
        )
    if config.netmask is not None:
        prefix = ipaddress.IPv4Network(f"0.0.0.0/{config.netmask}").prefixlen
    else:
        prefix = own.network.prefixlen if own.network.prefixlen < 32 else 24
    if config.ip is not None:
        ip = IPv4(config.ip)
    else:
        ip = IPv4((int(own.ip) & ~0xFF) | 234)
        if ip not in ipaddress.IPv4Network(f"{own.ip}/{prefix}", strict=False):
            raise FloatingIPError(
                f"floating_ip: the default address {ip} (.234) is outside"
                f" {interface.name}'s subnet {own.ip}/{prefix}; set floating_ip.ip"
            )
    address = ipaddress.IPv4Interface(f"{ip}/{prefix}")
    leftover = None
    for other in interfaces:
        found = other.has(ip)
        if found is None:
            continue
        if found.primary:
            raise FloatingIPError(
                f"floating_ip.ip: {ip} is the primary address of {other.name}:"
                " a floating IP must be an address no interface owns"
            )
        if other.name != interface.name:
            raise FloatingIPError(
                f"floating_ip.ip: {ip} is already on {other.name}, not on"
                f" {interface.name}; remove it there or choose another address"
            )
        leftover = found.address
    peers = tuple(
        dict.fromkeys(IPv4(peer) for peer in config.peers if IPv4(peer) != own.ip)
    )
    return FloatingIPPlan(
        interface=interface.name,
        address=address,
        node=own.ip,
        priority=config.priority,
        peers=peers,
        group=None if config.peers else IPv4(DEFAULT_GROUP),
        port=config.port,
        interval=config.heartbeat_interval,
        timeout=config.heartbeat_timeout,
        preempt=config.preempt,
        leftover=leftover,
    )


def capability_problem(missing: Optional[List[str]] = None) -> Optional[str]:
    """Why this process cannot run a floating IP, or None when it can."""
    if missing is None:
        missing = missing_capabilities()
    if not missing:
        return None
    if os.geteuid() == 0:
        who = "root, but a container or capability bounding set removed them"
        fix = "grant both capabilities"
    else:
        who = f"uid {os.geteuid()}"
        fix = "run the gateway as root (or grant both capabilities)"
    return (
        f"floating_ip is enabled, but this process lacks {' and '.join(missing)}"
        f" ({who}): adding the address needs CAP_NET_ADMIN and announcing it by"
        f" gratuitous ARP needs CAP_NET_RAW; {fix}, or set floating_ip.enabled: false"
    )


def check_config(
    config: GatewayConfig,
    interfaces: Optional[Sequence[Interface]] = None,
    missing: Optional[List[str]] = None,
) -> Tuple[List[str], List[str]]:
    """
    For C{--check}: the floating IP plan in words, and the problems that
    would stop the gateway (missing capabilities, unresolvable defaults).
    """
    if not config.floating_ip.enabled:
        return [], []
    problems = []
    problem = capability_problem(missing)
    if problem is not None:
        problems.append(f"{config.source}: {problem}")
    try:
        plan = resolve_plan(config.floating_ip, interfaces)
    except FloatingIPError as e:
        problems.append(f"{config.source}: {e}")
        return [], problems
    return plan.describe(), problems


# -- heartbeats over UDP ----------------------------------------------------


class _HeartbeatProtocol(DatagramProtocol):
    def __init__(self, receive: Callable[[bytes, Any], None]) -> None:
        self.receive = receive

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        self.receive(data, addr)


class UDPHeartbeatLink:
    """
    Heartbeats over UDP: to each peer, or to the multicast group on the
    plan's interface (TTL 1, own datagrams not looped back).
    """

    def __init__(self, reactor: Any, plan: FloatingIPPlan) -> None:
        self.reactor = reactor
        self.plan = plan
        self._port: Any = None

    def open(self, receive: Callable[[bytes, Any], None]) -> None:
        protocol = _HeartbeatProtocol(receive)
        plan = self.plan
        if plan.peers:
            self._port = self.reactor.listenUDP(plan.port, protocol)
            return
        self._port = self.reactor.listenMulticast(
            plan.port, protocol, listenMultiple=True
        )
        transport = self._port
        transport.setTTL(1)
        transport.setLoopbackMode(False)
        transport.setOutgoingInterface(str(plan.node)).addErrback(
            lambda f: log.failure(
                "floating IP: cannot send multicast on {node}", f, node=plan.node
            )
        )
        transport.joinGroup(str(plan.group), str(plan.node)).addErrback(
            lambda f: log.failure(
                "floating IP: cannot join group {group}", f, group=plan.group
            )
        )

    def send(self, datagram: bytes) -> None:
        """@raise OSError: the datagram could not be sent."""
        targets = self.plan.peers or (self.plan.group,)
        for target in targets:
            self._port.write(datagram, (str(target), self.plan.port))

    def close(self) -> Any:
        port, self._port = self._port, None
        if port is not None:
            return port.stopListening()
        return None


# -- the service ------------------------------------------------------------


class FloatingIPService(MultiService):
    """
    Runs the floating IP: heartbeats sent and watched on TimerServices (on
    the reactor given, or any L{IReactorTime}), the L{Election}'s decisions
    carried out on the interface.  Nothing it runs on a timer lets an
    exception escape.

    @param addresses: adds and removes the address (C{add(address,
        interface)} / C{remove(...)} returning Deferreds); by default iproute2's
        C{ip}, else C{ifconfig}.
    @param announcer: sends gratuitous ARP (C{open()}, C{announce(ip)},
        C{close()}); by default a raw socket on the interface.
    @param link: builds the heartbeat link from the plan; by default UDP.
    @param interfaces: lists the host's interfaces, for the defaults.

    @ivar plan: the L{FloatingIPPlan}, once resolved (at start).
    @ivar election: the L{Election}, once the plan is resolved.
    """

    name = "floating_ip"

    def __init__(
        self,
        config: FloatingIPConfig,
        reactor: Any = None,
        addresses: Any = None,
        announcer: Any = None,
        link: Optional[Callable[[FloatingIPPlan], Any]] = None,
        interfaces: Optional[Callable[[], Sequence[Interface]]] = None,
    ) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.config = config
        self.reactor = reactor
        self._real_host = addresses is None or announcer is None
        self._addresses = addresses
        self._announcer = announcer
        self._link_factory = link or (lambda plan: UDPHeartbeatLink(reactor, plan))
        self._interfaces = interfaces or list_interfaces
        self.plan: Optional[FloatingIPPlan] = None
        self.election: Optional[Election] = None
        self.transitions: Deque[Transition] = collections.deque(maxlen=32)
        self._link: Any = None
        self._incarnation = random.getrandbits(32)
        self._seq = 0
        self._want = False
        self._held = False
        self._added_by_us = False
        self._busy = False
        self._retry_at = 0.0
        self._idle: List[defer.Deferred] = []
        self._announcements: List[Any] = []
        self._taken_over: Optional[defer.Deferred] = None
        self._send_error: Optional[str] = None
        interval = config.heartbeat_interval
        self._beat_timer = TimerService(interval, self._safely, self._beat)
        self._watch_timer = TimerService(
            min(interval, config.heartbeat_timeout) / 4, self._safely, self._watch
        )
        for timer in (self._beat_timer, self._watch_timer):
            timer.clock = reactor
            timer.setServiceParent(self)

    # Start-up.

    def prepare(self) -> None:
        """
        Resolve the plan and open the ARP socket (before privileges could
        be dropped); idempotent.

        @raise FloatingIPError: the floating IP cannot run here.
        """
        if self.plan is not None:
            return
        if self._real_host:
            problem = capability_problem()
            if problem is not None:
                raise FloatingIPError(problem)
        plan = resolve_plan(self.config, self._interfaces())
        if self._addresses is None:
            try:
                self._addresses = address_manager(self.reactor)
            except AddressError as e:
                raise FloatingIPError(f"floating_ip: {e}") from None
        if self._announcer is None:
            self._announcer = GratuitousARP(plan.interface)
        try:
            self._announcer.open()
        except OSError as e:
            raise FloatingIPError(
                f"floating_ip: cannot open a raw socket on {plan.interface}"
                f" for gratuitous ARP: {e}"
            ) from None
        self.plan = plan
        self.election = Election(
            plan.node, plan.priority, plan.timeout, self.reactor, preempt=plan.preempt
        )
        self.election.on_transition = self._transition
        self.election.on_contention = self._contention

    def privilegedStartService(self) -> None:
        self.prepare()
        super().privilegedStartService()

    def startService(self) -> None:
        self.prepare()
        plan = self.plan
        if plan.leftover is not None:
            log.warn(
                "floating IP {address} found on {interface} at start, left by an"
                " earlier run that did not stop (kill -9?): removing it",
                address=plan.leftover.with_prefixlen,
                interface=plan.interface,
            )
            self._held = self._added_by_us = True
        self._link = self._link_factory(plan)
        self._link.open(self._received)
        log.info(
            "floating IP {address} on {interface}: node {node}, priority {priority}",
            address=plan.address.with_prefixlen,
            interface=plan.interface,
            node=plan.node,
            priority=plan.priority,
        )
        self.election.start()
        super().startService()  # the timers: a first heartbeat goes out now
        self._reconcile()

    # Stopping.

    def stopService(self):
        if not self.running:
            return defer.succeed(None)
        stopped = super().stopService()
        if self.election is None or self.election.role == STOPPED:
            return stopped
        self.election.stop()
        self._cancel_announcements()
        self._send(leaving=True)
        waited: defer.Deferred = defer.succeed(None)
        if self._held and self._added_by_us and self.election.alive():
            # Keep the address until a standby has it (or for one timeout),
            # so that no client meets an address nobody holds.
            waited = self._taken_over = defer.Deferred()
            timer = self.reactor.callLater(self.plan.timeout, waited.callback, None)
            waited.addBoth(_cancelling(timer))
        else:
            self._want = False
        waited.addCallback(lambda _: self._release())
        waited.addBoth(lambda _: self._close())
        return defer.gatherResults([stopped, waited], consumeErrors=True)

    def _release(self) -> defer.Deferred:
        self._taken_over = None
        self._want = False
        d = self._when_settled()
        # Bounded: a removal that keeps failing must not hold the stop forever.
        timer = self.reactor.callLater(
            COMMAND_TIMEOUT + 1.0, lambda: d.called or d.callback(None)
        )
        return d.addBoth(_cancelling(timer))

    def _close(self) -> Any:
        self._taken_over = None
        if self._announcer is not None:
            self._announcer.close()
        link, self._link = self._link, None
        return link.close() if link is not None else None

    # Heartbeats.

    def _safely(self, call: Callable[[], Any]) -> None:
        try:
            call()
        except Exception:
            log.failure("floating IP: {call} failed; carrying on", call=call.__name__)

    def _beat(self) -> None:
        self._send()

    def _watch(self) -> None:
        self.election.check()
        self._reconcile()

    def _send(self, leaving: bool = False) -> None:
        if self._link is None:
            return
        self._seq = (self._seq + 1) & 0xFFFFFFFF
        heartbeat = Heartbeat(
            node=self.plan.node,
            vip=self.plan.ip,
            priority=self.plan.priority,
            holding=self.election.role == HOLDER and self._held and not leaving,
            leaving=leaving,
            incarnation=self._incarnation,
            seq=self._seq,
        )
        try:
            self._link.send(heartbeat.encode())
        except OSError as e:
            if str(e) != self._send_error:
                log.error("floating IP: cannot send heartbeats: {error}", error=e)
            self._send_error = str(e)
        else:
            if self._send_error is not None:
                log.info("floating IP: heartbeats go out again")
            self._send_error = None

    def _received(self, data: bytes, addr: Any = None) -> None:
        try:
            heartbeat = Heartbeat.decode(data)
            if heartbeat is None or heartbeat.vip != self.plan.ip:
                self.election.ignored += 1
                return
            if self.election.heard(heartbeat):
                if heartbeat.holding and self._taken_over is not None:
                    taken, self._taken_over = self._taken_over, None
                    taken.callback(None)
                self._reconcile()
        except Exception:
            log.failure(
                "floating IP: a heartbeat from {addr} broke the election", addr=addr
            )

    # Carrying decisions out.

    def _transition(self, transition: Transition) -> None:
        self.transitions.append(transition)
        log.info(
            "floating IP {ip}: {old} -> {new}: {reason}",
            ip=self.plan.ip,
            old=transition.old,
            new=transition.new,
            reason=transition.reason,
        )
        if transition.new == STOPPED:
            return
        self._want = transition.new == HOLDER
        if not self._want:
            self._cancel_announcements()
            self._send()  # at once: a preempting peer waits for nobody
        self._reconcile()

    def _contention(self, peer: Peer) -> None:
        log.info(
            "floating IP {ip}: {peer} (priority {priority}) claims it too and will"
            " step down; announcing again",
            ip=self.plan.ip,
            peer=peer.node,
            priority=peer.priority,
        )
        self._send()
        self._announce_series()

    def _reconcile(self) -> None:
        """Bring the interface to what the election wants, one command at a time."""
        if self._busy or self.plan is None:
            return
        if self._want == self._held:
            idle, self._idle = self._idle, []
            for d in idle:
                if not d.called:  # a stop that timed out has fired it already
                    d.callback(None)
            return
        if self.reactor.seconds() < self._retry_at:
            return
        self._busy = True
        began = self.reactor.seconds()
        if self._want:
            d = defer.maybeDeferred(
                self._addresses.add, self.plan.address, self.plan.interface
            )
            d.addCallbacks(self._added, self._add_failed, callbackArgs=(began,))
        elif not self._added_by_us:
            log.warn(
                "floating IP {address} was on {interface} before this gateway took"
                " it: left in place",
                address=self.plan.address.with_prefixlen,
                interface=self.plan.interface,
            )
            self._held = False
            d = defer.succeed(None)
        else:
            address = self.plan.leftover or self.plan.address
            d = defer.maybeDeferred(
                self._addresses.remove, address, self.plan.interface
            )
            d.addCallbacks(self._removed, self._remove_failed, callbackArgs=(began,))
        d.addErrback(lambda f: log.failure("floating IP: address change failed", f))
        d.addBoth(self._done)

    def _done(self, _: Any) -> None:
        self._busy = False
        self._reconcile()

    def _added(self, added: bool, began: float) -> None:
        self._held = True
        self._added_by_us = bool(added)
        self._retry_at = 0.0
        if not added:
            log.warn(
                "floating IP {address} was on {interface} already: holding it, but"
                " it will not be removed (this gateway did not add it)",
                address=self.plan.address.with_prefixlen,
                interface=self.plan.interface,
            )
        log.info(
            "floating IP {address} taken on {interface} in {took}",
            address=self.plan.address.with_prefixlen,
            interface=self.plan.interface,
            took=f"{(self.reactor.seconds() - began) * 1000:.1f} ms",
        )
        if self._want and self.election.role == HOLDER:
            self._announce_series()
            self._send()  # holding now: a worse holder steps down at once

    def _add_failed(self, failure: Any) -> None:
        reason = failure.getErrorMessage()
        log.error(
            "floating IP: cannot take {address}: {reason}",
            address=self.plan.address,
            reason=reason,
        )
        self._retry_at = self.reactor.seconds() + 1.0
        self.election.take_failed(reason)

    def _removed(self, removed: bool, began: float) -> None:
        self._held = self._added_by_us = False
        self._retry_at = 0.0
        log.info(
            "floating IP {address} released from {interface} in {took}",
            address=self.plan.address.with_prefixlen,
            interface=self.plan.interface,
            took=f"{(self.reactor.seconds() - began) * 1000:.1f} ms",
        )
        if self.plan.leftover is not None:
            self.plan = attrs.evolve(self.plan, leftover=None)

    def _remove_failed(self, failure: Any) -> None:
        log.error(
            "floating IP: cannot release {address}: {reason}; trying again",
            address=self.plan.address,
            reason=failure.getErrorMessage(),
        )
        self._retry_at = self.reactor.seconds() + 1.0
        if any(not d.called for d in self._idle):
            # Stopping: the watch timer that would retry has stopped.
            self.reactor.callLater(1.0, self._safely, self._reconcile)

    def _when_settled(self) -> defer.Deferred:
        """Fires when the interface is as the election wants (bounded at stop)."""
        if not self._busy and (self._want == self._held):
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._idle.append(d)
        self._retry_at = 0.0
        self._reconcile()
        return d

    # Gratuitous ARP.

    def _announce_series(self) -> None:
        self._cancel_announcements()
        self._announcements = [
            self.reactor.callLater(delay, self._safely, self._announce)
            for delay in ANNOUNCE_AT
        ]

    def _announce(self) -> None:
        if not (self._held and self._want and self.election.role == HOLDER):
            return
        try:
            self._announcer.announce(self.plan.ip)
        except OSError as e:
            log.error("floating IP: gratuitous ARP failed: {error}", error=e)

    def _cancel_announcements(self) -> None:
        for call in self._announcements:
            if call.active():
                call.cancel()
        self._announcements = []

    # For the admin API.

    def state(self) -> Dict[str, Any]:
        """The floating IP's state as plain data (JSON-ready)."""
        if self.plan is None or self.election is None:
            return {"enabled": True, "role": STOPPED}
        now = self.reactor.seconds()
        election = self.election
        holder = election.holder
        return {
            "enabled": True,
            "ip": self.plan.address.with_prefixlen,
            "interface": self.plan.interface,
            "node": str(self.plan.node),
            "priority": self.plan.priority,
            "preempt": self.plan.preempt,
            "role": election.role,
            "since": election.since,
            "holder": str(holder) if holder is not None else None,
            "holding_address": self._held,
            "takeovers": election.takeovers,
            "ignored_datagrams": election.ignored,
            "heartbeat": {
                "interval": self.plan.interval,
                "timeout": self.plan.timeout,
                "port": self.plan.port,
                "to": [str(p) for p in self.plan.peers] or [str(self.plan.group)],
            },
            "peers": [
                {
                    "node": str(peer.node),
                    "priority": peer.priority,
                    "holding": peer.holding,
                    "alive": not peer.left
                    and now - peer.last_heartbeat < election.timeout,
                    "left": peer.left,
                    "last_heartbeat": peer.last_heartbeat,
                    "age": round(now - peer.last_heartbeat, 3),
                }
                for peer in sorted(election.peers.values(), key=lambda p: int(p.node))
            ],
            "transitions": [attrs.asdict(t) for t in self.transitions],
        }


def _cancelling(call: Any) -> Callable[[Any], Any]:
    def cancel(result: Any) -> Any:
        if call.active():
            call.cancel()
        return result

    return cancel


# -- fakes, for tests (here and in users' own) ------------------------------


class FakeAddresses:
    """
    An address manager that only remembers: C{addresses} holds
    C{(interface, address)} pairs; C{calls} records each call.  Set
    C{fail_add}/C{fail_remove} to an exception to make the next calls fail,
    or C{delay} to a clock and seconds to make them take time.
    """

    def __init__(self, clock: Any = None, delay: float = 0.0) -> None:
        self.addresses: set = set()
        self.calls: List[Tuple[str, str, str]] = []
        self.fail_add: Optional[Exception] = None
        self.fail_remove: Optional[Exception] = None
        self.clock = clock
        self.delay = delay

    def _later(self, call: Callable[[], Any]) -> defer.Deferred:
        if self.clock is None or not self.delay:
            return defer.maybeDeferred(call)
        d: defer.Deferred = defer.Deferred()
        self.clock.callLater(self.delay, lambda: d.callback(None))
        return d.addCallback(lambda _: call())

    def add(self, address: ipaddress.IPv4Interface, interface: str) -> defer.Deferred:
        def add() -> bool:
            self.calls.append(("add", str(address), interface))
            if self.fail_add is not None:
                raise self.fail_add
            if (interface, str(address)) in self.addresses:
                return False
            self.addresses.add((interface, str(address)))
            return True

        return self._later(add)

    def remove(
        self, address: ipaddress.IPv4Interface, interface: str
    ) -> defer.Deferred:
        def remove() -> bool:
            self.calls.append(("remove", str(address), interface))
            if self.fail_remove is not None:
                raise self.fail_remove
            if (interface, str(address)) not in self.addresses:
                return False
            self.addresses.discard((interface, str(address)))
            return True

        return self._later(remove)


class FakeAnnouncer:
    """Records gratuitous ARP announcements as C{(time, ip)} in C{sent}."""

    def __init__(self, clock: Any) -> None:
        self.clock = clock
        self.sent: List[Tuple[float, str]] = []
        self.opened = False

    def open(self) -> None:
        self.opened = True

    def announce(self, ip: IPv4) -> None:
        self.sent.append((self.clock.seconds(), str(ip)))

    def close(self) -> None:
        self.opened = False


class FakeNetwork:
    """
    A segment in memory for heartbeat links: each datagram reaches every
    other open link after C{latency} seconds on C{clock}, unless its sender
    or receiver is in C{cut} (a set of node addresses, as strings).
    """

    def __init__(self, clock: Any, latency: float = 0.001) -> None:
        self.clock = clock
        self.latency = latency
        self.links: Dict[str, "FakeLink"] = {}
        self.cut: set = set()
        self.sent: List[Tuple[float, str, bytes]] = []

    def link(self, plan: FloatingIPPlan) -> "FakeLink":
        return FakeLink(self, str(plan.node))

    def deliver(self, sender: str, datagram: bytes) -> None:
        self.sent.append((self.clock.seconds(), sender, datagram))
        if sender in self.cut:
            return
        for node, link in list(self.links.items()):
            if node != sender and node not in self.cut:
                self.clock.callLater(self.latency, link.receive_later, datagram, sender)


class FakeLink:
    """One gateway's end of a L{FakeNetwork}."""

    def __init__(self, network: FakeNetwork, node: str) -> None:
        self.network = network
        self.node = node
        self._receive: Optional[Callable[[bytes, Any], None]] = None

    def open(self, receive: Callable[[bytes, Any], None]) -> None:
        self._receive = receive
        self.network.links[self.node] = self

    def send(self, datagram: bytes) -> None:
        if self._receive is None:
            raise OSError("link closed")
        self.network.deliver(self.node, datagram)

    def receive_later(self, datagram: bytes, sender: str) -> None:
        if self._receive is not None:
            self._receive(datagram, (sender, 0))

    def close(self) -> None:
        self._receive = None
        if self.network.links.get(self.node) is self:
            del self.network.links[self.node]


def fake_interfaces(
    name: str = "eth0", address: str = "10.213.0.11/24", extra: Sequence[str] = ()
) -> Callable[[], List[Interface]]:
    """An C{interfaces} callable for tests: C{lo} and one interface."""
    from infini_gateway._netif import InterfaceAddress

    def interfaces() -> List[Interface]:
        return [
            Interface(
                "lo",
                1,
                (InterfaceAddress(ipaddress.IPv4Interface("127.0.0.1/8")),),
                True,
            ),
            Interface(
                name,
                2,
                (InterfaceAddress(ipaddress.IPv4Interface(address)),)
                + tuple(
                    InterfaceAddress(ipaddress.IPv4Interface(a), primary=False)
                    for a in extra
                ),
            ),
        ]

    return interfaces


__all__ = [
    "DEFAULT_GROUP",
    "Election",
    "FakeAddresses",
    "FakeAnnouncer",
    "FakeNetwork",
    "FloatingIPError",
    "FloatingIPPlan",
    "FloatingIPService",
    "Heartbeat",
    "Peer",
    "Transition",
    "UDPHeartbeatLink",
    "capability_problem",
    "check_config",
    "fake_interfaces",
    "resolve_plan",
]
