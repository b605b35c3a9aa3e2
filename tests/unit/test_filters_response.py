"""
The filters that build the answer: echo, set_response, set_response_header,
redirect and drop.
"""

import jsonschema
import pytest

from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from infini_gateway.context import ResponseDraft
from infini_gateway.filters import Filter, filter_class
from tests.unit._site import captured_logs, failures, make_filter, make_site, request


class Record(Filter):
    """Test-only: records that it ran."""

    name = "record"

    def __init__(self):
        super().__init__({}, None)
        self.ran = 0

    def filter(self, ctx):
        self.ran += 1


class Stream(Filter):
    """
    Test-only stand-in for a streaming filter (the proxy): writes an
    "upstream" answer itself, applying the draft's headers over the
    upstream's, and marks the draft sent.
    """

    name = "stream"

    def filter(self, ctx):
        request = ctx.request
        upstream = Headers({b"X-Upstream": [b"1"], b"X-Env": [b"upstream"]})
        ctx.response.apply_headers(upstream)
        for name, values in upstream.getAllRawHeaders():
            request.responseHeaders.setRawHeaders(name, values)
        request.setResponseCode(203)
        request.setHeader(b"content-length", b"8")
        request.write(b"streamed")
        request.finish()
        ctx.response.sent = True
        ctx.stop()


def schema_rejects(name, params):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(params, filter_class(name).schema)


# echo


def test_echo_writes_message_repeat_times_and_continues():
    record = Record()
    site = make_site([("echo", {"message": "hi\n", "repeat": 3}), record])
    exchange = request(site)
    assert (exchange.status, exchange.body) == (200, b"hi\nhi\nhi\n")
    assert record.ran == 1


def test_echo_defaults_to_a_dot():
    assert request(make_site([("echo", {})])).body == b"."


def test_echo_messages_follow_message_and_repeat_together():
    site = make_site([("echo", {"message": "<", "messages": ["a", "b"], "repeat": 2})])
    assert request(site).body == b"<ab<ab"
    site = make_site([("echo", {"messages": ["a", "b"]})])
    assert request(site).body == b"ab"


def test_echo_continue_false_stops_the_flow_with_its_status():
    record = Record()
    site = make_site(
        [("echo", {"message": "x", "status": 418, "continue": False}), record]
    )
    exchange = request(site)
    assert (exchange.status, exchange.body) == (418, b"x")
    assert record.ran == 0


def test_echo_response_false_writes_nothing_and_stdout_logs():
    with captured_logs() as events:
        exchange = request(
            make_site(
                [("echo", {"message": "quiet", "response": False, "stdout": True})]
            )
        )
    assert exchange.body == b""
    assert [e["text"] for e in events if e.get("text") == "quiet"] == ["quiet"]


def test_echo_schema_rejects_bad_params():
    schema_rejects("echo", {"repeat": 0})
    schema_rejects("echo", {"status": 99})
    schema_rejects("echo", {"mesage": "typo"})


# set_response


def test_set_response_sets_status_type_and_body_and_continues():
    site = make_site(
        [
            ("echo", {"message": "replaced"}),
            (
                "set_response",
                {"status": 201, "content_type": "application/json", "body": '{"a":1}'},
            ),
            ("set_response_header", {"headers": ["Env -> Dev"]}),
        ]
    )
    exchange = request(site)
    assert exchange.status == 201
    assert exchange.header("content-type") == "application/json"
    assert exchange.body == b'{"a":1}'
    assert exchange.header("env") == "Dev"


def test_set_response_status_defaults_to_200_and_keeps_body_without_body():
    site = make_site(
        [("echo", {"message": "kept", "status": 500}), ("set_response", {})]
    )
    exchange = request(site)
    assert (exchange.status, exchange.body) == (200, b"kept")
    assert exchange.header("content-type") == "text/plain; charset=utf-8"


def test_set_response_rejects_control_characters_in_content_type():
    schema_rejects("set_response", {"content_type": "text/plain\r\nX-Evil: 1"})
    with pytest.raises(ValueError, match="control character"):
        filter_class("set_response")({"content_type": "a\nb"}, None)


# set_response_header


