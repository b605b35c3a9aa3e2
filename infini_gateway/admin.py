"""
The admin API: a listener of its own (INFINI's C{api:} section, on
127.0.0.1:2900 unless the operator says otherwise) serving the gateway's
health, statistics, Prometheus metrics and upstream health, and taking
reloads and entry stops and starts.

    GET  /                              the endpoints
    GET  /_info                         version, Python, uptime, entries
    GET  /health                        green / yellow / red, with reasons
    GET  /stats                         counters and gauges as JSON
    GET  /metrics                       Prometheus text format
    GET  /upstreams                     every endpoint's health and counters
    POST /config/_reload                reload the configuration file
    POST /gateway/entry/{name}/_stop    stop listening (connections drain)
    POST /gateway/entry/{name}/_start   listen again

With C{security.enabled}, every endpoint asks for basic auth; the
credentials are read from the running configuration at each request, so
a reload changes them.
"""

import hmac
import os
import platform
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Site

import twisted
from infini_gateway.config import ConfigError
from infini_gateway.config.model import Entry
from infini_gateway.context import json_body
from infini_gateway.entry import EntryBindError, EntryService
from infini_gateway.metrics import CONTENT_TYPE

log = Logger()

ENDPOINTS = (
    ("GET", "/", "this list"),
    (
        "GET",
        "/_info",
        "version, Python implementation, uptime, entries and their addresses",
    ),
    ("GET", "/health", "green, yellow or red, with the reasons"),
    ("GET", "/stats", "requests, connections, upstreams and reloads as JSON"),
    ("GET", "/metrics", "Prometheus metrics (text format)"),
    ("GET", "/upstreams", "every upstream endpoint's health state and counters"),
    ("POST", "/config/_reload", "reload the configuration file"),
    (
        "POST",
        "/gateway/entry/{name}/_stop",
        "stop an entry listening; its connections drain",
    ),
    ("POST", "/gateway/entry/{name}/_start", "start a stopped entry listening again"),
)

GREEN, YELLOW, RED = "green", "yellow", "red"


class AdminResource(Resource):
    """The admin API's root: every path is dispatched here."""

    isLeaf = True

    def __init__(self, gateway: Any) -> None:
        super().__init__()
        self.gateway = gateway
        self._routes: Dict[Tuple[str, ...], Dict[bytes, Callable[..., Any]]] = {
            ("",): {b"GET": self.index},
            ("_info",): {b"GET": self.info},
            ("health",): {b"GET": self.health},
            ("stats",): {b"GET": self.stats},
            ("metrics",): {b"GET": self.metrics},
            ("upstreams",): {b"GET": self.upstreams},
            ("config", "_reload"): {b"POST": self.reload},
        }

    def render(self, request):
        if not self._authorized(request):
            request.setHeader(
                b"www-authenticate", b'Basic realm="infini-gateway admin"'
            )
            return _json(request, 401, {"error": "unauthorized"})
        segments = tuple(s.decode("utf-8", "replace") for s in request.postpath) or (
            "",
        )
        if len(segments) > 1 and segments[-1] == "":
            segments = segments[:-1]
        method = request.method
        if method == b"HEAD":
            method = b"GET"
        handlers = self._routes.get(segments)
        args: Tuple[str, ...] = ()
        if (
            handlers is None
            and len(segments) == 4
            and segments[:2] == ("gateway", "entry")
            and segments[3] in ("_stop", "_start")
        ):
            handler = self.stop_entry if segments[3] == "_stop" else self.start_entry
            handlers, args = {b"POST": handler}, (segments[2],)
        if handlers is None:
            return _json(
                request, 404, {"error": "not found", "path": "/" + "/".join(segments)}
            )
        handler = handlers.get(method)
        if handler is None:
            allowed = b", ".join(sorted(handlers))
            request.setHeader(b"allow", allowed)
            return _json(
                request,
                405,
                {"error": "method not allowed", "allowed": allowed.decode()},
            )
        try:
            return handler(request, *args)
        except Exception:
            log.failure(
                "admin API: {method} {path} failed", method=method, path=request.path
            )
            return _json(request, 500, {"error": "internal error"})

    def _authorized(self, request) -> bool:
        security = self.gateway.config.api.security
        if not security.enabled:
            return True
        user = request.getUser() or b""
        password = request.getPassword() or b""
        ok_user = hmac.compare_digest(user, security.username.encode("utf-8"))
        ok_password = hmac.compare_digest(password, security.password.encode("utf-8"))
        return ok_user and ok_password

    # GET

    def index(self, request):
        return _json(
            request,
            200,
            {
                "name": "infini-gateway admin API",
                "endpoints": [
                    {"method": method, "path": path, "description": text}
                    for method, path, text in ENDPOINTS
                ],
            },
        )

    def info(self, request):
        from infini_gateway import __version__

        gateway = self.gateway
        admin = gateway.admin
        return _json(
            request,
            200,
            {
                "name": "infini-gateway",
                "version": __version__,
                "python": {
                    "implementation": platform.python_implementation(),
                    "version": platform.python_version(),
                },
                "twisted": twisted.__version__,
                "pid": os.getpid(),
                "started": gateway.metrics.started,
                "uptime_seconds": round(time.time() - gateway.metrics.started, 3),
                "config": gateway.config.source,
                "entries": entries_info(gateway),
                "admin": admin.bound_address() if admin is not None else None,
                "last_reload": gateway.reloader.last if gateway.reloader else None,
            },
        )

    def health(self, request):
        report = health_report(self.gateway)
        return _json(request, 503 if report["status"] == RED else 200, report)

    def stats(self, request):
        return _json(request, 200, stats(self.gateway))

    def metrics(self, request):
        body = self.gateway.metrics.text()
        request.setHeader(b"content-type", CONTENT_TYPE.encode("ascii"))
        request.setHeader(b"content-length", b"%d" % len(body))
        return body

    def upstreams(self, request):
        return _json(request, 200, {"upstreams": upstreams_state(self.gateway)})

    # POST

    def reload(self, request):
        from infini_gateway.reload import ReloadError

        try:
            result = self.gateway.reload_file()
        except ConfigError as e:
            return _json(
                request,
                400,
                {
                    "error": "invalid configuration",
                    "reloaded": False,
                    "problems": e.problems,
                },
            )
        except ReloadError as e:
            return _json(
                request,
                409,
                {"error": "reload refused", "reloaded": False, "problems": e.problems},
            )
        return _json(request, 200, dict(result, reloaded=True))

    def stop_entry(self, request, name: str):
        service = self.gateway.entries.get(name)
        if service is None:
            return _json(request, 404, {"error": "no such entry", "entry": name})
        if getattr(service, "port", None) is None:
            return _json(request, 200, {"entry": name, "listening": False})
        log.info("admin API: stopping entry {entry}", entry=name)
        service.stop_listening()
        return _json(request, 200, {"entry": name, "listening": False})

    def start_entry(self, request, name: str):
        service = self.gateway.entries.get(name)
        if service is None:
            return _json(request, 404, {"error": "no such entry", "entry": name})
        try:
            service.bind()
        except EntryBindError as e:
            return _json(
                request, 409, {"error": str(e), "entry": name, "listening": False}
            )
        log.info("admin API: started entry {entry}", entry=name)
        return _json(
            request,
            200,
            {"entry": name, "listening": True, "bound": service.bound_address()},
        )


