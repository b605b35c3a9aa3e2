"""
The gateway's metrics, in a prometheus-client registry of its own.

Each L{GatewayMetrics} has its own C{CollectorRegistry} (never the global
one), so that several gateways embedded in one process, and tests, stay
apart.  What the gateway already knows (open connections, requests in
flight, endpoint health, floating-IP role) is read when the registry is
scraped; only what would otherwise be lost is counted as it happens, on
objects looked up once: an entry's L{EntryRequests} caches the child
counter of each (rule, status class) it has seen, an upstream's
L{UpstreamObserver} its children.
"""

import platform
import time
from typing import Any, Dict, Iterable, List, Optional, Tuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

PREFIX = "infini_gateway"

CONTENT_TYPE = CONTENT_TYPE_LATEST

# Seconds: from 1 ms to 30 s, for requests that mostly take milliseconds.
DURATION_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)

_STATUS_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


def status_class(request: Any) -> str:
    """C{"2xx"} ... C{"5xx"}, or C{"aborted"}: the client went away first."""
    if not request.finished:
        return "aborted"
    return _STATUS_CLASSES.get(request.code // 100, "other")


def rule_label(ctx: Any) -> str:
    """The rule that ran: its text, C{default_flow}, or C{none} (no route)."""
    if ctx.rule is not None:
        return ctx.rule
    return "default_flow" if ctx.flow_name is not None else "none"


def failure_reason(reason: str) -> str:
    """
    A failure's reason as a label: without the details that would make
    every failure a series of its own (C{"cannot connect: ..."} is
    C{"cannot connect"}, C{"no endpoint available (tried 2)"} is C{"no
    endpoint available"}).
    """
    return reason.split(":", 1)[0].split(" (", 1)[0].strip() or "unknown"


class EntryRequests:
    """
    The requests of one entry through one router: a router's observer
    (L{infini_gateway.router.Router.observed}).

    @ivar in_flight: requests routed and not yet over.
    """

    __slots__ = (
        "_children",
        "_clock",
        "_counter",
        "_duration",
        "entry",
        "in_flight",
        "router",
    )

    def __init__(self, metrics: "GatewayMetrics", entry: str, router: str) -> None:
        self.entry = entry
        self.router = router
        self.in_flight = 0
        self._counter = metrics.requests
        self._children: Dict[Tuple[Any, str], Any] = {}
        self._duration = metrics.request_duration.labels(entry)
        self._clock = metrics.clock

    def started(self, ctx: Any) -> None:
        self.in_flight += 1

    def finished(self, ctx: Any) -> None:
        self.in_flight -= 1
        status = status_class(ctx.request)
        key = (ctx.rule, ctx.flow_name is None, status)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._counter.labels(
                self.entry, self.router, rule_label(ctx), status
            )
        child.inc()
        self._duration.observe(max(0.0, self._clock.seconds() - ctx.started))


class UpstreamObserver:
    """
    One upstream's attempts, told by the proxy: duration, retries, failures
    by reason, and each endpoint's requests and failures.

    @ivar endpoints: C{{url: [requests, failures]}}.
    """

    def __init__(self, metrics: "GatewayMetrics", name: str) -> None:
        self.name = name
        self._duration = metrics.upstream_duration.labels(name)
        self._retries = metrics.upstream_retries.labels(name)
        self._failures_counter = metrics.upstream_failures
        self._failures: Dict[str, Any] = {}
        self.endpoints: Dict[str, List[int]] = {}

    def attempted(
        self, endpoint: Any, attempt: int, seconds: float, failure: Any
    ) -> None:
        """One attempt on C{endpoint}: C{failure} is None when it was answered."""
        self._duration.observe(seconds)
        if attempt:
            self._retries.inc()
        counts = self.endpoints.get(endpoint.url)
        if counts is None:
            counts = self.endpoints[endpoint.url] = [0, 0]
        counts[0] += 1
        if failure is not None:
            counts[1] += 1
            self._failed(failure.reason)

    def gave_up(self, failure: Any) -> None:
        """The request failed without a further attempt (no endpoint, retry_timeout)."""
        self._failed(failure.reason)

    def _failed(self, reason: str) -> None:
        label = failure_reason(reason)
        child = self._failures.get(label)
        if child is None:
            child = self._failures[label] = self._failures_counter.labels(
                self.name, label
            )
        child.inc()


class GatewayMetrics:
    """
    The metrics of one gateway.

    @ivar registry: its C{CollectorRegistry}; L{text} renders it.
    """

    def __init__(self, gateway: Any, clock: Any = None) -> None:
        self.gateway = gateway
        self.clock = clock if clock is not None else gateway.reactor
        self.started = time.time()
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.requests = Counter(
            f"{PREFIX}_requests",
            "Requests by entry, router, rule and status class"
            " (aborted: the client went away first).",
            ["entry", "router", "rule", "status"],
            registry=registry,
        )
        self.request_duration = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Time from routing a request to the end of its response, by entry.",
            ["entry"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.upstream_duration = Histogram(
            f"{PREFIX}_upstream_request_duration_seconds",
            "Time of each attempt on an upstream, to the end of the answer relayed.",
            ["upstream"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.upstream_retries = Counter(
            f"{PREFIX}_upstream_retries",
            "Attempts after the first, by upstream.",
            ["upstream"],
            registry=registry,
        )
        self.upstream_failures = Counter(
            f"{PREFIX}_upstream_failures",
            "Failed attempts, and requests given up without one, by upstream and reason.",
            ["upstream", "reason"],
            registry=registry,
        )
        self.reloads = Counter(
            f"{PREFIX}_config_reloads",
            "Configuration reloads by result (success, failure).",
            ["result"],
            registry=registry,
        )
        self.last_reload_successful = Gauge(
            f"{PREFIX}_config_last_reload_successful",
            "1 when the last reload succeeded (or none was tried), else 0.",
            registry=registry,
        )
        self.last_reload_successful.set(1)
        self._entries: Dict[Tuple[str, str], EntryRequests] = {}
        self._upstreams: Dict[str, UpstreamObserver] = {}
        # Counts of what was replaced by a reload, added to the live ones so
        # that counters never go down.
        self._entry_base: Dict[str, List[int]] = {}
        self._tracing_base: Dict[str, int] = {}
        registry.register(_LiveCollector(self))
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)

    # Observers

    def entry(self, entry: str, router: str) -> EntryRequests:
        """The observer of entry C{entry}'s requests through C{router}."""
        key = (entry, router)
        observer = self._entries.get(key)
        if observer is None:
            observer = self._entries[key] = EntryRequests(self, entry, router)
        return observer

    def upstream(self, name: str) -> UpstreamObserver:
        observer = self._upstreams.get(name)
        if observer is None:
            observer = self._upstreams[name] = UpstreamObserver(self, name)
        return observer

    def bind_upstreams(self, upstreams: Any) -> None:
        """Give every upstream of C{upstreams} without one its observer."""
        for name, upstream in list(upstreams.items()):
            if getattr(upstream, "observer", None) is None:
                upstream.observer = self.upstream(name)

    def in_flight(self, entry: str) -> int:
        return sum(
            o.in_flight for (name, _), o in self._entries.items() if name == entry
        )

    def total_in_flight(self) -> int:
        return sum(o.in_flight for o in self._entries.values())

    def endpoint_counts(self, upstream: str, url: str) -> Tuple[int, int]:
        """(requests, failures) of an endpoint, as the proxy told them."""
        observer = self._upstreams.get(upstream)
        counts = observer.endpoints.get(url) if observer is not None else None
        return (counts[0], counts[1]) if counts else (0, 0)

    # What a reload replaces

    def retire_entry(self, service: Any) -> None:
        """Keep the counts of an entry service about to be replaced."""
        policy = getattr(service, "policy", None)
        if policy is None:
            return
        base = self._entry_base.setdefault(service.entry.name, [0, 0])
        base[0] += policy.refused
        base[1] += policy.denied

    def retire_tracers(self, routers: Iterable[Any]) -> None:
        """Keep the error counts of the tracers of routers no longer used."""
        for router in routers:
            tracer = getattr(router, "tracer", None)
            if tracer is not None:
                name = router.config.name
                self._tracing_base[name] = (
                    self._tracing_base.get(name, 0) + tracer.errors
                )

    def reloaded(self, ok: bool) -> None:
        self.reloads.labels("success" if ok else "failure").inc()
        self.last_reload_successful.set(1 if ok else 0)

    # Reading

    def text(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)

    def value(
        self, name: str, labels: Optional[Dict[str, str]] = None
    ) -> Optional[float]:
        """One sample's value (for the stats and tests), or None."""
        return self.registry.get_sample_value(name, labels or {})


class _LiveCollector:
    """What is read from the gateway at scrape time."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> List[Any]:
        # Describing would run collect(); an empty list registers it as is.
        return []

    def collect(self) -> Iterable[Any]:
        metrics = self.metrics
        gateway = metrics.gateway
        from infini_gateway import __version__

        info = GaugeMetricFamily(
            f"{PREFIX}_info",
            "The gateway's version and Python implementation.",
            labels=["version", "implementation", "python_version"],
        )
        info.add_metric(
            [__version__, platform.python_implementation(), platform.python_version()],
            1,
        )
        yield info
        yield GaugeMetricFamily(
            f"{PREFIX}_start_time_seconds",
            "When the gateway started, in seconds since the epoch.",
            value=metrics.started,
        )

        entries = dict(getattr(gateway, "entries", {}) or {})
        listening = GaugeMetricFamily(
            f"{PREFIX}_entry_listening", "1 while an entry listens.", labels=["entry"]
        )
        open_ = GaugeMetricFamily(
            f"{PREFIX}_connections_open",
            "Connections open, by entry.",
            labels=["entry"],
        )
        refused = CounterMetricFamily(
            f"{PREFIX}_connections_refused",
            "Connections refused past max_concurrency, by entry.",
            labels=["entry"],
        )
        denied = CounterMetricFamily(
            f"{PREFIX}_connections_denied",
            "Connections closed for their client address, by entry.",
            labels=["entry"],
        )
        in_flight = GaugeMetricFamily(
            f"{PREFIX}_requests_in_flight",
            "Requests in flight, by entry.",
            labels=["entry"],
        )
        names = (
            set(entries) | set(metrics._entry_base) | {e for e, _ in metrics._entries}
        )
        for name in sorted(names):
            service = entries.get(name)
            policy = getattr(service, "policy", None)
            base = metrics._entry_base.get(name, [0, 0])
            if service is not None:
                listening.add_metric([name], 1 if getattr(service, "port", None) else 0)
            open_.add_metric(
                [name], policy.open_connections if policy is not None else 0
            )
            refused.add_metric(
                [name], base[0] + (policy.refused if policy is not None else 0)
            )
            denied.add_metric(
                [name], base[1] + (policy.denied if policy is not None else 0)
            )
            in_flight.add_metric([name], metrics.in_flight(name))
        yield from (listening, open_, refused, denied, in_flight)

        upstreams = getattr(gateway, "upstreams", None)
        healthy = GaugeMetricFamily(
            f"{PREFIX}_upstream_endpoint_healthy",
            "1 while an endpoint is healthy (may be picked), else 0.",
            labels=["upstream", "endpoint"],
        )
        ep_in_flight = GaugeMetricFamily(
            f"{PREFIX}_upstream_endpoint_in_flight",
            "Requests in flight to an endpoint.",
            labels=["upstream", "endpoint"],
        )
        ep_requests = CounterMetricFamily(
            f"{PREFIX}_upstream_endpoint_requests",
            "Attempts on an endpoint.",
            labels=["upstream", "endpoint"],
        )
        ep_failures = CounterMetricFamily(
            f"{PREFIX}_upstream_endpoint_failures",
            "Failed attempts on an endpoint.",
            labels=["upstream", "endpoint"],
        )
        if upstreams is not None:
            metrics.bind_upstreams(upstreams)
            for name, upstream in sorted(upstreams.items()):
                for endpoint in upstream.endpoints:
                    labels = [name, endpoint.url]
                    healthy.add_metric(labels, 1 if endpoint.healthy else 0)
                    ep_in_flight.add_metric(labels, endpoint.in_flight)
                    requests, failures = metrics.endpoint_counts(name, endpoint.url)
                    ep_requests.add_metric(labels, requests)
                    ep_failures.add_metric(labels, failures)
        yield from (healthy, ep_in_flight, ep_requests, ep_failures)

        tracing = CounterMetricFamily(
            f"{PREFIX}_tracing_flow_errors",
            "Failed runs of a router's tracing flow.",
            labels=["router"],
        )
        totals = dict(metrics._tracing_base)
        routers = list((getattr(gateway, "routers", None) or {}).values())
        reloader = getattr(gateway, "reloader", None)
        if reloader is not None:
            routers += reloader.retiring_routers()
        for router in routers:
            tracer = getattr(router, "tracer", None)
            if tracer is not None:
                name = router.config.name
                totals[name] = totals.get(name, 0) + tracer.errors
        for name, errors in sorted(totals.items()):
            tracing.add_metric([name], errors)
        yield tracing

        floating = getattr(gateway, "floating_ip", None)
        if floating is not None:
            state = floating.state()
            role = GaugeMetricFamily(
                f"{PREFIX}_floating_ip_role",
                "1 for this gateway's floating-IP role (holder, standby, stopped).",
                labels=["role"],
            )
            for name in ("holder", "standby", "stopped"):
                role.add_metric([name], 1 if state.get("role") == name else 0)
            yield role
            yield CounterMetricFamily(
                f"{PREFIX}_floating_ip_takeovers",
                "Times this gateway took the floating IP.",
                value=state.get("takeovers", 0),
            )


def python_implementation() -> str:
    """C{"CPython 3.11.9"}, C{"PyPy 3.9.19"}."""
    return f"{platform.python_implementation()} {platform.python_version()}"


__all__ = [
    "CONTENT_TYPE",
    "EntryRequests",
    "GatewayMetrics",
    "UpstreamObserver",
    "python_implementation",
]
