"""
Frozen, validated configuration values.

Nothing here reads files or touches the network: the loader in
L{infini_gateway.config.load} turns gateway.yml into these values, and every
factory in the package receives them, never raw dicts.
"""

from types import MappingProxyType
from typing import Any, Mapping, Optional, Tuple

import attrs

HTTP_METHODS = (
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "PATCH",
    "DELETE",
    "CONNECT",
    "OPTIONS",
    "TRACE",
)


def _frozen_mapping(value: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(value))


@attrs.frozen
class Network:
    """Where an entry listens, and how it shares or finds its port."""

    host: str
    port: int
    publish: Optional[str] = None
    reuse_port: bool = False
    skip_occupied_port: bool = False

    @property
    def binding(self) -> str:
        """The address written back as C{HOST:PORT} (IPv6 hosts in brackets)."""
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@attrs.frozen
class EntryTLS:
    """An entry's TLS: files to load, or a certificate generated under C{path.data}."""

    enabled: bool = False
    cert_file: Optional[str] = None
    key_file: Optional[str] = None
    skip_insecure_verify: bool = False


@attrs.frozen
class Entry:
    """
    One listener: C{network} -> accept policy -> optional TLS -> router.

    @ivar idle_timeout: seconds after which an idle (keep-alive) client
        connection is closed.
    """

    name: str
    network: Network
    enabled: bool = True
    router: str = "default"
    max_concurrency: int = 10000
    idle_timeout: float = 30.0
    tls: EntryTLS = EntryTLS()


@attrs.frozen
class Rule:
    """A router rule: any of C{methods} (C{"*"} for all) and any of C{patterns}."""

    methods: Tuple[str, ...]
    patterns: Tuple[str, ...]
    flows: Tuple[str, ...]


@attrs.frozen
class RouterConfig:
    """A router: rules tried for each request, else C{default_flow}."""

    name: str
    rules: Tuple[Rule, ...] = ()
    default_flow: Optional[str] = None
    tracing_flow: Optional[str] = None


@attrs.frozen
class FilterSpec:
    """
    One configured filter of a flow: the registered filter name and its
    parameters (already validated against that filter's schema).

    @ivar where: C{"gateway.yml:12: flow[0].filter[1].echo"}, for messages.
    """

    name: str
    params: Mapping[str, Any] = attrs.field(
        factory=dict, converter=_frozen_mapping, eq=False
    )
    where: str = attrs.field(default="", eq=False)


@attrs.frozen
class FlowConfig:
    """A named, ordered list of filters."""

    name: str
    filters: Tuple[FilterSpec, ...] = ()


@attrs.frozen
class Paths:
    """INFINI's C{path:} section: where generated data and logs are kept."""

    data: str = "./data"
    logs: str = "./log"


@attrs.frozen
class GatewayConfig:
    """
    The whole gateway.yml.

    @ivar source: the file it came from (or C{"<dict>"}), and the directory
        relative paths in it are resolved against.
    """

    source: str = "<dict>"
    base_dir: str = "."
    paths: Paths = Paths()
    entries: Tuple[Entry, ...] = ()
    routers: Tuple[RouterConfig, ...] = ()
    flows: Tuple[FlowConfig, ...] = ()

    def router(self, name: str) -> RouterConfig:
        for router in self.routers:
            if router.name == name:
                return router
        raise KeyError(name)

    def flow(self, name: str) -> FlowConfig:
        for flow in self.flows:
            if flow.name == name:
                return flow
        raise KeyError(name)
