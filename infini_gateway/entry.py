"""
Entries: one listening socket each.

The layers, outermost first: the TCP port (SO_REUSEPORT, or the next free
port when the configured one is taken) -> L{AcceptPolicy} (client address
deny / permit lists, connection limit) -> TLS (optional) -> the twisted.web
Site whose root is the entry's router.  A C{protocol: tcp} entry has
L{infini_gateway.tcp}'s factory in the Site's place, and a C{protocol: sni}
entry L{infini_gateway.sni}'s, without TLS (it never decrypts).
"""

import errno
import socket
from typing import Any, Callable, Optional

from twisted.application.service import Service
from twisted.internet import tcp
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.server import Site

from infini_gateway.config.model import ClientIPAccess, Entry, Network
from infini_gateway.policy import PER_IP_RESPONSE, AcceptPolicy, OverloadedFactory

log = Logger()

# nginx's default: the kernel caps it at net.core.somaxconn anyway.
BACKLOG = 511

# How far skip_occupied_port looks for a free port.
SKIP_OCCUPIED_LIMIT = 100


class EntryBindError(Exception):
    """An entry could not listen; the message says which and why."""


class _ReusePortTCPPort(tcp.Port):
    """
    A TCP port with SO_REUSEPORT set before bind, for Twisted releases whose
    C{tcp.makeBinding} has no C{reusePort} (before 26).
    """

    def createInternetSocket(self) -> socket.socket:
        skt = super().createInternetSocket()
        skt.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        return skt


def _has_reuse_port_binding() -> bool:
    make_binding = getattr(tcp, "makeBinding", None)
    if make_binding is None:
        return False
    try:
        make_binding("", 0, reuseAddress=True, reusePort=True)
    except TypeError:
        return False
    return True


def listen_tcp(
    reactor: Any, host: str, port: int, factory: Factory, reuse_port: bool = False
) -> IListeningPort:
    """Listen on C{host}:C{port}, with SO_REUSEPORT when asked."""
    if not reuse_port:
        return reactor.listenTCP(port, factory, backlog=BACKLOG, interface=host)
    if _has_reuse_port_binding():
        binding = tcp.makeBinding(host, port, reuseAddress=True, reusePort=True)
        # The address family is chosen from interface=, so pass it too (IPv6).
        return reactor.listenTCP(binding, factory, backlog=BACKLOG, interface=host)
    listening = _ReusePortTCPPort(port, factory, BACKLOG, host, reactor)
    listening.startListening()
    return listening


def listen_network(
    reactor: Any,
    network: Network,
    factory: Factory,
    listen: Callable[..., IListeningPort] = listen_tcp,
) -> IListeningPort:
    """
    Listen as C{network} says; with C{skip_occupied_port}, a port in use
    moves to the next one, up to L{SKIP_OCCUPIED_LIMIT} ports further.
    """
    port = network.port
    tries = SKIP_OCCUPIED_LIMIT if network.skip_occupied_port and port else 1
    for offset in range(tries):
        candidate = port + offset
        if candidate > 65535:
            break
        try:
            return listen(reactor, network.host, candidate, factory, network.reuse_port)
        except CannotListenError as e:
            in_use = getattr(e.socketError, "errno", None) == errno.EADDRINUSE
            if not (network.skip_occupied_port and in_use):
                raise
            log.info(
                "port {port} on {host} is occupied, trying the next one",
                port=candidate,
                host=network.host,
            )
    raise CannotListenError(
        network.host,
        port,
        OSError(errno.EADDRINUSE, f"no free port in {port}-{port + tries - 1}"),
    )


