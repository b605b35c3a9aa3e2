"""
C{proxy}: forward the request to a named upstream of the C{upstream:}
section and stream its answer back.

C{upstream} names the upstream; C{timeout} (C{connect}, C{send}, C{read})
overrides its timeouts for this filter.  Failures are answered 502, 503 or
504 with a JSON body naming the upstream and the reason (see README,
"Upstreams").
"""

from infini_gateway.config.upstreams import override_timeouts, timeout_schema
from infini_gateway.filters import Filter, register
from infini_gateway.upstream.proxy import forward


@register
class Proxy(Filter):
    name = "proxy"
    schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["upstream"],
        "properties": {
            "upstream": {
                "description": "The name of an upstream of the upstream section.",
                "type": "string",
                "minLength": 1,
            },
            "timeout": timeout_schema(),
        },
    }

    def __init__(self, params, runtime):
        super().__init__(params, runtime)
        name = params["upstream"]
        upstreams = runtime.upstreams
        if name not in upstreams:
            raise ValueError(f"no upstream named {name!r}")
        self.upstream = upstreams[name]
        self.timeouts = override_timeouts(self.upstream.config.timeout, params.get("timeout"))

    def filter(self, ctx):
        return forward(ctx, self.upstream, self.timeouts)
