"""
The C{upstream:} and C{elasticsearch:} sections of gateway.yml, and the
upstream parameters of the C{proxy}, C{http} and C{elasticsearch} filters:
their JSON Schemas, the checks of meaning the schema cannot make, and their
conversion into L{UpstreamConfig} values.

The three filters share one engine, so they share these pieces: a filter
naming an upstream (C{proxy}) or a cluster (C{elasticsearch}) is checked
against the names defined here, and the C{http} filter's inline hosts
become an anonymous L{UpstreamConfig} through L{http_filter_upstream}.
"""

import base64
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import urlsplit

import attrs

from infini_gateway.config import _parts as parts
from infini_gateway.config._document import Document
from infini_gateway.config.model import (
    ActiveHealthCheck,
    ActiveHealthy,
    ActiveUnhealthy,
    ElasticsearchConfig,
    EndpointConfig,
    HealthCheck,
    KeepalivePool,
    PassiveHealthCheck,
    Timeouts,
    UpstreamConfig,
    UpstreamTLS,
)
from infini_gateway.config.values import DURATION_EXPECTED, check_host, got, parse_duration

Path = Tuple[Any, ...]
Schema = Dict[str, Any]

BALANCERS = ("roundrobin", "least_conn", "ewma", "chash")
HASH_ON = ("vars", "header", "cookie")
PASS_HOST = ("pass", "node", "rewrite")
URL_EXPECTED = "an endpoint URL such as http://127.0.0.1:9001"

# Schemas


def _duration(description: str) -> Schema:
    return parts.duration(description, zero_is_off=True)


def _object(description: str, properties: Schema, **extra: Any) -> Schema:
    return {
        "description": description,
        "type": "object",
        "additionalProperties": False,
        "properties": properties,
        **extra,
    }


def timeout_schema() -> Schema:
    """C{{connect, send, read}}: durations."""
    return _object(
        "Timeouts towards the upstream (default 60s each).",
        {
            "connect": _duration("Longest time to open a connection."),
            "send": _duration("Longest idle time between two writes of the request."),
            "read": _duration(
                "Longest wait for the response headers, then between two reads."
            ),
        },
    )


def _tls_schema() -> Schema:
    string = {"type": "string", "minLength": 1}
    return _object(
        "TLS towards https endpoints.",
        {
            "verify": {
                "description": "Verify the endpoint's certificate (default true).",
                "type": "boolean",
            },
            "skip_insecure_verify": {
                "description": "Do not verify the endpoint's certificate (default false).",
                "type": "boolean",
            },
            "ca_file": dict(string, description="PEM CA certificates to verify against"
                            " (default: the system's roots)."),
            "cert_file": dict(string, description="PEM client certificate (mutual TLS)."),
            "key_file": dict(string, description="PEM private key of cert_file."),
            "sni": dict(string, description="Server name sent and verified"
                        " (default: the endpoint's host)."),
        },
    )


HEALTH_CHECK_TYPES = ("http", "https", "tcp")
REQ_HEADER_EXPECTED = "a header written 'Name: value'"


def _count(description: str, minimum: int = 1) -> Schema:
    return {"description": description, "type": "integer", "minimum": minimum}


def _statuses(description: str) -> Schema:
    return {
        "description": description,
        "type": "array",
        "items": {"type": "integer", "minimum": 200, "maximum": 599},
    }


def _positive_duration(description: str) -> Schema:
    return {
        "description": description + " Written 500ms, 3s, 1m; a number is seconds;"
        " above 0.",
        "type": ["string", "number"],
        "errorMessage": DURATION_EXPECTED,
    }


