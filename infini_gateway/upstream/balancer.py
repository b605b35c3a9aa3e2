"""
Endpoints' run-time state and the balancers that pick one for each request.

An L{EndpointState} is shared by the balancer, the health checks and the
admin API.  A L{Balancer} picks among the I{candidates} of its endpoints
(see L{candidates}): those available (healthy, weight above zero), not
excluded by the caller (the endpoints a retried request already tried), and
of the highest priority left.  Four kinds are built by L{make_balancer}:

  - C{roundrobin}: nginx's smooth weighted round robin (L{RoundRobin});
  - C{least_conn}: fewest requests in flight relative to weight
    (L{LeastConnections});
  - C{ewma}: peak EWMA of response times, power of two choices (L{PeakEWMA});
  - C{chash}: consistent hashing of a request key on a ring of virtual nodes
    (L{ConsistentHash}).
"""

import bisect
import hashlib
import math
import random
from typing import (
    AbstractSet,
    Dict,
    Iterable,
    List,
    Optional,
    Sequence,
    Tuple,
)
from urllib.parse import urlsplit

import attrs

from twisted.internet.interfaces import IReactorTime

_DEFAULT_PORTS = {"http": 80, "https": 443}


@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP)
class EndpointState:
    """
    One endpoint's mutable run-time state.

    Instances compare and hash by identity, so they can key dicts and sets.
    Values are checked when it is made, not when an attribute is set (the
    counters change on every request).

    @ivar url: the endpoint as configured, e.g. C{"http://127.0.0.1:9001"}.
    @ivar scheme: C{"http"} or C{"https"}.
    @ivar host: the host name or address (IPv6 without brackets).
    @ivar port: the TCP port.
    @ivar weight: relative share of requests, C{>= 0}; C{0} drains the
        endpoint: it is never picked.
    @ivar priority: higher values are preferred; a lower priority group is
        used only when no endpoint of a higher one is a candidate.
    @ivar healthy: set by the health checks.
    @ivar in_flight: requests started and not yet ended, kept by
        L{Balancer.on_request_start} and L{Balancer.on_request_end}.
    @ivar ewma: the peak EWMA of response times in seconds at C{ewma_stamp},
        or C{None} before the first sample (kept by L{PeakEWMA}).
    @ivar ewma_stamp: the C{clock.seconds()} of the last sample.
    """

    url: str
    scheme: str
    host: str
    port: int
    weight: int = attrs.field(default=1, validator=attrs.validators.ge(0))
    priority: int = 0
    healthy: bool = True
    in_flight: int = 0
    ewma: Optional[float] = None
    ewma_stamp: float = 0.0

    @classmethod
    def from_url(cls, url: str, weight: int = 1, priority: int = 0) -> "EndpointState":
        """
        Parse C{scheme://host[:port]}; the port defaults to the scheme's.

        @raise ValueError: for another scheme or a missing host.
        """
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in _DEFAULT_PORTS or not parts.hostname:
            raise ValueError(f"expected http(s)://host[:port], got {url!r}")
        port = parts.port if parts.port is not None else _DEFAULT_PORTS[scheme]
        return cls(url, scheme, parts.hostname, port, weight=weight, priority=priority)

    @property
    def available(self) -> bool:
        """Whether the endpoint may be picked: healthy, and weight above zero."""
        return self.healthy and self.weight > 0


def candidates(
    endpoints: Iterable[EndpointState],
    exclude: AbstractSet[EndpointState] = frozenset(),
    *,
    include_unhealthy: bool = False,
) -> List[EndpointState]:
    """
    The endpoints a balancer may pick from, in their configured order.

    An endpoint is usable when its weight is above zero, it is healthy (or
    C{include_unhealthy}), and it is not in C{exclude}.  Of the usable ones,
    only those of the highest priority are returned.

    @param include_unhealthy: ignore health (panic mode); weight 0 still
        drains.
    @return: an empty list when nothing is usable.
    """
    usable = [
        ep
        for ep in endpoints
        if ep.weight > 0 and (include_unhealthy or ep.healthy) and ep not in exclude
    ]
    if not usable:
        return usable
    top = max(ep.priority for ep in usable)
    return [ep for ep in usable if ep.priority == top]


