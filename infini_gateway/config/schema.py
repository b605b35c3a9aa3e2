"""
The JSON Schema of gateway.yml (draft 2020-12).

L{build_schema} builds it from the base structure below and the parameter
schema of every registered filter, so a new filter is known to the loader at
once.  The shipped C{gateway.schema.json}, for editors, is this module's
output; regenerate it after adding or changing a filter::

    python -m infini_gateway.config.schema > infini_gateway/config/gateway.schema.json

Besides the standard keywords, some schemas carry C{errorMessage} (an
extension editors such as VS Code show instead of their own wording): the
loader uses it too, as the "expected ..." part of its messages.
"""

import copy
import inspect
import json
import sys
from typing import Any, Dict, Mapping, Optional

from jsonschema import Draft202012Validator

from infini_gateway.config.model import CLIENT_IP_EXPECTED, ENTRY_PROTOCOLS, HTTP_METHODS
from infini_gateway.config.upstreams import elasticsearch_schema, upstream_schema
from infini_gateway.config.services import service_schema
from infini_gateway.config import _parts as parts, operating
from infini_gateway.config.values import (
    BINDING_EXPECTED,
    FILTER_ITEM_EXPECTED,
)
from infini_gateway.filters import filter_class, filter_schemas
from infini_gateway.intentions import intentions_schema

SCHEMA_ID = "urn:infini-gateway:gateway.schema.json"
SCHEMA_FILE = "gateway.schema.json"

Schema = Dict[str, Any]


def _string(title: str, description: str, **extra: Any) -> Schema:
    return parts.string(description, title, **extra)


def _boolean(title: str, description: str) -> Schema:
    return parts.boolean(description, title)


def _one_or_list(title: str, description: str, item: Schema, expected: str) -> Schema:
    return parts.one_or_list(description, item, expected, title)


def _duration(title: str, description: str) -> Schema:
    return parts.duration(description, title)


def _byte_size(title: str, description: str) -> Schema:
    return parts.byte_size(description, title)


def _name(what: str) -> Schema:
    return _string("name", f"The {what}'s name, unique among {what}s.", minLength=1)


def _paths() -> Schema:
    return {
        "title": "path",
        "description": "Where the gateway keeps its files,"
        " relative to this file's directory.",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "data": _string(
                "data", "Generated data, such as self-signed certificates.", minLength=1
            ),
            "logs": _string("logs", "Log files.", minLength=1),
        },
    }


def _network() -> Schema:
    return {
        "title": "network",
        "description": "Where the entry listens: binding, or host and port.",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "binding": _string(
                "binding",
                "HOST:PORT to listen on, such as 0.0.0.0:8000 or [::]:8000.",
                errorMessage=BINDING_EXPECTED,
            ),
            "host": _string(
                "host",
                "The address to listen on (instead of binding; default 0.0.0.0).",
                minLength=1,
            ),
            "port": {
                "title": "port",
                "description": "The port to listen on (instead of binding);"
                " 0 picks a free one.",
                "type": "integer",
                "minimum": 0,
                "maximum": 65535,
            },
            "publish": _string(
                "publish",
                "HOST:PORT the entry is reached at from outside, when it differs.",
                errorMessage=BINDING_EXPECTED,
            ),
            "reuse_port": _boolean(
                "reuse_port",
                "Share the port with other processes (SO_REUSEPORT).",
            ),
            "skip_occupied_port": _boolean(
                "skip_occupied_port",
                "When the port is taken, try the next ones instead of failing.",
            ),
        },
    }


def _entry_tls() -> Schema:
    return {
        "title": "tls",
        "description": "TLS on this entry: the files given, or a self-signed "
        "certificate generated under path.data.",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "enabled": _boolean("enabled", "Serve TLS on this entry."),
            "cert_file": _string("cert_file", "PEM certificate (chain).", minLength=1),
            "key_file": _string(
                "key_file", "PEM private key of cert_file.", minLength=1
            ),
            "skip_insecure_verify": _boolean(
                "skip_insecure_verify", "Do not verify client certificates."
            ),
            "client_ca_file": _string(
                "client_ca_file",
                "PEM CA certificates: clients are asked for a certificate issued"
                " by one of them, whose identity (URI SAN, else DNS SAN, else CN)"
                " filters and intentions see.",
                minLength=1,
            ),
            "client_auth": {
                "title": "client_auth",
                "description": "With client_ca_file: required (default; no"
                " certificate, no handshake) or optional (a client without one"
                " is anonymous).",
                "type": "string",
                "enum": ["required", "optional"],
                "errorMessage": "required or optional",
            },
        },
    }


