"""Megatron-Core actor. Kept light: importing this package does not import megatron.

Public API (see docs/actor.md and docs/contracts.md)::

    from recast_mcore.actor import initialize_distributed, destroy_distributed, MegatronActor
"""

from __future__ import annotations

from typing import Any

__all__ = ["MegatronActor", "initialize_distributed", "destroy_distributed"]


def __getattr__(name: str) -> Any:
    if name == "MegatronActor":
        from recast_mcore.actor.actor import MegatronActor

        return MegatronActor
    if name in ("initialize_distributed", "destroy_distributed"):
        from recast_mcore.actor import parallel

        return getattr(parallel, name)
    raise AttributeError(f"module 'recast_mcore.actor' has no attribute '{name}'")
