"""
C{intentions}: let a request on only when its client's identity is allowed,
as Consul's service intentions do for a terminating gateway.

C{rules} is an ordered list of C{{source, action}} (C{allow} or C{deny}),
C{default} the action for identities no rule matches (default C{deny}).
The identity is the client certificate's URI SAN, else DNS SAN, else CN,
on an entry with C{tls.client_ca_file}; a client without a certificate is
C{anonymous}.  A C{source} is an identity or a glob: C{*} is any run of
characters other than C{/}, C{**} any run at all.  A denied request gets
C{403} with a JSON body naming the identity and the rule, and the flow
stops.
"""

from infini_gateway.filters import Filter, register
from infini_gateway.intentions import (
    IntentionRules,
    intentions_from_params,
    intentions_schema,
)


@register
class IntentionsFilter(Filter):
    name = "intentions"
    schema = intentions_schema()

    def __init__(self, params, runtime):
        super().__init__(params, runtime)
        self.rules = IntentionRules(intentions_from_params(params))

    def filter(self, ctx):
        decision = self.rules.decide(ctx.client_identity)
        if not decision.allowed:
            document = decision.document()
            document.update(filter=self.name, flow=ctx.flow)
            ctx.answer_json(403, document)
