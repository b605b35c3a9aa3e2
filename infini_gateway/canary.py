"""
Canary releases: which upstream version of a service a request goes to.

A service forwards to its version in use unless its canary is in progress:
then the requests matching every one of the canary's rules, or C{percent}
of them, go to the canary's version.  A finished canary sends everything
to its version, a paused one nothing.

The percent split is not random: the n-th request (counted over the whole
service) goes to the canary when C{floor(n * percent / 100)} grows at n, so
after any number of requests the canary's share is within one request of
C{percent} (10%: the 10th, 20th, 30th... request).  With C{sticky}, a user
(a header's or a cookie's value) is placed by a stable hash of that value
into one of 10,000 buckets, and the users of the first C{percent * 100}
buckets get the canary: a user never moves while C{percent} stays, raising
C{percent} only moves users to the canary, and across many users the share
follows C{percent}.  A request without that header or cookie is counted in
the split as above.
"""

import hashlib
import re
from typing import Callable, Optional

from infini_gateway.config.model import CanaryRule, ServiceConfig, StickyKey
from infini_gateway.context import RequestContext

BUCKETS = 10000


def request_value(ctx: RequestContext, source: str, name: str) -> Optional[str]:
    """A request's header, query argument (the first) or cookie, or None."""
    request = ctx.request
    raw: Optional[bytes] = None
    key = name.encode("latin-1")
    if source == "header":
        raw = request.getHeader(key)
    elif source == "query":
        values = (getattr(request, "args", None) or {}).get(key)
        raw = values[0] if values else None
    elif source == "cookie":
        raw = request.getCookie(key)
    return None if raw is None else raw.decode("latin-1")


def rule_test(rule: CanaryRule) -> Callable[[RequestContext], bool]:
    """
    A predicate over requests for one rule.  A request without the header,
    argument or cookie matches only C{!=}.
    """
    values = rule.values
    if rule.operator == "==":
        (expected,) = values

        def test(value: str) -> bool:
            return value == expected

    elif rule.operator == "!=":
        (unexpected,) = values

        def test(value: str) -> bool:
            return value != unexpected

    elif rule.operator == "in":
        allowed = frozenset(values)

        def test(value: str) -> bool:
            return value in allowed

    elif rule.operator == "regex":
        pattern = re.compile(values[0])

        def test(value: str) -> bool:
            return pattern.search(value) is not None

    else:
        raise ValueError(f"unknown operator {rule.operator!r}")
    missing = rule.operator == "!="

    def matches(ctx: RequestContext) -> bool:
        value = request_value(ctx, rule.source, rule.name)
        return missing if value is None else test(value)

    return matches


def sticky_bucket(salt: str, user: str) -> int:
    """The bucket, in [0, L{BUCKETS}), a user falls in: the same everywhere, always."""
    digest = hashlib.sha256(f"{salt}\0{user}".encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % BUCKETS


class SmoothSplit:
    """
    C{percent} of the calls to L{next} answer True, spread evenly: after n
    calls, the Trues number C{floor(n * percent / 100)}.
    """

    def __init__(self, percent: int) -> None:
        self.percent = percent
        self._count = 0

    def next(self) -> bool:
        # The pattern repeats every 100 calls: the counter stays small.
        n = self._count % 100
        self._count = n + 1
        return (n + 1) * self.percent // 100 > n * self.percent // 100


class VersionChooser:
    """
    Picks the upstream version of each request of one service.

    @ivar in_use: the version requests go to outside the canary.
    @ivar canary: the canary's version, or None when no canary runs.
    """

    def __init__(self, service: ServiceConfig) -> None:
        canary = service.canary
        self.in_use = service.version_in_use
        self.canary: Optional[str] = None
        self._rules = ()
        self._split: Optional[SmoothSplit] = None
        self._sticky: Optional[StickyKey] = None
        self._threshold = 0
        self._salt = ""
        if canary is None or canary.state != "in_progress":
            return
        self.canary = canary.version
        if canary.rules:
            self._rules = tuple(rule_test(rule) for rule in canary.rules)
        else:
            percent = canary.percent or 0
            self._split = SmoothSplit(percent)
            self._sticky = canary.sticky
            self._threshold = percent * BUCKETS // 100
            self._salt = f"{service.name}\0{canary.version}"

    def choose(self, ctx: RequestContext) -> str:
        """The version for C{ctx}'s request."""
        if self.canary is None:
            return self.in_use
        if self._rules:
            hit = all(test(ctx) for test in self._rules)
        else:
            user = None
            if self._sticky is not None:
                user = request_value(ctx, self._sticky.source, self._sticky.name)
            if user is not None:
                hit = sticky_bucket(self._salt, user) < self._threshold
            else:
                hit = self._split.next()
        return self.canary if hit else self.in_use
