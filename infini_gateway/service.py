"""
The gateway's service tree, built from a configuration.

L{GatewayService} is a MultiService with one L{EntryService} child per
enabled entry.  Building it starts nothing and touches no socket; entries
bind when the tree starts (all TLS material is prepared first, so that a bad
certificate stops the gateway before any entry binds).
"""

import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

import attrs
from twisted.application.service import MultiService
from twisted.logger import Logger
from twisted.web.server import Site

from infini_gateway.config import config_from_dict, load_config
from infini_gateway.config.model import GatewayConfig
from infini_gateway.entry import EntryBindError, EntryService
from infini_gateway.flow import Flow, build_flows
from infini_gateway.router import Router
from infini_gateway.tracing import Tracer

log = Logger()

ConfigSource = Union[GatewayConfig, Mapping[str, Any], str, "os.PathLike[str]"]


@attrs.define
class Runtime:
    """What filters may use besides the request: the reactor and the config."""

    reactor: Any
    config: GatewayConfig
    cleanups: List[Callable[[], Any]] = attrs.field(factory=list)
    _upstreams: Any = attrs.field(default=None, init=False, repr=False)

    @property
    def upstreams(self) -> Any:
        """
        The L{infini_gateway.upstream.UpstreamSet}: every upstream by name
        (endpoints, balancer, connection pool), built at first use.
        """
        if self._upstreams is None:
            from infini_gateway.upstream.upstreams import UpstreamSet

            self._upstreams = UpstreamSet(self.config, self.reactor, self.resolve)
        return self._upstreams

    def resolve(self, path: str) -> str:
        """A configured path, relative to the config file's directory."""
        return os.path.join(self.config.base_dir, os.path.expanduser(path))

    def on_stop(self, cleanup: Callable[[], Any]) -> None:
        """
        Call C{cleanup} when the gateway stops (a filter closing its file,
        say); it may be called again at each later stop.
        """
        self.cleanups.append(cleanup)

    def stop(self) -> None:
        """Run the cleanups registered with L{on_stop}, logging failures."""
        for cleanup in self.cleanups:
            try:
                cleanup()
            except Exception:
                log.failure("cleanup {cleanup!r} failed", cleanup=cleanup)


def as_config(source: ConfigSource) -> GatewayConfig:
    """A L{GatewayConfig} from a config, a dict, or the path of a YAML file."""
    if isinstance(source, GatewayConfig):
        return source
    if isinstance(source, Mapping):
        return config_from_dict(source)
    return load_config(os.fspath(source))


def _default_reactor(reactor: Any) -> Any:
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        return global_reactor
    return reactor


class GatewayService(MultiService):
    """
    The whole gateway as a service: add it to any service tree.

    @ivar config: the L{GatewayConfig} it was built from.
    @ivar routers: the L{Router} resources, by router name.
    @ivar entries: the L{EntryService} children, by entry name.
    """

    def __init__(self, config: GatewayConfig, reactor: Any = None) -> None:
        super().__init__()
        self.config = config
        self.reactor = _default_reactor(reactor)
        self.runtime = Runtime(self.reactor, config)
        # By name, for the proxy filters, the health checks and the admin API.
        self.upstreams = self.runtime.upstreams
        self.flows: Mapping[str, Flow] = build_flows(config.flows, self.runtime)
        self.routers: Dict[str, Router] = {
            router.name: Router(
                router, self.flows, self.reactor, tracer=_tracer(router, self.flows, self.reactor)
            )
            for router in config.routers
        }
        self.entries: Dict[str, EntryService] = {}
        for entry in config.entries:
            if not entry.enabled:
                log.info("entry {entry} is disabled", entry=entry.name)
                continue
            site = Site(self.routers[entry.router], timeout=entry.idle_timeout)
            site.displayTracebacks = False
            service = EntryService(
                entry,
                site,
                self.reactor,
                tls_options=_tls_options(self.runtime, entry),
                access=config.router(entry.router).access,
            )
            service.setServiceParent(self)
            self.entries[entry.name] = service
        # The FloatingIPService when floating_ip is enabled (its state() is
        # for the admin API); added last, so stopped first: it releases the
        # address before the entries close.
        self.floating_ip = None
        if config.floating_ip.enabled:
            from infini_gateway.floating_ip import FloatingIPService

            self.floating_ip = FloatingIPService(config.floating_ip, self.reactor)
            self.floating_ip.setServiceParent(self)

    def prepare(self) -> None:
        """
        Resolve the floating IP (when enabled) and load or generate every
        entry's TLS material; raises on a problem, before anything binds.
        """
        if self.floating_ip is not None:
            self.floating_ip.prepare()
        for entry in self.entries.values():
            entry.prepare()

    def privilegedStartService(self) -> None:
        self.prepare()
        super().privilegedStartService()

    def startService(self) -> None:
        self.prepare()
        super().startService()

    def stopService(self):
        d = super().stopService()
        d.addBoth(_after, self.runtime.stop)
        d.addBoth(lambda result: self.upstreams.close().addBoth(lambda _: result))
        return d


def _after(result: Any, call: Callable[[], Any]) -> Any:
    call()
    return result


def _tracer(router: Any, flows: Mapping[str, Flow], reactor: Any) -> Optional[Tracer]:
    """The router's L{Tracer}, when it names a C{tracing_flow}."""
    if router.tracing_flow is None:
        return None
    return Tracer(flows[router.tracing_flow], reactor)


def _tls_options(runtime: Runtime, entry):
    def options():
        from infini_gateway.tls import server_options

        return server_options(
            entry, runtime.resolve(runtime.config.paths.data), runtime.config.base_dir
        )

    return options


def build_service(source: ConfigSource, reactor: Any = None) -> GatewayService:
    """
    Build the gateway's service tree from a L{GatewayConfig}, a dict shaped
    like gateway.yml, or the path of a gateway.yml.  Nothing starts until
    the service does.

    @raise infini_gateway.config.ConfigError: the configuration is invalid.
    """
    return GatewayService(as_config(source), reactor)


def build_router(
    source: ConfigSource, name: str = "default", reactor: Any = None
) -> Router:
    """
    The router called C{name} as a plain twisted.web Resource, to mount in
    an existing Site (C{root.putChild(b"api", router)}).
    """
    config = as_config(source)
    reactor = _default_reactor(reactor)
    flows = build_flows(config.flows, Runtime(reactor, config))
    router = config.router(name)
    return Router(router, flows, reactor, tracer=_tracer(router, flows, reactor))


__all__ = [
    "EntryBindError",
    "GatewayService",
    "Runtime",
    "build_router",
    "build_service",
]
