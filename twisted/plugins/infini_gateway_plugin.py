"""The twistd plugin: ``twistd -n infini-gateway --config gateway.yml``."""

from twisted.application.service import ServiceMaker

infiniGateway = ServiceMaker(
    "infini-gateway",
    "infini_gateway.tap",
    "An API gateway: entries, routers, flows and upstreams from gateway.yml.",
    "infini-gateway",
)
