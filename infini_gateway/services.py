"""
API7-style services, compiled into the routers' rules and flows.

There is no second router: each published route of a published service
becomes an ordinary L{Rule} of every router serving the service (its hosts,
its methods, its paths joined to the service's C{path_prefix}), running a
flow of its own, C{service/SERVICE/ROUTE}, built here in code:

  1. for an HTTPS-only service, L{HttpsRedirect}: a request that arrived
     over plain HTTP (and not from a trusted front saying
     C{X-Forwarded-Proto: https}) is answered with a redirect to the HTTPS
     entry, 301 for GET and HEAD, 308 otherwise;
  2. the service's C{plugins}, each replaced by the route's plugin of the
     same name, then the route's other plugins;
  3. L{ServiceProxy}: the canary (L{infini_gateway.canary}) picks the
     upstream version, and the request is forwarded to that version's
     upstream by the engine of the C{proxy} filter, without the
     C{path_prefix} when the route strips it.

Unpublished services and routes are not compiled at all, so their paths
answer as any unknown path does.  L{check_service_removal} is the rule a
configuration change at run time must pass: a service that still has
routes cannot be removed.
"""

import ipaddress
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import attrs

from infini_gateway.canary import VersionChooser
from infini_gateway.config import ConfigError
from infini_gateway.config.model import (
    Entry,
    FilterSpec,
    GatewayConfig,
    RouterConfig,
    Rule,
    ServiceConfig,
    ServiceRoute,
)
from infini_gateway.config.services import join_path
from infini_gateway.config.values import parse_binding
from infini_gateway.context import RequestContext, client_ip
from infini_gateway.filters import Filter, filter_class
from infini_gateway.flow import Flow
from infini_gateway.pattern import split_path
from infini_gateway.upstream.proxy import forward

_HOST_NAME = re.compile(r"[A-Za-z0-9._-]+\Z")


def flow_name(service: str, route: str) -> str:
    """The name of the flow a route of a service runs."""
    return f"service/{service}/{route}"


class HttpsRedirect(Filter):
    """
    Answers a request that did not arrive over HTTPS with a redirect to the
    same path and query on the service's HTTPS entry: 301 for GET and HEAD,
    308 otherwise (the method and body are kept).

    A request from one of C{trusted_proxies} carrying
    C{X-Forwarded-Proto: https} (its last value, the one that proxy set)
    arrived over HTTPS.
    """

    name = "https_redirect"

    def __init__(self, service: ServiceConfig, target: Callable[[], Tuple[Optional[str], int]]):
        super().__init__({}, None)
        self.service = service.name
        self.trusted = service.trusted_proxies
        self.target = target

    def secure(self, ctx: RequestContext) -> bool:
        """Whether C{ctx}'s request came over HTTPS."""
        request = ctx.request
        if request.isSecure():
            return True
        if not self.trusted:
            return False
        proto = request.requestHeaders.getRawHeaders(b"x-forwarded-proto")
        if not proto or proto[-1].split(b",")[-1].strip().lower() != b"https":
            return False
        return _trusted(client_ip(request), self.trusted)

    def location(self, ctx: RequestContext) -> bytes:
        """Where the request is redirected."""
        request = ctx.request
        host, port = self.target()
        if host is None:
            host = _request_host_name(request)
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        authority = host if port == 443 else f"{host}:{port}"
        target = request.uri
        if not target.startswith(b"/"):
            # An absolute-form request target: keep its path and query.
            rest = target.partition(b"://")[2]
            slash = rest.find(b"/")
            target = rest[slash:] if slash >= 0 else b"/"
        return b"https://" + authority.encode("idna") + target

    def filter(self, ctx: RequestContext) -> None:
        if self.secure(ctx):
            return
        ctx.response.set_header(b"Location", self.location(ctx))
        ctx.answer(301 if ctx.method in ("GET", "HEAD") else 308)


def _trusted(ip: str, networks: Sequence[Any]) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return any(address in network for network in networks)


def _request_host_name(request: Any) -> str:
    """The Host header's name without the port; the local address when unusable."""
    header = request.getHeader(b"host")
    if header:
        text = header.decode("latin-1").strip()
        if text.startswith("["):
            name = text[1 : text.find("]")] if "]" in text else ""
            if name and all(c in "0123456789abcdefABCDEF:." for c in name):
                return name
        else:
            name = text.rpartition(":")[0] if text.count(":") == 1 else text
            if _HOST_NAME.match(name):
                return name
    return getattr(request.getHost(), "host", "localhost")


