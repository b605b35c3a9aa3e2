"""
The state of an upstream's endpoints as plain data, for the admin API:
JSON-serialisable dicts, made fresh on each call.

One upstream::

    {"name": "api", "balancer": "ewma", "active_checks": true,
     "passive_checks": true, "panic_threshold": 0.0, "panic": false,
     "healthy": 2, "total": 3, "endpoints": [ENDPOINT, ...]}

One endpoint (C{active} is null without active checks, C{passive} without
passive ones; times are the clock's seconds)::

    {"url": "http://10.0.0.1:80", "weight": 1, "priority": 0,
     "state": "healthy" | "unhealthy" | "ejected", "available": true,
     "in_flight": 0, "ewma": 0.012 | null,
     "active": {"healthy": true, "successes": 2, "http_failures": 0,
                "tcp_failures": 0, "timeouts": 0,
                "last_probe": {"at": ..., "result": "success", "reason": "status 200"}},
     "passive": {"consecutive_5xx": 0, "consecutive_gateway_failure": 0,
                 "consecutive_timeouts": 0, "ejected": false, "ejected_until": null,
                 "ejection_remaining": null, "times_ejected": 0},
     "last_change": {"at": ..., "state": "healthy", "reason": "..."} | null}
"""

from typing import Any, Dict, Optional


def upstream_state(upstream: Any, balancer: Any = None) -> Dict[str, Any]:
    """
    The state of C{upstream}, an L{UpstreamHealth}; with its C{balancer},
    the EWMA cost is the peak EWMA balancer's decayed cost now (else the
    last EWMA sample, if any).
    """
    clock = upstream.clock
    now = clock.seconds() if clock is not None else None
    endpoints = [_endpoint_state(upstream, health, balancer, now) for health in upstream.endpoints]
    return {
        "name": upstream.name,
        "balancer": getattr(balancer, "kind", None),
        "active_checks": upstream.active is not None,
        "passive_checks": upstream.passive is not None,
        "panic_threshold": upstream.panic_threshold,
        "panic": upstream.panicking(),
        "healthy": sum(1 for h in upstream.endpoints if h.endpoint.healthy),
        "total": len(upstream.endpoints),
        "endpoints": endpoints,
    }


def _endpoint_state(
    upstream: Any, health: Any, balancer: Any, now: Optional[float]
) -> Dict[str, Any]:
    ep = health.endpoint
    ewma = ep.ewma
    cost = getattr(balancer, "cost", None)
    if cost is not None and now is not None:
        ewma = cost(ep, now)
    item: Dict[str, Any] = {
        "url": ep.url,
        "weight": ep.weight,
        "priority": ep.priority,
        "state": health.state,
        "available": ep.available,
        "in_flight": ep.in_flight,
        "ewma": ewma,
        "active": None,
        "passive": None,
        "last_change": dict(health.last_change) if health.last_change else None,
    }
    if upstream.active is not None:
        item["active"] = {
            "healthy": health.active_healthy,
            "successes": health.successes,
            "http_failures": health.http_failures,
            "tcp_failures": health.tcp_failures,
            "timeouts": health.timeouts,
            "last_probe": dict(health.last_probe) if health.last_probe else None,
        }
    if upstream.passive is not None:
        remaining = None
        if health.ejected_until is not None and now is not None:
            remaining = max(0.0, health.ejected_until - now)
        item["passive"] = {
            "consecutive_5xx": health.consecutive_5xx,
            "consecutive_gateway_failure": health.consecutive_gateway_failure,
            "consecutive_timeouts": health.consecutive_timeouts,
            "ejected": health.ejected,
            "ejected_until": health.ejected_until,
            "ejection_remaining": remaining,
            "times_ejected": health.times_ejected,
        }
    return item
