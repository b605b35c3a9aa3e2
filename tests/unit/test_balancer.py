"""
The balancers: smooth weighted round robin, least connections, peak EWMA and
consistent hashing, over priority groups, exclusions and health changes.
"""

import math
import random
from collections import Counter

import pytest

from twisted.internet.task import Clock

from infini_gateway.upstream.balancer import (
    BALANCER_KINDS,
    EndpointState,
    PeakEWMA,
    candidates,
    make_balancer,
)


def endpoint(name, weight=1, priority=0, healthy=True, port=80):
    """An endpoint whose host is C{name}, so picks read as names."""
    return EndpointState(
        f"http://{name}:{port}",
        "http",
        name,
        port,
        weight=weight,
        priority=priority,
        healthy=healthy,
    )


def weighted(*weights):
    """Endpoints C{a}, C{b}, C{c}, ... with the given weights."""
    return [endpoint("abcdefgh"[i], w) for i, w in enumerate(weights)]


def names(balancer, count, **kwargs):
    return "".join(balancer.pick(**kwargs).host for _ in range(count))


# Smooth weighted round robin


@pytest.mark.parametrize(
    "weights, sequence",
    [
        ((5, 1, 1), "aabacaa"),
        ((2, 1), "aba"),
        ((3, 2, 1), "abacba"),
        ((1, 1, 1), "abc"),
        ((4, 2, 1), "abacaba"),
        ((3, 0, 1), "aaca"),
    ],
)
def test_roundrobin_exact_smooth_sequence(weights, sequence):
    """nginx's smooth WRR: the largest current weight (first on ties) pays the total."""
    balancer = make_balancer("roundrobin", weighted(*weights), Clock())
    assert names(balancer, len(sequence) * 3) == sequence * 3


def test_roundrobin_long_run_ratios_are_exact_in_every_cycle():
    """Every cycle of sum(weights) picks holds each endpoint exactly weight times."""
    weights = (7, 3, 2, 1)
    balancer = make_balancer("roundrobin", weighted(*weights), Clock())
    for _ in range(100):
        counts = Counter(names(balancer, sum(weights)))
        assert [counts[n] for n in "abcd"] == list(weights)


def test_roundrobin_exclusion_leaves_the_others_smooth():
    """An endpoint excluded on every pick takes no turns: the others run as if alone."""
    eps = weighted(5, 1, 1)
    balancer = make_balancer("roundrobin", eps, Clock())
    alone = make_balancer("roundrobin", [eps[0], eps[2]], Clock())
    excluded = {eps[1]}
    assert names(balancer, 30, exclude=excluded) == names(alone, 30)


def test_roundrobin_retry_never_repeats_the_excluded_endpoint():
    """A retry's pick skips what the request tried; primary picks keep their ratios."""
    eps = weighted(5, 1, 1)
    balancer = make_balancer("roundrobin", eps, Clock())
    counts = Counter()
    for _ in range(700):
        first = balancer.pick()
        counts[first.host] += 1
        assert balancer.pick(exclude={first}) is not first
    assert counts["a"] / 700 == pytest.approx(5 / 7, abs=0.1)
    assert counts["b"] == pytest.approx(counts["c"], abs=5)


def test_roundrobin_availability_changes():
    """An unhealthy endpoint is skipped; the rest keep their ratio; it comes back."""
    eps = weighted(5, 1, 1)
    balancer = make_balancer("roundrobin", eps, Clock())
    names(balancer, 3)
    eps[1].healthy = False
    counts = Counter(names(balancer, 600))
    assert counts["b"] == 0
    assert counts["a"] == pytest.approx(5 * counts["c"], abs=5)
    eps[1].healthy = True
    counts = Counter(names(balancer, 700))
    assert [counts[n] for n in "abc"] == pytest.approx([500, 100, 100], abs=2)


def test_roundrobin_weight_zero_and_weight_changes():
    """Weight 0 is never picked; a new weight takes effect on the next picks."""
    eps = weighted(1, 0, 1)
    balancer = make_balancer("roundrobin", eps, Clock())
    assert "b" not in names(balancer, 50)
    eps[1].weight = 5
    counts = Counter(names(balancer, 700))
    assert [counts[n] for n in "abc"] == pytest.approx([100, 500, 100], abs=2)
    eps[1].weight = 0
    assert "b" not in names(balancer, 50)


