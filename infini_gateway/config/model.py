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

    @classmethod
    def from_section(cls, network: Mapping[str, Any], host: str, port: int) -> "Network":
        """An entry's or the admin API's C{network:} section, its address parsed."""
        return cls(
            host=host,
            port=port,
            publish=network.get("publish"),
            reuse_port=network.get("reuse_port", False),
            skip_occupied_port=network.get("skip_occupied_port", False),
        )


@attrs.frozen
class EntryTLS:
    """An entry's TLS: files to load, or a certificate generated under C{path.data}."""

    enabled: bool = False
    cert_file: Optional[str] = None
    key_file: Optional[str] = None
    skip_insecure_verify: bool = False
    # Client certificates: asked for when client_ca_file is set, and then
    # client_auth is "required" (no certificate, no handshake) or "optional".
    client_ca_file: Optional[str] = None
    client_auth: Optional[str] = None

    @classmethod
    def from_section(cls, tls: Mapping[str, Any], clients: bool = True) -> "EntryTLS":
        """
        A C{tls:} section; with C{clients}, its client certificate keys too
        (the admin API asks for none).
        """
        client_ca_file = tls.get("client_ca_file") if clients else None
        return cls(
            enabled=tls.get("enabled", False),
            cert_file=tls.get("cert_file"),
            key_file=tls.get("key_file"),
            skip_insecure_verify=tls.get("skip_insecure_verify", False),
            client_ca_file=client_ca_file,
            client_auth=tls.get("client_auth", "required") if client_ca_file else None,
        )


@attrs.frozen
class IntentionRule:
    """One intention: clients whose identity C{source} matches get C{action}."""

    source: str
    action: str


@attrs.frozen
class Intentions:
    """
    Which client identities may pass: the first rule whose C{source}
    matches decides, else C{default} (C{"allow"} or C{"deny"}).
    """

    rules: Tuple[IntentionRule, ...] = ()
    default: str = "deny"


@attrs.frozen
class SNIRoute:
    """
    An C{sni} entry's route: connections asking for C{server_name} (a name,
    or C{*.suffix} for any name below suffix) go to C{upstream}.
    """

    server_name: str
    upstream: str


ENTRY_PROTOCOLS = ("http", "tcp", "sni")


@attrs.frozen
class Entry:
    """
    One listener: C{network} -> accept policy -> optional TLS -> router
    (C{protocol: http}), or raw TCP to one upstream (C{tcp}), or TLS passed
    through by server name (C{sni}).

    @ivar idle_timeout: seconds after which an idle (keep-alive) client
        connection is closed.
    @ivar read_timeout: seconds a client has to send a whole request head,
        and the longest wait between two reads of a request body.
    @ivar write_timeout: seconds a response may make no progress (the
        client not reading) before the connection is cut.
    @ivar max_header_size: bytes of a request head (request line and
        headers); more gets a 431.
    @ivar max_request_body_size: bytes of a request body; more gets a 413.
    @ivar max_conns_per_ip: open connections per client address (0: no
        limit); more get a 429.
    @ivar router: the router (for C{tcp} and C{sni}: only its client
        address lists, and None when not named).
    @ivar upstream: C{tcp}: the upstream every connection goes to.
    @ivar sni_routes: C{sni}: routes by server name, exact names first.
    @ivar sni_default: C{sni}: the upstream for other names, or None.
    @ivar client_hello_timeout: C{sni}: seconds a client has to send its
        whole ClientHello.
    @ivar intentions: C{tcp} with client certificates: who may connect.
    """

    name: str
    network: Network
    enabled: bool = True
    router: Optional[str] = "default"
    max_concurrency: int = 10000
    idle_timeout: float = 30.0
    read_timeout: float = 30.0
    write_timeout: float = 30.0
    max_header_size: int = 64 * 1024
    max_request_body_size: int = 200 * 1024 * 1024
    max_conns_per_ip: int = 0
    tls: EntryTLS = EntryTLS()
    protocol: str = "http"
    upstream: Optional[str] = None
    sni_routes: Tuple[SNIRoute, ...] = ()
    sni_default: Optional[str] = None
    client_hello_timeout: float = 5.0
    intentions: Optional[Intentions] = None


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
class ActiveHealthy:
    """
    When an actively probed endpoint counts as healthy (APISIX's
    C{active.healthy}): C{successes} probes in a row answered with one of
    C{http_statuses} (or, for C{tcp}, connected).

    @ivar interval: seconds between probes of an endpoint while healthy.
    """

    interval: float = 1.0
    successes: int = 2
    http_statuses: Tuple[int, ...] = (200, 302)