def health_check_schema() -> Schema:
    """C{health_check: {active, passive}}."""
    active = _object(
        "Probes sent to every endpoint on a timer, from the start.",
        {
            "type": {
                "description": "http, https or tcp (a connection only; default http).",
                "type": "string",
                "enum": list(HEALTH_CHECK_TYPES),
                "errorMessage": "one of " + ", ".join(HEALTH_CHECK_TYPES),
            },
            "timeout": _positive_duration("Longest time a probe may take (default 1s)."),
            "http_path": {
                "description": "The path probed (default /).",
                "type": "string",
                "pattern": "^/",
                "errorMessage": "a path beginning with /",
            },
            "host": {
                "description": "Host header and TLS server name of probes"
                " (default: the endpoint's).",
                "type": "string",
                "minLength": 1,
            },
            "port": {
                "description": "Port probed (default: the endpoint's).",
                "type": "integer",
                "minimum": 1,
                "maximum": 65535,
            },
            "req_headers": {
                "description": "Headers sent with probes, each 'Name: value'.",
                "type": "array",
                "items": {"type": "string", "errorMessage": REQ_HEADER_EXPECTED},
            },
            "https_verify_certificate": {
                "description": "Verify the certificate of https probes (default true;"
                " the upstream's tls.verify false turns it off too).",
                "type": "boolean",
            },
            "healthy": _object(
                "When a probed endpoint is healthy again.",
                {
                    "interval": _positive_duration(
                        "Time between probes of a healthy endpoint (default 1s)."
                    ),
                    "successes": _count("Successful probes in a row (default 2)."),
                    "http_statuses": _statuses("Statuses of success (default [200, 302])."),
                },
            ),
            "unhealthy": _object(
                "When a probed endpoint becomes unhealthy.",
                {
                    "interval": _positive_duration(
                        "Time between probes of an unhealthy endpoint (default 1s)."
                    ),
                    "http_failures": _count(
                        "Probes in a row answered with a failure status (default 5)."
                    ),
                    "tcp_failures": _count(
                        "Probes in a row that could not connect or broke (default 2)."
                    ),
                    "timeouts": _count("Probes in a row that timed out (default 3)."),
                    "http_statuses": _statuses(
                        "Statuses of failure (default [429, 404, 500, 501, 502, 503,"
                        " 504, 505])."
                    ),
                },
            ),
        },
    )
    passive = _object(
        "Ejection of endpoints from the outcomes of real requests (Envoy's"
        " outlier detection); an ejected endpoint comes back by itself.",
        {
            "consecutive_5xx": _count(
                "5xx answers or failures in a row that eject (default 5; 0: not used).", 0
            ),
            "consecutive_gateway_failure": _count(
                "502, 503, 504 or connection failures in a row that eject"
                " (default 5; 0: not used).",
                0,
            ),
            "consecutive_timeouts": _count(
                "Timeouts in a row that eject (default 3; 0: not used).", 0
            ),
            "base_ejection_time": _positive_duration(
                "Ejection time, times the number of ejections so far (default 30s)."
            ),
            "max_ejection_time": _positive_duration(
                "Longest ejection (default 300s, or base_ejection_time if longer)."
            ),
            "max_ejection_percent": {
                "description": "At most this percentage of the endpoints is ejected"
                " at a time (default 50).",
                "type": "number",
                "minimum": 0,
                "maximum": 100,
            },
        },
    )
    return _object(
        "Health checks of the endpoints: active probes, passive ejection, or both.",
        {"active": active, "passive": passive},
    )


