"""
The C{logging} filter: one JSON line per request, secrets redacted, the
file rotated by size keeping C{max_files}, opened lazily and closed when the
gateway stops; in a tracing flow it logs the finished exchange, in an
ordinary flow what is known so far.
"""

import json
import os

import pytest
from twisted.internet.testing import MemoryReactorClock
from twisted.web.server import Site

from infini_gateway.config import ConfigError, config_from_dict
from infini_gateway.config.values import parse_byte_size as parse_size
from infini_gateway.filters.logging import DEFAULT_MAX_FILE_SIZE
from infini_gateway.service import GatewayService
from tests.unit._site import request

# 2023-11-14T22:13:20Z
EPOCH = 1700000000.0

SECRETS = (
    b"GET /search?q=cats HTTP/1.1\r\n"
    b"Host: api.example.com\r\n"
    b"User-Agent: curl/8.0\r\n"
    b"Authorization: Basic YWRtaW46czNjcmV0\r\n"
    b"Proxy-Authorization: Bearer hunter2\r\n"
    b"Cookie: sid=abc123\r\n"
    b"X-Trace: 7\r\n"
    b"\r\n"
)


def gateway(tmp_path, logging=None, in_flow=False, tracing=True, extra_path=None):
    """
    A GatewayService (no entries) on a Clock at EPOCH, whose router runs
    flow C{main} (an answer with a Set-Cookie) and, as its tracing flow, a
    C{logging} filter with C{logging} as parameters.
    """
    main = [
        {"set_response_header": {"headers": ["Set-Cookie -> sid=new; HttpOnly"]}},
        {"echo": {"message": "found", "status": 200}},
    ]
    if in_flow:
        main.insert(1, {"logging": logging})
    router = {"name": "default", "default_flow": "main"}
    flows = [{"name": "main", "filter": main}]
    if tracing:
        router["tracing_flow"] = "trace"
        flows.append({"name": "trace", "filter": [{"logging": logging}]})
    document = {"router": [router], "flow": flows}
    if extra_path is not None:
        document["path"] = extra_path
    config = config_from_dict(document, base_dir=str(tmp_path))
    clock = MemoryReactorClock()
    clock.advance(EPOCH)
    service = GatewayService(config, clock)
    return service, clock, Site(service.routers["default"], reactor=clock)


def lines(path):
    with open(path, "rb") as f:
        return [json.loads(line) for line in f.read().splitlines()]


def test_one_json_line_per_request_with_secrets_redacted(tmp_path):
    """
    The default file is <path.logs>/requests.log below the config's
    directory; each request gives one line with the exchange as sent, and
    credentials and cookies never reach the file.
    """
    service, clock, site = gateway(tmp_path)
    exchange = request(site, SECRETS)
    clock.advance(0)
    assert exchange.status == 200

    path = tmp_path / "log" / "requests.log"
    raw = path.read_bytes()
    for secret in (b"YWRtaW46czNjcmV0", b"hunter2", b"abc123", b"sid=new"):
        assert secret not in raw
    (line,) = lines(path)
    assert line["time"] == "2023-11-14T22:13:20.000Z"
    assert line["client_ip"] == "127.0.0.1"
    assert (line["method"], line["uri"], line["host"]) == (
        "GET",
        "/search?q=cats",
        "api.example.com",
    )
    assert (line["status"], line["response_bytes"], line["request_bytes"]) == (200, 5, 0)
    assert line["duration_ms"] == 0.0
    assert (line["rule"], line["flow"]) == (None, "main")
    assert line["user_agent"] == "curl/8.0"
    assert line["aborted"] is False and line["complete"] is True
    headers = line["request_headers"]
    assert headers["authorization"] == "Basic <redacted>"
    assert headers["proxy-authorization"] == "Bearer <redacted>"
    assert headers["cookie"] == "<redacted>"
    assert headers["x-trace"] == "7"
    assert line["response_headers"]["set-cookie"] == "<redacted>"
    assert line["response_headers"]["content-length"] == "5"
    service.stopService()


