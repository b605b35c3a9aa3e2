"""
jsonschema's validation errors in the loader's words.

Each error becomes C{(path, text)}: the key path of the offending value and
what was expected there.  Alternatives (C{anyOf}/C{oneOf}) are resolved to
the branch the value's type fits, so that C{method: GETT} reads "expected an
HTTP method", not "is not valid under any of the given schemas".
"""

import difflib
import re
from typing import Any, Iterable, List, Optional, Sequence, Tuple

from jsonschema.exceptions import ValidationError

from infini_gateway.config.values import FILTER_ITEM_EXPECTED, got

Path = Tuple[Any, ...]

_TYPE_WORDS = {
    "integer": "integer",
    "number": "number",
    "string": "string",
    "boolean": "true or false",
    "object": "a mapping",
    "array": "a list",
    "null": "null",
}


def suggest(word: Any, choices: Iterable[str]) -> Optional[str]:
    """The choice closest to C{word}, if one is close enough."""
    choices = [str(choice) for choice in choices]
    text = str(word)
    for choice in choices:
        if choice.lower() == text.lower():
            return choice
    close = difflib.get_close_matches(text, choices, n=1, cutoff=0.6)
    return close[0] if close else None


def did_you_mean(word: Any, choices: Iterable[str]) -> str:
    """C{"did you mean 'x'? "} or nothing."""
    guess = suggest(word, choices)
    return f"did you mean {guess!r}? " if guess is not None else ""


def is_filter_item(path: Sequence[Any]) -> bool:
    """Whether C{path} is C{flow[i].filter[j]}."""
    return (
        len(path) == 4
        and path[0] == "flow"
        and path[2] == "filter"
        and isinstance(path[1], int)
        and isinstance(path[3], int)
    )


def _type_words(types: Any) -> str:
    if isinstance(types, str):
        types = [types]
    return " or ".join(_TYPE_WORDS.get(t, t) for t in types)


def _count(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _describe(schema: Any) -> str:
    """A schema in words, for alternatives that need them."""
    if not isinstance(schema, dict):
        return "a valid value"
    if "errorMessage" in schema:
        return str(schema["errorMessage"])
    if "enum" in schema:
        return "one of " + ", ".join(str(v) for v in schema["enum"])
    if "const" in schema:
        return repr(schema["const"])
    if "type" in schema:
        words = _type_words(schema["type"])
        if schema["type"] == "array" and "items" in schema:
            return f"a list of ({_describe(schema['items'])})"
        return words
    return "a valid value"


def _unknown_keys(error: ValidationError) -> List[Any]:
    schema = error.schema
    known = schema.get("properties", {})
    patterns = list(schema.get("patternProperties", {}))
    return [
        key
        for key in error.instance
        if key not in known
        and not (isinstance(key, str) and any(re.search(p, key) for p in patterns))
    ]


def _fits_type(branch: List[ValidationError]) -> bool:
    """Whether the value has a type this alternative accepts."""
    return not any(e.validator == "type" and not e.relative_path for e in branch)


def translate(
    error: ValidationError, filter_names: Sequence[str]
) -> List[Tuple[Path, str]]:
    """
    One jsonschema error as C{(path, text)} problems (an unknown key is one
    problem each, at the key itself).
    """
    path = tuple(error.absolute_path)
    kind = error.validator
    value = error.instance
    schema = error.schema if isinstance(error.schema, dict) else {}
    expected = schema.get("errorMessage")

    if kind in ("anyOf", "oneOf"):
        branches: dict = {}
        for sub in error.context or ():
            branches.setdefault(sub.relative_schema_path[0], []).append(sub)
        fitting = [b for b in branches.values() if _fits_type(b)]
        if len(fitting) == 1:
            return [p for sub in fitting[0] for p in translate(sub, filter_names)]
        if expected is None:
            expected = " or ".join(_describe(s) for s in error.validator_value)
        return [(path, f"expected {expected}, got {got(value)}")]

    if kind == "additionalProperties" and error.validator_value is False:
        extras = _unknown_keys(error)
        if is_filter_item(path):
            if len(error.instance) > 1:
                # Reported once, as too many keys.
                return []
            names = ", ".join(filter_names)
            return [
                (
                    path + (key,),
                    f"unknown filter {key!r} ({did_you_mean(key, filter_names)}"
                    f"valid filters: {names})",
                )
                for key in extras
            ]
        known = list(schema.get("properties", {}))
        if not known:
            return [
                (path + (key,), f"unknown key {key!r} (expected no keys here)")
                for key in extras
            ]
        return [
            (
                path + (key,),
                f"unknown key {key!r} ({did_you_mean(key, known)}"
                f"expected one of: {', '.join(known)})",
            )
            for key in extras
        ]

    if kind in ("minProperties", "maxProperties") and is_filter_item(path):
        keys = list(value)
        if not keys:
            return [(path, f"expected {FILTER_ITEM_EXPECTED}, got an empty mapping")]
        listed = ", ".join(str(k) for k in keys)
        hint = ""
        if keys[0] in filter_names and value[keys[0]] is None:
            hint = f" (are the parameters of {keys[0]!r} indented under it?)"
        return [
            (
                path,
                f"expected {FILTER_ITEM_EXPECTED},"
                f" got {len(keys)} keys: {listed}{hint}",
            )
        ]

    if kind == "type" and is_filter_item(path) and value in filter_names:
        return [
            (
                path,
                f"expected {FILTER_ITEM_EXPECTED}, got {got(value)}"
                f" (write '{value}:' for the filter without parameters)",
            )
        ]

    if kind == "required":
        missing = [k for k in error.validator_value if k not in value]
        return [(path, f"missing required key {key!r}") for key in missing]

    if kind == "enum":
        choices = [str(v) for v in error.validator_value]
        if expected is None:
            expected = "one of: " + ", ".join(choices)
        hint = did_you_mean(value, choices).strip() if isinstance(value, str) else ""
        hint = f" ({hint})" if hint else ""
        return [(path, f"expected {expected}, got {got(value)}{hint}")]

    if expected is not None:
        return [(path, f"expected {expected}, got {got(value)}")]

    limit = error.validator_value
    if kind == "type":
        text = f"expected {_type_words(limit)}"
    elif kind == "minimum":
        text = f"expected at least {limit}"
    elif kind == "maximum":
        text = f"expected at most {limit}"
    elif kind == "exclusiveMinimum":
        text = f"expected more than {limit}"
    elif kind == "exclusiveMaximum":
        text = f"expected less than {limit}"
    elif kind == "minLength":
        text = (
            "expected a non-empty string"
            if limit == 1
            else (f"expected at least {_count(limit, 'character')}")
        )
    elif kind == "maxLength":
        text = f"expected at most {_count(limit, 'character')}"
    elif kind == "minItems":
        text = (
            "expected a non-empty list"
            if limit == 1
            else (f"expected at least {_count(limit, 'item')}")
        )
    elif kind == "maxItems":
        text = f"expected at most {_count(limit, 'item')}"
    elif kind == "minProperties":
        text = f"expected at least {_count(limit, 'key')}"
    elif kind == "maxProperties":
        text = f"expected at most {_count(limit, 'key')}"
    elif kind == "pattern":
        text = f"expected a string matching {limit}"
    elif kind == "const":
        text = f"expected {got(limit)}"
    elif kind == "uniqueItems":
        return [(path, "expected a list without repeated items")]
    else:
        return [(path, error.message)]
    return [(path, f"{text}, got {got(value)}")]
