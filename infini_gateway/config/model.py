"""
Frozen, validated configuration values.

Nothing here reads files or touches the network: the loader in
L{infini_gateway.config.load} turns gateway.yml into these values, and every
factory in the package receives them, never raw dicts.
"""

import ipaddress
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Optional, Tuple, Union

import attrs

from infini_gateway.config.values import got

HTTP_METHODS = (
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "PATCH",
    "DELETE",
    "CONNECT",
    "OPTIONS",
    "TRACE",
)


def _frozen_mapping(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(value))


@attrs.frozen
class Network:
    """Where an entry listens, and how it shares or finds its port."""

    host: str
    port: int
    publish: Optional[str] = None
    reuse_port: bool = False
    skip_occupied_port: bool = False

    @property
    def binding(self) -> str:
        """The address written back as C{HOST:PORT} (IPv6 hosts in brackets)."""
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@attrs.frozen
class EntryTLS:
    """An entry's TLS: files to load, or a certificate generated under C{path.data}."""

    enabled: bool = False
    cert_file: Optional[str] = None
    key_file: Optional[str] = None
    skip_insecure_verify: bool = False


@attrs.frozen
class Entry:
    """
    One listener: C{network} -> accept policy -> optional TLS -> router.

    @ivar idle_timeout: seconds after which an idle (keep-alive) client
        connection is closed.
    """

    name: str
    network: Network
    enabled: bool = True
    router: str = "default"
    max_concurrency: int = 10000
    idle_timeout: float = 30.0
    tls: EntryTLS = EntryTLS()


@attrs.frozen
class Rule:
    """
    A router rule: any of C{methods} (C{"*"} for all) and any of C{patterns},
    on any of C{hosts} (none: any host; C{"*.example.org"}: any name below
    example.org).
    """

    methods: Tuple[str, ...]
    patterns: Tuple[str, ...]
    flows: Tuple[str, ...]
    hosts: Tuple[str, ...] = ()


IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

CLIENT_IP_EXPECTED = "an IP address or CIDR block such as 10.0.0.0/8"


def parse_client_ip(value: Any) -> IPNetwork:
    """
    A client address or block, IPv4 or IPv6: C{"10.1.2.3"} is
    C{10.1.2.3/32}.  A block with host bits set is taken as its network
    (C{"192.168.3.1/24"} is C{192.168.3.0/24}), as INFINI Gateway's users
    write it.

    @raise ValueError: for anything else.
    """
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected {CLIENT_IP_EXPECTED}, got {got(value)}")
    try:
        return ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise ValueError(f"expected {CLIENT_IP_EXPECTED}, got {got(value)}") from None


def _client_ips(values: Iterable[Any]) -> Tuple[IPNetwork, ...]:
    # Written twice is kept once, in the order first written.
    return tuple(dict.fromkeys(parse_client_ip(value) for value in values))


@attrs.frozen
class ClientIPAccess:
    """
    Which client addresses a router's entries accept, checked when a
    connection is accepted.  Strings given here are parsed with
    L{parse_client_ip}.

    @ivar denied: closed at once, whatever C{permitted} says.
    @ivar permitted: when not empty, every other address is closed too.
    """

    denied: Tuple[IPNetwork, ...] = attrs.field(default=(), converter=_client_ips)
    permitted: Tuple[IPNetwork, ...] = attrs.field(default=(), converter=_client_ips)

    @property
    def restricted(self) -> bool:
        """Whether any address is checked at all."""
        return bool(self.denied or self.permitted)


@attrs.frozen
class RouterConfig:
    """A router: rules tried for each request, else C{default_flow}."""

    name: str
    rules: Tuple[Rule, ...] = ()
    default_flow: Optional[str] = None
    tracing_flow: Optional[str] = None
    access: ClientIPAccess = ClientIPAccess()


@attrs.frozen
class FilterSpec:
    """
    One configured filter of a flow: the registered filter name and its
    parameters (already validated against that filter's schema).

    @ivar where: C{"gateway.yml:12: flow[0].filter[1].echo"}, for messages.
    """

    name: str
    params: Mapping[str, Any] = attrs.field(
        factory=dict, converter=_frozen_mapping, eq=False
    )
    where: str = attrs.field(default="", eq=False)


@attrs.frozen
class FlowConfig:
    """A named, ordered list of filters."""

    name: str
    filters: Tuple[FilterSpec, ...] = ()


@attrs.frozen
class EndpointConfig:
    """One endpoint of an upstream: C{http(s)://host[:port]}."""

    url: str
    weight: int = 1
    priority: int = 0


@attrs.frozen
class Timeouts:
    """
    Upstream timeouts in seconds.  C{send} and C{read} are the longest idle
    time between two writes (reads), not totals.
    """

    connect: float = 60.0
    send: float = 60.0
    read: float = 60.0