def test_negative_weight_is_rejected():
    with pytest.raises(ValueError):
        endpoint("a", weight=-1)


# Least connections


def test_least_conn_prefers_fewer_in_flight_relative_to_weight():
    """Score (in_flight + 1) / weight: 3/2 beats 2/1, loses to 1/1."""
    a, b = endpoint("a", weight=2), endpoint("b", weight=1)
    balancer = make_balancer("least_conn", [a, b], Clock())
    a.in_flight, b.in_flight = 2, 1
    assert balancer.pick() is a
    b.in_flight = 0
    assert balancer.pick() is b


def test_least_conn_ties_alternate():
    """Equal endpoints alternate, sequential requests or not."""
    eps = weighted(1, 1, 1)
    balancer = make_balancer("least_conn", eps, Clock())
    seen = []
    for _ in range(6):
        ep = balancer.pick()
        balancer.on_request_start(ep)
        balancer.on_request_end(ep, 0.01, False)
        seen.append(ep.host)
    assert "".join(seen) == "abcabc"
    held = []
    for _ in range(6):
        ep = balancer.pick()
        balancer.on_request_start(ep)
        held.append(ep.host)
    assert sorted(Counter(held).values()) == [2, 2, 2]


def test_least_conn_held_connections_follow_weights():
    """With requests held open, in-flight counts end proportional to weights."""
    eps = weighted(3, 1)
    balancer = make_balancer("least_conn", eps, Clock())
    for _ in range(40):
        balancer.on_request_start(balancer.pick())
    assert [ep.in_flight for ep in eps] == [30, 10]


def test_in_flight_never_goes_negative():
    ep = endpoint("a")
    balancer = make_balancer("least_conn", [ep], Clock())
    balancer.on_request_end(ep, 0.1, False)
    assert ep.in_flight == 0


# Peak EWMA


def simulate(balancer, clock, latency, steps, step=0.1, hold=1):
    """
    Send C{steps} requests, C{step} seconds apart, each ending C{latency(ep)}
    later (at most C{hold} in flight); return the hosts picked.
    """
    picked, pending = [], []
    for _ in range(steps):
        clock.advance(step)
        ep = balancer.pick()
        balancer.on_request_start(ep)
        picked.append(ep.host)
        pending.append(ep)
        if len(pending) >= hold:
            done = pending.pop(0)
            balancer.on_request_end(done, latency(done), False)
    return picked


def test_ewma_formula():
    """The first sample as is, a higher one at once, a lower one at rate exp(-dt/10)."""
    clock = Clock()
    ep = endpoint("a")
    balancer = make_balancer("ewma", [ep], clock)
    balancer.on_request_end(ep, 0.2, False)
    assert ep.ewma == 0.2
    clock.advance(10)
    assert balancer.cost(ep) == pytest.approx(0.2 / math.e)
    balancer.on_request_end(ep, 0.05, False)
    w = math.exp(-1)
    assert ep.ewma == pytest.approx(0.2 * w + 0.05 * (1 - w))
    clock.advance(1)
    balancer.on_request_end(ep, 1.0, False)
    assert ep.ewma == 1.0
    balancer.on_request_end(ep, 0.001, True)
    assert ep.ewma == PeakEWMA.failure_penalty


def test_ewma_shifts_load_from_a_slow_endpoint_and_recovers():
    """A slow endpoint gets almost nothing; once fast again, its share returns."""
    clock = Clock()
    eps = weighted(1, 1, 1)
    balancer = make_balancer("ewma", eps, clock, rng=random.Random(7))
    slow = {"b": 0.5}

    def latency(ep):
        return slow.get(ep.host, 0.01)

    picked = Counter(simulate(balancer, clock, latency, 1000))
    assert picked["b"] < 30
    assert picked["a"] + picked["c"] > 970
    slow.clear()
    picked = simulate(balancer, clock, latency, 1500)
    share = Counter(picked[-500:])["b"] / 500
    assert 0.2 < share < 0.5


def test_ewma_failure_is_a_large_penalty():
    clock = Clock()
    eps = weighted(1, 1)
    balancer = make_balancer("ewma", eps, clock, rng=random.Random(1))
    balancer.on_request_end(eps[0], 0.01, False)
    balancer.on_request_end(eps[1], 0.01, False)
    balancer.on_request_end(eps[1], 0.01, True)
    clock.advance(1)
    assert names(balancer, 20) == "a" * 20