def _entry() -> Schema:
    return {
        "title": "entry",
        "description": "A listener:"
        " network -> accept policy -> optional TLS -> router.",
        "type": "object",
        "additionalProperties": False,
        "required": ["name", "network"],
        "properties": {
            "name": _name("entry"),
            "enabled": _boolean("enabled", "Listen on this entry (default true)."),
            "router": _string(
                "router",
                'The router serving this entry (default "default").',
                minLength=1,
            ),
            "max_concurrency": {
                "title": "max_concurrency",
                "description": "Connections served at once; more are closed on accept.",
                "type": "integer",
                "minimum": 1,
            },
            "idle_timeout": _duration(
                "idle_timeout",
                "Idle keep-alive connections are closed after this long (default 30s).",
            ),
            "read_timeout": _duration(
                "read_timeout",
                "A client has this long to send a request head, and at most this"
                " long between two reads of a body; then 408 (default 30s).",
            ),
            "write_timeout": _duration(
                "write_timeout",
                "A response the client does not read for this long is cut (default 30s).",
            ),
            "max_header_size": _byte_size(
                "max_header_size",
                "Bytes of a request line and headers together; more gets a 431"
                " (default 64kb).",
            ),
            "max_request_body_size": _byte_size(
                "max_request_body_size",
                "Bytes of a request body; more gets a 413 (default 200mb).",
            ),
            "max_conns_per_ip": {
                "title": "max_conns_per_ip",
                "description": "Open connections per client address; more get a"
                " 429 and are closed (default 0: no limit).",
                "type": "integer",
                "minimum": 0,
            },
            "network": _network(),
            "tls": _entry_tls(),
            "protocol": {
                "title": "protocol",
                "description": "http (default): the router's flows; tcp: raw TCP"
                " to one upstream; sni: TLS passed through, unopened, to the"
                " upstream its server name routes to.",
                "type": "string",
                "enum": list(ENTRY_PROTOCOLS),
                "errorMessage": "one of " + ", ".join(ENTRY_PROTOCOLS),
            },
            "upstream": _string(
                "upstream",
                "protocol tcp: the upstream every connection is forwarded to.",
                minLength=1,
            ),
            "sni_routes": {
                "title": "sni_routes",
                "description": "protocol sni: server name -> upstream name."
                " Exact names first, then *.suffix (any name below suffix,"
                " longest first), then the key default.",
                "type": "object",
                "minProperties": 1,
                "additionalProperties": {"type": "string", "minLength": 1},
            },
            "client_hello_timeout": _duration(
                "client_hello_timeout",
                "protocol sni: a client that has not sent its whole ClientHello"
                " by then is closed (default 5s).",
            ),
            "intentions": intentions_schema(
                "protocol tcp, with tls.client_ca_file: which client identities"
                " may connect; the first rule whose source matches decides, else"
                " default (deny when not given)."
            ),
        },
    }