class Balancer:
    """
    Picks an endpoint for each request; subclasses implement L{_choose}.

    @ivar endpoints: all endpoints, in configured order (the same
        L{EndpointState} objects the health checks update).
    @ivar clock: the time source (only L{PeakEWMA} reads it).
    @ivar panic: when no healthy candidate is left, pick among the unhealthy
        ones (weight above zero, not excluded) instead of returning C{None}.
    """

    kind = ""

    def __init__(
        self,
        endpoints: Sequence[EndpointState],
        clock: IReactorTime,
        *,
        panic: bool = False,
    ) -> None:
        self.endpoints: Tuple[EndpointState, ...] = tuple(endpoints)
        self.clock = clock
        self.panic = panic
        self._index: Dict[EndpointState, int] = {
            ep: i for i, ep in enumerate(self.endpoints)
        }

    def pick(
        self,
        key: Optional[str] = None,
        exclude: AbstractSet[EndpointState] = frozenset(),
        include_unhealthy: bool = False,
    ) -> Optional[EndpointState]:
        """
        The endpoint for the next request.

        @param key: the request's hash key; only C{chash} uses it.
        @param exclude: endpoints not to pick (those a retry already tried).
        @param include_unhealthy: balance over unhealthy endpoints too.
        @return: the endpoint, or C{None} when no candidate is left.
        """
        group = candidates(self.endpoints, exclude, include_unhealthy=include_unhealthy)
        if not group and self.panic and not include_unhealthy:
            group = candidates(self.endpoints, exclude, include_unhealthy=True)
        if not group:
            return None
        return self._choose(group, key)

    def _choose(self, group: List[EndpointState], key: Optional[str]) -> EndpointState:
        """Pick one of C{group}: non-empty, one priority, configured order."""
        raise NotImplementedError()

    def on_request_start(self, endpoint: EndpointState) -> None:
        """A request to C{endpoint} starts."""
        endpoint.in_flight += 1

    def on_request_end(
        self, endpoint: EndpointState, elapsed: float, failed: bool
    ) -> None:
        """
        A request to C{endpoint} ended.

        @param elapsed: seconds from connecting to the response headers.
        @param failed: whether it ended in a connection error or timeout.
        """
        endpoint.in_flight = max(0, endpoint.in_flight - 1)


class RoundRobin(Balancer):
    """
    Smooth weighted round robin, as nginx does it.

    For each pick, every candidate's current weight grows by its weight; the
    candidate with the largest current weight (the first on ties) is picked
    and its current weight drops by the candidates' total weight.  Weights
    5, 1, 1 give C{a a b a c a a}: exact ratios, interleaved.  Endpoints not
    among the candidates (excluded, unavailable, lower priority) keep their
    current weight untouched, so the others stay smooth, and the current
    weights always sum to zero, which bounds them.
    """

    kind = "roundrobin"

    def __init__(
        self,
        endpoints: Sequence[EndpointState],
        clock: IReactorTime,
        *,
        panic: bool = False,
    ) -> None:
        super().__init__(endpoints, clock, panic=panic)
        self._current: Dict[EndpointState, int] = {ep: 0 for ep in self.endpoints}

    def _choose(self, group: List[EndpointState], key: Optional[str]) -> EndpointState:
        best = group[0]
        best_weight = None
        total = 0
        for ep in group:
            current = self._current[ep] + ep.weight
            self._current[ep] = current
            total += ep.weight
            if best_weight is None or current > best_weight:
                best, best_weight = ep, current
        self._current[best] -= total
        return best


