"""Durations and addresses as gateway.yml writes them."""

import pytest

from infini_gateway.config import parse_binding, parse_duration


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("500ms", 0.5),
        ("3s", 3.0),
        ("1.5s", 1.5),
        ("1m", 60.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("250us", 0.00025),
        ("0", 0.0),
        (3, 3.0),
        (0.25, 0.25),
    ],
)
def test_durations(text, seconds):
    """Durations take Go's units, and a bare number is seconds."""
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text", ["3 parsecs", "3", "s", "", "-1s", "1d", True, None, -1, [1]]
)
def test_bad_durations(text):
    """Anything else says what a duration looks like."""
    with pytest.raises(ValueError) as caught:
        parse_duration(text)
    assert str(caught.value).startswith(
        "expected a duration such as 500ms, 3s or 1m, got "
    )


@pytest.mark.parametrize(
    "text, address",
    [
        ("0.0.0.0:8000", ("0.0.0.0", 8000)),
        ("127.0.0.1:0", ("127.0.0.1", 0)),
        ("localhost:65535", ("localhost", 65535)),
        ("api.example.com:443", ("api.example.com", 443)),
        ("[::1]:8000", ("::1", 8000)),
        ("[::]:8000", ("::", 8000)),
    ],
)
def test_bindings(text, address):
    """HOST:PORT with an IPv4 address, a host name, or an IPv6 address in brackets."""
    assert parse_binding(text) == address


@pytest.mark.parametrize(
    "text, message",
    [
        ("8000", "expected HOST:PORT, got '8000'"),
        (":8000", "expected HOST:PORT, got ':8000'"),
        (
            "::1:8000",
            "expected an IPv6 address in brackets, such as [::1]:8000, got '::1:8000'",
        ),
        ("[::1]8000", "expected [IPV6]:PORT, such as [::1]:8000, got '[::1]8000'"),
        ("[nope]:80", "expected an IPv6 address inside the brackets, got '[nope]:80'"),
        ("host:http", "expected HOST:PORT with a numeric port, got 'host:http'"),
        ("host:", "expected HOST:PORT with a numeric port, got 'host:'"),
        (
            "host:70000",
            "expected a port from 0 to 65535 (0: any free port), got 'host:70000'",
        ),
        ("bad_host!:80", "expected an IP address or a host name, got 'bad_host!'"),
        ("999.1.1.1:80", "expected an IP address or a host name, got '999.1.1.1'"),
    ],
)
def test_bad_bindings(text, message):
    """Each way of getting an address wrong has its own explanation."""
    with pytest.raises(ValueError) as caught:
        parse_binding(text)
    assert str(caught.value) == message