def _rule() -> Schema:
    method = {
        "type": "string",
        "enum": list(HTTP_METHODS) + ["*"],
        "errorMessage": "an HTTP method (" + ", ".join(HTTP_METHODS) + " or *)",
    }
    pattern = {
        "type": "string",
        "pattern": "^/",
        "errorMessage": "a path pattern beginning with /",
    }
    flow = {"type": "string", "minLength": 1}
    return {
        "title": "rule",
        "description": "Requests with one of these methods on one of these "
        "patterns run these flows, in order.",
        "type": "object",
        "additionalProperties": False,
        "required": ["pattern", "flow"],
        "properties": {
            "method": _one_or_list(
                "method",
                'HTTP methods matched, "*" for any (the default).',
                method,
                "an HTTP method or a list of them",
            ),
            "pattern": _one_or_list(
                "pattern",
                "Path patterns matched, such as /_bulk or /{index_name}/_bulk.",
                pattern,
                "a path pattern or a list of them",
            ),
            "flow": _one_or_list(
                "flow", "Names of the flows run.", flow, "a flow name or a list of them"
            ),
            "host": _one_or_list(
                "host",
                "Host names matched (any case, any port), such as api.example.com"
                " or *.example.org (any name below it); none: any host.",
                {"type": "string", "minLength": 1},
                "a host name or a list of them",
            ),
        },
    }


def _router() -> Schema:
    return {
        "title": "router",
        "description": "Picks the flows for each request of the entries using it.",
        "type": "object",
        "additionalProperties": False,
        "required": ["name"],
        "properties": {
            "name": _name("router"),
            "default_flow": _string(
                "default_flow", "The flow for requests no rule matches.", minLength=1
            ),
            "tracing_flow": _string(
                "tracing_flow", "A flow run after each request, detached.", minLength=1
            ),
            "rules": {
                "title": "rules",
                "description": "Tried in order for each request.",
                "type": "array",
                "items": _rule(),
            },
            "denied_client_ip_list": _client_ips(
                "denied_client_ip_list",
                "Clients whose connections are closed when accepted.",
            ),
            "permitted_client_ip_list": _client_ips(
                "permitted_client_ip_list",
                "When not empty, the only clients accepted (denied ones excepted).",
            ),
            "ip_access_control": _ip_access_control(),
        },
    }


def _client_ips(title: str, description: str) -> Schema:
    return {
        "title": title,
        "description": description
        + " IP addresses and CIDR blocks, IPv4 or IPv6, such as 10.0.0.0/8.",
        "type": "array",
        "items": {"type": "string", "errorMessage": CLIENT_IP_EXPECTED},
    }


def _ip_access_control() -> Schema:
    return {
        "title": "ip_access_control",
        "description": "INFINI Gateway's client address lists, checked when a"
        " connection is accepted, before TLS and before any byte is read.",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "enabled": _boolean(
                "enabled", "Apply the lists below (default true when present)."
            ),
            "client_ip": {
                "title": "client_ip",
                "description": "Lists of client addresses.",
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "denied": _client_ips(
                        "denied", "Clients whose connections are closed when accepted."
                    ),
                    "permitted": _client_ips(
                        "permitted",
                        "When not empty, the only clients accepted"
                        " (denied ones excepted).",
                    ),
                },
            },
        },
    }


def _filter_description(name: str, params: Mapping[str, Any]) -> str:
    if "description" in params:
        return str(params["description"])
    cls = filter_class(name)
    doc = getattr(cls, "__doc__", None)
    if not doc and cls is not None:
        doc = getattr(sys.modules.get(cls.__module__), "__doc__", None)
    doc = inspect.cleandoc(doc) if doc else f"The {name} filter."
    return doc.split("\n\n")[0].replace("\n", " ")


def _filter_params(name: str, params: Mapping[str, Any]) -> Schema:
    """
    The schema of one filter's value: its parameters, or nothing (null) when
    the filter takes no required parameter, since null stands for C{{}}.
    """
    params = copy.deepcopy(dict(params))
    described = {"title": name, "description": _filter_description(name, params)}
    if Draft202012Validator(params).is_valid({}):
        return {
            **described,
            "errorMessage": "a mapping of the filter's parameters, or nothing",
            "anyOf": [{"type": "null"}, params],
        }
    return {**described, "allOf": [params]}


def _filter_item(filters: Mapping[str, Schema]) -> Schema:
    return {
        "title": "filter",
        "description": "One filter: its name as the only key, its parameters as "
        "the value (nothing for none).",
        "type": "object",
        "errorMessage": FILTER_ITEM_EXPECTED,
        "minProperties": 1,
        "maxProperties": 1,
        "additionalProperties": False,
        "properties": {
            name: _filter_params(name, params) for name, params in filters.items()
        },
    }


