"""Typed run configuration and its YAML loader."""

from flowdppo.config.load import config_to_dict, dump_config, load_config, parse_override
from flowdppo.config.schema import ConfigError, RunConfig

__all__ = [
    "ConfigError",
    "RunConfig",
    "config_to_dict",
    "dump_config",
    "load_config",
    "parse_override",
]