def _engine_properties() -> Schema:
    """The keys an upstream and a cluster share."""
    return {
        "health_check": health_check_schema(),
        "panic_threshold": {
            "description": "Percentage: when fewer endpoints than that are healthy,"
            " balance across all of them (default 0: never; with every endpoint"
            " unhealthy the answer is then 503).",
            "type": "number",
            "minimum": 0,
            "maximum": 100,
        },
        "balancer": {
            "description": "How an endpoint is picked (default roundrobin).",
            "type": "string",
            "enum": list(BALANCERS),
            "errorMessage": "one of " + ", ".join(BALANCERS),
        },
        "hash_on": {
            "description": "chash: what the key names: vars (remote_addr, uri, host,"
            " arg_NAME, http_NAME, cookie_NAME), header or cookie (default vars).",
            "type": "string",
            "enum": list(HASH_ON),
            "errorMessage": "one of " + ", ".join(HASH_ON),
        },
        "key": {
            "description": "chash: the variable, header or cookie hashed"
            " (default remote_addr).",
            "type": "string",
            "minLength": 1,
        },
        "timeout": timeout_schema(),
        "retries": {
            "description": "Retries on other endpoints (default: endpoints - 1).",
            "type": "integer",
            "minimum": 0,
        },
        "retry_timeout": _duration("Deadline of all attempts together (default none)."),
        "retry_on_status": {
            "description": "Statuses retried on another endpoint (idempotent requests).",
            "type": "array",
            "items": {"type": "integer", "minimum": 100, "maximum": 599},
        },
        "retry_non_idempotent": {
            "description": "Retry POST, PATCH and requests with a body once sent.",
            "type": "boolean",
        },
        "pass_host": {
            "description": "Host header sent: the client's (pass), the endpoint's"
            " (node) or upstream_host (rewrite).",
            "type": "string",
            "enum": list(PASS_HOST),
            "errorMessage": "one of " + ", ".join(PASS_HOST),
        },
        "upstream_host": {
            "description": "The Host header sent with pass_host: rewrite.",
            "type": "string",
            "minLength": 1,
        },
        "keepalive_pool": _object(
            "Idle connections kept per endpoint.",
            {
                "size": {
                    "description": "Idle connections kept per endpoint (default 32).",
                    "type": "integer",
                    "minimum": 0,
                },
                "idle_timeout": _duration("Idle connections close after (default 60s)."),
            },
        ),
        "tls": _tls_schema(),
    }


def upstream_schema() -> Schema:
    url = {
        "description": "http(s)://host:port",
        "type": "string",
        "minLength": 1,
        "errorMessage": URL_EXPECTED,
    }
    endpoint = {
        "errorMessage": "an endpoint URL, or a mapping with url, weight and priority",
        "anyOf": [
            url,
            _object(
                "An endpoint with its weight and priority.",
                {
                    "url": url,
                    "weight": {
                        "description": "Share of the requests (default 1; 0: none).",
                        "type": "integer",
                        "minimum": 0,
                    },
                    "priority": {
                        "description": "Higher first; lower ones are used only when no"
                        " higher one is available (default 0).",
                        "type": "integer",
                    },
                },
                required=["url"],
            ),
        ],
    }
    return titled({
        "title": "upstream",
        "description": "Upstreams: endpoints the proxy filter forwards to.",
        "type": "array",
        "items": _object(
            "An upstream: endpoints and how requests reach them.",
            {
                "name": {"description": "Unique name.", "type": "string", "minLength": 1},
                "endpoints": {
                    "description": "Endpoint URLs, or {url, weight, priority}.",
                    "type": "array",
                    "minItems": 1,
                    "items": endpoint,
                },
                **_engine_properties(),
            },
            required=["name", "endpoints"],
        ),
    })


def elasticsearch_schema() -> Schema:
    strings = {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}}
    return titled({
        "title": "elasticsearch",
        "description": "Elasticsearch clusters the elasticsearch filter forwards to.",
        "type": "array",
        "items": _object(
            "A cluster: endpoint(s), or schema and host(s).",
            {
                "name": {"description": "Unique name.", "type": "string", "minLength": 1},
                "enabled": {"description": "Usable (default true).", "type": "boolean"},
                "endpoint": {"description": "http(s)://host:port", "type": "string"},
                "endpoints": dict(strings, description="http(s)://host:port, several."),
                "schema": {
                    "description": "http or https, with host or hosts (default http).",
                    "type": "string",
                    "enum": ["http", "https"],
                },
                "host": {"description": "host:port, with schema.", "type": "string"},
                "hosts": dict(strings, description="host:port, several."),
                "basic_auth": _object(
                    "Credentials sent to the cluster as an Authorization header.",
                    {
                        "username": {"description": "User name.", "type": "string"},
                        "password": {"description": "Password.", "type": "string"},
                    },
                    required=["username"],
                ),
                "request_timeout": {
                    "description": "Seconds to wait for the response headers (read timeout).",
                    "type": "number",
                    "minimum": 0,
                },
                "project": {"description": "Metadata, not used.", "type": "string"},
                "location": {"description": "Metadata, not used.", "type": "object"},
                "labels": {"description": "Metadata, not used.", "type": "object"},
                "tags": {"description": "Metadata, not used.", "type": "array"},
                **_engine_properties(),
            },
            required=["name"],
        ),
    })


