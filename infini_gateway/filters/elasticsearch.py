"""
C{elasticsearch}: forward the request to a cluster of the C{elasticsearch:}
section, INFINI Gateway's filter of that name.

C{elasticsearch} names the cluster; its endpoints form an upstream sharing
the engine of the C{proxy} filter, and its C{basic_auth} is sent as the
Authorization header.  C{max_retry_times}, C{dial_timeout},
C{write_timeout} and C{read_timeout} override the cluster's settings for
this filter.
"""

from infini_gateway.config.upstreams import infini_client_properties, infini_timeouts
from infini_gateway.filters import Filter, register
from infini_gateway.upstream.proxy import forward


@register
class Elasticsearch(Filter):
    name = "elasticsearch"
    schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["elasticsearch"],
        "properties": {
            "elasticsearch": {
                "description": "The name of a cluster of the elasticsearch section.",
                "type": "string",
                "minLength": 1,
            },
            **infini_client_properties(),
        },
    }

    def __init__(self, params, runtime):
        super().__init__(params, runtime)
        name = params["elasticsearch"]
        try:
            self.upstream = runtime.upstreams.cluster(name)
        except KeyError:
            raise ValueError(f"no enabled elasticsearch cluster named {name!r}") from None
        self.timeouts = infini_timeouts(params, self.upstream.config.timeout)
        self.retries = params.get("max_retry_times")

    def filter(self, ctx):
        return forward(ctx, self.upstream, self.timeouts, self.retries)
