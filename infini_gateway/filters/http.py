"""
C{http}: forward the request to the hosts given inline, INFINI Gateway's
filter of that name.

C{schema} (C{http} or C{https}) with C{host} and/or C{hosts}
(C{HOST:PORT}) make an anonymous upstream, balanced round robin and retried
on the other hosts, sharing the engine of the C{proxy} filter.  INFINI's
C{max_retry_times}, C{skip_failure_host}, C{dial_timeout},
C{write_timeout}, C{read_timeout}, C{timeout} (all attempts together),
C{max_idle_conn_duration} and C{tls_insecure_skip_verify} are understood;
unlike INFINI, certificates are verified unless
C{tls_insecure_skip_verify: true}.
"""

from infini_gateway.config.upstreams import http_filter_upstream, infini_client_properties
from infini_gateway.filters import Filter, register
from infini_gateway.upstream.proxy import forward

_DURATION = {"type": ["string", "number"]}


@register
class Http(Filter):
    name = "http"
    schema = {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "schema": {"type": "string", "enum": ["http", "https"]},
            "host": {"description": "HOST:PORT", "type": "string", "minLength": 1},
            "hosts": {
                "description": "HOST:PORT of each host.",
                "type": "array",
                "minItems": 1,
                "items": {"type": "string", "minLength": 1},
            },
            "skip_failure_host": {
                "description": "Try another host after a failure (default true).",
                "type": "boolean",
            },
            "timeout": dict(_DURATION, description="Deadline of all attempts."),
            "max_idle_conn_duration": dict(
                _DURATION, description="Idle connections close after (default 60s)."
            ),
            "tls_insecure_skip_verify": {
                "description": "Do not verify https hosts (default false).",
                "type": "boolean",
            },
            **infini_client_properties(),
        },
    }

    def __init__(self, params, runtime):
        super().__init__(params, runtime)
        if "host" not in params and "hosts" not in params:
            raise ValueError("expected host or hosts (HOST:PORT)")
        self.upstream = runtime.upstreams.anonymous(http_filter_upstream(params))

    def filter(self, ctx):
        return forward(ctx, self.upstream)
