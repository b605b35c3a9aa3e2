"""
The sections for operating the gateway: INFINI's C{api:} (the admin API)
and C{configs:} (reloading the file when it changes), and
C{shutdown_timeout}.

Their schema, their checks of meaning and their conversion into
L{ApiConfig}, L{ConfigsConfig} and seconds live here, called by the schema,
the checks and the loader.
"""

from typing import Any, Callable, Mapping, Optional, Tuple

from infini_gateway.config import _parts as parts
from infini_gateway.config._document import Document
from infini_gateway.config.model import (
    ApiConfig,
    ApiSecurity,
    ConfigsConfig,
    EntryTLS,
    Network,
)
from infini_gateway.config.values import (
    got,
    parse_binding,
    parse_duration,
)

Schema = dict
Path = Tuple[Any, ...]

DEFAULT_API_BINDING = "127.0.0.1:2900"
DEFAULT_SHUTDOWN_TIMEOUT = 30.0
_API_TLS_KEYS = ("enabled", "cert_file", "key_file", "skip_insecure_verify")


def api_schema(network: Schema, tls: Schema) -> Schema:
    """
    The C{api:} section's schema, given the entries' C{network} and C{tls}
    schemas (the admin API listens as an entry does).
    """
    tls = dict(
        tls,
        properties={k: v for k, v in tls["properties"].items() if k in _API_TLS_KEYS},
    )
    return {
        "title": "api",
        "description": "The admin API: health, stats, Prometheus metrics,"
        " upstream health, reload, entries stopped and started. On when this"
        " section is there (enabled defaults to true), on 127.0.0.1:2900"
        " unless network says otherwise.",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "enabled": {
                "title": "enabled",
                "description": "Serve the admin API (default true when the section is there).",
                "type": "boolean",
            },
            "network": network,
            "tls": tls,
            "security": {
                "title": "security",
                "description": "Basic auth: when enabled, every endpoint asks for it.",
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "enabled": {
                        "title": "enabled",
                        "description": "Ask for basic auth (default false).",
                        "type": "boolean",
                    },
                    "username": {
                        "title": "username",
                        "description": 'The user name (default "admin").',
                        "type": "string",
                        "minLength": 1,
                    },
                    "password": {
                        "title": "password",
                        "description": "The password; required when enabled.",
                        "type": "string",
                    },
                },
            },
        },
    }


def configs_schema() -> Schema:
    return {
        "title": "configs",
        "description": "Reloading the configuration when its file changes.",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "auto_reload": {
                "title": "auto_reload",
                "description": "Watch this file and reload it when it changes"
                " (default false).",
                "type": "boolean",
            },
            "interval": parts.duration("How often the file is looked at (default 1s).", "interval"),
        },
    }


def shutdown_timeout_schema() -> Schema:
    return parts.duration(
        "How long a stopping gateway lets requests in flight finish before"
        " closing what remains (default 30s).",
        "shutdown_timeout",
    )


def check(doc: Document, check_network: Callable[[Document, Path, dict], None]) -> None:
    """
    Record the problems of meaning of the operating sections.

    @param check_network: the entries' check of a C{network} mapping.
    """
    data = doc.data
    api = data.get("api")
    if isinstance(api, dict):
        network = api.get("network")
        if isinstance(network, dict) and network:
            check_network(doc, ("api", "network"), network)
        security = api.get("security")
        if (
            isinstance(security, dict)
            and security.get("enabled") is True
            and not security.get("password")
        ):
            doc.problem(
                ("api", "security", "password"),
                "expected a password when security is enabled",
            )
        tls = api.get("tls")
        if isinstance(tls, dict):
            for key, other in (("cert_file", "key_file"), ("key_file", "cert_file")):
                if key in tls and other not in tls:
                    doc.problem(("api", "tls", key), f"expected {other} too")
    configs = data.get("configs")
    if isinstance(configs, dict):
        _positive(doc, ("configs", "interval"), configs.get("interval"))
    if "shutdown_timeout" in data:
        _positive(doc, ("shutdown_timeout",), data["shutdown_timeout"], zero=True)


def _positive(doc: Document, path: Path, value: Any, zero: bool = False) -> None:
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        return
    try:
        seconds = parse_duration(value)
    except ValueError as e:
        doc.problem(path, str(e))
        return
    if seconds < 0 or (seconds == 0 and not zero):
        least = "zero or more" if zero else "greater than zero"
        doc.problem(path, f"expected a duration {least}, got {got(value)}")


def build_api(section: Optional[Mapping[str, Any]]) -> ApiConfig:
    """
    The L{ApiConfig} of a valid C{api:} section: None (no section) is the
    API disabled; a section, even empty, enables it unless it says not to.
    """
    if section is None:
        return ApiConfig()
    network = section.get("network") or {}
    if "binding" in network:
        host, port = parse_binding(network["binding"])
    elif "port" in network or "host" in network:
        host = network.get("host", "127.0.0.1").strip("[]")
        port = network.get("port", 2900)
    else:
        host, port = parse_binding(DEFAULT_API_BINDING)
    tls = section.get("tls") or {}
    security = section.get("security") or {}
    return ApiConfig(
        enabled=section.get("enabled", True),
        network=Network.from_section(network, host, port),
        tls=EntryTLS.from_section(tls, clients=False),
        security=ApiSecurity(
            enabled=security.get("enabled", False),
            username=security.get("username", "admin"),
            password=security.get("password", ""),
        ),
    )


def build_configs(section: Mapping[str, Any]) -> ConfigsConfig:
    return ConfigsConfig(
        auto_reload=section.get("auto_reload", False),
        interval=parse_duration(section.get("interval", 1.0)),
    )


def build_shutdown_timeout(data: Mapping[str, Any]) -> float:
    return parse_duration(data.get("shutdown_timeout", DEFAULT_SHUTDOWN_TIMEOUT))