def infini_client_properties() -> Schema:
    """INFINI's per-filter client settings, shared by http and elasticsearch."""
    return {
        "max_retry_times": {"description": "Retries on other hosts.", "type": "integer",
                            "minimum": 0},
        "dial_timeout": _duration("Longest time to open a connection."),
        "read_timeout": _duration("Longest wait for the response, then between reads."),
        "write_timeout": _duration("Longest idle time while sending the request."),
    }


def titled(schema: Schema) -> Schema:
    """C{schema} with each property titled by its key, for editors."""
    for key, sub in schema.get("properties", {}).items():
        sub.setdefault("title", key)
        titled(sub)
    items = schema.get("items")
    if isinstance(items, dict):
        titled(items)
    for branch in schema.get("anyOf", ()):
        titled(branch)
    return schema


# Checks


def check_endpoint_url(url: Any) -> Optional[str]:
    """What is wrong with an endpoint URL, or None."""
    if not isinstance(url, str):
        return None
    expected = f"expected {URL_EXPECTED}, got {got(url)}"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return expected + " (a port from 1 to 65535)"
    if parts.scheme.lower() not in ("http", "https"):
        return f"expected an http:// or https:// URL, got {got(url)}"
    if not parts.hostname or parts.username or parts.password is not None:
        return expected
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return expected + " (no path, query or fragment)"
    if port == 0:
        return expected + " (a port from 1 to 65535)"
    try:
        check_host(parts.hostname)
    except ValueError as e:
        return str(e)
    return None


def _items(data: Any, key: str) -> List[Tuple[int, dict]]:
    section = data.get(key) if isinstance(data, dict) else None
    if not isinstance(section, list):
        return []
    return [(i, item) for i, item in enumerate(section) if isinstance(item, dict)]


def _names(doc: Document, key: str, what: str) -> Optional[Dict[str, dict]]:
    """Names defined in C{key} (duplicates reported); None when malformed."""
    found: Dict[str, dict] = {}
    first_line: Dict[str, Optional[int]] = {}
    section = doc.data.get(key, [])
    if not isinstance(section, list):
        return None
    complete = True
    for i, item in enumerate(section):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str):
            complete = False
            continue
        if name in found:
            line = first_line[name]
            at = f"line {line}" if line is not None else f"{key}[{i}]"
            doc.problem(
                (key, i, "name"),
                f"duplicate {what} name {name!r} (also at {at}; expected unique names)",
            )
        else:
            found[name] = item
            first_line[name] = doc.line((key, i, "name"))
    return found if complete else None


def _check_duration(doc: Document, path: Path, value: Any) -> None:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        try:
            parse_duration(value)
        except ValueError as e:
            doc.problem(path, str(e))


