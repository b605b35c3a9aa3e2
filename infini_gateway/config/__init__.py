"""
gateway.yml: loading, validation, and the frozen values it becomes.

    >>> from infini_gateway.config import load_config
    >>> config = load_config("gateway.yml")

Every problem in a file is reported at once, each as C{FILE:LINE: KEY.PATH:
what was expected}, in a L{ConfigError}.
"""

from infini_gateway.config.load import ConfigError, config_from_dict, load_config
from infini_gateway.config.values import parse_binding, parse_duration

__all__ = [
    "ConfigError",
    "config_from_dict",
    "load_config",
    "parse_binding",
    "parse_duration",
]