class EntryService(Service):
    """
    Listens for one entry while running.

    @ivar port: the listening port, while listening.
    @ivar policy: the entry's L{AcceptPolicy} (connection counts).
    @ivar access: the client addresses accepted (its router's), or None.
    """

    def __init__(
        self,
        entry: Entry,
        site: Site,
        reactor: Any,
        tls_options: Optional[Callable[[], Any]] = None,
        access: Optional[ClientIPAccess] = None,
    ) -> None:
        self.entry = entry
        self.name = f"entry:{entry.name}"
        self.site = site
        self.reactor = reactor
        self._tls_options = tls_options
        self.access = access
        self.port: Optional[IListeningPort] = None
        self.policy: Optional[AcceptPolicy] = None

    @property
    def scheme(self) -> str:
        return entry_scheme(self.entry)

    def prepare(self) -> None:
        """
        Build the factories (loading or generating TLS certificates); a
        problem raises before anything binds.
        """
        if self.policy is not None:
            return
        inner: Factory = self.site
        overflow: Factory = OverloadedFactory(self.reactor)
        per_ip: Factory = OverloadedFactory(self.reactor, PER_IP_RESPONSE)
        if self.entry.tls.enabled:
            options = self._tls_options()
            inner = TLSMemoryBIOFactory(options, False, inner)
            overflow = TLSMemoryBIOFactory(options, False, overflow)
            per_ip = TLSMemoryBIOFactory(options, False, per_ip)
        layer4 = self.entry.protocol != "http"
        if layer4:
            # Raw bytes: no HTTP answer past the limits, just a close.
            overflow = per_ip = None
        self.policy = AcceptPolicy(
            inner,
            self.entry.max_concurrency,
            overflow,
            access=self.access,
            clock=self.reactor,
            name=self.entry.name,
            max_conns_per_ip=self.entry.max_conns_per_ip,
            per_ip_overflow=per_ip,
        )
        if layer4:
            from infini_gateway.tcp import HalfCloseableWrapper

            # The client's half-close (its FIN) reaches the splice.
            self.policy.protocol = HalfCloseableWrapper

    def bind(self) -> None:
        """Start listening; raises L{EntryBindError} with a clear message."""
        if self.port is not None:
            return
        self.prepare()
        network = self.entry.network
        try:
            self.port = listen_network(self.reactor, network, self.policy)
        except CannotListenError as e:
            reason = getattr(e.socketError, "strerror", None) or str(e.socketError)
            raise EntryBindError(
                f"entry {self.entry.name!r}: cannot listen on {network.binding}: {reason}"
            ) from e
        address = self.port.getHost()
        log.info(
            self.listening_format,
            entry=self.entry.name,
            scheme=self.scheme,
            address=_format_address(address.host, address.port),
            publish=f" (published as {network.publish})" if network.publish else "",
        )

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        self.bind()

    def startService(self) -> None:
        super().startService()
        self.bind()

    # What bind() logs (the end-to-end tests read the address from it).
    listening_format = "entry {entry} listening on {scheme}://{address}{publish}"

    # Seconds stopService lets open connections finish; set by the gateway
    # from shutdown_timeout.
    shutdown_timeout: float = 30.0

    def stopService(self):
        """
        Stop gracefully: stop listening, close idle connections, let those
        with a request in flight finish it (then close), and after
        C{shutdown_timeout} close what remains.
        """
        super().stopService()
        return self.stop_gracefully(self.shutdown_timeout)

    def stop_listening(self) -> Deferred:
        """Stop accepting connections; fires once the port is closed."""
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        return maybeDeferred(port.stopListening)

    def stop_gracefully(self, timeout: float) -> Deferred:
        """
        L{stop_listening}, then drain the open connections (see
        L{drain_connections}); fires when none is left.
        """
        d = self.stop_listening()
        d.addCallback(lambda _: drain_connections(self.policy, self.reactor, timeout, self.entry.name))
        return d

    def switch(self, entry: Entry, resource: Any, tls_options: Any = None, access: Any = None) -> None:
        """
        Serve new requests with C{resource} (the Site's new root, a router;
        for an entry serving another protocol, its new factory) and new
        connections with C{entry}'s settings, keeping the listening socket:
        requests in flight finish on what they started on.  The binding
        must be the same.

        @param tls_options: C{entry}'s server TLS options, already loaded
            (so that a bad certificate fails the reload before any switch).
        """
        self.entry = entry
        if isinstance(self.site, Site):
            self.site.resource = resource
            self.site.timeout = entry.idle_timeout
        else:
            self.site = resource
        self.access = access
        if tls_options is not None:
            self._tls_options = lambda: tls_options
        policy = self.policy
        if policy is None:
            return  # prepare() will use the new settings
        # Build the accept policy as prepare() does, then give its settings
        # to the running one, which keeps counting the connections open.
        self.policy = None
        try:
            self.prepare()
            settings = self.policy
        finally:
            self.policy = policy
        for name, value in vars(settings).items():
            if name not in _POLICY_STATE:
                setattr(policy, name, value)

    def bound_address(self) -> Optional[str]:
        """C{HOST:PORT} actually bound, while listening."""
        if self.port is None:
            return None
        address = self.port.getHost()
        return _format_address(address.host, address.port)


def entry_scheme(entry: Entry) -> str:
    """
    How clients speak to C{entry}: C{http} or C{https}; C{tcp} (plain TCP
    forwarded, or TLS passed through by an C{sni} entry) or C{tls} (a
    C{tcp} entry terminating TLS).
    """
    if entry.protocol == "http":
        return "https" if entry.tls.enabled else "http"
    if entry.protocol == "tcp" and entry.tls.enabled:
        return "tls"
    return "tcp"


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# What an AcceptPolicy counts (kept when an entry switches settings).
_POLICY_STATE = frozenset(
    {
        "protocols",
        "denied",
        "refused",
        "per_ip",
        "refused_per_ip",
        "_now",
        "_denied_logged_at",
        "_denied_unlogged",
    }
)

# How often a draining entry looks at its connections again.
DRAIN_INTERVAL = 0.1


def _http_channel(protocol: Any) -> Any:
    """The twisted.web HTTPChannel inside an accepted protocol, or None."""
    for _ in range(4):
        if protocol is None or hasattr(protocol, "requests"):
            return protocol
        protocol = getattr(protocol, "wrappedProtocol", None)
    return None


def drain_connections(policy: Optional[AcceptPolicy], clock: Any, timeout: float, name: str = "") -> Deferred:
    """
    Let the connections an entry accepted end: each idle HTTP connection is
    closed now, each with a request in flight once its response is sent
    (other protocols when their peer is done), and after C{timeout}
    seconds whatever remains is aborted.

    @return: a Deferred firing once no connection is left.
    """
    done: Deferred = Deferred()
    if policy is None:
        done.callback(None)
        return done
    deadline = clock.seconds() + timeout

    def look() -> None:
        protocols = list(policy.protocols)
        if not protocols:
            done.callback(None)
            return
        if clock.seconds() >= deadline:
            log.info(
                "entry {entry}: {count} connections still open after {timeout}s, closing them",
                entry=name,
                count=len(protocols),
                timeout=timeout,
            )
            for protocol in protocols:
                transport = getattr(protocol, "transport", None)
                if transport is not None:
                    transport.abortConnection()
            clock.callLater(0, finish)
            return
        for protocol in protocols:
            channel = _http_channel(protocol)
            if channel is None:
                continue
            if not channel.requests:
                channel.loseConnection()
            else:
                # Closed after the response in flight; told to the client.
                channel.persistent = False
                for request in channel.requests:
                    if not request.startedWriting:
                        request.responseHeaders.setRawHeaders(b"connection", [b"close"])
        clock.callLater(DRAIN_INTERVAL, look)

    def finish() -> None:
        if not done.called:
            done.callback(None)

    look()
    return done