def test_ewma_new_endpoint_is_tried():
    """Without samples an endpoint costs the candidates' mean: it beats slower ones."""
    clock = Clock()
    a, b, c = eps = weighted(1, 1, 1)
    balancer = make_balancer("ewma", eps, clock, rng=random.Random(3))
    balancer.on_request_end(a, 0.05, False)
    balancer.on_request_end(b, 0.01, False)
    picked = Counter(names(balancer, 60))
    assert picked["a"] == 0
    assert picked["c"] > 10


def test_ewma_honours_weights():
    """Equal latencies: the endpoint of weight 3 takes most of the concurrent load."""
    clock = Clock()
    eps = weighted(3, 1)
    balancer = make_balancer("ewma", eps, clock, rng=random.Random(5))
    picked = simulate(balancer, clock, lambda ep: 0.02, 2000, step=0.01, hold=8)
    picked = Counter(picked)
    assert picked["a"] / 2000 > 0.65


def test_ewma_is_deterministic_with_a_seeded_random():
    def run():
        clock = Clock()
        eps = weighted(1, 1, 1, 1)
        balancer = make_balancer("ewma", eps, clock, rng=random.Random(11))
        return simulate(balancer, clock, lambda ep: 0.01 * len(ep.host), 200, hold=3)

    assert run() == run()


# Consistent hashing


def ring_endpoints(count=5, weights=None):
    weights = weights or [1] * count
    return [
        EndpointState.from_url(f"http://10.0.0.{i}:{9000 + i}", weight=w)
        for i, w in enumerate(weights)
    ]


KEYS = [f"user-{i}" for i in range(1000)]


def owners(balancer, keys=KEYS, **kwargs):
    return {key: balancer.pick(key=key, **kwargs) for key in keys}


def test_chash_is_stable_and_the_same_in_every_process():
    """The ring hashes host:port#i with md5: a new balancer maps keys identically."""
    eps = ring_endpoints()
    first = owners(make_balancer("chash", eps, Clock()))
    assert owners(make_balancer("chash", eps, Clock())) == first
    again = make_balancer("chash", ring_endpoints(), Clock())
    assert {k: v.host for k, v in owners(again).items()} == {
        k: v.host for k, v in first.items()
    }
    assert len(set(first.values())) == 5


def test_chash_moves_only_the_keys_of_an_unhealthy_endpoint_and_brings_them_back():
    eps = ring_endpoints()
    balancer = make_balancer("chash", eps, Clock())
    before = owners(balancer)
    down = eps[2]
    down.healthy = False
    during = owners(balancer)
    moved = {k for k in KEYS if during[k] is not before[k]}
    assert moved == {k for k in KEYS if before[k] is down}
    assert len(moved) > 100
    assert len({during[k] for k in moved}) > 1
    down.healthy = True
    assert owners(balancer) == before


def test_chash_exclusion_walks_the_ring():
    """Excluding a key's endpoint gives the endpoint it would get were that one down."""
    eps = ring_endpoints()
    balancer = make_balancer("chash", eps, Clock())
    for key in KEYS[:100]:
        owner = balancer.pick(key=key)
        retry = balancer.pick(key=key, exclude={owner})
        owner.healthy = False
        assert retry is not owner
        assert balancer.pick(key=key) is retry
        owner.healthy = True


def test_chash_weights_and_weight_changes():
    """Points grow with weight; a drained endpoint's keys move, and only those."""
    eps = ring_endpoints(3, [2, 1, 1])
    balancer = make_balancer("chash", eps, Clock())
    keys = [f"k{i}" for i in range(4000)]
    before = owners(balancer, keys)
    counts = Counter(before.values())
    assert 1.5 < counts[eps[0]] / counts[eps[1]] < 2.5
    eps[0].weight = 0
    after = owners(balancer, keys)
    assert all(after[k] is before[k] for k in keys if before[k] is not eps[0])
    assert eps[0] not in after.values()


def test_chash_without_key_is_round_robin():
    balancer = make_balancer("chash", weighted(2, 1), Clock())
    assert names(balancer, 6) == "abaaba"


# Shared: priority groups, nothing left, panic, the factory


