"""
C{logging}: write one JSON line per request to a file, rotated by size;
meant for a router's C{tracing_flow}, which runs once the response is sent.

Parameters: C{path} (default C{<path.logs>/requests.log}, relative to the
configuration file's directory; missing directories are created),
C{max_file_size} (default C{100mb}: bytes, or a size such as C{512kb},
C{100mb}, C{1gb}; units are powers of 1024), C{max_files} (rotated files
kept, C{requests.log.1} the newest, default 10), C{include_headers}
(default true).

Each line holds C{time} (when the request arrived, ISO 8601 UTC),
C{client_ip}, C{method}, C{uri}, C{host}, C{status}, C{request_bytes},
C{response_bytes}, C{duration_ms}, C{rule}, C{flow}, C{user_agent},
C{aborted} (the client went away first), C{complete} and, with
C{include_headers}, C{request_headers} and C{response_headers} (lower-case
names; repeated headers joined by C{", "}).  Authorization and
Proxy-Authorization values are redacted (their scheme is kept), and so are
Cookie and Set-Cookie values.

In an ordinary flow the filter logs what is known at that point (the
response draft's status, C{complete: false}) and the flow goes on.

The file is opened at the first line (building the gateway, or
C{--check}, touches no file), written with one unbuffered write per line
and no fsync, and closed when the gateway stops.
"""

import os
from datetime import datetime, timezone
from json.encoder import encode_basestring_ascii as _quote
from typing import Any, Dict, Optional

from twisted.python.logfile import LogFile

from infini_gateway.config import _parts
from infini_gateway.config.values import parse_byte_size
from infini_gateway.filters import Filter, register
from infini_gateway.filters.dump import redacted
from infini_gateway.tracing import HeaderPairs, TraceRecord, trace_record

DEFAULT_FILE = "requests.log"
DEFAULT_MAX_FILE_SIZE = 100 * 1024 * 1024
DEFAULT_MAX_FILES = 10

_INFINITY = float("inf")


def _headers(pairs: HeaderPairs) -> Dict[str, str]:
    joined: Dict[str, str] = {}
    for name, value in pairs:
        lower = name.lower()
        text = redacted(name.encode("latin-1"), value.encode("latin-1"))
        joined[lower] = f"{joined[lower]}, {text}" if lower in joined else text
    return joined


class _Clock:
    """
    ISO 8601 UTC times to the millisecond (as C{datetime.isoformat} writes
    them), the date and the time of day formatted once a second.
    """

    def __init__(self) -> None:
        self._second: Optional[int] = None
        self._prefix = ""

    def iso(self, seconds: float) -> str:
        whole, micros = divmod(round(seconds * 1_000_000), 1_000_000)
        if whole != self._second:
            moment = datetime.fromtimestamp(whole, timezone.utc)
            self._prefix = moment.strftime("%Y-%m-%dT%H:%M:%S")
            self._second = whole
        return "%s.%03dZ" % (self._prefix, micros // 1000)


_iso = _Clock().iso


def _json(value: Any) -> str:
    """One value of a line (text, number, boolean or null) as JSON."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, float):
        if value != value:
            return "NaN"
        if value in (_INFINITY, -_INFINITY):
            return "Infinity" if value > 0 else "-Infinity"
        return float.__repr__(value)
    return int.__repr__(value)


def _object(mapping: Dict[str, str]) -> str:
    return "{%s}" % ",".join(
        "%s:%s" % (_quote(name), _quote(mapping[name])) for name in sorted(mapping)
    )


def log_line(record: TraceRecord, include_headers: bool = True) -> bytes:
    """
    One request's JSON line (sorted keys, no spaces, newline-terminated),
    the same as C{json.dumps(..., sort_keys=True, separators=(",", ":"))}
    would write, in a quarter of the time: the keys are fixed, so only
    the values are encoded.
    """
    fields = [
        ("aborted", _json(record.aborted)),
        ("client_ip", _json(record.client_ip)),
        ("complete", _json(record.complete)),
        ("duration_ms", _json(round(record.duration * 1000.0, 3))),
        ("flow", _json(record.flow)),
        ("host", _json(record.host)),
        ("method", _json(record.method)),
        ("request_bytes", _json(record.request_bytes)),
    ]
    if include_headers:
        fields.append(("request_headers", _object(_headers(record.request_headers))))
    fields.append(("response_bytes", _json(record.response_bytes)))
    if include_headers:
        fields.append(("response_headers", _object(_headers(record.response_headers))))
    fields += [
        ("rule", _json(record.rule)),
        ("status", _json(record.status)),
        ("time", _json(_iso(record.started))),
        ("uri", _json(record.uri)),
        ("user_agent", _json(record.user_agent)),
    ]
    text = "{%s}\n" % ",".join('"%s":%s' % field for field in fields)
    return text.encode("ascii")


class RequestLog:
    """
    A size-rotated file of lines, opened at the first write and closed by
    L{close} (it opens again at the next write).
    """

    def __init__(self, path: str, max_file_size: int, max_files: int) -> None:
        self.path = os.path.abspath(path)
        self.max_file_size = max_file_size
        self.max_files = max_files
        self._file: Optional[LogFile] = None

    @property
    def opened(self) -> bool:
        return self._file is not None

    def write(self, line: bytes) -> None:
        if self._file is None:
            directory, name = os.path.split(self.path)
            os.makedirs(directory, exist_ok=True)
            self._file = LogFile(
                name,
                directory,
                rotateLength=self.max_file_size,
                maxRotatedFiles=self.max_files,
            )
        self._file.write(line)

    def close(self) -> None:
        if self._file is not None:
            log_file, self._file = self._file, None
            log_file.close()


@register
class Logging(Filter):
    name = "logging"
    schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "path": {
                "type": "string",
                "minLength": 1,
                "description": "The log file; default <path.logs>/requests.log.",
            },
            "max_file_size": _parts.byte_size("Rotate past this size; default 100mb."),
            "max_files": {
                "type": "integer",
                "minimum": 1,
                "description": "Rotated files kept; default 10.",
            },
            "include_headers": {
                "type": "boolean",
                "description": "Log request and response headers (secrets"
                " redacted); default true.",
            },
        },
    }

    def __init__(self, params, runtime):
        super().__init__(params, runtime)
        path = params.get("path")
        if path is None:
            logs = runtime.config.paths.logs if runtime is not None else "./log"
            path = os.path.join(logs, DEFAULT_FILE)
        if runtime is not None:
            path = runtime.resolve(path)
        max_files = params.get("max_files", DEFAULT_MAX_FILES)
        if isinstance(max_files, bool) or not isinstance(max_files, int) or max_files < 1:
            raise ValueError(f"max_files: expected an integer of at least 1, got {max_files!r}")
        self.log = RequestLog(
            os.path.expanduser(path),
            parse_byte_size(params.get("max_file_size", DEFAULT_MAX_FILE_SIZE)),
            max_files,
        )
        self._include_headers = params.get("include_headers", True)
        if runtime is not None and hasattr(runtime, "on_stop"):
            runtime.on_stop(self.log.close)

    def filter(self, ctx):
        self.log.write(log_line(trace_record(ctx), self._include_headers))
