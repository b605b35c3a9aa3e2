"""
gateway.yml -> L{GatewayConfig}.

Loading is three passes over the YAML document: the structure (types,
unknown keys, required keys, ranges) against the JSON Schema of
L{infini_gateway.config.schema}; then the meaning (durations, addresses,
unique names, references, conflicting keys) in L{infini_gateway.config._check};
and only when both found nothing, the conversion into the frozen values of
L{infini_gateway.config.model}.  Every problem found is reported, once, as
C{FILE:LINE: KEY.PATH: what was expected}, in file order.
"""

import os
from typing import Any, List, Mapping, Sequence, Tuple, Union

import yaml
from jsonschema import Draft202012Validator

from infini_gateway.config import _check, operating
from infini_gateway.config._document import Document, report_duplicate_keys
from infini_gateway.config._errors import translate
from infini_gateway.config._yaml import LineMap, load_yaml, plain
from infini_gateway.config.model import (
    ClientIPAccess,
    Entry,
    EntryTLS,
    FilterSpec,
    FloatingIPConfig,
    FlowConfig,
    GatewayConfig,
    Network,
    Paths,
    RouterConfig,
    Rule,
)
from infini_gateway.config.services import build_service_upstreams, build_services
from infini_gateway.config.upstreams import build_clusters, build_upstreams
from infini_gateway.config.values import got, parse_binding, parse_byte_size, parse_duration
from infini_gateway.filters import filter_names
from infini_gateway.config.model import SNIRoute
from infini_gateway.intentions import intentions_from_params

Path = Tuple[Any, ...]

_TOP_LEVEL = "path, entry, router, flow"

# Spliced connections (tcp, sni) idle this long are closed: Envoy's TCP
# proxy default, since a database connection may rightly sit idle a while.
L4_IDLE_TIMEOUT = 3600.0