def _check_engine(doc: Document, path: Path, item: dict) -> None:
    timeout = item.get("timeout")
    if isinstance(timeout, dict):
        for key in ("connect", "send", "read"):
            if key in timeout:
                _check_duration(doc, path + ("timeout", key), timeout[key])
    if "retry_timeout" in item:
        _check_duration(doc, path + ("retry_timeout",), item["retry_timeout"])
    pool = item.get("keepalive_pool")
    if isinstance(pool, dict) and "idle_timeout" in pool:
        _check_duration(doc, path + ("keepalive_pool", "idle_timeout"), pool["idle_timeout"])
    if item.get("hash_on") in ("header", "cookie") and "key" not in item:
        doc.problem(
            path + ("hash_on",),
            f"expected key too (the {item['hash_on']} whose value is hashed)",
        )
    if item.get("pass_host") == "rewrite" and "upstream_host" not in item:
        doc.problem(path + ("pass_host",), "expected upstream_host too (the Host to send)")
    health = item.get("health_check")
    if isinstance(health, dict):
        _check_health(doc, path + ("health_check",), health)
    tls = item.get("tls")
    if isinstance(tls, dict):
        if "cert_file" in tls and "key_file" not in tls:
            doc.problem(path + ("tls", "cert_file"), "expected key_file too")
        if "key_file" in tls and "cert_file" not in tls:
            doc.problem(path + ("tls", "key_file"), "expected cert_file too")


def _positive(doc: Document, path: Path, value: Any) -> Optional[float]:
    """The duration at C{path}, when valid; a problem when not above 0."""
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        return None
    try:
        seconds = parse_duration(value)
    except ValueError as e:
        doc.problem(path, str(e))
        return None
    if seconds <= 0:
        doc.problem(path, f"expected a duration above 0, got {got(value)}")
        return None
    return seconds


def _check_health(doc: Document, path: Path, health: dict) -> None:
    active = health.get("active")
    if isinstance(active, dict):
        a_path = path + ("active",)
        if "timeout" in active:
            _positive(doc, a_path + ("timeout",), active["timeout"])
        for state in ("healthy", "unhealthy"):
            part = active.get(state)
            if isinstance(part, dict) and "interval" in part:
                _positive(doc, a_path + (state, "interval"), part["interval"])
        for k, header in enumerate(_list(active.get("req_headers"))):
            if isinstance(header, str) and not _header_name(header):
                doc.problem(
                    a_path + ("req_headers", k),
                    f"expected {REQ_HEADER_EXPECTED}, got {got(header)}",
                )
    passive = health.get("passive")
    if isinstance(passive, dict):
        p_path = path + ("passive",)
        times = {}
        for key in ("base_ejection_time", "max_ejection_time"):
            if key in passive:
                times[key] = _positive(doc, p_path + (key,), passive[key])
        base, max_time = times.get("base_ejection_time"), times.get("max_ejection_time")
        if base is not None and max_time is not None and max_time < base:
            doc.problem(
                p_path + ("max_ejection_time",),
                f"expected at least base_ejection_time ({passive['base_ejection_time']}),"
                f" got {got(passive['max_ejection_time'])}",
            )


def _header_name(header: str) -> Optional[str]:
    """The name of a C{Name: value} header, or None when it is not one."""
    name, sep, value = header.partition(":")
    name = name.strip()
    if not sep or not name or any(c in name or c in value for c in "\r\n"):
        return None
    if " " in name or "\t" in name:
        return None
    return name


def _check_host_port(doc: Document, path: Path, schema: Any, host: Any) -> None:
    if isinstance(host, str):
        problem = check_endpoint_url(f"{schema if schema in ('http', 'https') else 'http'}://{host}")
        if problem is not None:
            doc.problem(path, f"expected HOST:PORT, got {got(host)}")


