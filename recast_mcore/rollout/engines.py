"""Imports the built-in engines so they register themselves ("sglang", "torch")."""

from recast_mcore.rollout import sglang_engine, torch_engine  # noqa: F401
