"""
Health checks of upstream endpoints: active probes, passive outlier
ejection, the panic threshold, and their state as plain data.

  - L{state}: the state machine, without I/O: L{UpstreamHealth} (one per
    upstream, owned by its L{infini_gateway.upstream.Upstream}) fed probe
    results and request outcomes with a clock;
  - L{report}: that state as plain data, for the admin API;
  - L{active}: the probes (L{Prober}), the TimerService of each upstream
    (L{HealthChecker}) and the service holding them all (L{HealthService}).
"""

from infini_gateway.upstream.health.active import HealthChecker, HealthService, Prober
from infini_gateway.upstream.health.state import (
    EndpointHealth,
    ProbeResult,
    UpstreamHealth,
)

__all__ = [
    "EndpointHealth",
    "HealthChecker",
    "HealthService",
    "ProbeResult",
    "Prober",
    "UpstreamHealth",
]