class ConfigError(Exception):
    """
    The configuration cannot be used.

    @ivar problems: one message per problem, C{FILE:LINE: KEY.PATH: what was
        expected}; C{str()} of the error is these joined by newlines.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems: List[str] = list(problems)
        super().__init__("\n".join(self.problems))

    def __str__(self) -> str:
        return "\n".join(self.problems)


def _structure(doc: Document, names: Sequence[str]) -> None:
    # Imported here, not at the top: "python -m infini_gateway.config.schema"
    # must find the module not yet imported by this package.
    from infini_gateway.config.schema import build_schema

    validator = Draft202012Validator(build_schema())
    for error in validator.iter_errors(doc.data):
        for path, text in translate(error, names):
            doc.problem(path, text)


def _one_or_many(value: Any) -> Tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    return tuple(value)


def _client_ip_access(router: Mapping[str, Any]) -> ClientIPAccess:
    # The seed's keys and INFINI's ip_access_control section add up.
    denied = list(router.get("denied_client_ip_list", ()))
    permitted = list(router.get("permitted_client_ip_list", ()))
    control = router.get("ip_access_control", {})
    if control.get("enabled", True):
        client_ip = control.get("client_ip", {})
        denied += client_ip.get("denied", ())
        permitted += client_ip.get("permitted", ())
    return ClientIPAccess(denied=denied, permitted=permitted)


def _filter_spec(doc: Document, path: Path, item: Mapping[str, Any]) -> FilterSpec:
    ((name, params),) = item.items()
    return FilterSpec(
        name=name,
        params=plain(params),
        where=doc.where(path + (name,)),
    )


def _floating_ip(section: Mapping[str, Any]) -> FloatingIPConfig:
    heartbeat = section.get("heartbeat", {})
    values: dict = {
        key: section[key]
        for key in ("enabled", "ip", "netmask", "interface", "priority", "port", "preempt")
        if key in section
    }
    if "peers" in section:
        values["peers"] = _one_or_many(section["peers"])
    if "interval" in heartbeat:
        values["heartbeat_interval"] = parse_duration(heartbeat["interval"])
    if "timeout" in heartbeat:
        values["heartbeat_timeout"] = parse_duration(heartbeat["timeout"])
    return FloatingIPConfig(**values)


def _build(doc: Document, base_dir: str) -> GatewayConfig:
    data = doc.data
    paths = data.get("path", {})
    entries = []
    for entry in data.get("entry", ()):
        network = entry["network"]
        if "binding" in network:
            host, port = parse_binding(network["binding"])
        else:
            host, port = network.get("host", "0.0.0.0"), network["port"]
            if host.startswith("[") and host.endswith("]"):
                host = host[1:-1]
        tls = entry.get("tls", {})
        protocol = entry.get("protocol", "http")
        layer4 = protocol != "http"
        entries.append(
            Entry(
                name=entry["name"],
                enabled=entry.get("enabled", True),
                # tcp and sni entries use a router only for its client
                # address lists, and only when they name one.
                router=entry.get("router", None if layer4 else "default"),
                max_concurrency=entry.get("max_concurrency", 10000),
                idle_timeout=parse_duration(
                    entry.get("idle_timeout", L4_IDLE_TIMEOUT if layer4 else 30.0)
                ),
                read_timeout=parse_duration(entry.get("read_timeout", 30.0)),
                write_timeout=parse_duration(entry.get("write_timeout", 30.0)),
                max_header_size=parse_byte_size(entry.get("max_header_size", 64 * 1024)),
                max_request_body_size=parse_byte_size(
                    entry.get("max_request_body_size", 200 * 1024 * 1024)
                ),
                max_conns_per_ip=entry.get("max_conns_per_ip", 0),
                protocol=protocol,
                upstream=entry.get("upstream"),
                sni_routes=tuple(
                    SNIRoute(server_name=name.lower().rstrip("."), upstream=upstream)
                    for name, upstream in entry.get("sni_routes", {}).items()
                    if name != "default"
                ),
                sni_default=entry.get("sni_routes", {}).get("default"),
                client_hello_timeout=parse_duration(
                    entry.get("client_hello_timeout", 5.0)
                ),
                intentions=(
                    intentions_from_params(entry["intentions"])
                    if "intentions" in entry
                    else None
                ),
                network=Network.from_section(network, host, port),
                tls=EntryTLS.from_section(tls),
            )
        )
    routers = tuple(
        RouterConfig(
            name=router["name"],
            default_flow=router.get("default_flow"),
            tracing_flow=router.get("tracing_flow"),
            rules=tuple(
                Rule(
                    methods=_one_or_many(rule.get("method", "*")),
                    patterns=_one_or_many(rule["pattern"]),
                    flows=_one_or_many(rule["flow"]),
                    hosts=_one_or_many(rule.get("host", ())),
                )
                for rule in router.get("rules", ())
            ),
            access=_client_ip_access(router),
        )
        for router in data.get("router", ())
    )
    flows = tuple(
        FlowConfig(
            name=flow["name"],
            filters=tuple(
                _filter_spec(doc, ("flow", i, "filter", j), item)
                for j, item in enumerate(flow.get("filter", ()))
            ),
        )
        for i, flow in enumerate(data.get("flow", ()))
    )
    return GatewayConfig(
        source=doc.source,
        base_dir=base_dir,
        paths=Paths(**{key: paths[key] for key in ("data", "logs") if key in paths}),
        entries=tuple(entries),
        routers=routers,
        flows=flows,
        upstreams=build_upstreams(data) + build_service_upstreams(data),
        elasticsearch=build_clusters(data),
        floating_ip=_floating_ip(data.get("floating_ip", {})),
        services=build_services(doc),
        api=operating.build_api(data.get("api")),
        configs=operating.build_configs(data.get("configs", {})),
        shutdown_timeout=operating.build_shutdown_timeout(data),
    )


def _null_params_as_empty(data: Mapping[str, Any]) -> None:
    # "- drop:" means the filter with no parameters: validate it as {} so a
    # filter with required parameters says which are missing.
    flows = data.get("flow")
    for flow in flows if isinstance(flows, list) else ():
        items = flow.get("filter") if isinstance(flow, dict) else None
        for item in items if isinstance(items, list) else ():
            if isinstance(item, dict) and len(item) == 1:
                ((name, params),) = item.items()
                if params is None:
                    empty = LineMap()
                    empty.line = getattr(item, "line", 0)
                    item[name] = empty if isinstance(item, LineMap) else {}


def _validate(doc: Document, base_dir: str) -> GatewayConfig:
    data = doc.data
    if not isinstance(data, dict):
        doc.problem(
            (), f"expected a mapping of top-level keys ({_TOP_LEVEL}), got {got(data)}"
        )
        raise ConfigError(doc.problems())
    names = filter_names()
    report_duplicate_keys(doc)
    _null_params_as_empty(data)
    _structure(doc, names)
    _check.check(doc)
    problems = doc.problems()
    if problems:
        raise ConfigError(problems)
    return _build(doc, base_dir)


def config_from_dict(
    data: Mapping[str, Any], source: str = "<dict>", base_dir: str = "."
) -> GatewayConfig:
    """
    Validate a configuration built in code, as L{load_config} validates a
    file (messages have no line numbers).

    @raise ConfigError: listing every problem found.
    """
    return _validate(Document(source, plain(data)), base_dir)


def load_config(path: Union[str, "os.PathLike[str]"]) -> GatewayConfig:
    """
    Read and validate a gateway.yml.

    @param path: the file; messages name it as given, and relative paths in
        it are resolved against its directory (C{GatewayConfig.base_dir}).
    @raise ConfigError: listing every problem found.
    """
    source = os.fspath(path)
    try:
        with open(source, "rb") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(
            [f"{source}: cannot read the file: {e.strerror or e}"]
        ) from None
    try:
        data, line = load_yaml(text)
    except yaml.YAMLError as e:
        raise ConfigError([_yaml_problem(source, e)]) from None
    if data is None:
        raise ConfigError(
            [
                f"{source}: the file is empty"
                f" (expected a mapping of top-level keys: {_TOP_LEVEL})"
            ]
        )
    base_dir = os.path.dirname(os.path.abspath(source))
    return _validate(Document(source, data, line), base_dir)


def _yaml_problem(source: str, error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    problem = getattr(error, "problem", None)
    context = getattr(error, "context", None)
    if problem is None:
        text = str(error).splitlines()[0] if str(error) else type(error).__name__
    else:
        text = problem + (f" ({context})" if context else "")
    where = f"{source}:{mark.line + 1}" if mark is not None else source
    return f"{where}: invalid YAML: {text}"
