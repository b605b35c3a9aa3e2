"""
Reloading a running gateway's configuration without dropping a request.

L{Reloader.reload} validates the new configuration completely and builds
the whole new object graph off to the side (a L{GatewayService} that is
never started: building one touches no socket), binds the entries it adds,
and only then swaps, with plain assignments:

  - new requests use the new routers, flows and upstreams; requests in
    flight keep the objects they started with, by reference;
  - an entry whose binding did not change keeps its listening socket: its
    Site's root becomes the new router (a tcp or sni entry's: its new
    forwarding factory), and its accept policy takes the new limits, client
    address lists and TLS certificate;
  - an added entry listens before the swap; a removed one stops listening
    and drains its connections (up to C{shutdown_timeout});
  - an upstream whose settings did not change is kept as it was (endpoints,
    health, connections); in a changed one, each endpoint still configured
    keeps its health state.

Anything wrong (an invalid file, a certificate that cannot be loaded, a
port that cannot be bound, a service removed while it has routes) changes
nothing: the error is logged, counted and raised, and the gateway keeps
serving with the configuration it had.

What a reload cannot change in place, the C{api} listener, the floating IP
and C{configs.interval}, is kept and reported as needing a restart.

L{ConfigWatcher} reloads the file when it changes (C{configs.auto_reload}).
"""

import os
from typing import Any, Dict, List, Optional, Tuple

from twisted.application.internet import TimerService
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger
from twisted.web.server import Site

from infini_gateway.config import ConfigError, load_config
from infini_gateway.config.model import GatewayConfig
from infini_gateway.service import freeze_heap

log = Logger()

# Health bookkeeping of an endpoint (infini_gateway.upstream.health) that a
# reload carries over to the same endpoint of a changed upstream.
_HEALTH_FIELDS = (
    "active_healthy",
    "successes",
    "http_failures",
    "tcp_failures",
    "timeouts",
    "consecutive_5xx",
    "consecutive_gateway_failure",
    "consecutive_timeouts",
    "ejected_until",
    "times_ejected",
    "last_probe",
    "last_change",
)

# The least time the objects a reload replaced are kept before their files
# and connection pools are closed (requests in flight may still use them).
MIN_RETIRE_DELAY = 5.0


