"""
The checks of meaning the schema cannot make: durations, addresses, unique
names, references between sections, and keys that contradict each other.

They run after the structural pass on a document that may still be
malformed, so each looks at a value only when it has the right type (a
wrong type has already been reported).
"""

import ipaddress
from typing import Any, Dict, List, Optional, Sequence, Tuple

from infini_gateway.config._document import Document, format_path
from infini_gateway.config import services, upstreams
from infini_gateway.config import _parts as parts, _roles
from infini_gateway.config import operating
from infini_gateway.config._errors import did_you_mean
from infini_gateway.config.model import parse_client_ip
from infini_gateway.config.values import (
    check_host,
    got,
    parse_binding,
    parse_byte_size,
    parse_duration,
)
from infini_gateway.filters import filter_class
from infini_gateway.pattern import PatternError, RouteTable, compile_pattern, normalise_host
from infini_gateway.template import path_variables

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


def _check_entry(
    doc: Document, i: int, entry: dict, routers: Optional[Sequence[str]]
) -> None:
    path: Path = ("entry", i)
    _roles.check_entry(doc, i, entry)
    if "router" in entry:
        parts.reference(doc, path + ("router",), entry["router"], "router", routers)
    elif entry.get("protocol", "http") != "http":
        pass  # tcp and sni entries need no router
    elif routers is not None and "default" not in routers:
        listed = (
            f"routers: {', '.join(routers)}" if routers else "no routers are defined"
        )
        doc.problem(
            path,
            "expected a router key, or a router named 'default' for this entry to use"
            f" ({listed})",
        )

    for key in ("idle_timeout", "read_timeout", "write_timeout"):
        timeout = entry.get(key)
        if isinstance(timeout, (str, int, float)) and not isinstance(timeout, bool):
            try:
                if parse_duration(timeout) <= 0:
                    doc.problem(
                        path + (key,),
                        f"expected a duration greater than zero, got {got(timeout)}",
                    )
            except ValueError as e:
                doc.problem(path + (key,), str(e))
    for key in ("max_header_size", "max_request_body_size"):
        size = entry.get(key)
        if isinstance(size, str):
            try:
                parse_byte_size(size)
            except ValueError as e:
                doc.problem(path + (key,), str(e))

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
            parts.reference(doc, path + (key,), router[key], "flow", flows)
    for k, rule in _items(router, "rules"):
        named = rule.get("flow")
        rule_path = path + ("rules", k, "flow")
        if isinstance(named, list):
            for m, name in enumerate(named):
                parts.reference(doc, rule_path + (m,), name, "flow", flows)
        else:
            parts.reference(doc, rule_path, named, "flow", flows)
    _check_client_ips(doc, path, router)


def _check_client_ips(doc: Document, path: Path, router: dict) -> None:
    lists = [
        (path + (key,), router.get(key))
        for key in ("denied_client_ip_list", "permitted_client_ip_list")
    ]
    control = router.get("ip_access_control")
    client_ip = control.get("client_ip") if isinstance(control, dict) else None
    if isinstance(client_ip, dict):
        # Checked even when not enabled: a typo should not wait for the day
        # the section is switched on.
        lists += [
            (path + ("ip_access_control", "client_ip", key), client_ip.get(key))
            for key in ("denied", "permitted")
        ]
    for list_path, values in lists:
        for k, value in enumerate(values if isinstance(values, list) else ()):
            if isinstance(value, str):
                try:
                    parse_client_ip(value)
                except ValueError as e:
                    doc.problem(list_path + (k,), str(e))


def _listed(value: Any, path: Path) -> List[Tuple[Path, Any]]:
    """C{(path, item)} for a key written as one value or as a list."""
    if isinstance(value, list):
        return [(path + (k,), item) for k, item in enumerate(value)]
    return [(path, value)]