def _json(request, status: int, document: Any) -> bytes:
    body = json_body(document)
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"content-length", b"%d" % len(body))
    return body


def entries_info(gateway: Any) -> List[Dict[str, Any]]:
    """Each configured entry: settings, the address actually bound, the publish address."""
    out = []
    for entry in gateway.config.entries:
        service = gateway.entries.get(entry.name)
        bound = service.bound_address() if service is not None else None
        out.append(
            {
                "name": entry.name,
                "enabled": entry.enabled,
                "protocol": getattr(entry, "protocol", "http"),
                "router": entry.router,
                "tls": entry.tls.enabled,
                "binding": entry.network.binding,
                "bound": bound,
                "publish": entry.network.publish,
                "listening": bound is not None,
            }
        )
    return out


def health_report(gateway: Any) -> Dict[str, Any]:
    """
    The gateway's health: C{red} when no enabled entry listens (or the
    floating IP failed), C{yellow} when some entry does not listen or an
    upstream has no healthy endpoint, else C{green}; each reason given.
    """
    reasons: List[Dict[str, str]] = []
    status = GREEN

    def worse(level: str, reason: str) -> None:
        nonlocal status
        reasons.append({"status": level, "reason": reason})
        if level == RED or (level == YELLOW and status == GREEN):
            status = level

    enabled = [e.name for e in gateway.config.entries if e.enabled]
    listening = [
        name
        for name in enabled
        if getattr(gateway.entries.get(name), "port", None) is not None
    ]
    if enabled and not listening:
        worse(RED, "no entry is listening")
    else:
        for name in enabled:
            if name not in listening:
                worse(YELLOW, f"entry {name} is not listening")
    upstreams = gateway.upstreams
    down = [
        name
        for name, upstream in upstreams.items()
        if upstream.endpoints and not any(e.healthy for e in upstream.endpoints)
    ]
    for name in down:
        worse(YELLOW, f"upstream {name} has no healthy endpoint")
    floating: Optional[Dict[str, Any]] = None
    if gateway.floating_ip is not None:
        state = gateway.floating_ip.state()
        floating = {"role": state.get("role"), "holder": state.get("holder")}
        if state.get("role") == "stopped" and gateway.running:
            worse(YELLOW, "the floating IP is stopped")
    return {
        "status": status,
        "reasons": reasons,
        "entries": {"enabled": len(enabled), "listening": len(listening)},
        "upstreams": {"total": len(upstreams), "without_healthy_endpoint": down},
        "floating_ip": floating,
    }


