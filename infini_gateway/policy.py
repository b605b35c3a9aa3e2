"""
Accept-time policy: what happens to a connection before any byte of it is read.

L{AcceptPolicy} is the outermost factory of an entry (before TLS, so that a
refused connection costs no handshake).  It first checks the client's
address against the router's deny / permit lists (L{ClientIPRules}): a
denied client's connection is closed at once, with no answer at all.  Then
it counts open connections for C{max_concurrency}: past the limit a new
connection is handed to the overflow factory, which answers a raw C{503}
and closes.
"""

import ipaddress
import time
from typing import Any, Dict, FrozenSet, Iterable, Optional, Set, Tuple, Union

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory

from infini_gateway.config.model import ClientIPAccess, IPNetwork

log = Logger()

_OVERLOAD_BODY = b'{"error": "too many connections"}\n'
OVERLOAD_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: %d\r\n"
    b"Connection: close\r\n"
    b"\r\n" % len(_OVERLOAD_BODY)
) + _OVERLOAD_BODY

_PER_IP_BODY = b'{"error": "too many connections from this address"}\n'
PER_IP_RESPONSE = (
    b"HTTP/1.1 429 Too Many Requests\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: %d\r\n"
    b"Connection: close\r\n"
    b"\r\n" % len(_PER_IP_BODY)
) + _PER_IP_BODY

# How long a refused connection may take to send its request before it is
# closed anyway.  Closing while request bytes are still unread makes the
# kernel send a reset, which can destroy the 503 before the client reads it.
LINGER_SECONDS = 1.0

# Denied connections are logged at most once in this many seconds (the first
# one at once), each line with the count since the previous one, so that a
# flood of denied clients cannot flood the log.
DENIED_LOG_INTERVAL = 10.0

_IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


def client_address(host: str) -> Optional[IPAddress]:
    """
    The address of a peer's C{host} as rules match it: C{::ffff:a.b.c.d}
    (an IPv4 client of an IPv6 listener) is C{a.b.c.d}, an IPv6 zone
    (C{fe80::1%eth0}) is dropped; None when C{host} is not an IP address.
    """
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _as_matched(network: IPNetwork) -> IPNetwork:
    # A rule written as ::ffff:10.0.0.0/104 is the IPv4 block it names,
    # since mapped peers are matched as IPv4.
    if (
        network.version == 6
        and network.prefixlen >= 96
        and network.network_address in _IPV4_MAPPED
    ):
        low = int(network.network_address) & 0xFFFFFFFF
        return ipaddress.IPv4Network((low, network.prefixlen - 96))
    return network


class _NetworkSet:
    """
    Networks grouped by IP version and prefix length: a lookup costs one set
    membership test per distinct prefix length (exact addresses first),
    however many networks there are.
    """

    def __init__(self, networks: Iterable[IPNetwork]) -> None:
        grouped: Dict[int, Dict[int, Set[int]]] = {4: {}, 6: {}}
        for network in networks:
            network = _as_matched(network)
            shift = network.max_prefixlen - network.prefixlen
            grouped[network.version].setdefault(shift, set()).add(
                int(network.network_address) >> shift
            )
        self._groups: Dict[int, Tuple[Tuple[int, FrozenSet[int]], ...]] = {
            version: tuple(
                (shift, frozenset(keys)) for shift, keys in sorted(by_shift.items())
            )
            for version, by_shift in grouped.items()
        }

    def __contains__(self, address: IPAddress) -> bool:
        value = int(address)
        for shift, keys in self._groups[address.version]:
            if value >> shift in keys:
                return True
        return False


class ClientIPRules:
    """
    A router's L{ClientIPAccess}, ready to match: a denied address is never
    accepted; when a permitted list is given, neither is any address outside
    it; a peer that is not an IP address (a UNIX socket) is not accepted.
    """

    def __init__(self, access: ClientIPAccess) -> None:
        self.access = access
        self._denied = _NetworkSet(access.denied)
        self._permitted = _NetworkSet(access.permitted) if access.permitted else None

    def allows(self, host: str) -> bool:
        """Whether a client at C{host} (C{"10.1.2.3"}, C{"::1"}) is accepted."""
        address = client_address(host)
        if address is None or address in self._denied:
            return False
        return self._permitted is None or address in self._permitted

    def allows_peer(self, addr: Optional[IAddress]) -> bool:
        """Whether a connection from C{addr} (C{buildProtocol}'s) is accepted."""
        if not isinstance(addr, (IPv4Address, IPv6Address)):
            return False
        return self.allows(addr.host)


