"""
The C{service:} section of gateway.yml (API7 Cloud's services): its JSON
Schema, the checks of meaning the schema cannot make, and its conversion
into L{ServiceConfig} values.

A service's routes become ordinary router rules (L{infini_gateway.services}
compiles them), so they are checked as rules are: their patterns compile,
and no route matches the same requests at the same precedence as a rule of
the router or another route.  An upstream version written inline becomes an
upstream of its own, named C{service/SERVICE/VERSION}, next to those of the
C{upstream:} section (same engine, same health checks).
"""

import copy
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

from infini_gateway.config import _parts as parts, upstreams as _upstreams
from infini_gateway.config._document import Document, format_path
from infini_gateway.config._errors import did_you_mean
from infini_gateway.config.model import (
    HTTP_METHODS,
    CanaryConfig,
    CanaryRule,
    FilterSpec,
    ServiceConfig,
    ServiceRoute,
    StickyKey,
    UpstreamConfig,
    UpstreamVersion,
    parse_client_ip,
)
from infini_gateway.config.values import got
from infini_gateway.intentions import intentions_schema

Path = Tuple[Any, ...]
Schema = Dict[str, Any]

PROTOCOLS = ("http", "https")
CANARY_STATES = ("in_progress", "paused", "finished")
OPERATORS = ("==", "!=", "in", "regex")
RULE_SOURCES = ("header", "query", "cookie")
STICKY_SOURCES = ("header", "cookie")

# Schemas


def _plugins(filter_item: Schema, description: str) -> Schema:
    return {"description": description, "type": "array", "items": copy.deepcopy(filter_item)}


def inline_upstream_schema() -> Schema:
    """An upstream of the C{upstream:} section without its name."""
    schema = copy.deepcopy(_upstreams.upstream_schema()["items"])
    schema["properties"].pop("name", None)
    schema["required"] = [key for key in schema.get("required", ()) if key != "name"]
    schema["description"] = "An upstream written here: endpoints and how requests reach them."
    return schema


def _route(filter_item: Schema) -> Schema:
    method = {
        "type": "string",
        "enum": list(HTTP_METHODS) + ["*"],
        "errorMessage": "an HTTP method (" + ", ".join(HTTP_METHODS) + " or *)",
    }
    path = {"type": "string", "pattern": "^/", "errorMessage": "a path pattern beginning with /"}
    return _upstreams._object(
        "A route: requests on these paths (below the service's path_prefix)" " with these methods.",
        {
            "name": parts.string("Unique among the service's routes.", minLength=1),
            "description": parts.string("What the route is for."),
            "paths": parts.one_or_list(
                "Router patterns, joined to the service's path_prefix.",
                path,
                "a path pattern or a list of them",
            ),
            "methods": parts.one_or_list(
                'HTTP methods, "*" for any (the default).',
                method,
                "an HTTP method or a list of them",
            ),
            "strip_path_prefix": parts.boolean(
                "Forward the path without the service's path_prefix (default false)."
            ),
            "published": parts.boolean("Serve this route (default true)."),
            "plugins": _plugins(
                filter_item,
                "Filters run before forwarding; one named as a service plugin" " replaces it.",
            ),
            "intentions": intentions_schema(
                "Which client identities may use this route (replaces the"
                " service's intentions): the first rule whose source matches"
                " decides, else default (deny when not given)."
            ),
        },
        required=["paths"],
    )


