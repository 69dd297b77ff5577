"""The rollout engine on rank 0 and how the actor's weights reach it.

- ``torch`` engine: runs the actor's own model in process (``actor.logits_fn``); a sync only bumps the
  version. It needs tensor_parallel = pipeline_parallel = 1 (rank 0 then holds a full replica).
- ``sglang`` engine: starts from an exported Hugging Face directory of the current weights; every sync
  gathers the full state dict (a collective: all ranks call ``push_weights``), maps it to the HF layout
  on rank 0 (checkpoint/hf_mapping.py) and hands it to the engine (disk or tensor transport).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from recast_mcore.checkpoint.hf_mapping import export_hf_dir, mcore_to_hf
from recast_mcore.config.actor import ModelConfig
from recast_mcore.config.rollout import RolloutConfig
from recast_mcore.data.tokens import ItemVocab
from recast_mcore.rollout.base import EngineResources, RolloutEngine, build_rollout_engine
from recast_mcore.rollout.catalog import ItemCatalog
from recast_mcore.utils.dist import is_rank0


def gather_hf_weights(actor: Any, model_cfg: ModelConfig, vocab_size: int) -> dict[str, torch.Tensor] | None:
    """Collective: the HF-layout full state dict on rank 0, None elsewhere."""
    full = actor.full_state_dict()
    if not is_rank0():
        return None
    return mcore_to_hf(full, model_cfg, vocab_size)


def build_engine(
    rollout_cfg: RolloutConfig, model_cfg: ModelConfig, vocab: ItemVocab, actor: Any, version: int, work_dir: Path,
    tokenizer_dir: str = "",
) -> RolloutEngine | None:
    """Collective (all ranks call it); returns the engine on rank 0 and None on the other ranks.

    ``tokenizer_dir``: the expanded tokenizer of an imported LLM (data.prompt.tokenizer_dir); SGLang then
    serves the model with that tokenizer (else the item-only WordLevel tokenizer is written)."""
    catalog = ItemCatalog.from_vocab(vocab)
    if rollout_cfg.engine == "torch":
        if not is_rank0():
            return None
        return build_rollout_engine(rollout_cfg, EngineResources(catalog=catalog, logits_fn=actor.logits_fn, initial_version=version))
    hf = gather_hf_weights(actor, model_cfg, vocab.vocab_size)
    if not is_rank0():
        return None
    model_dir = export_hf_dir(
        work_dir / "hf_initial", hf, model_cfg, None if tokenizer_dir else vocab.token_strings,
        pad_id=vocab.pad_id, bos_id=vocab.bos_id, eos_id=vocab.eos_id, tokenizer_dir=tokenizer_dir or None,
    )
    return build_rollout_engine(rollout_cfg, EngineResources(catalog=catalog, model_dir=str(model_dir), initial_version=version))


def push_weights(engine: RolloutEngine | None, rollout_cfg: RolloutConfig, actor: Any, model_cfg: ModelConfig,
                 vocab_size: int, version: int) -> None:
    """Collective: make the engine serve the actor's current weights as ``version``."""
    if rollout_cfg.engine == "torch":
        if engine is not None:
            engine.update_weights(None, version)
        return
    hf = gather_hf_weights(actor, model_cfg, vocab_size)
    if engine is not None:
        engine.update_weights(hf, version)


def reseed_engine(engine: RolloutEngine, seed: int) -> None:
    """Make the engine's sampling for this step a function of ``seed`` (resume reproducibility).

    The in-process torch engine samples from ``engine.generator``; an engine with a ``reseed(seed)``
    method is asked directly. SGLang servers are not seeded per request: their rollouts do not replay
    after a resume (documented in docs/training.md).
    """
    reseed = getattr(engine, "reseed", None)
    if callable(reseed):
        reseed(seed)
    elif isinstance(getattr(engine, "generator", None), torch.Generator):
        engine.generator.manual_seed(seed)