def test_lines_follow_each_other_and_headers_can_be_left_out(tmp_path):
    """C{include_headers: false} drops both header maps; lines append in order."""
    service, clock, site = gateway(
        tmp_path, {"path": "out/access.json", "include_headers": False}
    )
    for path in ("/a", "/b", "/c"):
        request(site, b"GET %s HTTP/1.1\r\nHost: x\r\n\r\n" % path.encode())
        clock.advance(0.25)
    logged = lines(tmp_path / "out" / "access.json")
    assert [line["uri"] for line in logged] == ["/a", "/b", "/c"]
    assert all("request_headers" not in line for line in logged)
    assert all("response_headers" not in line for line in logged)
    assert logged[1]["time"] == "2023-11-14T22:13:20.250Z"
    service.stopService()


def test_path_logs_setting_moves_the_default_file(tmp_path):
    """Without C{path}, the file is requests.log in C{path.logs}, created on demand."""
    service, clock, site = gateway(tmp_path, extra_path={"logs": "var/logs"})
    assert not (tmp_path / "var").exists()
    request(site)
    clock.advance(0)
    assert len(lines(tmp_path / "var" / "logs" / "requests.log")) == 1
    service.stopService()


def test_building_the_gateway_touches_no_file(tmp_path):
    """The file and its directory appear with the first line, not before."""
    service, clock, site = gateway(tmp_path, {"path": "deep/dir/requests.log"})
    assert not (tmp_path / "deep").exists()
    service.stopService()
    assert not (tmp_path / "deep").exists()


def test_rotation_by_size_keeps_max_files(tmp_path):
    """
    Past C{max_file_size} the file is rotated (requests.log.1 the newest);
    no more than C{max_files} rotated files are kept, and no line is split.
    """
    service, clock, site = gateway(
        tmp_path, {"max_file_size": "1kb", "max_files": 2, "include_headers": False}
    )
    for n in range(40):
        request(site, b"GET /r%d HTTP/1.1\r\nHost: x\r\n\r\n" % n)
        clock.advance(0)
    directory = tmp_path / "log"
    names = sorted(os.listdir(directory))
    assert names == ["requests.log", "requests.log.1", "requests.log.2"]
    kept = []
    for name in ("requests.log.2", "requests.log.1", "requests.log"):
        size = (directory / name).stat().st_size
        content = lines(directory / name)
        # A file rotates once it reaches the size: it overshoots by one line at most.
        assert size < 1024 + 400
        kept.extend(line["uri"] for line in content)
    # The newest lines are kept, in order, without gaps.
    assert kept == [f"/r{n}" for n in range(40 - len(kept), 40)]
    assert len(kept) < 40
    service.stopService()


def test_file_is_closed_when_the_gateway_stops_and_reopened_after(tmp_path):
    """stopService closes the file; a later line opens it again and appends."""
    service, clock, site = gateway(tmp_path)
    service.startService()
    request(site)
    clock.advance(0)
    (logging_filter,) = [step for _, name, step in service.flows["trace"].steps]
    assert logging_filter.log.opened
    service.stopService()
    assert not logging_filter.log.opened
    request(site, b"GET /again HTTP/1.1\r\nHost: x\r\n\r\n")
    clock.advance(0)
    assert [line["uri"] for line in lines(tmp_path / "log" / "requests.log")] == [
        "/",
        "/again",
    ]
    service.stopService()
    assert not logging_filter.log.opened


def test_in_an_ordinary_flow_it_logs_what_is_known_so_far(tmp_path):
    """
    In the request's own flow the line holds the draft so far (here the
    Set-Cookie set before it, redacted; no body yet), C{complete} false, and
    the flow goes on to answer.
    """
    service, clock, site = gateway(tmp_path, {"path": "inflow.log"}, in_flow=True, tracing=False)
    exchange = request(site, SECRETS)
    assert (exchange.status, exchange.body) == (200, b"found")
    (line,) = lines(tmp_path / "inflow.log")
    assert line["complete"] is False and line["aborted"] is False
    assert (line["status"], line["response_bytes"]) == (200, 0)
    assert line["response_headers"] == {"set-cookie": "<redacted>"}
    assert line["request_headers"]["authorization"] == "Basic <redacted>"
    service.stopService()