class ReloadError(Exception):
    """
    A reload was refused; nothing changed.

    @ivar problems: one message per problem.
    """

    def __init__(self, problems: List[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class _Retired:
    """What a reload replaced, closed once requests in flight had time to end."""

    def __init__(self, gateway: Any, routers: List[Any]) -> None:
        self.runtime = gateway.runtime
        self.upstreams = gateway.upstreams
        self.routers = routers
        self.call: Any = None


class Reloader:
    """
    Reloads one L{infini_gateway.service.GatewayService}.

    @ivar last: what the last reload did (or why it was refused), for the
        admin API.
    """

    def __init__(self, gateway: Any) -> None:
        self.gateway = gateway
        self.last: Optional[Dict[str, Any]] = None
        self._retired: List[_Retired] = []

    # Entry points

    def reload_file(self, path: Optional[str] = None) -> Dict[str, Any]:
        """
        Load, validate and apply the configuration file (by default the
        one the gateway runs).

        @raise ConfigError: the file is invalid (nothing changed).
        @raise ReloadError: it could not be applied (nothing changed).
        """
        path = path or self.gateway.config_path
        if path is None:
            self._refused(["the configuration was not read from a file"])
        try:
            config = load_config(path)
        except ConfigError as e:
            self._refused(e.problems, e)
        return self.reload(config)

    def reload(self, config: GatewayConfig) -> Dict[str, Any]:
        """
        Apply C{config} (already loaded) as the module docstring says.

        @return: what changed: C{{"entries": {"kept": [...], "added": [...],
            "removed": [...]}, "upstreams": {...}, "restart_required": [...]}}.
        @raise ConfigError: the configuration is invalid (nothing changed).
        @raise ReloadError: it could not be applied (nothing changed).
        """
        gateway = self.gateway
        config = gateway.adapt_config(config)
        problems = _service_removal_problems(gateway.config, config)
        if problems:
            self._refused(problems)
        try:
            fresh = type(gateway)(config, gateway.reactor, previous=gateway)
        except ConfigError as e:
            self._refused(e.problems, e)
        except Exception as e:
            log.failure("reload: building the new configuration failed")
            self._refused([f"{config.source}: {e}"], e)
        # The new set knows the old one only while it was being built.
        if getattr(fresh.upstreams, "previous", None) is not None:
            fresh.upstreams.previous = None
        fresh.runtime.previous_upstreams = None
        try:
            plan = self._prepare(fresh)
        except Exception as e:
            self._discard(fresh)
            if isinstance(e, (ConfigError, ReloadError)):
                self._refused(e.problems, e)
            log.failure("reload: preparing the new entries failed")
            self._refused([str(e)], e)
        result = self._commit(fresh, plan)
        if gateway.freezes_heap:
            freeze_heap()
        gateway.metrics.reloaded(True)
        self.last = dict(result, ok=True, at=gateway.reactor.seconds())
        log.info(
            "configuration reloaded from {source}: entries kept {kept}, added {added},"
            " removed {removed}{restart}",
            source=config.source,
            kept=result["entries"]["kept"],
            added=result["entries"]["added"],
            removed=result["entries"]["removed"],
            restart=(
                f"; needs a restart to change: {', '.join(result['restart_required'])}"
                if result["restart_required"]
                else ""
            ),
        )
        return result

    def _refused(
        self, problems: List[str], cause: Optional[BaseException] = None
    ) -> None:
        gateway = self.gateway
        gateway.metrics.reloaded(False)
        self.last = {
            "ok": False,
            "problems": list(problems),
            "at": gateway.reactor.seconds(),
        }
        log.error(
            "configuration not reloaded, still serving the previous one:\n{problems}",
            problems="\n".join(problems),
        )
        if isinstance(cause, ConfigError):
            raise cause
        raise ReloadError(problems) from cause

    # Building off to the side

    def _prepare(self, fresh: Any) -> Dict[str, Any]:
        """
        Decide each entry's fate, load the certificates of kept entries and
        bind added ones; raises (having unbound what it bound) on a problem.
        """
        gateway = self.gateway
        old_entries: Dict[str, Any] = dict(gateway.entries)
        kept: List[Tuple[Any, Any, Any]] = []
        added: List[Any] = []
        removed: List[Any] = []
        for name, new in fresh.entries.items():
            old = old_entries.get(name)
            if old is not None and self._keeps_listener(old, new, fresh):
                tls = None
                if new.entry.tls.enabled and new._tls_options is not None:
                    tls = new._tls_options()
                kept.append((old, new, tls))
            else:
                added.append(new)
                if old is not None:
                    removed.append(old)
        removed += [
            old for name, old in old_entries.items() if name not in fresh.entries
        ]

        # An added entry on the address a removed one still listens on binds
        # once that one has stopped listening.
        busy = {
            (old.entry.network.host, old.port.getHost().port)
            for old in removed
            if getattr(old, "port", None) is not None
        }
        now: List[Any] = []
        later: List[Any] = []
        for service in added:
            network = service.entry.network
            if (network.host, network.port) in busy and network.port:
                later.append(service)
            else:
                now.append(service)
        bound: List[Any] = []
        try:
            for service in now:
                service.prepare()
                service.bind()
                bound.append(service)
            for service in later:
                service.prepare()
        except Exception:
            for service in bound:
                service.stop_listening()
            raise
        _carry_health(gateway.upstreams, fresh.upstreams)
        return {"kept": kept, "now": now, "later": later, "removed": removed}

    def _keeps_listener(self, old: Any, new: Any, fresh: Any) -> bool:
        """Whether C{old} keeps its socket and switches to what C{new} serves."""
        return (
            type(old) is type(new)
            and hasattr(old, "switch")
            and old.entry.network == new.entry.network
            and getattr(old.entry, "protocol", "http")
            == getattr(new.entry, "protocol", "http")
        )

    def _discard(self, fresh: Any) -> None:
        """Close what a refused reload built."""
        gateway = self.gateway
        for name, upstream in gateway.upstreams.items():
            # The new health service, built for kept upstreams too, named
            # its checker on them: give them back theirs.
            checkers = getattr(getattr(gateway, "health", None), "checkers", {})
            if hasattr(upstream, "checker") and name in checkers:
                upstream.checker = checkers[name]
        try:
            fresh.runtime.stop()
        finally:
            _close_pools(fresh.upstreams, keep=gateway.upstreams)

    # The swap

    def _commit(self, fresh: Any, plan: Dict[str, Any]) -> Dict[str, Any]:
        gateway = self.gateway
        old_config: GatewayConfig = gateway.config
        config: GatewayConfig = fresh.config
        retired = _Retired(gateway, list(gateway.routers.values()))
        upstreams_before = set(gateway.upstreams)
        kept_upstreams = [
            name
            for name, upstream in fresh.upstreams.items()
            if gateway.upstreams.get(name) is upstream
        ]

        # The data plane: one assignment each; requests in flight hold the
        # old objects by reference.
        gateway.config = config
        gateway.runtime = fresh.runtime
        gateway.upstreams = fresh.upstreams
        gateway.flows = fresh.flows
        gateway.routers = fresh.routers
        if hasattr(fresh, "service_routing"):
            gateway.service_routing = fresh.service_routing

        old_health = getattr(gateway, "health", None)
        new_health = getattr(fresh, "health", None)
        if new_health is not None:
            new_health.disownServiceParent()
            if old_health is not None and old_health.parent is gateway:
                _logged(
                    old_health.disownServiceParent(),
                    "stopping the previous health checks",
                )
            new_health.setServiceParent(gateway)
            gateway.health = new_health

        entries: Dict[str, Any] = {}
        kept_names = []
        for old, new, tls in plan["kept"]:
            root = new.site.resource if isinstance(new.site, Site) else new.site
            if isinstance(new.site, Site) and hasattr(new.site, "limits"):
                # The entry's HTTP limits, for new connections (GatewaySite).
                old.site.limits = new.site.limits
            old.switch(new.entry, root, tls, new.access)
            old.shutdown_timeout = config.shutdown_timeout
            entries[old.entry.name] = old
            kept_names.append(old.entry.name)
        later = plan["later"]
        closed = []
        for old in plan["removed"]:
            gateway.metrics.retire_entry(old)
            old.shutdown_timeout = config.shutdown_timeout
            if hasattr(old, "stop_listening"):
                closed.append(old.stop_listening())
            if old.parent is gateway:
                _logged(old.disownServiceParent(), f"stopping entry {old.entry.name}")
        for service in plan["now"]:
            service.disownServiceParent()
            service.setServiceParent(gateway)
            entries[service.entry.name] = service
        for service in later:
            service.disownServiceParent()
            entries[service.entry.name] = service
            self._bind_later(service, closed)
        gateway.entries = entries
        routing = getattr(gateway, "service_routing", None)
        if routing is not None and hasattr(routing, "attach_entries"):
            routing.attach_entries(entries)
        gateway.metrics.bind_upstreams(gateway.upstreams)

        self._retire(retired, config.shutdown_timeout)

        restart = []
        if (config.api.enabled, config.api.network, config.api.tls) != (
            old_config.api.enabled,
            old_config.api.network,
            old_config.api.tls,
        ):
            restart.append("api")
        if config.floating_ip != old_config.floating_ip:
            restart.append("floating_ip")
        if config.configs.interval != old_config.configs.interval:
            restart.append("configs.interval")
        return {
            "source": config.source,
            "entries": {
                "kept": sorted(kept_names),
                "added": sorted(s.entry.name for s in plan["now"] + later),
                "removed": sorted(
                    s.entry.name for s in plan["removed"] if s.entry.name not in entries
                ),
                "restarted": sorted(
                    s.entry.name for s in plan["removed"] if s.entry.name in entries
                ),
            },
            "upstreams": {
                "kept": sorted(kept_upstreams),
                "replaced": sorted(
                    n
                    for n in gateway.upstreams
                    if n in upstreams_before and n not in kept_upstreams
                ),
                "added": sorted(
                    n for n in gateway.upstreams if n not in upstreams_before
                ),
                "removed": sorted(
                    n for n in upstreams_before if n not in gateway.upstreams
                ),
            },
            "restart_required": restart,
        }

    def _bind_later(self, service: Any, closed: List[Deferred]) -> None:
        """Bind C{service} once the removed entries have let its address go."""
        gateway = self.gateway

        def bind(_: Any = None) -> None:
            if gateway.entries.get(service.entry.name) is not service:
                return
            try:
                service.bind()
            except Exception:
                log.failure(
                    "reload: entry {entry} could not listen", entry=service.entry.name
                )
                return
            service.setServiceParent(gateway)

        DeferredList(closed, consumeErrors=True).addCallback(bind)

    # Retiring what was replaced

    def _retire(self, retired: _Retired, delay: float) -> None:
        self._retired.append(retired)
        retired.call = self.gateway.reactor.callLater(
            max(delay, MIN_RETIRE_DELAY), self._close, retired
        )

    def _close(self, retired: _Retired) -> None:
        if retired in self._retired:
            self._retired.remove(retired)
        if retired.call is not None and retired.call.active():
            retired.call.cancel()
        retired.call = None
        try:
            self.gateway.metrics.retire_tracers(retired.routers)
            retired.runtime.stop()
            _close_pools(retired.upstreams, keep=self.gateway.upstreams)
        except Exception:
            log.failure("reload: closing the previous configuration's objects failed")

    def retiring_routers(self) -> List[Any]:
        """The routers replaced by reloads and not closed yet (metrics)."""
        return [router for retired in self._retired for router in retired.routers]

    def flush(self) -> None:
        """Close everything replaced now (the gateway stops)."""
        for retired in list(self._retired):
            self._close(retired)


def _logged(d: Any, what: str) -> Any:
    if isinstance(d, Deferred):
        d.addErrback(lambda f: log.failure("reload: " + what + " failed", f))
    return d


def _service_removal_problems(old: GatewayConfig, new: GatewayConfig) -> List[str]:
    """The services module's objections to the change, if it has any."""
    try:
        from infini_gateway.services import check_service_removal
    except ImportError:
        return []
    problems = check_service_removal(old, new)
    return list(problems or ())


def _carry_health(old_set: Any, new_set: Any) -> None:
    """
    In each upstream the reload replaced, every endpoint still configured
    keeps its health state (kept upstreams keep everything already).
    """
    for name, new in new_set.items():
        old = old_set.get(name)
        if old is None or old is new:
            continue
        previous = {endpoint.url: endpoint for endpoint in old.endpoints}
        for endpoint in new.endpoints:
            before = previous.get(endpoint.url)
            if before is None:
                continue
            endpoint.healthy = before.healthy
            endpoint.ewma = before.ewma
            endpoint.ewma_stamp = before.ewma_stamp
            _carry_endpoint_health(old, new, before, endpoint)


def _carry_endpoint_health(old: Any, new: Any, before: Any, endpoint: Any) -> None:
    old_health = getattr(old, "health", None)
    new_health = getattr(new, "health", None)
    if old_health is None or new_health is None:
        return
    try:
        source, target = old_health[before], new_health[endpoint]
    except (KeyError, TypeError):
        return
    for field in _HEALTH_FIELDS:
        if hasattr(source, field) and hasattr(target, field):
            setattr(target, field, getattr(source, field))


def _close_pools(upstreams: Any, keep: Any) -> None:
    """Close the idle connections of C{upstreams}' pools that C{keep} does not share."""
    pools = getattr(upstreams, "pools", None)
    if pools is None:
        return
    shared = {
        id(client)
        for client in getattr(getattr(keep, "pools", None), "clients", {}).values()
    }
    for client in list(pools.clients.values()):
        if id(client) not in shared:
            _logged(client.pool.closeCachedConnections(), "closing a connection pool")
    treq_pool = getattr(pools, "_treq_pool", None)
    if treq_pool is not None and treq_pool is not getattr(
        getattr(keep, "pools", None), "_treq_pool", None
    ):
        _logged(treq_pool.closeCachedConnections(), "closing a connection pool")


class ConfigWatcher(TimerService):
    """
    Looks at the configuration file every C{interval} seconds and reloads
    it when its modification time, size or inode changed, while the
    gateway's C{configs.auto_reload} is true.  A file that cannot be read
    or is invalid is logged (once per change) and the gateway keeps its
    configuration.
    """

    def __init__(
        self, gateway: Any, path: str, interval: float, clock: Any = None
    ) -> None:
        super().__init__(interval, self._look)
        if clock is not None:
            self.clock = clock
        self.gateway = gateway
        self.path = path
        self._seen = _signature(path)

    def _look(self) -> None:
        try:
            signature = _signature(self.path)
            if signature == self._seen or signature is None:
                return
            self._seen = signature
            if not self.gateway.config.configs.auto_reload:
                return
            log.info("{path} changed, reloading it", path=self.path)
            try:
                self.gateway.reload_file()
            except (ConfigError, ReloadError):
                pass  # logged by the reloader
        except Exception:
            log.failure("watching {path} failed", path=self.path)


def _signature(path: str) -> Optional[Tuple[int, int, int, int]]:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino, stat.st_dev)


__all__ = ["ConfigWatcher", "ReloadError", "Reloader"]