def _check_clusters(doc: Document) -> None:
    for i, cluster in _items(doc.data, "elasticsearch"):
        path: Path = ("elasticsearch", i)
        if not any(key in cluster for key in ("endpoint", "endpoints", "host", "hosts")):
            doc.problem(path, "expected endpoint, endpoints, host or hosts")
        if isinstance(cluster.get("endpoint"), str):
            problem = check_endpoint_url(cluster["endpoint"])
            if problem:
                doc.problem(path + ("endpoint",), problem)
        for k, url in enumerate(_list(cluster.get("endpoints"))):
            problem = check_endpoint_url(url)
            if problem:
                doc.problem(path + ("endpoints", k), problem)
        _check_host_port(doc, path + ("host",), cluster.get("schema"), cluster.get("host"))
        for k, host in enumerate(_list(cluster.get("hosts"))):
            _check_host_port(doc, path + ("hosts", k), cluster.get("schema"), host)
        _check_engine(doc, path, cluster)


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _check_filters(
    doc: Document, upstreams: Optional[Dict[str, dict]], clusters: Optional[Dict[str, dict]]
) -> None:
    for i, flow in _items(doc.data, "flow"):
        for j, item in enumerate(_list(flow.get("filter"))):
            if not isinstance(item, dict) or len(item) != 1:
                continue
            ((name, params),) = item.items()
            if not isinstance(params, dict):
                continue
            path: Path = ("flow", i, "filter", j, name)
            if name == "proxy":
                parts.reference(doc, path + ("upstream",), params.get("upstream"), "upstream",
                           None if upstreams is None else list(upstreams))
                timeout = params.get("timeout")
                for key, value in (timeout.items() if isinstance(timeout, dict) else ()):
                    _check_duration(doc, path + ("timeout", key), value)
            elif name == "elasticsearch":
                cluster = params.get("elasticsearch")
                known = parts.reference(doc, path + ("elasticsearch",), cluster,
                                   "elasticsearch cluster",
                                   None if clusters is None else list(clusters))
                if known and clusters is not None and isinstance(cluster, str):
                    if clusters[cluster].get("enabled", True) is False:
                        doc.problem(path + ("elasticsearch",),
                                    f"cluster {cluster!r} is disabled (enabled: false)")
            elif name == "http":
                if "host" not in params and "hosts" not in params:
                    doc.problem(path, "expected host or hosts (HOST:PORT)")
                _check_host_port(doc, path + ("host",), params.get("schema"), params.get("host"))
                for k, host in enumerate(_list(params.get("hosts"))):
                    _check_host_port(doc, path + ("hosts", k), params.get("schema"), host)
            if name in ("http", "elasticsearch"):
                for key in ("dial_timeout", "read_timeout", "write_timeout", "timeout",
                            "max_idle_conn_duration"):
                    if key in params:
                        _check_duration(doc, path + (key,), params[key])


def check(doc: Document) -> None:
    """Record in C{doc} every problem of meaning of the sections above."""
    upstreams = _names(doc, "upstream", "upstream")
    clusters = _names(doc, "elasticsearch", "elasticsearch cluster")
    for i, upstream in _items(doc.data, "upstream"):
        path: Path = ("upstream", i)
        for k, endpoint in enumerate(_list(upstream.get("endpoints"))):
            url = endpoint.get("url") if isinstance(endpoint, dict) else endpoint
            k_path = path + ("endpoints", k) + (("url",) if isinstance(endpoint, dict) else ())
            problem = check_endpoint_url(url)
            if problem:
                doc.problem(k_path, problem)
        _check_engine(doc, path, upstream)
    _check_clusters(doc)
    _check_filters(doc, upstreams, clusters)


# Conversion


def _timeouts(value: Mapping[str, Any], base: Timeouts = Timeouts()) -> Timeouts:
    return Timeouts(
        connect=parse_duration(value.get("connect", base.connect)),
        send=parse_duration(value.get("send", base.send)),
        read=parse_duration(value.get("read", base.read)),
    )


def override_timeouts(base: Timeouts, value: Optional[Mapping[str, Any]]) -> Timeouts:
    """C{base} with the keys of a filter's C{timeout:} mapping replaced."""
    return _timeouts(value or {}, base)