class _ForwardedRequest:
    """
    The client's request as the upstream is sent it: the same request with
    another target (the path without the service's prefix).  Everything
    else, reads and writes, is the client's request.
    """

    def __init__(self, request: Any, uri: bytes) -> None:
        object.__setattr__(self, "_request", request)
        object.__setattr__(self, "uri", uri)
        object.__setattr__(self, "path", uri.partition(b"?")[0])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._request, name, value)


def strip_prefix(request: Any, segments: int) -> bytes:
    """
    The request's target without the first C{segments} segments of its path
    below the point where the router is mounted (the service's prefix, which
    the router matched), and with its query.
    """
    uri = request.uri
    if not uri.startswith(b"/"):
        rest = uri.partition(b"://")[2]
        slash = rest.find(b"/")
        uri = rest[slash:] if slash >= 0 else b"/"
    path, mark, query = uri.partition(b"?")
    parts = path[1:].split(b"/")
    mounted = len(getattr(request, "prepath", None) or ())
    kept = parts[:mounted] + parts[mounted + segments :]
    return b"/" + b"/".join(kept) + mark + query


class ServiceProxy(Filter):
    """
    Forwards to the upstream of the version the service's canary picks
    (kept as C{ctx.upstream_version}, for the tracing flow and logs).

    @ivar versions: the L{infini_gateway.upstream.upstreams.Upstream} of
        each version, by version name.
    @ivar strip: how many path segments (the service's prefix) are left
        out of the forwarded path.
    """

    name = "proxy"

    def __init__(
        self, service: str, chooser: VersionChooser, versions: Mapping[str, Any], strip: int
    ) -> None:
        super().__init__({}, None)
        self.service = service
        self.chooser = chooser
        self.versions = dict(versions)
        self.strip = strip

    async def filter(self, ctx: RequestContext) -> None:
        if ctx.response.sent:
            return
        version = self.chooser.choose(ctx)
        ctx.upstream_version = version
        upstream = self.versions[version]
        if not self.strip:
            await forward(ctx, upstream)
            return
        # The router's context keeps the client's request as it came (the
        # tracing flow records that one); the upstream gets the stripped path.
        forwarded = RequestContext.__new__(RequestContext)
        forwarded.__dict__.update(ctx.__dict__)
        forwarded.request = _ForwardedRequest(ctx.request, strip_prefix(ctx.request, self.strip))
        try:
            await forward(forwarded, upstream)
        finally:
            ctx.stopped = ctx.stopped or forwarded.stopped


def merge_plugins(
    service: Sequence[FilterSpec], route: Sequence[FilterSpec]
) -> List[Tuple[str, FilterSpec]]:
    """
    The plugins a route runs, as C{("service" | "route", spec)}: the
    service's in order, each replaced in place by the route's plugins of the
    same name, then the route's other plugins.
    """
    names = {spec.name for spec in route}
    merged: List[Tuple[str, FilterSpec]] = []
    placed = set()
    for spec in service:
        if spec.name not in names:
            merged.append(("service", spec))
        elif spec.name not in placed:
            placed.add(spec.name)
            merged += [("route", r) for r in route if r.name == spec.name]
    merged += [("route", r) for r in route if r.name not in placed]
    return merged


def _prefix_segments(prefix: str) -> int:
    prefix = prefix.rstrip("/")
    return len(split_path(prefix)) if prefix else 0


@attrs.define
class _EntryPorts:
    """Ports of the entries as bound (when the gateway runs), else as configured."""

    entries: Mapping[str, Any] = attrs.field(factory=dict)

    def port(self, entry: Entry) -> int:
        service = self.entries.get(entry.name)
        listening = getattr(service, "port", None)
        if listening is not None:
            return listening.getHost().port
        return entry.network.port


