"""
Intentions: which client identities may reach a service, as Consul's
service intentions say it.

An identity is what L{infini_gateway.identity} reads from a client
certificate (its URI SAN such as
C{spiffe://example.org/ns/default/dc/dc1/svc/web}, else its DNS SAN, else
its CN), or the word C{anonymous} for a client without one.  Intentions are
an ordered list of C{{source, action}} rules and a default action: the
first rule whose C{source} matches the identity decides, else the default
(C{deny} unless told otherwise).

A C{source} is an identity, or a glob in which C{*} stands for any run of
characters other than C{/} and C{**} for any run of characters at all:
C{spiffe://example.org/ns/default/dc/*/svc/web} is service C{web} of
namespace C{default} in any datacenter,
C{spiffe://example.org/**} anything of that trust domain, C{*} any
identity without a C{/} (so C{anonymous} too).  No other character is
special, and matching is case-sensitive.

The same rules serve an HTTP flow (the C{intentions} filter: a denied
request gets C{403} with a JSON body naming the rule) and a C{tcp} entry (a
denied connection is closed after the TLS handshake).
"""

import re
from typing import Any, Dict, Mapping, NamedTuple, Optional, Pattern, Tuple

from infini_gateway.config.model import IntentionRule, Intentions

ANONYMOUS = "anonymous"
ACTIONS = ("allow", "deny")

__all__ = [
    "ANONYMOUS",
    "Decision",
    "IntentionRules",
    "intentions_from_params",
    "intentions_schema",
]


def compile_source(source: str) -> Pattern[str]:
    """The regular expression of a C{source} glob (C{*}, C{**})."""
    parts = []
    for piece in re.split(r"(\*\*|\*)", source):
        if piece == "**":
            parts.append(".*")
        elif piece == "*":
            parts.append("[^/]*")
        elif piece:
            parts.append(re.escape(piece))
    return re.compile("".join(parts), re.DOTALL)


class Decision(NamedTuple):
    """
    What the intentions say of one identity.

    @ivar rule: the index of the rule that decided, or None for the default.
    @ivar source: that rule's C{source}, or None.
    """

    allowed: bool
    identity: str
    rule: Optional[int] = None
    source: Optional[str] = None

    @property
    def action(self) -> str:
        return "allow" if self.allowed else "deny"

    def describe(self) -> str:
        """C{"rules[1] (deny spiffe://...)"} or C{"default (deny)"}."""
        if self.rule is None:
            return f"default ({self.action})"
        return f"rules[{self.rule}] ({self.action} {self.source})"

    def document(self) -> Dict[str, Any]:
        """The JSON body of a denied request."""
        return {
            "error": "forbidden",
            "reason": "denied by intention",
            "identity": self.identity,
            "rule": self.describe(),
        }


class IntentionRules:
    """L{Intentions}, compiled: L{decide} for an identity."""

    def __init__(self, intentions: Intentions) -> None:
        self.intentions = intentions
        self._rules: Tuple[Tuple[Pattern[str], IntentionRule], ...] = tuple(
            (compile_source(rule.source), rule) for rule in intentions.rules
        )
        self._default = intentions.default == "allow"

    def decide(self, identity: Optional[str]) -> Decision:
        """
        The decision for a client of C{identity}; None (no certificate) is
        C{anonymous}.
        """
        if identity is None:
            identity = ANONYMOUS
        for index, (pattern, rule) in enumerate(self._rules):
            if pattern.fullmatch(identity):
                return Decision(rule.action == "allow", identity, index, rule.source)
        return Decision(self._default, identity)


def intentions_from_params(params: Mapping[str, Any]) -> Intentions:
    """L{Intentions} from the checked mapping C{{rules, default}}."""
    return Intentions(
        rules=tuple(
            IntentionRule(source=rule["source"], action=rule["action"])
            for rule in params.get("rules", ())
        ),
        default=params.get("default", "deny"),
    )


def intentions_schema(description: str = "") -> Dict[str, Any]:
    """
    The JSON Schema of C{{rules: [{source, action}], default}}, wherever
    intentions are written (the filter, a C{tcp} entry, a service).
    """
    return {
        "title": "intentions",
        "description": description
        or "Which client identities may pass: the first rule whose source"
        " matches decides, else default (deny when not given).",
        "type": "object",
        "additionalProperties": False,
        "required": ["rules"],
        "properties": {
            "rules": {
                "title": "rules",
                "description": "Tried in order.",
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["source", "action"],
                    "properties": {
                        "source": {
                            "title": "source",
                            "description": "A client identity (URI SAN, DNS SAN or CN"
                            " of its certificate; anonymous without one), or a glob:"
                            " * is any run of characters but /, ** any run at all.",
                            "type": "string",
                            "minLength": 1,
                        },
                        "action": {
                            "title": "action",
                            "description": "allow or deny.",
                            "type": "string",
                            "enum": list(ACTIONS),
                            "errorMessage": "allow or deny",
                        },
                    },
                },
            },
            "default": {
                "title": "default",
                "description": "For identities no rule matches (default deny).",
                "type": "string",
                "enum": list(ACTIONS),
                "errorMessage": "allow or deny",
            },
        },
    }
