"""Typed configuration: schema, loading, ``--set`` overrides and validation."""

from fedsplit.config.errors import ConfigError
from fedsplit.config.loader import config_from_dict, config_to_dict, dump_config, load_config, parse_override
from fedsplit.config.schema import RunConfig, iter_fields

__all__ = ["ConfigError", "RunConfig", "config_from_dict", "config_to_dict", "dump_config", "iter_fields", "load_config", "parse_override"]