def _flow(filters: Mapping[str, Schema]) -> Schema:
    return {
        "title": "flow",
        "description": "A named list of filters, run in order over each request.",
        "type": "object",
        "additionalProperties": False,
        "required": ["name"],
        "properties": {
            "name": _name("flow"),
            "filter": {
                "title": "filter",
                "description": "The filters, in order.",
                "type": "array",
                "items": _filter_item(filters),
            },
        },
    }


def _floating_ip() -> Schema:
    ipv4 = "an IPv4 address such as 192.168.3.234"
    return {
        "title": "floating_ip",
        "description": "Gateways in hot standby sharing one IPv4 address: the"
        " holder adds it to its interface and announces it by gratuitous ARP;"
        " a standby takes it over when the holder stops or goes silent."
        " Needs root (CAP_NET_ADMIN and CAP_NET_RAW).",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "enabled": _boolean("enabled", "Run the floating IP (default false)."),
            "ip": _string(
                "ip",
                "The floating IP (default: .234 in the interface's subnet).",
                errorMessage=ipv4,
            ),
            "netmask": _string(
                "netmask",
                "Its netmask (default: the interface's, else 255.255.255.0).",
                errorMessage="a netmask such as 255.255.255.0",
            ),
            "interface": _string(
                "interface",
                "The network interface (default: the first one with a"
                " non-loopback IPv4 address).",
                minLength=1,
                maxLength=15,
            ),
            "priority": {
                "title": "priority",
                "description": "The highest priority alive holds the address;"
                " ties go to the lower address (default 100).",
                "type": "integer",
                "minimum": 1,
                "maximum": 255,
            },
            "peers": _one_or_list(
                "peers",
                "The other gateways' addresses, for unicast heartbeats"
                " (default: none, heartbeats go to multicast group 224.0.0.234).",
                {"type": "string", "errorMessage": ipv4},
                "an IPv4 address or a list of them",
            ),
            "heartbeat": {
                "title": "heartbeat",
                "description": "How often gateways tell each other they are alive.",
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "interval": _duration(
                        "interval", "Between two heartbeats (default 200ms)."
                    ),
                    "timeout": _duration(
                        "timeout",
                        "A holder silent this long is replaced"
                        " (default three intervals).",
                    ),
                },
            },
            "port": {
                "title": "port",
                "description": "The UDP port of the heartbeats (default 61234).",
                "type": "integer",
                "minimum": 1,
                "maximum": 65535,
            },
            "preempt": _boolean(
                "preempt",
                "A better gateway takes the address over from a worse holder"
                " (default true).",
            ),
        },
    }


def build_schema(filters: Optional[Mapping[str, Schema]] = None) -> Schema:
    """
    The schema of gateway.yml.

    @param filters: each filter's parameter schema by name; by default, the
        filters registered now (L{infini_gateway.filters.filter_schemas}).
    """
    if filters is None:
        filters = filter_schemas()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "infini-gateway configuration (gateway.yml)",
        "description": "Entries listen, routers pick flows, flows run filters.",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "path": _paths(),
            "entry": {
                "title": "entry",
                "description": "The listeners.",
                "type": "array",
                "items": _entry(),
            },
            "router": {
                "title": "router",
                "description": "The routers entries use.",
                "type": "array",
                "items": _router(),
            },
            "flow": {
                "title": "flow",
                "description": "The flows routers run.",
                "type": "array",
                "items": _flow(filters),
            },
            "upstream": upstream_schema(),
            "elasticsearch": elasticsearch_schema(),
            "floating_ip": _floating_ip(),
            "service": service_schema(_filter_item(filters)),
            "api": operating.api_schema(_network(), _entry_tls()),
            "configs": operating.configs_schema(),
            "shutdown_timeout": operating.shutdown_timeout_schema(),
        },
    }


def schema_text(schema: Optional[Schema] = None) -> str:
    """The schema as the shipped file holds it."""
    if schema is None:
        schema = build_schema()
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    sys.stdout.write(schema_text())


if __name__ == "__main__":
    main()
