"""
Parsing of the scalar values gateway.yml writes as strings: durations
(C{500ms}, C{3s}, C{1m}, C{1m30s}) and addresses (C{HOST:PORT}, IPv6 hosts in
brackets).

Each parser raises L{ValueError} whose text says what was expected, in the
words the configuration loader puts after the key path of a message.
"""

import ipaddress
import re
from typing import Tuple, Union

DURATION_EXPECTED = "a duration such as 500ms, 3s or 1m"
BINDING_EXPECTED = "HOST:PORT"
FILTER_ITEM_EXPECTED = "a mapping with one key, a filter name"

# Go's time.ParseDuration units, which INFINI Gateway's durations follow.
_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\N{MICRO SIGN}s": 1e-6,
    "\N{GREEK SMALL LETTER MU}s": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")

# RFC 1123 host names: dot-separated labels of letters, digits and inner
# hyphens, at most 63 characters each and 253 in all.
_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")


def got(value: object) -> str:
    """
    A value as a message shows it: strings quoted, YAML's spelling of
    C{true}/C{false}/C{null}, and the kind of a mapping or a list.
    """
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        return repr(text)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return str(value)


def parse_duration(value: Union[str, int, float]) -> float:
    """
    Seconds from a duration: C{"500ms"}, C{"3s"}, C{"1.5s"}, C{"1m"},
    C{"1h"}, C{"1m30s"} (units ns, us, ms, s, m, h), or a number of seconds.

    @raise ValueError: for anything else, or a negative duration.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected {DURATION_EXPECTED}, got {got(value)}")
    if isinstance(value, (int, float)):
        if value < 0 or value != value or value == float("inf"):
            raise ValueError(f"expected {DURATION_EXPECTED}, got {got(value)}")
        return float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected {DURATION_EXPECTED}, got {got(value)}")
    text = value.strip()
    if text == "0":
        return 0.0
    seconds = 0.0
    position = 0
    while position < len(text):
        match = _DURATION_PART.match(text, position)
        if match is None:
            raise ValueError(f"expected {DURATION_EXPECTED}, got {got(value)}")
        seconds += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if position == 0:
        raise ValueError(f"expected {DURATION_EXPECTED}, got {got(value)}")
    return seconds


BYTE_SIZE_EXPECTED = "a size in bytes, or such as 64kb, 200mb or 1gb"
# For the JSON Schema: the strings parse_byte_size accepts.
BYTE_SIZE_PATTERN = "^\\s*[0-9]+\\s*([kKmMgG][iI]?[bB]?|[bB])?\\s*$"
_BYTE_SIZE = re.compile(r"^\s*(\d+)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_BYTE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_byte_size(value: Union[str, int]) -> int:
    """
    Bytes from C{65536}, C{"64kb"}, C{"200mb"}, C{"1gb"} (also C{k},
    C{kib}, C{m}, C{g}: every unit is a power of 1024).

    @raise ValueError: anything else, or less than one byte.
    """
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"expected {BYTE_SIZE_EXPECTED}, got {got(value)}")
    if isinstance(value, int):
        size = value
    else:
        match = _BYTE_SIZE.match(value)
        if match is None:
            raise ValueError(f"expected {BYTE_SIZE_EXPECTED}, got {got(value)}")
        size = int(match.group(1)) * _BYTE_UNITS[(match.group(2) or "").lower()[:1]]
    if size < 1:
        raise ValueError(f"expected {BYTE_SIZE_EXPECTED} of at least 1 byte, got {got(value)}")
    return size


def check_host(host: str) -> str:
    """
    Check that C{host} is an IP address (IPv6 without brackets) or a host
    name, and return it.

    @raise ValueError: when it is neither.
    """
    expected = f"expected an IP address or a host name, got {got(host)}"
    if not isinstance(host, str) or not host:
        raise ValueError(expected)
    if ":" in host:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"expected an IPv6 address, got {got(host)}") from None
        return host
    try:
        ipaddress.IPv4Address(host)
        return host
    except ValueError:
        pass
    name = host[:-1] if host.endswith(".") else host
    labels = name.split(".")
    if (
        len(name) > 253
        or not all(_LABEL.match(label) for label in labels)
        # All-numeric labels are a mistyped IPv4 address, not a name.
        or all(label.isdigit() for label in labels)
    ):
        raise ValueError(expected)
    return host


def parse_binding(value: str) -> Tuple[str, int]:
    """
    C{(host, port)} from C{"HOST:PORT"}: C{"0.0.0.0:8000"},
    C{"localhost:8000"}, C{"[::1]:8000"}, C{"[::]:8000"}.  Port 0 asks the
    system for any free port.

    @raise ValueError: for a value without a port, an IPv6 address without
        brackets, a port outside 0-65535, or a host that is neither an IP
        address nor a host name.
    """
    if not isinstance(value, str) or ":" not in value:
        raise ValueError(f"expected {BINDING_EXPECTED}, got {got(value)}")
    if value.startswith("["):
        close = value.find("]")
        if close < 0 or value[close + 1 : close + 2] != ":":
            raise ValueError(
                f"expected [IPV6]:PORT, such as [::1]:8000, got {got(value)}"
            )
        host, port_text = value[1:close], value[close + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(
                f"expected an IPv6 address inside the brackets, got {got(value)}"
            ) from None
    else:
        host, _, port_text = value.rpartition(":")
        if ":" in host:
            raise ValueError(
                "expected an IPv6 address in brackets, such as [::1]:8000,"
                f" got {got(value)}"
            )
        if not host:
            raise ValueError(f"expected {BINDING_EXPECTED}, got {got(value)}")
        check_host(host)
    if not port_text.isdigit() or not port_text.isascii():
        raise ValueError(
            f"expected {BINDING_EXPECTED} with a numeric port, got {got(value)}"
        )
    port = int(port_text)
    if port > 65535:
        raise ValueError(
            f"expected a port from 0 to 65535 (0: any free port), got {got(value)}"
        )
    return host, port