@attrs.frozen
class ActiveUnhealthy:
    """
    When an actively probed endpoint counts as unhealthy (APISIX's
    C{active.unhealthy}): C{http_failures} probes in a row answered with one
    of C{http_statuses}, or C{tcp_failures} that could not connect (or
    broke), or C{timeouts} that timed out.

    @ivar interval: seconds between probes of an endpoint while unhealthy.
    """

    interval: float = 1.0
    http_failures: int = 5
    tcp_failures: int = 2
    timeouts: int = 3
    http_statuses: Tuple[int, ...] = (429, 404, 500, 501, 502, 503, 504, 505)


@attrs.frozen
class ActiveHealthCheck:
    """
    Probes sent to every endpoint of an upstream on a timer.

    @ivar type: C{http}, C{https} or C{tcp} (a connection, nothing sent).
    @ivar timeout: seconds a probe may take (connecting and the response
        headers).
    @ivar host: the Host header (and TLS server name) of HTTP probes;
        default the endpoint's.
    @ivar port: the port probed; default the endpoint's.
    @ivar req_headers: extra request headers, (name, value) pairs.
    """

    type: str = "http"
    timeout: float = 1.0
    http_path: str = "/"
    host: Optional[str] = None
    port: Optional[int] = None
    req_headers: Tuple[Tuple[str, str], ...] = ()
    https_verify_certificate: bool = True
    healthy: ActiveHealthy = ActiveHealthy()
    unhealthy: ActiveUnhealthy = ActiveUnhealthy()


@attrs.frozen
class PassiveHealthCheck:
    """
    Outlier ejection from the outcomes of real requests, Envoy style: so
    many consecutive 5xx, gateway failures (502, 503, 504, connection
    errors) or timeouts eject an endpoint for C{base_ejection_time} times
    the number of times it was ejected, at most C{max_ejection_time}.  A
    counter of 0 is not used.

    @ivar max_ejection_percent: at most this share of the endpoints may be
        ejected at a time.
    """

    consecutive_5xx: int = 5
    consecutive_gateway_failure: int = 5
    consecutive_timeouts: int = 3
    base_ejection_time: float = 30.0
    max_ejection_time: float = 300.0
    max_ejection_percent: float = 50.0


@attrs.frozen
class HealthCheck:
    """An upstream's C{health_check}: either part, both, or neither."""

    active: Optional[ActiveHealthCheck] = None
    passive: Optional[PassiveHealthCheck] = None


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
    @ivar health_check: its active probes and passive outlier ejection.
    @ivar panic_threshold: a percentage: when fewer endpoints than that are
        healthy, requests are balanced across all of them; 0: never.
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
    health_check: HealthCheck = HealthCheck()
    panic_threshold: float = 0.0

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
class CanaryRule:
    """
    One condition of a canary: the request's C{source} (C{header},
    C{query} or C{cookie}) called C{name}, compared with C{values} by
    C{operator} (C{==}, C{!=}, C{in}, C{regex}).
    """

    source: str
    name: str
    operator: str = "=="
    values: Tuple[str, ...] = ()


@attrs.frozen
class StickyKey:
    """What identifies a user for a sticky canary: a header or a cookie."""

    source: str
    name: str


