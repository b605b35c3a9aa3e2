"""
infini-gateway: an API gateway on Twisted.

The public surface for embedding and testing::

    from infini_gateway import build_service, build_router, load_config

L{build_service} gives the service tree ``twistd -n infini-gateway`` runs;
L{build_router} gives one configured router as a twisted.web Resource.
"""

from infini_gateway.config import ConfigError, config_from_dict, load_config
from infini_gateway.service import GatewayService, build_router, build_service

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "GatewayService",
    "build_router",
    "build_service",
    "config_from_dict",
    "load_config",
    "__version__",
]
