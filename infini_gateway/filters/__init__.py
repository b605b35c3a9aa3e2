"""
The filter registry.

A filter is a class registered under its gateway.yml name with
L{register}.  It declares C{schema}, the JSON Schema of its parameters (the
config loader validates them before anything runs, so the constructor gets
checked values), and implements C{filter(ctx)}, which may return None, a
Deferred or a coroutine.  A new filter is one small module in this package,
imported at the bottom of this file.
"""

from typing import Any, Awaitable, ClassVar, Dict, List, Mapping, Optional, Type, Union

from twisted.internet.defer import Deferred

from infini_gateway.context import RequestContext

FilterResult = Union[None, Deferred, Awaitable[Any]]

_REGISTRY: Dict[str, Type["Filter"]] = {}


class Filter:
    """
    Base class of the built-in filters.

    @cvar name: the key that names the filter in a flow.
    @cvar schema: JSON Schema of the filter's parameters.
    """

    name: ClassVar[str]
    schema: ClassVar[Dict[str, Any]] = {"type": "object", "additionalProperties": False}

    def __init__(self, params: Mapping[str, Any], runtime: Any) -> None:
        self.params = params
        self.runtime = runtime

    def filter(self, ctx: RequestContext) -> FilterResult:
        raise NotImplementedError


def register(cls: Type[Filter]) -> Type[Filter]:
    """Class decorator: make C{cls} available in flows as C{cls.name}."""
    if cls.name in _REGISTRY:
        raise ValueError(f"filter {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def filter_names() -> List[str]:
    return sorted(_REGISTRY)


def filter_class(name: str) -> Optional[Type[Filter]]:
    return _REGISTRY.get(name)


def filter_schemas() -> Dict[str, Dict[str, Any]]:
    """Each registered filter's parameter schema, by name."""
    return {name: _REGISTRY[name].schema for name in sorted(_REGISTRY)}


# The built-in filters register themselves on import.
from infini_gateway.filters import builtin  # noqa: E402,F401
