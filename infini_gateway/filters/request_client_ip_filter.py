"""
C{request_client_ip_filter}: let a request on only when the client's
address passes the rules, INFINI Gateway's filter of that name.

  - C{include}: addresses or CIDR blocks; when given, a client outside all
    of them is refused;
  - C{exclude}: addresses or CIDR blocks whose clients are refused;
  - C{must} / C{must_not} / C{should}: C{cidr} conditions (an extension:
    INFINI Gateway compares addresses as strings only) and the string
    conditions C{prefix}, C{suffix}, C{contain}, C{wildcard}, C{regex} on
    the address as text (see L{_matching}).

Addresses are compared as addresses, not text (C{::1} is
C{0:0:0:0:0:0:0:1}), and a client on C{::ffff:a.b.c.d} is C{a.b.c.d}.  A
peer without an IP address (a UNIX socket) is refused by any filter that
has a rule: it fails closed.
"""

from ipaddress import ip_address, ip_network

from infini_gateway.filters import register
from infini_gateway.filters._matching import (
    STRING_KINDS,
    RequestFilter,
    compile_rules,
    filter_schema,
    rules_schema,
    string_test,
)

_ADDRESSES = {"type": "array", "minItems": 1, "items": {"type": "string"}}


def _network(value):
    try:
        return ip_network(value)
    except ValueError as e:
        raise ValueError(f"{value!r} is not an IP address or CIDR block: {e}") from None


def _in_network(kind, value):
    network = _network(value)
    return [lambda subject: subject[1] is not None and subject[1] in network]


def _condition(kind, value):
    if kind == "cidr":
        return _in_network(kind, value)
    test = string_test(kind, value)
    return [lambda subject: test(subject[0])]


@register
class RequestClientIPFilter(RequestFilter):
    name = "request_client_ip_filter"
    schema = filter_schema(
        {
            "include": _ADDRESSES,
            "exclude": _ADDRESSES,
            **rules_schema({"type": "string"}, STRING_KINDS + ("cidr",)),
        }
    )

    def compile_rules(self, params):
        return compile_rules(params, _condition, include=_in_network)

    def subject(self, ctx):
        """The client's address as text, and as an address (None if it has none)."""
        text = ctx.client_ip
        try:
            return text, ip_address(text)
        except ValueError:
            return text, None

    def filter(self, ctx):
        subject = self.subject(ctx)
        if self._rules and (subject[1] is None or not self._rules.allows(subject)):
            self.deny(ctx)
