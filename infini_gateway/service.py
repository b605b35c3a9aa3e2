"""
The gateway's service tree, built from a configuration.

L{GatewayService} is a MultiService with one L{EntryService} child per
enabled entry.  Building it starts nothing and touches no socket; entries
bind when the tree starts (all TLS material is prepared first, so that a bad
certificate stops the gateway before any entry binds).
"""

import gc
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Union

import attrs
from twisted.application.service import MultiService
from twisted.logger import Logger

from infini_gateway.config import config_from_dict, load_config
from infini_gateway.config.model import GatewayConfig
from infini_gateway.entry import EntryBindError, EntryService
from infini_gateway.flow import Flow, build_flows
from infini_gateway.http import GatewaySite, entry_limits
from infini_gateway.router import Router
from infini_gateway.services import compile_services
from infini_gateway.tracing import Tracer

log = Logger()

ConfigSource = Union[GatewayConfig, Mapping[str, Any], str, "os.PathLike[str]"]


@attrs.define
class Runtime:
    """What filters may use besides the request: the reactor and the config."""

    reactor: Any
    config: GatewayConfig
    cleanups: List[Callable[[], Any]] = attrs.field(factory=list)
    # A reloaded gateway's upstreams: those unchanged are kept (reload.py).
    previous_upstreams: Any = attrs.field(default=None, repr=False)
    _upstreams: Any = attrs.field(default=None, init=False, repr=False)

    @property
    def upstreams(self) -> Any:
        """
        The L{infini_gateway.upstream.UpstreamSet}: every upstream by name
        (endpoints, balancer, connection pool), built at first use.
        """
        if self._upstreams is None:
            from infini_gateway.upstream.upstreams import UpstreamSet

            self._upstreams = UpstreamSet(
                self.config, self.reactor, self.resolve, previous=self.previous_upstreams
            )
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
    @ivar metrics: the L{GatewayMetrics} (a Prometheus registry of its own).
    @ivar admin: the admin API's L{AdminService}, or None.
    @ivar reloader: the L{Reloader} behind L{reload}.
    """

    def __init__(
        self, config: GatewayConfig, reactor: Any = None, previous: Any = None
    ) -> None:
        """
        @param previous: the running gateway a reload builds this one for
            (L{infini_gateway.reload}): its metrics and unchanged upstreams
            are shared, and no admin API, reloader or watcher is made.
        """
        super().__init__()
        self.config = config
        self.reactor = _default_reactor(reactor)
        self.runtime = Runtime(
            self.reactor,
            config,
            previous_upstreams=(
                previous.upstreams
                if previous is not None and previous.config.base_dir == config.base_dir
                else None
            ),
        )
        from infini_gateway.metrics import GatewayMetrics

        self.metrics = previous.metrics if previous is not None else GatewayMetrics(self)
        # By name, for the proxy filters, the health checks and the admin API.
        self.upstreams = self.runtime.upstreams
        self.flows: Mapping[str, Flow] = build_flows(config.flows, self.runtime)
        # The service: section, as rules added to its routers and their flows.
        self.service_routing = compile_services(config, self.runtime)
        routed = {**self.flows, **self.service_routing.flows}
        self.routers: Dict[str, Router] = {
            router.name: Router(
                self.service_routing.router_config(router),
                routed,
                self.reactor,
                tracer=_tracer(router, self.flows, self.reactor),
            )
            for router in config.routers
        }
        # Health checks of every upstream, used by a filter or not: probes
        # start with the tree, before the entries listen.  The state of every
        # upstream and endpoint is self.health.state(), for the admin API.
        self.health = self.upstreams.health_service()
        self.health.setServiceParent(self)
        self.entries: Dict[str, EntryService] = {}
        self.service_routing.attach_entries(self.entries)
        for entry in config.entries:
            if not entry.enabled:
                log.info("entry {entry} is disabled", entry=entry.name)
                continue
            if entry.protocol != "http":
                self.entries[entry.name] = _layer4_entry(self, entry)
                continue
            site = GatewaySite(
                self.routers[entry.router].observed(self.metrics.entry(entry.name, entry.router)),
                entry_limits(entry),
                timeout=entry.idle_timeout,
                reactor=self.reactor,
            )
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
        for service in self.entries.values():
            service.shutdown_timeout = config.shutdown_timeout
        self.metrics.bind_upstreams(self.upstreams)
        # Operating it: the admin API, reloads, the file watcher.  A gateway
        # built for a reload has none: the running one keeps its own.
        self.admin = None
        self.reloader = None
        self.config_path = _config_path(config)
        if previous is None:
            from infini_gateway.reload import ConfigWatcher, Reloader

            self.reloader = Reloader(self)
            if config.api.enabled:
                from infini_gateway.admin import AdminService

                self.admin = AdminService(self)
                self.admin.shutdown_timeout = config.shutdown_timeout
                self.admin.setServiceParent(self)
            if self.config_path is not None and config.configs.auto_reload:
                ConfigWatcher(self, self.config_path, config.configs.interval).setServiceParent(
                    self
                )

    # Whether to hide the objects alive once the gateway has started or
    # reloaded from the garbage collector (see freeze_heap): the twistd
    # service does; an application embedding the gateway decides for itself.
    freezes_heap = False

    @staticmethod
    def adapt_config(config: GatewayConfig) -> GatewayConfig:
        """
        What this gateway makes of a configuration it loads or reloads:
        unchanged here; a supervisor or a worker of C{--workers} replaces it
        (L{infini_gateway.workers}).
        """
        return config

    def reload(self, config: GatewayConfig) -> Dict[str, Any]:
        """
        Switch to C{config} while serving: see L{infini_gateway.reload}.

        @return: what changed.
        @raise infini_gateway.config.ConfigError: C{config} is invalid;
            nothing changed.
        @raise infini_gateway.reload.ReloadError: it could not be applied;
            nothing changed.
        """
        return self.reloader.reload(config)

    def reload_file(self, path: Optional[str] = None) -> Dict[str, Any]:
        """L{reload} the configuration file (by default the one running)."""
        return self.reloader.reload_file(path)

    def prepare(self) -> None:
        """
        Resolve the floating IP (when enabled) and load or generate every
        entry's TLS material; raises on a problem, before anything binds.
        """
        if self.floating_ip is not None:
            self.floating_ip.prepare()
        for entry in self.entries.values():
            entry.prepare()
        if self.admin is not None:
            self.admin.prepare()

    def privilegedStartService(self) -> None:
        self.prepare()
        super().privilegedStartService()

    def startService(self) -> None:
        self.prepare()
        super().startService()

    def stopService(self):
        d = super().stopService()
        if self.reloader is not None:
            d.addBoth(_after, self.reloader.flush)
        d.addBoth(_after, self.runtime.stop)
        d.addBoth(lambda result: self.upstreams.close().addBoth(lambda _: result))
        return d


def freeze_heap() -> None:
    """
    Collect garbage once, then move every object still alive (modules, the
    configuration, route tables, connection pools) out of the garbage
    collector's sight (C{gc.freeze}), where CPython has it.

    Each full collection otherwise walks all of them while requests wait:
    about 50 ms every couple of seconds under load (measured with the
    benchmarks' full configuration), for objects that live as long as the
    process.  Objects frozen earlier are thawed first, so that what a
    reload left behind is collected.
    """
    if not hasattr(gc, "freeze"):
        return
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def _config_path(config: GatewayConfig) -> Optional[str]:
    """The absolute path of the file C{config} was read from, or None."""
    if config.source and os.path.isfile(config.source):
        return os.path.abspath(config.source)
    return None


def _after(result: Any, call: Callable[[], Any]) -> Any:
    call()
    return result


def _tracer(router: Any, flows: Mapping[str, Flow], reactor: Any) -> Optional[Tracer]:
    """The router's L{Tracer}, when it names a C{tracing_flow}."""
    if router.tracing_flow is None:
        return None
    return Tracer(flows[router.tracing_flow], reactor)


def _layer4_entry(gateway: GatewayService, entry) -> EntryService:
    """
    The service of a C{tcp} or C{sni} entry (a child of C{gateway}): its
    factory splices connections to upstreams instead of serving HTTP; the
    router it names, if any, gives only its client address lists.
    """
    if entry.protocol == "tcp":
        from infini_gateway.tcp import TCPForwardFactory

        factory: Any = TCPForwardFactory(
            entry, gateway.upstreams[entry.upstream], gateway.reactor
        )
    else:
        from infini_gateway.sni import SNIPassthroughFactory

        factory = SNIPassthroughFactory(entry, gateway.upstreams, gateway.reactor)
    access = gateway.config.router(entry.router).access if entry.router else None
    service = EntryService(
        entry,
        factory,
        gateway.reactor,
        tls_options=_tls_options(gateway.runtime, entry),
        access=access,
    )
    service.setServiceParent(gateway)
    return service


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
    runtime = Runtime(reactor, config)
    flows = build_flows(config.flows, runtime)
    routing = compile_services(config, runtime)
    router = config.router(name)
    return Router(
        routing.router_config(router),
        {**flows, **routing.flows},
        reactor,
        tracer=_tracer(router, flows, reactor),
    )


__all__ = [
    "EntryBindError",
    "GatewayService",
    "Runtime",
    "build_router",
    "build_service",
]