def test_set_response_header_replaces_and_groups_values():
    site = make_site(
        [
            ("set_response", {"content_type": "text/html"}),
            (
                "set_response_header",
                {
                    "headers": [
                        "Content-Type -> application/json",
                        "X-Multi -> 1",
                        "x-multi  ->  2 ",
                        "X-Empty ->",
                    ]
                },
            ),
        ]
    )
    exchange = request(site)
    assert exchange.header_values("content-type") == ["application/json"]
    assert exchange.header_values("x-multi") == ["1", "2"]
    assert exchange.header_values("x-empty") == [""]


def test_set_response_header_applies_to_a_streamed_answer():
    """A later streaming filter applies the draft's headers over the upstream's."""
    site = make_site(
        [("set_response_header", {"headers": ["X-Env -> gateway"]}), Stream({}, None)]
    )
    with captured_logs() as events:
        exchange = request(site)
    assert failures(events) == []
    assert exchange.status == 203
    assert exchange.body == b"streamed"
    assert exchange.header_values("x-env") == ["gateway"]
    assert exchange.header("x-upstream") == "1"


def test_apply_headers_replaces_only_the_names_the_draft_holds():
    draft = ResponseDraft()
    draft.add_header(b"Set-Cookie", b"a=1")
    draft.add_header(b"set-cookie", b"b=2")
    headers = Headers({b"Set-Cookie": [b"up=1"], b"Server": [b"up"]})
    draft.apply_headers(headers)
    assert headers.getRawHeaders(b"set-cookie") == [b"a=1", b"b=2"]
    assert headers.getRawHeaders(b"server") == [b"up"]


@pytest.mark.parametrize(
    "line",
    [
        "no arrow",
        "Bad Name -> x",
        "X-A -> a\r\nX-B: b",
        "X-A -> a\n",
        "(x) -> y",
        "-> value",
    ],
)
def test_header_lines_are_checked_by_schema_and_constructor(line):
    for name in ("set_request_header", "set_response_header"):
        with pytest.raises(ValueError, match=r"headers\[0\]"):
            filter_class(name)({"headers": [line]}, None)
        if not line.endswith("\n"):
            schema_rejects(name, {"headers": [line]})


def test_framing_headers_cannot_be_set():
    for name in ("set_request_header", "set_response_header"):
        for line in ("Content-Length -> 0", "transfer-encoding -> chunked"):
            with pytest.raises(ValueError, match="set by the gateway"):
                filter_class(name)({"headers": [line]}, None)


def test_header_filters_require_headers():
    for name in ("set_request_header", "set_response_header"):
        schema_rejects(name, {})
        schema_rejects(name, {"headers": []})
        with pytest.raises(ValueError, match="headers"):
            filter_class(name)({}, None)


# redirect


def test_redirect_answers_302_with_location_and_stops():
    record = Record()
    site = make_site([("redirect", {"uri": "https://infinilabs.com/x?y=1"}), record])
    exchange = request(site)
    assert exchange.status == 302
    assert exchange.header("location") == "https://infinilabs.com/x?y=1"
    assert exchange.body == b""
    assert record.ran == 0


def test_redirect_code_is_configurable():
    exchange = request(make_site([("redirect", {"uri": "/new", "code": 308})]))
    assert (exchange.status, exchange.header("location")) == (308, "/new")


@pytest.mark.parametrize("code", [200, 304, 305, 306, 404])
def test_redirect_code_must_be_a_redirection(code):
    schema_rejects("redirect", {"uri": "/x", "code": code})
    with pytest.raises(ValueError, match="not a redirection"):
        filter_class("redirect")({"uri": "/x", "code": code}, None)


def test_redirect_uri_must_be_clean():
    for uri in ("", "/a b", "/a\r\nX-Evil: 1"):
        schema_rejects("redirect", {"uri": uri})
        with pytest.raises(ValueError, match="uri"):
            filter_class("redirect")({"uri": uri}, None)
    schema_rejects("redirect", {})


# drop


def test_drop_closes_the_connection_without_an_answer():
    record = Record()
    site = make_site([("echo", {"message": "never sent"}), ("drop", {}), record])
    with captured_logs() as events:
        exchange = request(site)
        assert exchange.transport.value() == b""
        assert exchange.transport.disconnecting
        exchange.channel.connectionLost(Failure(ConnectionDone()))
    assert exchange.transport.value() == b""
    assert record.ran == 0
    assert failures(events) == []


def test_drop_takes_no_parameters():
    make_filter("drop", None)
    schema_rejects("drop", {"anything": 1})
