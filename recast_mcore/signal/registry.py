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
from recast_mcore.utils.registry import Registry

BuilderFn = Callable[[SignalInputs, Any], UpdateBatch]

BUILDERS: Registry[BuilderFn] = Registry("signal builder")
register_builder = BUILDERS.register
get_builder = BUILDERS.get


def build_update_batch(inputs: SignalInputs, cfg: SignalConfig) -> UpdateBatch:
    """Validate the inputs, run the configured builder with its sub-config, validate the batch."""
    builder = get_builder(cfg.builder)
    sub_cfg = getattr(cfg, cfg.builder)
    sub_cfg.validate()
    inputs.validate()
    batch = builder(inputs, sub_cfg)
    batch.validate()
    return batch
