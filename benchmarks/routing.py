"""
Routing cost against the number of rules.

Builds two routers, with 10 and with 10,000 rules (static paths, {name},
regexps, catch-alls, literal text around variables, several methods, some
rules limited to hosts), then times Router.match over one fixed set of
requests on each.  The requirement: the 10,000-rule router takes at most
twice as long per request as the 10-rule one.

    python benchmarks/routing.py
"""

import datetime
import platform
import sys
import timeit
from pathlib import Path
from typing import List, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from infini_gateway.config.model import RouterConfig, Rule  # noqa: E402
from infini_gateway.flow import Flow  # noqa: E402
from infini_gateway.router import Router  # noqa: E402

# (method, path, host): every request hits a rule present in both routers,
# or misses in both (and so walks as far as it can before the default flow).
REQUESTS: List[Tuple[str, str, str]] = [
    ("GET", "/api/v1/resource0", ""),
    ("POST", "/tenant1/users/42", ""),
    ("GET", "/items2/12345", ""),
    ("DELETE", "/files3/a/b/c.txt", ""),
    ("PUT", "/user4/gordon_admin", ""),
    ("GET", "/svc5/health", "svc5.example.com"),
    ("GET", "/svc5/health", "x.zone5.example.org"),
    ("GET", "/api/v1/resource6", ""),
    ("GET", "/tenant7/users/abc", ""),
    ("GET", "/items8/not-a-number", ""),
    ("GET", "/nowhere/at/all", ""),
    ("GET", "/api/v1/missing", "api.example.com"),
]


def rules(count: int) -> List[Rule]:
    """C{count} rules, six shapes in turn."""
    made = []
    for i in range(count):
        kind = i % 6
        if kind == 0:
            made.append(Rule(("GET",), (f"/api/v1/resource{i}",), ("f",)))
        elif kind == 1:
            made.append(Rule(("GET", "POST"), (f"/tenant{i}/users/{{id}}",), ("f",)))
        elif kind == 2:
            made.append(Rule(("GET",), (f"/items{i}/{{id:[0-9]+}}",), ("f",)))
        elif kind == 3:
            made.append(Rule(("*",), (f"/files{i}/{{path:*}}",), ("f",)))
        elif kind == 4:
            made.append(Rule(("PUT", "PATCH"), (f"/user{i}/{{name}}_admin",), ("f",)))
        else:
            made.append(
                Rule(
                    ("GET",),
                    (f"/svc{i}/health",),
                    ("f",),
                    hosts=(f"svc{i}.example.com", f"*.zone{i}.example.org"),
                )
            )
    return made


def build(count: int) -> Router:
    flows = {"f": Flow("f", []), "default": Flow("default", [])}
    config = RouterConfig(name="bench", rules=tuple(rules(count)), default_flow="default")
    return Router(config, flows, reactor=None)


def per_request(router: Router, number: int = 2000, repeat: int = 7) -> float:
    """Best-of-C{repeat} seconds per request over L{REQUESTS}."""
    match = router.match

    def run() -> None:
        for method, path, host in REQUESTS:
            match(method, path, host)

    best = min(timeit.repeat(run, number=number, repeat=repeat))
    return best / (number * len(REQUESTS))


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    small, large = build(10), build(10_000)
    # Both routers answer every request the same way (the fixed set only
    # uses rules numbered below 10).
    for method, path, host in REQUESTS:
        a, b = small.match(method, path, host), large.match(method, path, host)
        assert (a.flow.name, a.vars, a.rule) == (b.flow.name, b.vars, b.rule), path
    per_request(small, number=200, repeat=1)  # warm-up (PyPy's JIT)
    per_request(large, number=200, repeat=1)
    t_small, t_large = per_request(small), per_request(large)
    print(f"date:     {datetime.date.today().isoformat()}")
    print(f"machine:  {platform.platform()}; {cpu_model()}")
    print(
        f"python:   {platform.python_implementation()} {platform.python_version()}"
    )
    print(f"requests: {len(REQUESTS)} per round")
    print(f"10 rules:     {t_small * 1e6:.2f} us per match")
    print(f"10000 rules:  {t_large * 1e6:.2f} us per match")
    print(f"ratio:        {t_large / t_small:.2f} (required: <= 2)")


if __name__ == "__main__":
    main()
