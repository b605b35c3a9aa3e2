"""
Entries: one listening socket each.

The layers, outermost first: the TCP port (SO_REUSEPORT, or the next free
port when the configured one is taken) -> L{AcceptPolicy} (client address
deny / permit lists, connection limit) -> TLS (optional) -> the twisted.web
Site whose root is the entry's router.
"""

import errno
import socket
from typing import Any, Callable, Optional

from twisted.application.service import Service
from twisted.internet import tcp
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.server import Site

from infini_gateway.config.model import ClientIPAccess, Entry, Network
from infini_gateway.policy import AcceptPolicy, OverloadedFactory

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
        return "https" if self.entry.tls.enabled else "http"

    def prepare(self) -> None:
        """
        Build the factories (loading or generating TLS certificates); a
        problem raises before anything binds.
        """
        if self.policy is not None:
            return
        inner: Factory = self.site
        overflow: Factory = OverloadedFactory(self.reactor)
        if self.entry.tls.enabled:
            options = self._tls_options()
            inner = TLSMemoryBIOFactory(options, False, inner)
            overflow = TLSMemoryBIOFactory(options, False, overflow)
        self.policy = AcceptPolicy(
            inner,
            self.entry.max_concurrency,
            overflow,
            access=self.access,
            clock=self.reactor,
            name=self.entry.name,
        )

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
            "entry {entry} listening on {scheme}://{address}{publish}",
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

    def stopService(self):
        super().stopService()
        port, self.port = self.port, None
        if port is not None:
            return port.stopListening()
        return None

    def bound_address(self) -> Optional[str]:
        """C{HOST:PORT} actually bound, while listening."""
        if self.port is None:
            return None
        address = self.port.getHost()
        return _format_address(address.host, address.port)


def _format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