def _canary() -> Schema:
    value = {"type": ["string", "integer"]}
    rule = _upstreams._object(
        "A condition: a header, query argument or cookie compared with value.",
        {
            "header": parts.string("The header compared.", minLength=1),
            "query": parts.string("The query argument compared.", minLength=1),
            "cookie": parts.string("The cookie compared.", minLength=1),
            "operator": {
                "description": "==, !=, in (value is a list) or regex"
                " (searched, not anchored; default ==).",
                "type": "string",
                "enum": list(OPERATORS),
                "errorMessage": "one of " + ", ".join(OPERATORS),
            },
            "value": {
                "description": "The value compared; a list for in.",
                "errorMessage": "a string, or a list of strings for in",
                "anyOf": [value, {"type": "array", "items": value, "minItems": 1}],
            },
        },
        required=["value"],
    )
    return _upstreams._object(
        "A canary release: some requests go to another upstream version.",
        {
            "version": parts.string("The canary's upstream version.", minLength=1),
            "percent": {
                "description": "Share of the requests sent to the canary (0-100).",
                "type": "integer",
                "minimum": 0,
                "maximum": 100,
            },
            "rules": {
                "description": "Requests matching every condition go to the canary.",
                "type": "array",
                "minItems": 1,
                "items": rule,
            },
            "state": {
                "description": "in_progress (default), paused (no request to the"
                " canary) or finished (every request to the canary).",
                "type": "string",
                "enum": list(CANARY_STATES),
                "errorMessage": "one of " + ", ".join(CANARY_STATES),
            },
            "sticky": _upstreams._object(
                "With percent: the same user (this header or cookie) always gets"
                " the same version.",
                {
                    "header": parts.string("The header naming the user.", minLength=1),
                    "cookie": parts.string("The cookie naming the user.", minLength=1),
                },
                minProperties=1,
                maxProperties=1,
            ),
        },
        required=["version"],
    )


def service_schema(filter_item: Schema) -> Schema:
    """
    The C{service:} section.

    @param filter_item: the schema of one filter item of a flow (plugins
        are written the same way).
    """
    protocol = {
        "type": "string",
        "enum": list(PROTOCOLS),
        "errorMessage": "http or https",
    }
    version = _upstreams._object(
        "An upstream version: an upstream by name, or written here.",
        {
            "version": parts.string("The version's name, unique in the service.", minLength=1),
            "upstream": {
                "description": "The name of an upstream of the upstream section,"
                " or an upstream written here (endpoints, balancer, ...).",
                "errorMessage": "an upstream name, or a mapping with endpoints",
                "anyOf": [{"type": "string", "minLength": 1}, inline_upstream_schema()],
            },
        },
        required=["version", "upstream"],
    )
    service = _upstreams._object(
        "A service: routes on hosts below a path prefix, forwarded to"
        " one of its upstream versions.",
        {
            "name": parts.string("Unique among services.", minLength=1),
            "description": parts.string("What the service is for."),
            "published": parts.boolean(
                "Serve the service (default true); an unpublished service's"
                " routes answer as unknown paths do."
            ),
            "router": parts.one_or_list(
                'The router(s) serving it (default "default").',
                {"type": "string", "minLength": 1},
                "a router name or a list of them",
            ),
            "protocol": parts.one_or_list(
                "http, https or both (the default); an https-only service"
                " redirects plain HTTP requests to an HTTPS entry.",
                protocol,
                "http, https, or a list of them",
            ),
            "hosts": parts.one_or_list(
                "Host names a request must carry one of (any case, any port):"
                " api.example.com, or *.example.org for any name below it;"
                " none: any host.",
                {"type": "string", "minLength": 1},
                "a host name or a list of them",
            ),
            "path_prefix": parts.string(
                "Joined in front of each route's paths, such as /v1.",
                pattern="^/",
                errorMessage="a path beginning with /",
            ),
            "plugins": _plugins(filter_item, "Filters run before forwarding, in order."),
            "intentions": intentions_schema(
                "Which client identities may use the service: the first rule"
                " whose source matches decides, else default (deny when not"
                " given). Runs before the plugins."
            ),
            "trusted_proxies": {
                "description": "Peers whose X-Forwarded-Proto: https counts as"
                " HTTPS. IP addresses and CIDR blocks.",
                "type": "array",
                "items": {"type": "string"},
            },
            "upstreams": {
                "description": "The upstream versions.",
                "type": "array",
                "minItems": 1,
                "items": version,
            },
            "upstream_in_use": parts.string(
                'The version requests go to (default "default").', minLength=1
            ),
            "canary": _canary(),
            "routes": {
                "description": "The service's routes.",
                "type": "array",
                "items": _route(filter_item),
            },
        },
        required=["name", "upstreams"],
    )
    return _upstreams.titled(
        {
            "title": "service",
            "description": "API7-style services: routes compiled into the routers'"
            " rules, forwarded to upstream versions, with canary releases.",
            "type": "array",
            "items": service,
        }
    )