@pytest.mark.parametrize(
    "text, size",
    [
        (1, 1),
        (4096, 4096),
        ("100", 100),
        ("512b", 512),
        ("512kb", 512 * 1024),
        ("100MB", 100 * 1024 * 1024),
        ("1gb", 1024**3),
        ("2k", 2048),
        ("3MiB", 3 * 1024**2),
        (" 10 mb ", 10 * 1024**2),
    ],
)
def test_sizes(text, size):
    """Sizes are bytes or a number with a unit; units are powers of 1024."""
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "mb", "1.5mb", "10tb", "-1", 0, True, "0kb"])
def test_bad_sizes(text):
    with pytest.raises(ValueError):
        parse_size(text)


def test_default_size():
    assert DEFAULT_MAX_FILE_SIZE == parse_size("100mb")


@pytest.mark.parametrize(
    "params, expected",
    [
        ({"max_file_size": "big"}, "a size in bytes, or such as 64kb, 200mb or 1gb"),
        ({"max_file_size": 0}, "logging.max_file_size: expected at least 1"),
        ({"max_files": 0}, "max_files"),
        ({"include_headers": "yes"}, "include_headers"),
        ({"rotate": True}, "rotate"),
    ],
)
def test_bad_parameters_are_config_errors(tmp_path, params, expected):
    """The schema refuses bad parameters, naming the key and what was expected."""
    with pytest.raises(ConfigError) as caught:
        gateway(tmp_path, params)
    assert expected in str(caught.value)


# The line is written by hand (the keys are fixed): it must be what the
# json module would write.


def _reference_line(record, include_headers=True):
    from datetime import datetime, timezone

    from infini_gateway.filters.logging import _headers

    moment = datetime.fromtimestamp(record.started, timezone.utc)
    line = {
        "time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "client_ip": record.client_ip,
        "method": record.method,
        "uri": record.uri,
        "host": record.host,
        "status": record.status,
        "request_bytes": record.request_bytes,
        "response_bytes": record.response_bytes,
        "duration_ms": round(record.duration * 1000.0, 3),
        "rule": record.rule,
        "flow": record.flow,
        "user_agent": record.user_agent,
        "aborted": record.aborted,
        "complete": record.complete,
    }
    if include_headers:
        line["request_headers"] = _headers(record.request_headers)
        line["response_headers"] = _headers(record.response_headers)
    return json.dumps(line, sort_keys=True, separators=(",", ":")).encode("ascii") + b"\n"


@pytest.mark.parametrize("include_headers", [True, False])
@pytest.mark.parametrize(
    "started, text, status, size",
    [
        (1763900000.123456, "plain", 200, 5),
        (0.0, 'quote " back\\slash', None, None),
        (1.0009995, "\u00e9t\u00e9 \u2603 \U0001f600", 404, 0),
        (1763900059.9999996, "ctl \x00\x1f\x7f\n\t", 599, 2**40),
        (946684799.999, "", 101, 1),
    ],
)
def test_the_line_is_what_json_would_write(started, text, status, size, include_headers):
    from infini_gateway.filters.logging import log_line
    from infini_gateway.tracing import TraceRecord

    # Header text is bytes read as latin-1 (UTF-8 sent by a client, say).
    raw = text.encode("utf-8").decode("latin-1")
    record = TraceRecord(
        method="GET",
        path="/" + text,
        uri="/" + text + "?q=" + text,
        query="q=" + text,
        host=text,
        client_ip="::1",
        client_port=1,
        status=status,
        request_headers=(("Host", raw), ("X-Twice", "a"), ("x-twice", raw)),
        response_headers=(("Set-Cookie", "s=1"), ("Content-Type", raw)),
        request_bytes=size,
        response_bytes=size,
        started=started,
        finished=started + 0.0123456,
        duration=0.0123456,
        rule=None if status is None else text,
        flow=text,
        aborted=status is None,
        complete=status is not None,
    )
    assert log_line(record, include_headers) == _reference_line(record, include_headers)
