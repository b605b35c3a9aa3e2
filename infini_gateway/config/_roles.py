"""
The checks of meaning of the gateway roles' entry keys: C{protocol} (C{http},
C{tcp}, C{sni}) and the keys each protocol takes (C{upstream},
C{sni_routes}, C{client_hello_timeout}, C{intentions}), and client
certificates (C{tls.client_ca_file}, C{tls.client_auth}).

Also the one definition of a server name, shared with the ClientHello
reader of L{infini_gateway.sni}.
"""

import re
from typing import Any, List, Optional, Sequence, Tuple

from infini_gateway.config._document import Document
from infini_gateway.config._errors import did_you_mean
from infini_gateway.config.model import ENTRY_PROTOCOLS
from infini_gateway.config.values import got, parse_duration

Path = Tuple[Any, ...]

_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")

# Which protocol each key belongs to, for "only for protocol X" messages.
_KEY_PROTOCOL = {
    "upstream": "tcp",
    "intentions": "tcp",
    "sni_routes": "sni",
    "client_hello_timeout": "sni",
}


def normalise_server_name(name: str) -> str:
    """
    A server name as routes compare it: lower case, without a trailing dot.

    @raise ValueError: not a DNS name (an IP address, an empty label, a
        character other than letters, digits, C{-} and C{_}, over 253
        characters).
    """
    text = name.lower()
    if text.endswith("."):
        text = text[:-1]
    labels = text.split(".")
    if (
        not text
        or len(text) > 253
        or not all(_LABEL.match(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise ValueError(f"expected a DNS name, got {got(name)}")
    return text


def normalise_route_name(name: str) -> str:
    """
    An C{sni_routes} key: a server name, or C{*.} and a domain (any name
    below it, at any depth).

    @raise ValueError: anything else.
    """
    if name.startswith("*.") and "*" not in name[2:]:
        return "*." + normalise_server_name(name[2:])
    if "*" in name:
        raise ValueError(
            f"expected a server name, or a leftmost wildcard such as"
            f" *.dc2.internal.example.org, got {got(name)}"
        )
    return normalise_server_name(name)


def _defined(doc: Document, key: str) -> Optional[List[str]]:
    """The names of section C{key} (None when it is malformed); nothing reported."""
    section = doc.data.get(key, [])
    if not isinstance(section, list):
        return None
    names = []
    for item in section:
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str):
            return None
        names.append(name)
    return names


def _upstream(doc: Document, path: Path, name: Any, upstreams: Optional[Sequence[str]]) -> None:
    if upstreams is None or not isinstance(name, str) or name in upstreams:
        return
    known = f"upstreams: {', '.join(upstreams)}" if upstreams else "no upstreams are defined"
    doc.problem(
        path,
        f"expected the name of an upstream, got {got(name)}"
        f" ({did_you_mean(name, list(upstreams))}{known})",
    )


def protocol_of(entry: dict) -> Optional[str]:
    """The entry's protocol, or None when it is not a valid one."""
    protocol = entry.get("protocol", "http")
    return protocol if protocol in ENTRY_PROTOCOLS else None


def check_entry(doc: Document, i: int, entry: dict) -> None:
    """Record the problems of entry C{i}'s role keys and client certificates."""
    path: Path = ("entry", i)
    _check_client_tls(doc, path, entry)
    protocol = protocol_of(entry)
    if protocol is None:
        return  # reported by the schema
    for key, owner in _KEY_PROTOCOL.items():
        if key in entry and owner != protocol:
            doc.problem(
                path + (key,),
                f"expected {key} only on an entry with protocol: {owner}"
                f" (this one's protocol is {protocol})",
            )
    upstreams = _defined(doc, "upstream")
    if protocol == "tcp":
        if "upstream" not in entry:
            doc.problem(path, "expected upstream (protocol tcp forwards to one upstream)")
        else:
            _upstream(doc, path + ("upstream",), entry["upstream"], upstreams)
        if "intentions" in entry:
            tls = entry.get("tls") if isinstance(entry.get("tls"), dict) else {}
            if not (tls.get("enabled") is True and tls.get("client_ca_file")):
                doc.problem(
                    path + ("intentions",),
                    "expected tls.enabled and tls.client_ca_file too (without client"
                    " certificates every client is anonymous)",
                )
    elif protocol == "sni":
        tls = entry.get("tls")
        if isinstance(tls, dict) and tls.get("enabled") is True:
            doc.problem(
                path + ("tls", "enabled"),
                "expected no TLS on an sni entry: it passes TLS through without"
                " decrypting it and holds no key",
            )
        if "sni_routes" not in entry:
            doc.problem(path, "expected sni_routes (server name -> upstream)")
        routes = entry.get("sni_routes")
        if isinstance(routes, dict):
            _check_sni_routes(doc, path + ("sni_routes",), routes, upstreams)
        _positive_duration(doc, path + ("client_hello_timeout",), entry)


def _check_sni_routes(
    doc: Document, path: Path, routes: dict, upstreams: Optional[Sequence[str]]
) -> None:
    seen = {}
    for name, upstream in routes.items():
        key_path = path + (name,)
        _upstream(doc, key_path, upstream, upstreams)
        if name == "default":
            continue
        try:
            normal = normalise_route_name(name)
        except ValueError as e:
            doc.problem(key_path, str(e))
            continue
        if normal in seen:
            doc.problem(
                key_path,
                f"expected each server name once, got {got(name)} (also as"
                f" {got(seen[normal])}; names are compared in lower case)",
            )
        seen[normal] = name


def _positive_duration(doc: Document, path: Path, entry: dict) -> None:
    value = entry.get(path[-1])
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        try:
            if parse_duration(value) <= 0:
                doc.problem(path, f"expected a duration greater than zero, got {got(value)}")
        except ValueError as e:
            doc.problem(path, str(e))


def _check_client_tls(doc: Document, path: Path, entry: dict) -> None:
    tls = entry.get("tls")
    if not isinstance(tls, dict):
        return
    tls_path = path + ("tls",)
    if "client_auth" in tls and "client_ca_file" not in tls:
        doc.problem(
            tls_path + ("client_auth",),
            "expected client_ca_file too (the CAs client certificates are checked"
            " against)",
        )
    if "client_ca_file" in tls and tls.get("enabled") is not True:
        doc.problem(
            tls_path + ("client_ca_file",),
            "expected tls.enabled: true too (client certificates come with TLS)",
        )