# Checks


def _items(data: Any, key: str) -> List[Tuple[int, dict]]:
    section = data.get(key) if isinstance(data, dict) else None
    if not isinstance(section, list):
        return []
    return [(i, item) for i, item in enumerate(section) if isinstance(item, dict)]


def _listed(value: Any, path: Path) -> List[Tuple[Path, Any]]:
    if isinstance(value, list):
        return [(path + (k,), item) for k, item in enumerate(value)]
    return [(path, value)]


def _strings(value: Any) -> Tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list):
        return tuple(v for v in value if isinstance(v, str))
    return ()


def _defined_names(doc: Document, key: str) -> Optional[List[str]]:
    section = doc.data.get(key, [])
    if not isinstance(section, list):
        return None
    names = [item.get("name") for item in section if isinstance(item, dict)]
    if not all(isinstance(name, str) for name in names):
        return None
    return names


def inline_upstream_name(service: str, version: str) -> str:
    """The name an upstream written inside a service's version gets."""
    return f"service/{service}/{version}"


def join_path(prefix: str, path: str) -> str:
    """A route's path below the service's C{path_prefix} (C{/v1} + C{/pets})."""
    return prefix.rstrip("/") + path if prefix else path


def route_label(route: Mapping[str, Any], index: int) -> str:
    """A route's name, or C{routes[i]} when it has none."""
    name = route.get("name")
    return name if isinstance(name, str) else f"routes[{index}]"


def check(doc: Document) -> None:
    """Record in C{doc} every problem of meaning of the C{service:} section."""
    # Imported here: the pattern module imports the configuration values.
    from infini_gateway.pattern import PatternError, normalise_host

    data = doc.data
    routers = _defined_names(doc, "router")
    upstream_names = _defined_names(doc, "upstream")
    seen: Dict[str, Path] = {}
    for i, service in _items(data, "service"):
        path: Path = ("service", i)
        name = service.get("name")
        if isinstance(name, str):
            if name in seen:
                line = doc.line(seen[name])
                at = f"line {line}" if line is not None else format_path(seen[name][:2])
                doc.problem(
                    path + ("name",),
                    f"duplicate service name {name!r} (also at {at}; expected unique names)",
                )
            else:
                seen[name] = path + ("name",)
        router = service.get("router", "default")
        for router_path, value in _listed(router, path + ("router",)):
            if "router" not in service:
                if routers is not None and "default" not in routers:
                    listed = ", ".join(routers) or "none are defined"
                    doc.problem(
                        path,
                        "expected a router key, or a router named 'default' to serve"
                        f" this service (routers: {listed})",
                    )
            else:
                parts.reference(doc, router_path, value, "router", routers)
        for host_path, host in _listed(service.get("hosts", []), path + ("hosts",)):
            if isinstance(host, str) and host:
                try:
                    normalise_host(host)
                except PatternError as e:
                    doc.problem(host_path, str(e))
        prefix = service.get("path_prefix")
        if isinstance(prefix, str) and ("{" in prefix or "}" in prefix):
            doc.problem(
                path + ("path_prefix",),
                f"expected a literal path prefix (no {{variables}}), got {got(prefix)}",
            )
        for k, value in enumerate(service.get("trusted_proxies") or ()):
            if isinstance(value, str):
                try:
                    parse_client_ip(value)
                except ValueError as e:
                    doc.problem(path + ("trusted_proxies", k), str(e))
        versions = _check_versions(doc, path, service, upstream_names)
        _check_canary(doc, path, service, versions)
        _check_route_names(doc, path, service)
    _check_conflicts(doc)
    _check_templates(doc)
    if upstream_names is not None:
        upstream_names = upstream_names + [
            inline_upstream_name(service["name"], version["version"])
            for _, service in _items(data, "service")
            for _, version in _items(service, "upstreams")
            if isinstance(service.get("name"), str)
            and isinstance(version.get("version"), str)
            and isinstance(version.get("upstream"), dict)
        ]
    _check_plugins(doc, upstream_names)