@attrs.frozen
class CanaryConfig:
    """
    A service's canary release: C{percent} of the requests (or those
    matching every one of C{rules}) go to upstream version C{version}.

    @ivar state: C{in_progress}, C{paused} (no request goes to the canary)
        or C{finished} (every request does).
    @ivar sticky: with C{percent}, a user keeps the version it got.
    """

    version: str
    percent: Optional[int] = None
    rules: Tuple[CanaryRule, ...] = ()
    state: str = "in_progress"
    sticky: Optional[StickyKey] = None


@attrs.frozen
class UpstreamVersion:
    """
    A named version of a service's upstream: C{upstream} names an upstream
    of L{GatewayConfig.upstreams} (an inline one has a generated name,
    C{service/SERVICE/VERSION}).
    """

    version: str
    upstream: str


@attrs.frozen
class ServiceRoute:
    """
    A route of a service: its C{paths} (router patterns, joined to the
    service's C{path_prefix}) and C{methods} (C{"*"} for any).
    """

    name: str
    paths: Tuple[str, ...]
    methods: Tuple[str, ...] = ("*",)
    strip_path_prefix: bool = False
    published: bool = True
    plugins: Tuple[FilterSpec, ...] = ()


@attrs.frozen
class ServiceConfig:
    """
    An API7-style service: routes served on C{hosts} below C{path_prefix},
    forwarded to one of its upstream versions.

    @ivar routers: the routers whose rules get the service's routes.
    @ivar protocols: C{http}, C{https} or both; an C{https}-only service
        redirects plain HTTP requests to an HTTPS entry.
    @ivar trusted_proxies: peers whose C{X-Forwarded-Proto: https} counts
        as HTTPS.
    """

    name: str
    description: str = ""
    published: bool = True
    routers: Tuple[str, ...] = ("default",)
    protocols: Tuple[str, ...] = ("http", "https")
    hosts: Tuple[str, ...] = ()
    path_prefix: str = ""
    plugins: Tuple[FilterSpec, ...] = ()
    trusted_proxies: Tuple[IPNetwork, ...] = attrs.field(default=(), converter=_client_ips)
    upstreams: Tuple[UpstreamVersion, ...] = ()
    upstream_in_use: str = "default"
    canary: Optional[CanaryConfig] = None
    routes: Tuple[ServiceRoute, ...] = ()

    @property
    def version_in_use(self) -> str:
        """The version requests go to outside the canary (a finished canary's)."""
        if self.canary is not None and self.canary.state == "finished":
            return self.canary.version
        return self.upstream_in_use

    def upstream(self, version: str) -> str:
        """The upstream name of C{version}."""
        for item in self.upstreams:
            if item.version == version:
                return item.upstream
        raise KeyError(version)


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
class ApiSecurity:
    """The admin API's basic auth: when enabled, every endpoint asks for it."""

    enabled: bool = False
    username: str = "admin"
    password: str = attrs.field(default="", repr=False)


@attrs.frozen
class ApiConfig:
    """
    INFINI's C{api:} section: the admin API (health, stats, metrics,
    reload).  Off unless the section is there; on loopback unless the
    operator says otherwise.
    """

    enabled: bool = False
    network: Network = Network(host="127.0.0.1", port=2900)
    tls: EntryTLS = EntryTLS()
    security: ApiSecurity = ApiSecurity()


@attrs.frozen
class ConfigsConfig:
    """
    INFINI's C{configs:} section: with C{auto_reload}, the file is checked
    every C{interval} seconds and reloaded when it changed.
    """

    auto_reload: bool = False
    interval: float = 1.0


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
    services: Tuple[ServiceConfig, ...] = ()
    api: ApiConfig = ApiConfig()
    configs: ConfigsConfig = ConfigsConfig()
    # Seconds a stopping gateway lets requests in flight finish.
    shutdown_timeout: float = 30.0

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
