"""How a training step's candidate groups are produced: ``rollout.mode`` = ``sample`` | ``beam``.

- ``sample``: ``engine.generate``: G = ``sampling.group_size`` items sampled per prompt from the constrained
  policy (temperature / top-k / top-p), with their constrained per-token log-probs.
- ``beam``: ``engine.beam_search(prompts, rollout.beam_width)`` (exact constrained beam search, as in
  OpenOneRec-RL, which rolls out 32 beams per prompt); the group is the top G = ``sampling.group_size`` beams
  (``beam_width >= G``), their per-token constrained log-probs are the old log-probs. Beams of one prompt are
  distinct items, deterministic for fixed weights. The rollout budget counts every beam the search carried to
  a full item: ``num_sampled = B * K`` with K = beams returned per prompt (``beam_width`` unless the catalog is
  smaller), so a wider search costs more budget even when only the top G enter the group.
Both return ``RolloutGroups``, so the signal builders, dynamic sampling and the trainer work with either mode.
"""

from __future__ import annotations

from typing import Any

from recast_mcore.config.rollout import RolloutConfig, SamplingConfig
from recast_mcore.rollout.types import BeamResults, RolloutGroups


def roll_out(engine: Any, prompt_ids: list[list[int]], targets: list[list[int]],
             cfg: RolloutConfig | SamplingConfig) -> RolloutGroups:
    """Candidate groups for ``prompt_ids`` in ``cfg.mode`` (a bare ``SamplingConfig`` means ``sample``)."""
    if isinstance(cfg, SamplingConfig) or cfg.mode == "sample":
        sampling = cfg if isinstance(cfg, SamplingConfig) else cfg.sampling
        return engine.generate(prompt_ids, targets, sampling)
    if cfg.mode != "beam":
        raise ValueError(f"rollout.mode must be 'sample' or 'beam', got {cfg.mode!r}")
    if len(targets) != len(prompt_ids):
        raise ValueError(f"{len(targets)} target lists for {len(prompt_ids)} prompts")
    return beam_groups(engine.beam_search(prompt_ids, cfg.beam_width), targets, cfg.sampling.group_size)


def beam_groups(result: BeamResults, targets: list[list[int]], group_size: int) -> RolloutGroups:
    """The top ``group_size`` beams of every prompt as a ``RolloutGroups`` (budget: every returned beam)."""
    b, k, _ = result.responses.shape
    if k < group_size:
        raise ValueError(f"beam search returned {k} beams per prompt, fewer than sampling.group_size={group_size} "
                         "(the catalog has fewer items than the group, or rollout.beam_width < group_size)")
    groups = RolloutGroups(
        prompt_ids=[list(p) for p in result.prompt_ids], responses=result.responses[:, :group_size].contiguous(),
        token_logprobs=result.token_logprobs[:, :group_size].contiguous(),
        item_ids=result.item_ids[:, :group_size].contiguous(), targets=[list(t) for t in targets],
        policy_version=result.policy_version, num_sampled=b * k,
    )
    groups.validate()
    return groups
