"""
What the four C{request_*_filter} filters share: INFINI Gateway's C{must} /
C{must_not} / C{should} rules, and the answer to a request they refuse.

A rule group maps a kind (C{prefix}, C{suffix}, C{contain}, C{wildcard},
C{regex}, and per filter a few more) to a list of values; every value is
one condition.  A request passes when every C{must} condition holds, no
C{must_not} condition holds and, when C{should} is given, at least one of
its conditions holds.  (So C{must: {suffix: [a, b]}} asks for both suffixes,
as in INFINI Gateway.)  C{include} and C{exclude}, INFINI's older spelling
for exact values, are an extra C{should} group and extra C{must_not}
conditions.

Unlike INFINI Gateway, every condition is compiled once, when the flow is
built; a regular expression that does not compile is a configuration error
then, not a failure of each request.  C{regex} uses Python's C{re} syntax
and searches (it is not anchored: write C{^...$} for a whole match);
C{wildcard} matches the whole value, C{*} standing for any run of
characters (C{/} included) and C{?} for one.
"""

import re
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence

from infini_gateway.filters import Filter

Predicate = Callable[[Any], bool]
# (kind, value from the configuration) -> the conditions it stands for.
Compiler = Callable[[str, Any], List[Predicate]]

STRING_KINDS = ("prefix", "suffix", "contain", "wildcard", "regex")
GROUPS = ("must", "must_not", "should")


def string_test(kind: str, value: str) -> Callable[[str], bool]:
    """
    One condition on a string.

    @param kind: one of L{STRING_KINDS}, or C{"equal"}.
    @raise ValueError: C{value} is not a valid regular expression.
    """
    if kind == "prefix":
        return lambda text: text.startswith(value)
    if kind == "suffix":
        return lambda text: text.endswith(value)
    if kind == "contain":
        return lambda text: value in text
    if kind == "equal":
        return lambda text: text == value
    if kind == "wildcard":
        expression = ".*".join(
            ".".join(re.escape(part) for part in piece.split("?"))
            for piece in value.split("*")
        )
        wildcard = re.compile(expression, re.DOTALL)
        return lambda text: wildcard.fullmatch(text) is not None
    if kind == "regex":
        try:
            regex = re.compile(value)
        except re.error as e:
            raise ValueError(f"{value!r} is not a valid regular expression: {e}")
        return lambda text: regex.search(text) is not None
    raise ValueError(f"unknown condition {kind!r}")


class Rules:
    """
    Compiled C{must} / C{must_not} / C{should} conditions.

    @ivar must: conditions that must all hold.
    @ivar must_not: conditions none of which may hold.
    @ivar any_of: groups of conditions; in each, one at least must hold.
    """

    def __init__(
        self,
        must: Sequence[Predicate] = (),
        must_not: Sequence[Predicate] = (),
        any_of: Sequence[Sequence[Predicate]] = (),
    ) -> None:
        self.must = tuple(must)
        self.must_not = tuple(must_not)
        self.any_of = tuple(tuple(group) for group in any_of if group)

    def __bool__(self) -> bool:
        return bool(self.must or self.must_not or self.any_of)

    def allows(self, subject: Any) -> bool:
        return (
            all(test(subject) for test in self.must)
            and not any(test(subject) for test in self.must_not)
            and all(any(test(subject) for test in group) for group in self.any_of)
        )


def compile_rules(
    params: Mapping[str, Any],
    compile_condition: Compiler,
    include: Optional[Compiler] = None,
) -> Rules:
    """
    Compile the C{must}, C{must_not} and C{should} groups of C{params} (and
    C{include} / C{exclude}, given C{include}, the compiler of their values).

    @raise ValueError: naming the condition, when a value does not compile.
    """
    compiled: Dict[str, List[Predicate]] = {}
    for group in GROUPS:
        tests: List[Predicate] = []
        for kind, values in params.get(group, {}).items():
            tests.extend(
                _compile_all(f"{group}.{kind}", kind, values, compile_condition)
            )
        compiled[group] = tests
    any_of = [compiled["should"]]
    if include is not None:
        any_of.append(
            _compile_all("include", "include", params.get("include", ()), include)
        )
        compiled["must_not"].extend(
            _compile_all("exclude", "exclude", params.get("exclude", ()), include)
        )
    return Rules(compiled["must"], compiled["must_not"], any_of)


def _compile_all(
    where: str, kind: str, values: Iterable[Any], compile_condition: Compiler
) -> List[Predicate]:
    tests: List[Predicate] = []
    for index, value in enumerate(values):
        try:
            tests.extend(compile_condition(kind, value))
        except ValueError as e:
            raise ValueError(f"{where}[{index}]: {e}") from None
    return tests


def rules_schema(
    item: Mapping[str, Any], kinds: Sequence[str] = STRING_KINDS
) -> Dict[str, Any]:
    """The schemas of C{must}, C{must_not} and C{should}: C{kinds} -> [C{item}]."""
    group = {
        "type": "object",
        "additionalProperties": False,
        "minProperties": 1,
        "properties": {
            kind: {"type": "array", "minItems": 1, "items": dict(item)}
            for kind in kinds
        },
    }
    return {name: group for name in GROUPS}


DENY_PROPERTIES: Dict[str, Any] = {
    # INFINI Gateway's other action, redirect_flow, is not supported (yet).
    "action": {"enum": ["deny"]},
    "status": {"type": "integer", "minimum": 200, "maximum": 599},
    "message": {"type": "string"},
}


def filter_schema(properties: Mapping[str, Any]) -> Dict[str, Any]:
    """A request filter's schema: C{properties}, C{action}, C{status}, C{message}."""
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {**DENY_PROPERTIES, **properties},
    }


class RequestFilter(Filter):
    """
    Base of the C{request_*_filter} filters: a request the rules refuse is
    answered C{status} (403 unless configured) with a JSON body
    C{{"error": message, "filter": ..., "flow": ...}} and the flow stops;
    any other request goes on.

    Subclasses define L{compile_rules} and L{subject}.
    """

    def __init__(self, params, runtime):
        super().__init__(params, runtime)
        self._status = params.get("status", 403)
        self._message = params.get("message", "request denied")
        self._rules = self.compile_rules(params)

    def compile_rules(self, params: Mapping[str, Any]) -> Rules:
        raise NotImplementedError

    def subject(self, ctx) -> Any:
        """What the conditions are tested on, taken from the request."""
        raise NotImplementedError

    def filter(self, ctx):
        if not self._rules.allows(self.subject(ctx)):
            self.deny(ctx)

    def deny(self, ctx) -> None:
        ctx.answer_json(
            self._status,
            {"error": self._message, "filter": self.name, "flow": ctx.flow},
        )