def _check_plugins(doc: Document, upstream_names: Optional[List[str]]) -> None:
    """
    Each plugin accepts its parameters (a regular expression compiles, say),
    as a flow's filters are checked before the gateway starts; a C{proxy}
    plugin names an upstream that exists.
    """
    from infini_gateway.filters import filter_class

    for i, service in _items(doc.data, "service"):
        lists = [(("service", i, "plugins"), service.get("plugins"))]
        lists += [
            (("service", i, "routes", k, "plugins"), route.get("plugins"))
            for k, route in _items(service, "routes")
        ]
        for list_path, plugins in lists:
            for j, item in enumerate(plugins if isinstance(plugins, list) else ()):
                if not isinstance(item, dict) or len(item) != 1:
                    continue
                ((name, params),) = item.items()
                cls = filter_class(name)
                if cls is None or not isinstance(params, (dict, type(None))):
                    continue
                path = list_path + (j, name)
                if name == "proxy" and isinstance(params, dict):
                    parts.reference(
                        doc,
                        path + ("upstream",),
                        params.get("upstream"),
                        "upstream",
                        upstream_names,
                    )
                    continue
                try:
                    cls(params or {}, None)
                except ValueError as e:
                    doc.problem(path, str(e))
                except Exception:
                    pass  # needs the running gateway: checked when it is built


def _check_versions(
    doc: Document, path: Path, service: dict, upstream_names: Optional[List[str]]
) -> Optional[List[str]]:
    versions: List[str] = []
    complete = isinstance(service.get("upstreams"), list)
    for k, item in _items(service, "upstreams"):
        version_path = path + ("upstreams", k)
        version = item.get("version")
        if not isinstance(version, str):
            complete = False
        elif version in versions:
            doc.problem(
                version_path + ("version",),
                f"duplicate version {version!r} (expected unique versions)",
            )
        else:
            versions.append(version)
        upstream = item.get("upstream")
        if isinstance(upstream, str):
            parts.reference(doc, version_path + ("upstream",), upstream, "upstream", upstream_names)
        elif isinstance(upstream, dict):
            _check_inline_upstream(doc, version_path + ("upstream",), upstream)
            name = service.get("name")
            if (
                isinstance(name, str)
                and isinstance(version, str)
                and upstream_names is not None
                and inline_upstream_name(name, version) in upstream_names
            ):
                doc.problem(
                    version_path + ("upstream",),
                    f"an upstream named {inline_upstream_name(name, version)!r} is"
                    " already defined (the name this inline upstream gets)",
                )
    if not complete:
        return None
    in_use = service.get("upstream_in_use", "default")
    if isinstance(in_use, str) and in_use not in versions and versions:
        where = path + ("upstream_in_use",) if "upstream_in_use" in service else path
        doc.problem(
            where,
            f"expected upstream_in_use to name a version of upstreams, got {got(in_use)}"
            f" ({did_you_mean(in_use, versions)}versions: {', '.join(versions)})",
        )
    return versions


def _check_inline_upstream(doc: Document, path: Path, upstream: dict) -> None:
    endpoints = upstream.get("endpoints")
    for k, endpoint in enumerate(endpoints if isinstance(endpoints, list) else ()):
        url = endpoint.get("url") if isinstance(endpoint, dict) else endpoint
        k_path = path + ("endpoints", k) + (("url",) if isinstance(endpoint, dict) else ())
        problem = _upstreams.check_endpoint_url(url)
        if problem:
            doc.problem(k_path, problem)
    _upstreams._check_engine(doc, path, upstream)


