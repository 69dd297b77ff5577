"""Typed, strict configuration."""

from recast_mcore.config.base import ConfigError, load_config, save_config, to_dict

__all__ = ["ConfigError", "load_config", "save_config", "to_dict"]