def stats(gateway: Any) -> Dict[str, Any]:
    """Requests, connections, upstreams and reloads as plain data."""
    metrics = gateway.metrics
    requests: Dict[str, Dict[str, float]] = {}
    for family in metrics.registry.collect():
        if family.name == "infini_gateway_requests":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    by = requests.setdefault(sample.labels["entry"], {})
                    status = sample.labels["status"]
                    by[status] = by.get(status, 0) + sample.value
    entries = {}
    for name, service in gateway.entries.items():
        policy = getattr(service, "policy", None)
        entries[name] = {
            "listening": getattr(service, "port", None) is not None,
            "connections_open": policy.open_connections if policy is not None else 0,
            "connections_refused": policy.refused if policy is not None else 0,
            "connections_denied": policy.denied if policy is not None else 0,
            "requests_in_flight": metrics.in_flight(name),
            "requests": {k: int(v) for k, v in sorted(requests.get(name, {}).items())},
        }
    upstreams = {}
    for name, upstream in gateway.upstreams.items():
        counts = [metrics.endpoint_counts(name, e.url) for e in upstream.endpoints]
        upstreams[name] = {
            "endpoints": len(upstream.endpoints),
            "healthy": sum(1 for e in upstream.endpoints if e.healthy),
            "in_flight": sum(e.in_flight for e in upstream.endpoints),
            "requests": sum(c[0] for c in counts),
            "failures": sum(c[1] for c in counts),
        }
    reloads = {
        result: int(
            metrics.value("infini_gateway_config_reloads_total", {"result": result})
            or 0
        )
        for result in ("success", "failure")
    }
    return {
        "uptime_seconds": round(time.time() - metrics.started, 3),
        "requests_in_flight": metrics.total_in_flight(),
        "entries": entries,
        "upstreams": upstreams,
        "reloads": reloads,
        "floating_ip": (
            gateway.floating_ip.state() if gateway.floating_ip is not None else None
        ),
    }


def upstreams_state(gateway: Any) -> Dict[str, Any]:
    """
    Every upstream's endpoints: the health checks' state when they give
    one (C{UpstreamSet.state()}), else what each endpoint's state holds;
    with the requests and failures the proxy counted.
    """
    upstreams = gateway.upstreams
    metrics = gateway.metrics
    detailed: Dict[str, Any] = {}
    state = getattr(upstreams, "state", None)
    if callable(state):
        try:
            detailed = dict(state())
        except Exception:
            log.failure("admin API: the upstreams' state could not be read")
            detailed = {}
    out: Dict[str, Any] = {}
    for name, upstream in upstreams.items():
        document = detailed.get(name)
        if not isinstance(document, dict):
            document = {}
        document = dict(document)
        basic = []
        for endpoint in upstream.endpoints:
            requests, failures = metrics.endpoint_counts(name, endpoint.url)
            basic.append(
                {
                    "url": endpoint.url,
                    "healthy": endpoint.healthy,
                    "weight": endpoint.weight,
                    "priority": endpoint.priority,
                    "in_flight": endpoint.in_flight,
                    "requests": requests,
                    "failures": failures,
                }
            )
        listed = document.get("endpoints")
        if isinstance(listed, list) and len(listed) == len(basic):
            merged = []
            for extra, mine in zip(listed, basic):
                item = dict(mine)
                if isinstance(extra, dict):
                    item.update(
                        {
                            k: v
                            for k, v in extra.items()
                            if k not in ("requests", "failures")
                        }
                    )
                merged.append(item)
            document["endpoints"] = merged
        else:
            document["endpoints"] = basic
        document.setdefault("balancer", upstream.config.balancer)
        out[name] = document
    return out


class AdminService(EntryService):
    """
    The admin API's listener: an entry of its own (same binding, TLS and
    graceful stop as the others) whose Site serves L{AdminResource}.
    """

    listening_format = "admin API listening on {scheme}://{address}{publish}"

    def __init__(self, gateway: Any) -> None:
        api = gateway.config.api
        entry = Entry(
            name="api",
            network=api.network,
            tls=api.tls,
            router=None,
            max_concurrency=256,
        )
        site = Site(AdminResource(gateway), timeout=entry.idle_timeout)
        site.displayTracebacks = False
        super().__init__(entry, site, gateway.reactor, tls_options=self._options)
        self.name = "admin"
        self.gateway = gateway

    def _options(self):
        from infini_gateway.tls import server_options

        runtime = self.gateway.runtime
        config = self.gateway.config
        return server_options(
            self.entry, runtime.resolve(config.paths.data), config.base_dir
        )

    def bind(self) -> None:
        try:
            super().bind()
        except EntryBindError as e:
            reason = str(e).split(": ", 1)[-1]
            raise EntryBindError(f"admin API: {reason}") from e


__all__ = ["AdminResource", "AdminService", "health_report", "stats", "upstreams_state"]
