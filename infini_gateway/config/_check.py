"""
The checks of meaning the schema cannot make: durations, addresses, unique
names, references between sections, and keys that contradict each other.

They run after the structural pass on a document that may still be
malformed, so each looks at a value only when it has the right type (a
wrong type has already been reported).
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple

from infini_gateway.config._document import Document, format_path
from infini_gateway.config._errors import did_you_mean
from infini_gateway.config.values import check_host, got, parse_binding, parse_duration

Path = Tuple[Any, ...]

_NETWORK_KEYS = {
    "binding",
    "host",
    "port",
    "publish",
    "reuse_port",
    "skip_occupied_port",
}


def _items(data: Any, key: str) -> List[Tuple[int, dict]]:
    section = data.get(key)
    if not isinstance(section, list):
        return []
    return [(i, item) for i, item in enumerate(section) if isinstance(item, dict)]


def _names(doc: Document, key: str, what: str) -> Optional[List[str]]:
    """
    The names defined in section C{key}, reporting names defined twice; None
    when the section is malformed, so references to it cannot be judged.
    """
    first: Dict[str, Path] = {}
    complete = key not in doc.data or isinstance(doc.data[key], list)
    for i, item in enumerate(doc.data.get(key, ()) if complete else ()):
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str):
            complete = False
            continue
        path = (key, i, "name")
        if name in first:
            line = doc.line(first[name])
            at = f"line {line}" if line is not None else format_path(first[name][:2])
            doc.problem(
                path,
                f"duplicate {what} name {name!r} (also at {at}; expected unique names)",
            )
        else:
            first[name] = path
    return list(first) if complete else None


def _reference(
    doc: Document, path: Path, name: Any, what: str, names: Optional[Sequence[str]]
) -> None:
    if names is None or not isinstance(name, str) or name in names:
        return
    if names:
        known = f"{what}s: {', '.join(names)}"
    else:
        known = f"no {what}s are defined"
    doc.problem(
        path,
        f"expected the name of a {what}, got {got(name)}"
        f" ({did_you_mean(name, names)}{known})",
    )


def _check_entry(
    doc: Document, i: int, entry: dict, routers: Optional[Sequence[str]]
) -> None:
    path: Path = ("entry", i)
    if "router" in entry:
        _reference(doc, path + ("router",), entry["router"], "router", routers)
    elif routers is not None and "default" not in routers:
        listed = (
            f"routers: {', '.join(routers)}" if routers else "no routers are defined"
        )
        doc.problem(
            path,
            "expected a router key, or a router named 'default' for this entry to use"
            f" ({listed})",
        )

    timeout = entry.get("idle_timeout")
    if isinstance(timeout, (str, int, float)) and not isinstance(timeout, bool):
        try:
            if parse_duration(timeout) <= 0:
                doc.problem(
                    path + ("idle_timeout",),
                    f"expected a duration greater than zero, got {got(timeout)}",
                )
        except ValueError as e:
            doc.problem(path + ("idle_timeout",), str(e))

    network = entry.get("network")
    if isinstance(network, dict):
        _check_network(doc, path + ("network",), network)

    tls = entry.get("tls")
    if isinstance(tls, dict):
        tls_path = path + ("tls",)
        if "cert_file" in tls and "key_file" not in tls:
            doc.problem(
                tls_path + ("cert_file",),
                "expected key_file too (the certificate's private key)",
            )
        if "key_file" in tls and "cert_file" not in tls:
            doc.problem(
                tls_path + ("key_file",),
                "expected cert_file too (the key's certificate)",
            )


def _check_network(doc: Document, path: Path, network: dict) -> None:
    binding = network.get("binding")
    if "binding" in network:
        for key in ("host", "port"):
            if key in network:
                doc.problem(
                    path + (key,), "expected either binding, or host and port, not both"
                )
                break
        if isinstance(binding, str):
            try:
                parse_binding(binding)
            except ValueError as e:
                doc.problem(path + ("binding",), str(e))
    elif "port" not in network:
        if "host" in network:
            doc.problem(path + ("host",), "expected port together with host")
        elif set(network) <= _NETWORK_KEYS:
            # With an unknown key (a misspelt binding?) that one problem is enough.
            doc.problem(path, "expected binding (HOST:PORT), or host and port")

    host = network.get("host")
    if isinstance(host, str) and host:
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        try:
            check_host(host)
        except ValueError as e:
            doc.problem(path + ("host",), str(e))

    publish = network.get("publish")
    if isinstance(publish, str):
        try:
            parse_binding(publish)
        except ValueError as e:
            doc.problem(path + ("publish",), str(e))

    if network.get("reuse_port") is True and network.get("skip_occupied_port") is True:
        doc.problem(
            path + ("skip_occupied_port",),
            "expected reuse_port and skip_occupied_port not both true"
            " (a shared port is never skipped as occupied)",
        )


def _check_router(
    doc: Document, i: int, router: dict, flows: Optional[Sequence[str]]
) -> None:
    path: Path = ("router", i)
    for key in ("default_flow", "tracing_flow"):
        if key in router:
            _reference(doc, path + (key,), router[key], "flow", flows)
    for k, rule in _items(router, "rules"):
        named = rule.get("flow")
        rule_path = path + ("rules", k, "flow")
        if isinstance(named, list):
            for m, name in enumerate(named):
                _reference(doc, rule_path + (m,), name, "flow", flows)
        else:
            _reference(doc, rule_path, named, "flow", flows)


def check(doc: Document) -> None:
    """
    Record in C{doc} (a L{infini_gateway.config.load.Document} holding a
    mapping) every problem of meaning found.
    """
    _names(doc, "entry", "entry")
    routers = _names(doc, "router", "router")
    flows = _names(doc, "flow", "flow")
    for i, entry in _items(doc.data, "entry"):
        _check_entry(doc, i, entry, routers)
    for i, router in _items(doc.data, "router"):
        _check_router(doc, i, router, flows)
