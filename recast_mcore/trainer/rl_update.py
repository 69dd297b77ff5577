"""The actor side of an RL step, on every rank after the UpdateBatch broadcast (verl's update_policy):

    start of the RL stage: fresh RL optimizer (``rl.optim``); frozen reference policy when ``signal.kl.use_kl``
    per step:  [recompute old log-probs]  ->  [reference log-probs]  ->  ppo_epochs x mini-batches, one
               optimizer step each (token-mean over the mini-batch, Megatron's per-token loss path)

Both log-prob passes are collective forward-only calls every rank makes on the same broadcast batch (no
rank-0 round trip). Mini-batches hold whole groups: epoch e permutes the step's B groups with
``generator(seed, "ppo_minibatch", step, e)`` (``rl.ppo_shuffle``) and cuts them into chunks of
``ppo_mini_batch_size`` groups; a chunk whose groups sent no row is skipped (not an optimizer step).

``more_sft_step`` is the "same steps on more SFT" control (``rl.mode: more_sft``).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from recast_mcore.config.actor import ModelConfig
from recast_mcore.config.rollout import RolloutConfig
from recast_mcore.config.train import RlConfig
from recast_mcore.signal.batch import UpdateBatch
from recast_mcore.trainer.checks import SetupError
from recast_mcore.trainer.data_feed import EpochSampler
from recast_mcore.utils.rng import generator

_SERVED_PRECISION = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def start_rl_stage(job) -> None:
    """Every rank, when the RL loop starts (or resumes): the RL optimizer and the reference policy."""
    cfg, st, actor = job.cfg, job.state, job.actor
    if cfg.rl.mode != "rl":
        return
    if not st.rl_optimizer:
        actor.use_optimizer(cfg.rl.optim)
        st.rl_optimizer = True
        job.logger.write_line(f"[recast-train] RL optimizer: fresh, lr {cfg.rl.optim.lr}, {cfg.rl.optim.decay_style}")
    if cfg.signal.kl.use_kl and actor.reference is None:
        actor.build_reference(offload=cfg.rl.reference_offload)
        if st.rl_step == 0:
            job.logger.write_line("[recast-train] reference policy: the weights RL starts from")
            return
        try:
            path = actor.load_reference(job.start.path)
        except (ValueError, FileNotFoundError) as exc:
            raise SetupError(
                f"resuming RL at step {st.rl_step} with signal.kl.use_kl=true, but {exc}. The reference policy (the RL "
                f"start weights) was not saved with that run: resume with signal.kl.use_kl=false, or restart RL."
            ) from exc
        job.logger.write_line(f"[recast-train] reference policy loaded from {path}")


def minibatch_plan(group_index: torch.Tensor, num_groups: int, rl_cfg: RlConfig, seed: int, step: int) -> list[torch.Tensor]:
    """Row indices of each optimizer step (module doc); rows of a mini-batch stay in batch order."""
    size = rl_cfg.ppo_mini_batch_size if 0 < rl_cfg.ppo_mini_batch_size < num_groups else max(num_groups, 1)
    plan = []
    for epoch in range(rl_cfg.ppo_epochs):
        order = torch.arange(num_groups)
        if rl_cfg.ppo_shuffle and size < num_groups:
            order = torch.randperm(num_groups, generator=generator(seed, "ppo_minibatch", step, epoch))
        for start in range(0, max(num_groups, 1), size):
            rows = torch.isin(group_index, order[start : start + size]).nonzero().flatten()
            if rows.numel():
                plan.append(rows)
    return plan


def rollout_precision_differs(rollout_cfg: RolloutConfig, model_cfg: ModelConfig) -> bool:
    """The rollout engine computes log-probs at another precision than the actor (the torch engine IS the actor)."""
    if rollout_cfg.engine == "torch":
        return False
    return _SERVED_PRECISION[rollout_cfg.sglang.dtype] != model_cfg.params_dtype or model_cfg.fp8 != "none"


def recompute_old(rl_cfg: RlConfig, optimizer_steps: int, rollout_cfg: RolloutConfig, model_cfg: ModelConfig) -> bool:
    if rl_cfg.recompute_old_logprobs != "auto":
        return rl_cfg.recompute_old_logprobs == "always"
    return optimizer_steps > 1 or rollout_precision_differs(rollout_cfg, model_cfg)


def update_policy(job, batch: UpdateBatch, step: int) -> tuple[dict[str, float], float]:
    """Every rank: the step's optimizer steps on ``batch``; (metrics, seconds). An empty batch does nothing."""
    if batch.num_sequences == 0:
        return {}, 0.0
    start = time.perf_counter()
    cfg, actor = job.cfg, job.actor
    plan = minibatch_plan(batch.group_index, batch.stats.num_groups, cfg.rl, cfg.seed, step)
    recompute = recompute_old(cfg.rl, len(plan), cfg.rollout, cfg.model)
    if recompute:
        batch.old_logprobs = actor.logprobs(batch.prompt_ids, batch.responses)
    if batch.kl is not None:
        batch.ref_logprobs = actor.reference.logprobs(batch.prompt_ids, batch.responses)
    per_step = [actor.update(batch.select(rows)) for rows in plan]
    metrics = mean_over_steps(per_step)
    metrics.update(optimizer_steps=float(len(plan)), old_logprobs_recomputed=float(recompute))
    return metrics, time.perf_counter() - start


def mean_over_steps(per_step: list[dict[str, float]]) -> dict[str, float]:
    """Each metric averaged over the optimizer steps that report it; ``lr`` is the last step's."""
    keys = sorted({k for m in per_step for k in m})
    out = {k: sum(m[k] for m in per_step if k in m) / sum(k in m for m in per_step) for k in keys}
    if per_step and "lr" in per_step[-1]:
        out["lr"] = per_step[-1]["lr"]
    return out


def more_sft_step(job, feed: tuple[EpochSampler, Any], step: int) -> tuple[dict[str, float], float]:
    """``rl.mode: more_sft``: SFT optimizer step number ``sft_step + step`` of the continued SFT feed
    (``trainer.sft.sft_feed``: the same example kind, prefixes or windows, as the SFT stage)."""
    sampler, encode = feed
    start = time.perf_counter()
    metrics = job.actor.sft_step(*encode(job.dataset.vocab, sampler.batch(job.state.sft_step + step - 1)))
    return metrics, time.perf_counter() - start