def _check_routes(doc: Document) -> None:
    """
    Patterns and hosts compile; no two rules of a router match the same
    requests at the same precedence; and the router's variables a flow's
    templates use (C{$[[name]]}) are captured by a rule running that flow.
    """
    captured: Dict[str, set] = {}
    for i, router in _items(doc.data, "router"):
        table = RouteTable()
        for k, rule in _items(router, "rules"):
            path: Path = ("router", i, "rules", k)
            methods = rule.get("method", "*")
            methods = methods if isinstance(methods, list) else [methods]
            if not all(isinstance(m, str) for m in methods):
                methods = []
            hosts = []
            for host_path, host in _listed(rule.get("host", []), path + ("host",)):
                if isinstance(host, str) and host:
                    try:
                        hosts.append(normalise_host(host))
                    except PatternError as e:
                        doc.problem(host_path, str(e))
            names: set = set()
            for pattern_path, text in _listed(rule.get("pattern"), path + ("pattern",)):
                if not isinstance(text, str) or not text.startswith("/"):
                    continue
                try:
                    pattern = compile_pattern(text)
                except PatternError as e:
                    doc.problem(pattern_path, str(e))
                    continue
                names.update(pattern.names)
                for conflict in table.add(
                    pattern, dict.fromkeys(methods), pattern_path, dict.fromkeys(hosts)
                ):
                    other = conflict.existing
                    line = doc.line(other.value)
                    at = f" (line {line})" if line is not None else ""
                    method = conflict.method
                    what = "any method" if method == "*" else method
                    if conflict.host is not None:
                        what += f" on host {conflict.host}"
                    doc.problem(
                        pattern_path,
                        f"{text!r} overlaps {other.pattern!r} of"
                        f" {format_path(other.value[:4])}{at} for {what}",
                    )
            for _, flow in _listed(rule.get("flow"), ()):
                if isinstance(flow, str):
                    captured.setdefault(flow, set()).update(names)

    for i, flow in _items(doc.data, "flow"):
        name = flow.get("name")
        filters = flow.get("filter")
        # Not a list: the schema has said so already.
        for j, item in enumerate(filters if isinstance(filters, list) else ()):
            if not isinstance(item, dict) or len(item) != 1:
                continue
            ((filter_name, params),) = item.items()
            templated = getattr(filter_class(filter_name), "templated", ())
            if not isinstance(params, dict):
                continue
            for key in templated:
                for value_path, text in _listed(
                    params.get(key), ("flow", i, "filter", j, filter_name, key)
                ):
                    if not isinstance(text, str):
                        continue
                    try:
                        used = path_variables(text)
                    except ValueError:
                        continue  # reported with the filter, when it is built
                    # A name of the wrong type is reported by the schema.
                    known = captured.get(name, set()) if isinstance(name, str) else set()
                    for var in used:
                        if var not in known:
                            listed = ", ".join(sorted(known)) or "none"
                            doc.problem(
                                value_path,
                                f"$[[{var}]]: expected a variable captured by the"
                                f" pattern of a rule running flow {name!r}"
                                f" ({did_you_mean(var, sorted(known))}captured: {listed})",
                            )


_IPV4_EXPECTED = "an IPv4 address such as 192.168.3.234"


def _unicast_ipv4(doc: Document, path: Path, value: Any) -> Optional[Any]:
    """The IPv4 address C{value}, or None after reporting why it is not one."""
    if not isinstance(value, str):
        return None
    try:
        ip = ipaddress.IPv4Address(value.strip())
    except ValueError:
        doc.problem(path, f"expected {_IPV4_EXPECTED}, got {got(value)}")
        return None
    broadcast = ipaddress.IPv4Address("255.255.255.255")
    if ip.is_unspecified or ip.is_loopback or ip.is_multicast or ip == broadcast:
        doc.problem(
            path,
            "expected a unicast IPv4 address (not 0.0.0.0, loopback, multicast"
            f" or broadcast), got {got(value)}",
        )
        return None
    return ip


def _check_floating_ip(doc: Document) -> None:
    section = doc.data.get("floating_ip")
    if not isinstance(section, dict):
        return
    path: Path = ("floating_ip",)
    ip = _unicast_ipv4(doc, path + ("ip",), section.get("ip"))
    netmask = section.get("netmask")
    prefix = None
    if isinstance(netmask, str):
        try:
            if netmask.count(".") != 3:
                raise ValueError(netmask)
            prefix = ipaddress.IPv4Network(f"0.0.0.0/{netmask.strip()}").prefixlen
            mask = str(ipaddress.IPv4Network(f"0.0.0.0/{prefix}").netmask)
            if mask != netmask.strip() or not prefix:
                raise ValueError(netmask)
        except ValueError:
            prefix = None
            doc.problem(
                path + ("netmask",),
                f"expected a netmask such as 255.255.255.0, got {got(netmask)}",
            )
    if ip is not None and prefix is not None and prefix <= 30:
        network = ipaddress.IPv4Network(f"{ip}/{prefix}", strict=False)
        if ip in (network.network_address, network.broadcast_address):
            doc.problem(
                path + ("ip",),
                f"expected a host address of {network}, got its"
                f" {'network' if ip == network.network_address else 'broadcast'}"
                f" address {got(section['ip'])}",
            )
    peers = section.get("peers")
    seen: Dict[Any, int] = {}
    for peer_path, peer in _listed(peers, path + ("peers",)) if peers is not None else ():
        address = _unicast_ipv4(doc, peer_path, peer)
        if address is None:
            continue
        if ip is not None and address == ip:
            doc.problem(
                peer_path,
                "expected another gateway's own address, got the floating IP"
                f" {got(peer)}",
            )
        elif address in seen:
            doc.problem(peer_path, f"expected each peer once, got {got(peer)} again")
        seen[address] = 1
    heartbeat = section.get("heartbeat")
    if not isinstance(heartbeat, dict):
        heartbeat = {}
    durations: Dict[str, float] = {}
    for key in ("interval", "timeout"):
        value = heartbeat.get(key)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            try:
                durations[key] = parse_duration(value)
            except ValueError as e:
                doc.problem(path + ("heartbeat", key), str(e))
                continue
            if durations[key] <= 0:
                doc.problem(
                    path + ("heartbeat", key),
                    f"expected a duration greater than zero, got {got(value)}",
                )
                del durations[key]
    interval = durations.get("interval", 0.2)
    timeout = durations.get("timeout")
    if timeout is not None and timeout <= interval:
        doc.problem(
            path + ("heartbeat", "timeout"),
            f"expected a timeout longer than the interval ({interval * 1000:g}ms)"
            f" between heartbeats, got {got(heartbeat['timeout'])}",
        )


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
    _check_routes(doc)
    upstreams.check(doc)
    services.check(doc)
    _check_floating_ip(doc)
    operating.check(doc, _check_network)