def _check_canary(doc: Document, path: Path, service: dict, versions: Optional[List[str]]) -> None:
    canary = service.get("canary")
    if not isinstance(canary, dict):
        return
    path = path + ("canary",)
    version = canary.get("version")
    if isinstance(version, str) and versions is not None and version not in versions:
        doc.problem(
            path + ("version",),
            f"expected a version of the service's upstreams, got {got(version)}"
            f" ({did_you_mean(version, versions)}versions: {', '.join(versions)})",
        )
    in_use = service.get("upstream_in_use", "default")
    if version == in_use and canary.get("state", "in_progress") != "finished":
        doc.problem(
            path + ("version",),
            f"expected a version other than upstream_in_use ({in_use!r})",
        )
    if ("percent" in canary) == ("rules" in canary):
        doc.problem(path, "expected either percent or rules (one of them)")
    if "sticky" in canary and "rules" in canary:
        doc.problem(
            path + ("sticky",),
            "expected sticky only with percent (rules already decide per request)",
        )
    for k, rule in _items(canary, "rules"):
        rule_path = path + ("rules", k)
        sources = [key for key in RULE_SOURCES if key in rule]
        if len(sources) != 1:
            doc.problem(
                rule_path,
                "expected one of header, query or cookie"
                + (f", got {', '.join(sources)}" if sources else ""),
            )
        operator = rule.get("operator", "==")
        value = rule.get("value")
        if operator == "in":
            if not isinstance(value, list) and value is not None:
                doc.problem(rule_path + ("value",), f"expected a list for in, got {got(value)}")
        elif operator in OPERATORS and isinstance(value, list):
            doc.problem(rule_path + ("value",), f"expected one value for {operator}, got a list")
        if operator == "regex" and isinstance(value, str):
            try:
                re.compile(value)
            except re.error as e:
                doc.problem(
                    rule_path + ("value",),
                    f"expected a regular expression, got {got(value)} ({e})",
                )


def _check_route_names(doc: Document, path: Path, service: dict) -> None:
    names: Dict[str, int] = {}
    for k, route in _items(service, "routes"):
        name = route.get("name")
        if not isinstance(name, str):
            continue
        if name in names:
            doc.problem(
                path + ("routes", k, "name"),
                f"duplicate route name {name!r} (also routes[{names[name]}];"
                " expected unique names)",
            )
        else:
            names[name] = k


def _served(service: dict, route: dict) -> bool:
    return service.get("published", True) is not False and route.get("published", True) is not False


