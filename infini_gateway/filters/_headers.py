"""
Parsing of INFINI Gateway's C{"Name -> value"} header lines, shared by
C{set_request_header} and C{set_response_header}.
"""

import re
from typing import Any, Dict, List, Sequence, Tuple

# RFC 9110 token characters.
TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
# A field value: no control characters but horizontal tab (so no CR, LF, NUL).
_VALUE = r"[^\x00-\x08\x0a-\x1f\x7f]*"

# Used in the schemas (JSON Schema's ECMA-262 dialect) and, with fullmatch,
# in the constructors: Python's "$" also matches before a final newline, so
# the constructor's check is the one that keeps a CR or LF out.
HEADER_LINE = f"^[ \\t]*{TOKEN}[ \\t]*->{_VALUE}$"
_LINE = re.compile(f"[ \\t]*({TOKEN})[ \\t]*->({_VALUE})")

# The gateway frames messages itself; a configured value would desynchronise
# the client or the upstream from the actual body.
_FRAMING = frozenset([b"content-length", b"transfer-encoding"])

HEADERS_SCHEMA: Dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["headers"],
    "properties": {
        "headers": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "string",
                "pattern": HEADER_LINE,
                "errorMessage": "'Name -> value': a header name, '->', and a value"
                " without control characters",
            },
        }
    },
}


def parse_header_lines(lines: Sequence[str]) -> List[Tuple[bytes, List[bytes]]]:
    """
    Parse C{["Name -> value", ...]} into C{[(name, [value, ...]), ...]}.

    Lines naming the same header (in any case) are grouped, in order, under
    the spelling of the first, so that one filter can set a header to
    several values.

    @raise ValueError: a line is not C{Name -> value}, the name is not a
        token, the value holds a control character, or the name is
        Content-Length or Transfer-Encoding.
    """
    if not lines:
        raise ValueError("headers: expected a list of 'Name -> value' lines")
    grouped: Dict[bytes, Tuple[bytes, List[bytes]]] = {}
    for index, line in enumerate(lines):
        match = _LINE.fullmatch(line)
        if match is None:
            raise ValueError(
                f"headers[{index}]: {line!r} is not 'Name -> value' with a header"
                " name made of token characters and a value without control"
                " characters"
            )
        name = match.group(1).encode("ascii")
        if name.lower() in _FRAMING:
            raise ValueError(
                f"headers[{index}]: {match.group(1)} is set by the gateway itself"
            )
        value = match.group(2).strip(" \t").encode("utf-8")
        grouped.setdefault(name.lower(), (name, []))[1].append(value)
    return list(grouped.values())