class LeastConnections(Balancer):
    """
    The candidate with the lowest C{(in_flight + 1) / weight}.

    Scores are compared by cross multiplication, exactly.  Ties go round
    robin: the search starts after the endpoint picked last, so equal
    endpoints alternate.
    """

    kind = "least_conn"

    def __init__(
        self,
        endpoints: Sequence[EndpointState],
        clock: IReactorTime,
        *,
        panic: bool = False,
    ) -> None:
        super().__init__(endpoints, clock, panic=panic)
        self._next = 0

    def _choose(self, group: List[EndpointState], key: Optional[str]) -> EndpointState:
        start = self._next
        ordered = [ep for ep in group if self._index[ep] >= start]
        ordered += [ep for ep in group if self._index[ep] < start]
        best = ordered[0]
        for ep in ordered[1:]:
            if (ep.in_flight + 1) * best.weight < (best.in_flight + 1) * ep.weight:
                best = ep
        self._next = self._index[best] + 1
        return best


class PeakEWMA(Balancer):
    """
    Peak EWMA of response times, with the power of two choices.

    Each endpoint keeps C{ewma} (seconds) stamped at C{t0}.  Its cost at
    time C{t}, with C{w = exp(-(t - t0) / decay)} and C{decay} 10 seconds,
    is C{ewma * w}: an idle endpoint's cost fades, so it is tried again.  A
    sample C{rtt} (connect + response headers; a failure counts as
    C{max(rtt, failure_penalty)}) at time C{t} sets::

        ewma = rtt                       if rtt > ewma * w   (peak: at once)
        ewma = ewma * w + rtt * (1 - w)  otherwise          (decays down)

    and C{t0 = t}; the first sample sets C{ewma = rtt}.  An endpoint without
    samples costs the mean cost of the candidates that have some (0 when
    none has), so new endpoints are tried without being flooded.  The score
    of a candidate is::

        max(cost, floor) * (in_flight + 1) / weight

    with C{floor} a microsecond, so in-flight requests and weight still
    count when costs are zero.  Two distinct candidates are drawn at random
    and the lower score wins.

    @ivar decay: the time constant, seconds.
    @ivar failure_penalty: the sample a failed request counts as, at least.
    @ivar floor: the least cost a score uses, seconds.
    """

    kind = "ewma"
    decay = 10.0
    failure_penalty = 10.0
    floor = 1e-6

    def __init__(
        self,
        endpoints: Sequence[EndpointState],
        clock: IReactorTime,
        *,
        panic: bool = False,
        rng: Optional[random.Random] = None,
    ) -> None:
        super().__init__(endpoints, clock, panic=panic)
        self._random = rng if rng is not None else random.Random()

    def cost(
        self, endpoint: EndpointState, now: Optional[float] = None
    ) -> Optional[float]:
        """The endpoint's decayed EWMA now, or C{None} before its first sample."""
        if endpoint.ewma is None:
            return None
        if now is None:
            now = self.clock.seconds()
        elapsed = max(0.0, now - endpoint.ewma_stamp)
        return endpoint.ewma * math.exp(-elapsed / self.decay)

    def _choose(self, group: List[EndpointState], key: Optional[str]) -> EndpointState:
        if len(group) == 1:
            return group[0]
        now = self.clock.seconds()
        costs = [self.cost(ep, now) for ep in group]
        known = [c for c in costs if c is not None]
        neutral = sum(known) / len(known) if known else 0.0
        first, second = self._random.sample(range(len(group)), 2)

        def score(i: int) -> float:
            cost = costs[i]
            cost = max(neutral if cost is None else cost, self.floor)
            return cost * (group[i].in_flight + 1) / group[i].weight

        return group[second] if score(second) < score(first) else group[first]

    def on_request_end(
        self, endpoint: EndpointState, elapsed: float, failed: bool
    ) -> None:
        super().on_request_end(endpoint, elapsed, failed)
        rtt = max(0.0, elapsed)
        if failed:
            rtt = max(rtt, self.failure_penalty)
        now = self.clock.seconds()
        if endpoint.ewma is None:
            endpoint.ewma = rtt
        else:
            w = math.exp(-max(0.0, now - endpoint.ewma_stamp) / self.decay)
            decayed = endpoint.ewma * w
            endpoint.ewma = rtt if rtt > decayed else decayed + rtt * (1.0 - w)
        endpoint.ewma_stamp = now