class Overloaded(Protocol):
    """
    Answers C{503 Service Unavailable} at once, then closes when the
    client's request head has arrived (or after L{LINGER_SECONDS}).
    """

    def __init__(self, reactor: Any, response: bytes = OVERLOAD_RESPONSE) -> None:
        self._reactor = reactor
        self._response = response
        self._seen = b""
        self._timer = None

    def connectionMade(self) -> None:
        self.transport.write(self._response)
        self._timer = self._reactor.callLater(LINGER_SECONDS, self._close)

    def dataReceived(self, data: bytes) -> None:
        self._seen = (self._seen + data)[-4:]
        if b"\r\n\r\n" in self._seen:
            self._close()

    def _close(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.transport.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()


class OverloadedFactory(Factory):
    def __init__(self, reactor: Any, response: bytes = OVERLOAD_RESPONSE) -> None:
        self._reactor = reactor
        self._response = response

    def buildProtocol(self, addr: IAddress) -> Protocol:
        protocol = Overloaded(self._reactor, self._response)
        protocol.factory = self
        return protocol


def _peer_text(addr: Optional[IAddress]) -> str:
    if isinstance(addr, (IPv4Address, IPv6Address)):
        return addr.host
    return repr(addr)


class AcceptPolicy(WrappingFactory):
    """
    Wraps an entry's factory: closes connections from denied clients at
    once (returning None, so the port closes the socket before reading a
    byte), counts open connections and sends those past C{max_concurrency}
    to C{overflow}.

    @ivar rules: the L{ClientIPRules}, or None when every client is accepted.
    @ivar denied: how many connections were closed for their client address.
    @ivar refused: how many connections were refused for the limit.
    """

    def __init__(
        self,
        wrapped: Factory,
        max_concurrency: int,
        overflow: Optional[Factory] = None,
        access: Optional[ClientIPAccess] = None,
        clock: Any = None,
        name: str = "",
        max_conns_per_ip: int = 0,
        per_ip_overflow: Optional[Factory] = None,
    ) -> None:
        """
        @param access: the client addresses accepted; None or an empty one
            accepts all.
        @param max_conns_per_ip: open connections per client address (0: no
            limit); past it a new connection goes to C{per_ip_overflow}
            (which answers 429), or is closed when there is none.
        @param clock: an C{IReactorTime}, for rate-limiting the log of denied
            connections (default: the monotonic clock).
        @param name: the entry's name, for the log.
        """
        super().__init__(wrapped)
        self.max_concurrency = max_concurrency
        self.overflow = overflow
        self.rules: Optional[ClientIPRules] = (
            ClientIPRules(access) if access is not None and access.restricted else None
        )
        self.name = name
        self.denied = 0
        self.refused = 0
        self._now = clock.seconds if clock is not None else time.monotonic
        self._denied_logged_at: Optional[float] = None
        self._denied_unlogged = 0
        self.max_conns_per_ip = max_conns_per_ip
        self.per_ip_overflow = per_ip_overflow
        # Open connections by client address (only with max_conns_per_ip).
        self.per_ip: Dict[str, int] = {}
        self.refused_per_ip = 0

    @property
    def open_connections(self) -> int:
        return len(self.protocols)

    def buildProtocol(self, addr: IAddress) -> Optional[Protocol]:
        # Denied clients first, so that they never take a connection slot.
        if self.rules is not None and not self.rules.allows_peer(addr):
            self._deny(addr)
            return None
        key = None
        if self.max_conns_per_ip and isinstance(addr, (IPv4Address, IPv6Address)):
            address = client_address(addr.host)
            key = str(address) if address is not None else addr.host
            if self.per_ip.get(key, 0) >= self.max_conns_per_ip:
                self.refused_per_ip += 1
                if self.per_ip_overflow is None:
                    return None
                return self.per_ip_overflow.buildProtocol(addr)
        if len(self.protocols) >= self.max_concurrency:
            self.refused += 1
            if self.overflow is None:
                return None
            return self.overflow.buildProtocol(addr)
        protocol = super().buildProtocol(addr)
        if key is not None and protocol is not None:
            protocol.client_key = key
        return protocol

    def registerProtocol(self, p: Protocol) -> None:
        super().registerProtocol(p)
        key = getattr(p, "client_key", None)
        if key is not None:
            self.per_ip[key] = self.per_ip.get(key, 0) + 1

    def unregisterProtocol(self, p: Protocol) -> None:
        super().unregisterProtocol(p)
        key = getattr(p, "client_key", None)
        if key is not None and key in self.per_ip:
            p.client_key = None
            self.per_ip[key] -= 1
            if self.per_ip[key] <= 0:
                del self.per_ip[key]

    def _deny(self, addr: Optional[IAddress]) -> None:
        self.denied += 1
        self._denied_unlogged += 1
        now = self._now()
        last = self._denied_logged_at
        if last is not None and now - last < DENIED_LOG_INTERVAL:
            return
        count, self._denied_unlogged = self._denied_unlogged, 0
        self._denied_logged_at = now
        entry = f"entry {self.name}" if self.name else "entry"
        if count == 1:
            log.info(
                "{entry}: closed a connection from {peer} (client address denied)",
                entry=entry,
                peer=_peer_text(addr),
            )
        else:
            log.info(
                "{entry}: closed {count} connections from denied client addresses"
                " in {seconds:.0f}s, the latest from {peer}",
                entry=entry,
                count=count,
                seconds=now - last,
                peer=_peer_text(addr),
            )
