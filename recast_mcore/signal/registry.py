"""Signal-builder registry: ONE signature for every builder.

    builder(inputs: SignalInputs, cfg: <its sub-config>) -> UpdateBatch

``build_update_batch`` picks the builder named ``SignalConfig.builder`` and passes it the
sub-config of the same name (``SignalConfig.grpo``, ``SignalConfig.recast``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from recast_mcore.config.signal import SignalConfig
from recast_mcore.signal.batch import UpdateBatch
from recast_mcore.signal.inputs import SignalInputs

BuilderFn = Callable[[SignalInputs, Any], UpdateBatch]

BUILDERS: dict[str, BuilderFn] = {}


def register_builder(name: str) -> Callable[[BuilderFn], BuilderFn]:
    """Decorator adding a builder under ``name``; a duplicate name raises."""

    def add(fn: BuilderFn) -> BuilderFn:
        if name in BUILDERS:
            raise ValueError(f"signal builder '{name}' is already registered")
        BUILDERS[name] = fn
        return fn

    return add


def get_builder(name: str) -> BuilderFn:
    """The registered builder ``name``; an unknown name raises listing the valid ones."""
    if name not in BUILDERS:
        raise KeyError(f"unknown signal builder '{name}'; valid: {', '.join(sorted(BUILDERS))}")
    return BUILDERS[name]


def build_update_batch(inputs: SignalInputs, cfg: SignalConfig) -> UpdateBatch:
    """Validate the inputs, run the configured builder with its sub-config, validate the batch."""
    builder = get_builder(cfg.builder)
    sub_cfg = getattr(cfg, cfg.builder)
    sub_cfg.validate()
    inputs.validate()
    batch = builder(inputs, sub_cfg)
    batch.validate()
    return batch