@pytest.mark.parametrize("kind", BALANCER_KINDS)
def test_priority_groups(kind):
    """A lower group serves only when all the higher one is unavailable or excluded."""
    a, b = endpoint("a", priority=10), endpoint("b", priority=10)
    c, d = endpoint("c", priority=0), endpoint("d", priority=-5)
    balancer = make_balancer(kind, [c, a, d, b], Clock(), rng=random.Random(2))
    for i in range(20):
        assert balancer.pick(key=f"k{i}").host in "ab"
    a.healthy = False
    assert {balancer.pick(key=f"k{i}") for i in range(20)} == {b}
    assert balancer.pick(key="k", exclude={b}) is c
    b.weight = 0
    assert balancer.pick(key="k") is c
    c.healthy = False
    assert balancer.pick(key="k") is d
    a.healthy = True
    assert balancer.pick(key="k", exclude={b}) is a


@pytest.mark.parametrize("kind", BALANCER_KINDS)
def test_pick_returns_none_when_nothing_is_left(kind):
    eps = weighted(1, 1, 0)
    balancer = make_balancer(kind, eps, Clock())
    assert balancer.pick(key="k", exclude=set(eps[:2])) is None
    eps[0].healthy = eps[1].healthy = False
    assert balancer.pick(key="k") is None
    assert make_balancer(kind, [], Clock()).pick(key="k") is None


@pytest.mark.parametrize("kind", BALANCER_KINDS)
def test_panic_balances_over_unhealthy_endpoints(kind):
    """Panic: with no healthy endpoint left, unhealthy ones serve; drained ones not."""
    eps = weighted(1, 1, 0)
    for ep in eps:
        ep.healthy = False
    assert make_balancer(kind, eps, Clock()).pick(key="k") is None
    balancer = make_balancer(kind, eps, Clock(), panic=True)
    assert {balancer.pick(key=f"k{i}").host for i in range(20)} <= {"a", "b"}
    assert balancer.pick(key="k", exclude=set(eps[:2])) is None
    plain = make_balancer(kind, eps, Clock())
    assert plain.pick(key="k", include_unhealthy=True).host in "ab"


def test_candidates_keep_configured_order():
    eps = [endpoint("a", priority=1), endpoint("b"), endpoint("c", priority=1)]
    assert candidates(eps) == [eps[0], eps[2]]
    assert candidates(eps, {eps[0], eps[2]}) == [eps[1]]


def test_make_balancer_rejects_unknown_kinds():
    with pytest.raises(ValueError, match="unknown balancer 'random'"):
        make_balancer("random", [], Clock())


def test_endpoint_from_url():
    ep = EndpointState.from_url("https://[::1]:8443", weight=3, priority=2)
    assert (ep.scheme, ep.host, ep.port) == ("https", "::1", 8443)
    assert (ep.weight, ep.priority) == (3, 2)
    assert EndpointState.from_url("http://example.com").port == 80
    with pytest.raises(ValueError):
        EndpointState.from_url("ftp://example.com")


@pytest.mark.parametrize("kind", BALANCER_KINDS)
def test_never_picks_an_excluded_or_unavailable_endpoint(kind):
    """Random endpoints, health, weights, priorities, exclusions and traffic."""
    rng = random.Random(20240601)
    clock = Clock()
    for _ in range(150):
        eps = [
            endpoint(
                f"e{i}",
                weight=rng.choice([0, 1, 1, 2, 5]),
                priority=rng.choice([0, 1, 2]),
            )
            for i in range(rng.randint(1, 6))
        ]
        balancer = make_balancer(kind, eps, clock, rng=random.Random(rng.random()))
        for _ in range(20):
            for ep in eps:
                if rng.random() < 0.2:
                    ep.healthy = not ep.healthy
                if rng.random() < 0.1:
                    ep.weight = rng.choice([0, 1, 3])
            exclude = {ep for ep in eps if rng.random() < 0.3}
            key = rng.choice([None, "x", str(rng.random())])
            picked = balancer.pick(key=key, exclude=exclude)
            usable = [ep for ep in eps if ep.available and ep not in exclude]
            if not usable:
                assert picked is None
                continue
            assert picked is not None and picked.available and picked not in exclude
            assert picked.priority == max(ep.priority for ep in usable)
            balancer.on_request_start(picked)
            clock.advance(rng.random())
            balancer.on_request_end(picked, rng.random(), rng.random() < 0.1)