def infini_timeouts(params: Mapping[str, Any], base: Timeouts) -> Timeouts:
    """C{base} with INFINI's C{dial_timeout}/C{write_timeout}/C{read_timeout}."""
    return _timeouts(
        {
            new: params[old]
            for old, new in (
                ("dial_timeout", "connect"),
                ("write_timeout", "send"),
                ("read_timeout", "read"),
            )
            if old in params and parse_duration(params[old]) > 0
        },
        base,
    )


def _engine(name: str, endpoints: Sequence[EndpointConfig], item: Mapping[str, Any],
            **extra: Any) -> UpstreamConfig:
    tls = item.get("tls", {})
    pool = item.get("keepalive_pool", {})
    retry_timeout = item.get("retry_timeout")
    fields = dict(
        name=name,
        endpoints=tuple(endpoints),
        balancer=item.get("balancer", "roundrobin"),
        hash_on=item.get("hash_on", "vars"),
        key=item.get("key", "remote_addr"),
        timeout=_timeouts(item.get("timeout", {})),
        retries=item.get("retries"),
        retry_timeout=parse_duration(retry_timeout) or None if retry_timeout is not None else None,
        retry_on_status=tuple(item.get("retry_on_status", ())),
        retry_non_idempotent=item.get("retry_non_idempotent", False),
        pass_host=item.get("pass_host", "pass"),
        upstream_host=item.get("upstream_host"),
        keepalive_pool=KeepalivePool(
            size=pool.get("size", KeepalivePool().size),
            idle_timeout=parse_duration(pool.get("idle_timeout", KeepalivePool().idle_timeout)),
        ),
        tls=UpstreamTLS(
            verify=tls.get("verify", True) and not tls.get("skip_insecure_verify", False),
            ca_file=tls.get("ca_file"),
            cert_file=tls.get("cert_file"),
            key_file=tls.get("key_file"),
            sni=tls.get("sni"),
        ),
        health_check=_health_check(item.get("health_check", {})),
        panic_threshold=float(item.get("panic_threshold", 0)),
    )
    fields.update(extra)
    return UpstreamConfig(**fields)


def _health_check(value: Mapping[str, Any]) -> HealthCheck:
    active = passive = None
    if "active" in value:
        item = value["active"]
        good, bad = item.get("healthy", {}), item.get("unhealthy", {})
        healthy, unhealthy = ActiveHealthy(), ActiveUnhealthy()
        active = ActiveHealthCheck(
            type=item.get("type", "http"),
            timeout=parse_duration(item.get("timeout", ActiveHealthCheck().timeout)),
            http_path=item.get("http_path", "/"),
            host=item.get("host"),
            port=item.get("port"),
            req_headers=tuple(
                (_header_name(h) or "", h.partition(":")[2].strip())
                for h in item.get("req_headers", ())
            ),
            https_verify_certificate=item.get("https_verify_certificate", True),
            healthy=ActiveHealthy(
                interval=parse_duration(good.get("interval", healthy.interval)),
                successes=good.get("successes", healthy.successes),
                http_statuses=tuple(good.get("http_statuses", healthy.http_statuses)),
            ),
            unhealthy=ActiveUnhealthy(
                interval=parse_duration(bad.get("interval", unhealthy.interval)),
                http_failures=bad.get("http_failures", unhealthy.http_failures),
                tcp_failures=bad.get("tcp_failures", unhealthy.tcp_failures),
                timeouts=bad.get("timeouts", unhealthy.timeouts),
                http_statuses=tuple(bad.get("http_statuses", unhealthy.http_statuses)),
            ),
        )
    if "passive" in value:
        item, defaults = value["passive"], PassiveHealthCheck()
        base = parse_duration(item.get("base_ejection_time", defaults.base_ejection_time))
        passive = PassiveHealthCheck(
            consecutive_5xx=item.get("consecutive_5xx", defaults.consecutive_5xx),
            consecutive_gateway_failure=item.get(
                "consecutive_gateway_failure", defaults.consecutive_gateway_failure
            ),
            consecutive_timeouts=item.get(
                "consecutive_timeouts", defaults.consecutive_timeouts
            ),
            base_ejection_time=base,
            max_ejection_time=parse_duration(
                item.get("max_ejection_time", max(base, defaults.max_ejection_time))
            ),
            max_ejection_percent=float(
                item.get("max_ejection_percent", defaults.max_ejection_percent)
            ),
        )
    return HealthCheck(active=active, passive=passive)


