"""
Upstreams: endpoints, balancers, retries, timeouts and the connection pool.

  - L{upstreams}: L{Upstream} (endpoints, balancer, client) and
    L{UpstreamSet}, every upstream of a gateway by name;
  - L{balancer}: the endpoints' run-time state and the balancers;
  - L{pool}: connection pools, Agents, endpoints with timeouts and TLS;
  - L{proxy}: L{forward}, the engine of the proxy, http and elasticsearch
    filters, with L{headers}, L{streams}, L{tunnel} and L{failures}.
"""

from infini_gateway.upstream.proxy import forward
from infini_gateway.upstream.upstreams import Upstream, UpstreamSet

__all__ = ["Upstream", "UpstreamSet", "forward"]