def _hash64(text: str) -> int:
    digest = hashlib.md5(text.encode("utf-8"), usedforsecurity=False).digest()
    return int.from_bytes(digest[:8], "big")


class ConsistentHash(Balancer):
    """
    Consistent hashing of a request key on a ring of virtual nodes.

    Each endpoint with a weight above zero has C{points_per_weight * weight}
    points on the ring, at the first 64 bits of md5(C{"host:port#i"}), so
    the ring is the same in every process and across restarts.  A key goes
    to the first point at or after md5(key) whose endpoint is a candidate:
    when an endpoint becomes unavailable or is excluded, only its keys move
    (each to the next point on the ring), and they come back with it.  The
    ring is rebuilt when a weight changes.  Without a key, L{RoundRobin}.

    @ivar points_per_weight: virtual nodes per unit of weight.
    """

    kind = "chash"
    points_per_weight = 160

    def __init__(
        self,
        endpoints: Sequence[EndpointState],
        clock: IReactorTime,
        *,
        panic: bool = False,
    ) -> None:
        super().__init__(endpoints, clock, panic=panic)
        self._round_robin = RoundRobin(self.endpoints, clock, panic=panic)
        self._weights: Tuple[int, ...] = ()
        self._hashes: List[int] = []
        self._owners: List[EndpointState] = []
        self._points: Dict[EndpointState, List[int]] = {ep: [] for ep in self.endpoints}

    def _ring(self) -> None:
        weights = tuple(ep.weight for ep in self.endpoints)
        if weights == self._weights and self._hashes:
            return
        points = sorted(
            (
                (point, self._index[ep], ep)
                for ep in self.endpoints
                for point in self._endpoint_points(ep)
            ),
            key=lambda point: point[:2],
        )
        self._weights = weights
        self._hashes = [h for h, _, _ in points]
        self._owners = [ep for _, _, ep in points]

    def _endpoint_points(self, endpoint: EndpointState) -> List[int]:
        # Hashed once: a weight change only sorts the ring again.
        known = self._points[endpoint]
        count = self.points_per_weight * endpoint.weight
        for i in range(len(known), count):
            known.append(_hash64(f"{endpoint.host}:{endpoint.port}#{i}"))
        return known[:count]

    def _choose(self, group: List[EndpointState], key: Optional[str]) -> EndpointState:
        if key is None:
            return self._round_robin._choose(group, None)
        self._ring()
        allowed = set(group)
        size = len(self._hashes)
        start = bisect.bisect_left(self._hashes, _hash64(key))
        for step in range(size):
            owner = self._owners[(start + step) % size]
            if owner in allowed:
                return owner
        raise AssertionError("every candidate has points on the ring")


_KINDS = {
    cls.kind: cls for cls in (RoundRobin, LeastConnections, PeakEWMA, ConsistentHash)
}

BALANCER_KINDS: Tuple[str, ...] = tuple(_KINDS)


def make_balancer(
    kind: str,
    endpoints: Sequence[EndpointState],
    clock: IReactorTime,
    *,
    panic: bool = False,
    rng: Optional[random.Random] = None,
) -> Balancer:
    """
    Build the balancer named C{kind} over C{endpoints}.

    @param kind: one of L{BALANCER_KINDS}: C{"roundrobin"}, C{"least_conn"},
        C{"ewma"}, C{"chash"}.
    @param clock: the time source of C{ewma}.
    @param panic: see L{Balancer.panic}.
    @param rng: C{ewma}'s random source (seed it in tests).
    @raise ValueError: for an unknown kind.
    """
    if kind not in _KINDS:
        raise ValueError(
            f"unknown balancer {kind!r}, expected one of {', '.join(BALANCER_KINDS)}"
        )
    if kind == "ewma":
        return PeakEWMA(endpoints, clock, panic=panic, rng=rng)
    return _KINDS[kind](endpoints, clock, panic=panic)