class ServiceRouting:
    """
    The services of a configuration, compiled.

    @ivar rules: the rules each router gets, by router name.
    @ivar flows: the routes' flows, by flow name.
    @ivar choosers: each published service's L{VersionChooser}, by name.
    """

    def __init__(self, config: GatewayConfig, runtime: Any) -> None:
        self.config = config
        self.rules: Dict[str, List[Rule]] = {}
        self.flows: Dict[str, Flow] = {}
        self.choosers: Dict[str, VersionChooser] = {}
        self._ports = _EntryPorts()
        problems: List[str] = []
        taken = {flow.name for flow in config.flows}
        for service in config.services:
            if service.published:
                self._compile(service, runtime, taken, problems)
        if problems:
            raise ConfigError(problems)

    def router_config(self, router: RouterConfig) -> RouterConfig:
        """C{router} with the rules of the services it serves after its own."""
        extra = self.rules.get(router.name)
        if not extra:
            return router
        return attrs.evolve(router, rules=tuple(router.rules) + tuple(extra))

    def attach_entries(self, entries: Mapping[str, Any]) -> None:
        """
        The running entries (L{infini_gateway.entry.EntryService} by name):
        redirects then name the port an HTTPS entry actually bound.
        """
        self._ports.entries = entries

    def https_target(self, service: ServiceConfig) -> Callable[[], Tuple[Optional[str], int]]:
        """
        Where an HTTPS-only service redirects to: the first enabled TLS entry
        of a router serving it, as C{(publish host or None, port)}; without
        one, the request's host on port 443.
        """
        entry = None
        for candidate in self.config.entries:
            if (
                candidate.enabled
                and candidate.tls.enabled
                and getattr(candidate, "protocol", "http") == "http"
                and candidate.router in service.routers
            ):
                entry = candidate
                break
        ports = self._ports

        def target() -> Tuple[Optional[str], int]:
            if entry is None:
                return None, 443
            if entry.network.publish:
                host, port = parse_binding(entry.network.publish)
                return host, port
            return None, ports.port(entry)

        return target

    def _build(self, spec: FilterSpec, runtime: Any, problems: List[str]) -> Optional[Filter]:
        try:
            return filter_class(spec.name)(spec.params, runtime)
        except ValueError as e:
            problems.append(f"{spec.where or spec.name}: {e}")
            return None

    def _compile(
        self, service: ServiceConfig, runtime: Any, taken: set, problems: List[str]
    ) -> None:
        versions = {}
        missing = []
        for version in service.upstreams:
            try:
                versions[version.version] = runtime.upstreams[version.upstream]
            except KeyError:
                missing.append(
                    f"{self.config.source}: service {service.name!r}: version"
                    f" {version.version!r}: no upstream named {version.upstream!r}"
                )
        if missing:
            problems += missing
            return
        chooser = self.choosers[service.name] = VersionChooser(service)
        shared = {id(spec): self._build(spec, runtime, problems) for spec in service.plugins}
        redirect = None
        if "http" not in service.protocols:
            redirect = HttpsRedirect(service, self.https_target(service))
        strip = _prefix_segments(service.path_prefix)
        for route in service.routes:
            if not route.published:
                continue
            name = flow_name(service.name, route.name)
            if name in taken:
                problems.append(
                    f"{self.config.source}: service {service.name!r}: route"
                    f" {route.name!r}: its flow name {name!r} is taken by a flow"
                )
                continue
            taken.add(name)
            steps: List[Tuple[str, str, Filter]] = []
            if redirect is not None:
                steps.append((name, redirect.name, redirect))
            for origin, spec in merge_plugins(service.plugins, route.plugins):
                if origin == "service":
                    built = shared[id(spec)]
                else:
                    built = self._build(spec, runtime, problems)
                if built is not None:
                    steps.append((name, spec.name, built))
            proxy = ServiceProxy(
                service.name, chooser, versions, strip if route.strip_path_prefix else 0
            )
            steps.append((name, proxy.name, proxy))
            self.flows[name] = Flow(name, steps)
            rule = _route_rule(service, route, name)
            for router in service.routers:
                self.rules.setdefault(router, []).append(rule)


def _route_rule(service: ServiceConfig, route: ServiceRoute, flow: str) -> Rule:
    return Rule(
        methods=route.methods,
        patterns=tuple(join_path(service.path_prefix, path) for path in route.paths),
        flows=(flow,),
        hosts=service.hosts,
    )


def compile_services(config: GatewayConfig, runtime: Any) -> ServiceRouting:
    """
    Compile C{config}'s services: the rules to add to each router and the
    flows they run.  C{runtime} gives the upstreams and builds the plugins.

    @raise ConfigError: a plugin refused its parameters.
    """
    return ServiceRouting(config, runtime)


def check_service_removal(old: GatewayConfig, new: GatewayConfig) -> List[str]:
    """
    The problems of replacing configuration C{old} by C{new} at run time:
    a service of C{old} that still has routes there cannot be removed (its
    routes must be removed first, by an earlier change), as API7 Cloud says.

    @return: one message per service, empty when the change is allowed.
    """
    kept = {service.name for service in new.services}
    problems = []
    for service in old.services:
        if service.name in kept or not service.routes:
            continue
        names = ", ".join(route.name for route in service.routes)
        problems.append(
            f"service {service.name!r} cannot be removed: it still has"
            f" {len(service.routes)} route{'s' if len(service.routes) > 1 else ''}"
            f" ({names}); remove its routes first, then the service"
        )
    return problems


__all__ = [
    "HttpsRedirect",
    "ServiceProxy",
    "ServiceRouting",
    "check_service_removal",
    "compile_services",
    "flow_name",
    "merge_plugins",
]
