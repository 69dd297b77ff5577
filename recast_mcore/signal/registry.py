"""Signal-builder registry: ONE signature for every builder.

    builder(inputs: SignalInputs, cfg: <its sub-config>) -> UpdateBatch

``build_update_batch`` picks the builder named ``SignalConfig.builder`` and passes it its section
(``SignalConfig.grpo`` for ``grpo`` and ``grpo_gt``, ``SignalConfig.recast`` for ``recast``). Then it
attaches the SHARED loss settings, so readings one ``builder=`` override apart differ in nothing else:
``signal.ppo`` becomes the ``loss_params`` of every ``ppo_clip`` batch (builders leave them None), and
``signal.kl`` (when ``use_kl``) becomes every batch's ``kl``.
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

CONFIG_SECTION = {"grpo_gt": "grpo"}
"""Builders that read another builder's section of ``SignalConfig`` (default: the section of their own name)."""


def builder_config(cfg: SignalConfig) -> Any:
    """The sub-config the configured builder receives."""
    return getattr(cfg, CONFIG_SECTION.get(cfg.builder, cfg.builder))


def build_update_batch(inputs: SignalInputs, cfg: SignalConfig) -> UpdateBatch:
    """Validate the inputs, run the configured builder with its sub-config, attach the shared loss
    settings (``signal.ppo``, ``signal.kl``), validate the batch."""
    builder = get_builder(cfg.builder)
    sub_cfg = builder_config(cfg)
    cfg.validate()
    sub_cfg.validate()
    inputs.validate()
    batch = builder(inputs, sub_cfg)
    if batch.loss_name == "ppo_clip" and batch.loss_params is None:
        batch.loss_params = cfg.ppo
    batch.kl = cfg.kl if cfg.kl.use_kl else None
    batch.validate()
    return batch