@attrs.frozen
class UpstreamTLS:
    """
    TLS towards C{https} endpoints: verified against the system roots (or
    C{ca_file}) unless C{verify} is false; C{cert_file}/C{key_file} is the
    gateway's client certificate (mutual TLS); C{sni} defaults to the
    endpoint's host.
    """

    verify: bool = True
    ca_file: Optional[str] = None
    cert_file: Optional[str] = None
    key_file: Optional[str] = None
    sni: Optional[str] = None


@attrs.frozen
class KeepalivePool:
    """Idle connections kept per endpoint, and for how long (APISIX's names)."""

    size: int = 32
    idle_timeout: float = 60.0


@attrs.frozen
class UpstreamConfig:
    """
    An upstream: endpoints, how one is picked, and how requests to it are
    timed, retried and secured.

    @ivar retries: retries after the first attempt; None: one per other
        endpoint (L{max_retries}).
    @ivar retry_timeout: overall deadline of a request's attempts, or None.
    @ivar hash_on: C{vars}, C{header} or C{cookie} (chash only), with
        C{key} naming the variable, header or cookie.
    @ivar request_headers: set on every request forwarded (an Elasticsearch
        cluster's Authorization); not shown in C{repr}.
    """

    name: str
    endpoints: Tuple[EndpointConfig, ...]
    balancer: str = "roundrobin"
    hash_on: str = "vars"
    key: str = "remote_addr"
    timeout: Timeouts = Timeouts()
    retries: Optional[int] = None
    retry_timeout: Optional[float] = None
    retry_on_status: Tuple[int, ...] = ()
    retry_non_idempotent: bool = False
    pass_host: str = "pass"
    upstream_host: Optional[str] = None
    keepalive_pool: KeepalivePool = KeepalivePool()
    tls: UpstreamTLS = UpstreamTLS()
    request_headers: Tuple[Tuple[str, str], ...] = attrs.field(default=(), repr=False)

    @property
    def max_retries(self) -> int:
        if self.retries is not None:
            return self.retries
        return max(0, len(self.endpoints) - 1)


@attrs.frozen
class ElasticsearchConfig:
    """
    An Elasticsearch cluster of INFINI's C{elasticsearch:} section; the
    C{elasticsearch} filter forwards to its C{upstream}.
    """

    name: str
    upstream: UpstreamConfig
    enabled: bool = True


@attrs.frozen
class Paths:
    """INFINI's C{path:} section: where generated data and logs are kept."""

    data: str = "./data"
    logs: str = "./log"


def _three_intervals(config: "FloatingIPConfig") -> float:
    return 3 * config.heartbeat_interval


@attrs.frozen
class FloatingIPConfig:
    """
    The C{floating_ip:} section: gateways in hot standby sharing one IPv4
    address.  C{None} means the default resolved on the host at start
    (L{infini_gateway.floating_ip.resolve_plan}): the first interface with a
    non-loopback IPv4 address, its netmask, and the .234 of its subnet.

    @ivar peers: the other gateways' addresses; none: a multicast group.
    """

    enabled: bool = False
    ip: Optional[str] = None
    netmask: Optional[str] = None
    interface: Optional[str] = None
    priority: int = 100
    peers: Tuple[str, ...] = attrs.field(default=(), converter=tuple)
    heartbeat_interval: float = 0.2
    heartbeat_timeout: float = attrs.field(
        default=attrs.Factory(_three_intervals, takes_self=True)
    )
    port: int = 61234
    preempt: bool = True


@attrs.frozen
class GatewayConfig:
    """
    The whole gateway.yml.

    @ivar source: the file it came from (or C{"<dict>"}), and the directory
        relative paths in it are resolved against.
    """

    source: str = "<dict>"
    base_dir: str = "."
    paths: Paths = Paths()
    entries: Tuple[Entry, ...] = ()
    routers: Tuple[RouterConfig, ...] = ()
    flows: Tuple[FlowConfig, ...] = ()
    upstreams: Tuple[UpstreamConfig, ...] = ()
    elasticsearch: Tuple[ElasticsearchConfig, ...] = ()
    floating_ip: FloatingIPConfig = FloatingIPConfig()

    def upstream(self, name: str) -> UpstreamConfig:
        for upstream in self.upstreams:
            if upstream.name == name:
                return upstream
        raise KeyError(name)

    def router(self, name: str) -> RouterConfig:
        for router in self.routers:
            if router.name == name:
                return router
        raise KeyError(name)

    def flow(self, name: str) -> FlowConfig:
        for flow in self.flows:
            if flow.name == name:
                return flow
        raise KeyError(name)