def _endpoint(value: Any) -> EndpointConfig:
    if isinstance(value, str):
        return EndpointConfig(url=value)
    return EndpointConfig(
        url=value["url"], weight=value.get("weight", 1), priority=value.get("priority", 0)
    )


def build_upstreams(data: Mapping[str, Any]) -> Tuple[UpstreamConfig, ...]:
    """The C{upstream:} section of a checked document."""
    return tuple(
        _engine(item["name"], [_endpoint(e) for e in item["endpoints"]], item)
        for item in data.get("upstream", ())
    )


def cluster_upstream_name(name: str) -> str:
    """The name of the upstream an Elasticsearch cluster becomes."""
    return f"elasticsearch:{name}"


def build_clusters(data: Mapping[str, Any]) -> Tuple[ElasticsearchConfig, ...]:
    """The C{elasticsearch:} section of a checked document."""
    clusters = []
    for item in data.get("elasticsearch", ()):
        schema = item.get("schema", "http")
        urls = [item["endpoint"]] if "endpoint" in item else []
        urls += item.get("endpoints", [])
        urls += [f"{schema}://{host}" for host in [item.get("host")] if host]
        urls += [f"{schema}://{host}" for host in item.get("hosts", [])]
        headers = ()
        auth = item.get("basic_auth")
        if auth:
            token = f"{auth['username']}:{auth.get('password', '')}".encode("utf-8")
            headers = (("Authorization", "Basic " + base64.b64encode(token).decode("ascii")),)
        upstream = _engine(
            cluster_upstream_name(item["name"]),
            [EndpointConfig(url=url) for url in dict.fromkeys(urls)],
            item,
            request_headers=headers,
        )
        if "request_timeout" in item and "read" not in item.get("timeout", {}):
            upstream = _replace_timeouts(
                upstream, read=float(item["request_timeout"]) or upstream.timeout.read
            )
        clusters.append(
            ElasticsearchConfig(
                name=item["name"], upstream=upstream, enabled=item.get("enabled", True)
            )
        )
    return tuple(clusters)


def _replace_timeouts(upstream: UpstreamConfig, **changes: float) -> UpstreamConfig:
    return attrs.evolve(upstream, timeout=attrs.evolve(upstream.timeout, **changes))


def http_filter_upstream(params: Mapping[str, Any]) -> UpstreamConfig:
    """
    The anonymous upstream of an C{http} filter: its C{host}/C{hosts} with
    its C{schema}, named C{http:HOST,HOST}.
    """
    schema = params.get("schema", "http")
    hosts = ([params["host"]] if "host" in params else []) + list(params.get("hosts", ()))
    hosts = list(dict.fromkeys(hosts))
    item: Dict[str, Any] = {}
    if "max_retry_times" in params:
        item["retries"] = params["max_retry_times"]
    if params.get("skip_failure_host") is False:
        item["retries"] = 0
    if parse_duration(params.get("timeout", 0)) > 0:
        item["retry_timeout"] = params["timeout"]
    if params.get("tls_insecure_skip_verify"):
        item["tls"] = {"verify": False}
    if parse_duration(params.get("max_idle_conn_duration", 0)) > 0:
        item["keepalive_pool"] = {"idle_timeout": params["max_idle_conn_duration"]}
    upstream = _engine(
        "http:" + ",".join(hosts),
        [EndpointConfig(url=f"{schema}://{host}") for host in hosts],
        item,
    )
    return attrs.evolve(upstream, timeout=infini_timeouts(params, upstream.timeout))