def _check_conflicts(doc: Document) -> None:
    """
    Each served route's patterns compile, and none matches the same requests
    at the same precedence as a rule of its router or another route.
    """
    from infini_gateway.pattern import PatternError, RouteTable, compile_pattern, normalise_host

    tables: Dict[str, RouteTable] = {}

    def table(router: str) -> RouteTable:
        if router not in tables:
            tables[router] = RouteTable()
            for i, item in _items(doc.data, "router"):
                if item.get("name") != router:
                    continue
                for k, rule in _items(item, "rules"):
                    rule_path: Path = ("router", i, "rules", k)
                    methods = _strings(rule.get("method", "*"))
                    hosts = _hosts(rule.get("host", []))
                    for pattern_path, text in _listed(
                        rule.get("pattern"), rule_path + ("pattern",)
                    ):
                        try:
                            pattern = compile_pattern(text)
                        except (PatternError, TypeError):
                            continue
                        tables[router].add(pattern, methods, pattern_path, hosts)
        return tables[router]

    def _hosts(value: Any) -> List[str]:
        hosts = []
        for host in _strings(value):
            try:
                hosts.append(normalise_host(host))
            except PatternError:
                pass
        return hosts

    for i, service in _items(doc.data, "service"):
        prefix = service.get("path_prefix", "")
        if not isinstance(prefix, str) or "{" in prefix or "}" in prefix:
            prefix = ""
        hosts = _hosts(service.get("hosts", []))
        routers = _strings(service.get("router", "default"))
        for k, route in _items(service, "routes"):
            route_path: Path = ("service", i, "routes", k)
            methods = _strings(route.get("methods", "*"))
            for pattern_path, text in _listed(route.get("paths"), route_path + ("paths",)):
                if not isinstance(text, str) or not text.startswith("/"):
                    continue
                joined = join_path(prefix, text)
                try:
                    pattern = compile_pattern(joined)
                except PatternError as e:
                    doc.problem(pattern_path, str(e))
                    continue
                if not _served(service, route):
                    continue
                for router in dict.fromkeys(routers):
                    for conflict in table(router).add(pattern, methods, pattern_path, hosts):
                        other = conflict.existing
                        line = doc.line(other.value)
                        at = f" (line {line})" if line is not None else ""
                        what = "any method" if conflict.method == "*" else conflict.method
                        if conflict.host is not None:
                            what += f" on host {conflict.host}"
                        doc.problem(
                            pattern_path,
                            f"{joined!r} overlaps {other.pattern!r} of"
                            f" {format_path(other.value[:4])}{at} for {what}"
                            f" in router {router!r}",
                        )


def _check_templates(doc: Document) -> None:
    """
    The C{$[[name]]} variables a plugin uses are captured by the paths of
    every route running it.
    """
    from infini_gateway.filters import filter_class
    from infini_gateway.pattern import PatternError, compile_pattern
    from infini_gateway.template import path_variables

    def used(item: Any, item_path: Path) -> List[Tuple[Path, str]]:
        if not isinstance(item, dict) or len(item) != 1:
            return []
        ((filter_name, params),) = item.items()
        if not isinstance(params, dict):
            return []
        found = []
        for key in getattr(filter_class(filter_name), "templated", ()):
            for value_path, text in _listed(params.get(key), item_path + (filter_name, key)):
                if not isinstance(text, str):
                    continue
                try:
                    names = path_variables(text)
                except ValueError:
                    continue  # reported with the filter, when it is built
                found += [(value_path, name) for name in names]
        return found

    for i, service in _items(doc.data, "service"):
        prefix = service.get("path_prefix", "")
        prefix = prefix if isinstance(prefix, str) else ""
        service_plugins = service.get("plugins")
        service_plugins = service_plugins if isinstance(service_plugins, list) else []
        for k, route in _items(service, "routes"):
            captured: set = set()
            for _, text in _listed(route.get("paths"), ()):
                if isinstance(text, str):
                    try:
                        captured.update(compile_pattern(join_path(prefix, text)).names)
                    except PatternError:
                        pass
            plugins = route.get("plugins")
            plugins = plugins if isinstance(plugins, list) else []
            replaced = {next(iter(p)) for p in plugins if isinstance(p, dict) and len(p) == 1}
            uses: List[Tuple[Path, str]] = []
            for j, item in enumerate(service_plugins):
                if isinstance(item, dict) and len(item) == 1 and next(iter(item)) in replaced:
                    continue
                uses += used(item, ("service", i, "plugins", j))
            for j, item in enumerate(plugins):
                uses += used(item, ("service", i, "routes", k, "plugins", j))
            label = route_label(route, k)
            for value_path, var in uses:
                if var not in captured:
                    listed = ", ".join(sorted(captured)) or "none"
                    doc.problem(
                        value_path,
                        f"$[[{var}]]: expected a variable captured by the paths of"
                        f" route {label!r} ({did_you_mean(var, sorted(captured))}"
                        f"captured: {listed})",
                    )


# Conversion


