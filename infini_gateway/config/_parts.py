"""
Pieces every section of the configuration is built from: JSON Schema
fragments for the common value kinds, and the check that a name refers to
something defined.  One implementation each, shared by the base schema and
the sections (upstreams, services, the admin API).
"""

from typing import Any, Dict, Optional, Sequence

from infini_gateway.config._document import Document, Path
from infini_gateway.config._errors import did_you_mean
from infini_gateway.config.values import (
    BYTE_SIZE_EXPECTED,
    BYTE_SIZE_PATTERN,
    DURATION_EXPECTED,
    got,
)

Schema = Dict[str, Any]


def _titled(schema: Schema, title: Optional[str]) -> Schema:
    return schema if title is None else {"title": title, **schema}


def string(description: str, title: Optional[str] = None, **extra: Any) -> Schema:
    return _titled({"description": description, "type": "string", **extra}, title)


def boolean(description: str, title: Optional[str] = None) -> Schema:
    return _titled({"description": description, "type": "boolean"}, title)


def one_or_list(
    description: str, item: Schema, expected: str, title: Optional[str] = None
) -> Schema:
    """One C{item}, or a non-empty list of them."""
    return _titled(
        {
            "description": description,
            "errorMessage": expected,
            "anyOf": [item, {"type": "array", "items": item, "minItems": 1}],
        },
        title,
    )


def duration(description: str, title: Optional[str] = None, zero_is_off: bool = False) -> Schema:
    """A duration L{infini_gateway.config.values.parse_duration} reads."""
    written = " Written 500ms, 3s, 1m or 1h; a number is seconds."
    if zero_is_off:
        written += " 0 means no limit."
    return _titled(
        {
            "description": description + written,
            "type": ["string", "number"],
            "errorMessage": DURATION_EXPECTED,
        },
        title,
    )


def byte_size(description: str, title: Optional[str] = None) -> Schema:
    """A size L{infini_gateway.config.values.parse_byte_size} reads."""
    return _titled(
        {
            "description": description,
            "errorMessage": BYTE_SIZE_EXPECTED,
            "anyOf": [
                {"type": "integer", "minimum": 1},
                {
                    "type": "string",
                    "pattern": BYTE_SIZE_PATTERN,
                    "errorMessage": BYTE_SIZE_EXPECTED,
                },
            ],
        },
        title,
    )


def reference(
    doc: Document, path: Path, name: Any, what: str, names: Optional[Sequence[str]]
) -> bool:
    """
    Check that C{name} is one of C{names} (the defined C{what}s); report a
    problem at C{path} otherwise.  C{names} None means they are not known
    (their section has problems of its own): nothing is reported.

    @return: whether the reference holds (or could not be checked).
    """
    if names is None or not isinstance(name, str) or name in names:
        return True
    known = f"{what}s: {', '.join(names)}" if names else f"no {what}s are defined"
    doc.problem(
        path,
        f"expected the name of {'an' if what[0] in 'aeiou' else 'a'} {what},"
        f" got {got(name)} ({did_you_mean(name, names)}{known})",
    )
    return False
