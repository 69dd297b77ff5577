"""Imports the built-in engines so they register themselves ("sglang", "torch", "torch_kv")."""

from recast_mcore.rollout import kv_engine, sglang_engine, torch_engine  # noqa: F401