def _filter_spec(doc: Document, path: Path, item: Mapping[str, Any]) -> FilterSpec:
    ((name, params),) = item.items()
    # Imported here: the loader imports this module.
    from infini_gateway.config._yaml import plain

    return FilterSpec(
        name=name,
        params=plain(params) if params is not None else {},
        where=doc.where(path + (name,)),
    )


def _plugin_specs(doc: Document, path: Path, item: Mapping[str, Any]) -> Tuple[FilterSpec, ...]:
    """
    The filters of a service's or route's C{plugins}, led by an
    C{intentions} filter when the C{intentions} key is given (so a route's
    intentions replace the service's, like any plugin of the same name).
    """
    from infini_gateway.config._yaml import plain

    specs = [
        _filter_spec(doc, path + ("plugins", j), plugin)
        for j, plugin in enumerate(item.get("plugins", ()))
    ]
    if "intentions" in item:
        specs.insert(
            0,
            FilterSpec(
                name="intentions",
                params=plain(item["intentions"]),
                where=doc.where(path + ("intentions",)),
            ),
        )
    return tuple(specs)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else str(value)


def _canary_config(canary: Mapping[str, Any]) -> CanaryConfig:
    rules = []
    for rule in canary.get("rules", ()):
        (source,) = [key for key in RULE_SOURCES if key in rule]
        value = rule["value"]
        values = tuple(_text(v) for v in value) if isinstance(value, list) else (_text(value),)
        rules.append(
            CanaryRule(
                source=source,
                name=rule[source],
                operator=rule.get("operator", "=="),
                values=values,
            )
        )
    sticky = canary.get("sticky")
    return CanaryConfig(
        version=canary["version"],
        percent=canary.get("percent"),
        rules=tuple(rules),
        state=canary.get("state", "in_progress"),
        sticky=StickyKey(*next(iter(sticky.items()))) if sticky else None,
    )


def build_service_upstreams(data: Mapping[str, Any]) -> Tuple[UpstreamConfig, ...]:
    """The upstreams written inline in the versions of a checked C{service:} section."""
    items = []
    for service in data.get("service", ()):
        for version in service.get("upstreams", ()):
            upstream = version["upstream"]
            if isinstance(upstream, Mapping):
                name = inline_upstream_name(service["name"], version["version"])
                items.append(dict(upstream, name=name))
    return _upstreams.build_upstreams({"upstream": items})


def build_services(doc: Document) -> Tuple[ServiceConfig, ...]:
    """The C{service:} section of a checked document."""
    services = []
    for i, service in enumerate(doc.data.get("service", ())):
        name = service["name"]
        routes = []
        for k, route in enumerate(service.get("routes", ())):
            routes.append(
                ServiceRoute(
                    name=route_label(route, k),
                    paths=_strings(route["paths"]),
                    methods=_strings(route.get("methods", "*")),
                    strip_path_prefix=route.get("strip_path_prefix", False),
                    published=route.get("published", True),
                    plugins=_plugin_specs(doc, ("service", i, "routes", k), route),
                )
            )
        versions = tuple(
            UpstreamVersion(
                version=item["version"],
                upstream=(
                    item["upstream"]
                    if isinstance(item["upstream"], str)
                    else inline_upstream_name(name, item["version"])
                ),
            )
            for item in service["upstreams"]
        )
        canary = service.get("canary")
        services.append(
            ServiceConfig(
                name=name,
                description=service.get("description", ""),
                published=service.get("published", True),
                routers=tuple(dict.fromkeys(_strings(service.get("router", "default")))),
                protocols=tuple(dict.fromkeys(_strings(service.get("protocol", list(PROTOCOLS))))),
                hosts=_strings(service.get("hosts", ())),
                path_prefix=service.get("path_prefix", ""),
                plugins=_plugin_specs(doc, ("service", i), service),
                trusted_proxies=service.get("trusted_proxies", ()),
                upstreams=versions,
                upstream_in_use=service.get("upstream_in_use", "default"),
                canary=_canary_config(canary) if canary else None,
                routes=tuple(routes),
            )
        )
    return tuple(services)
