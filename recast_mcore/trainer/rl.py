"""The RL stage. ``run_rl`` is the whole loop, top to bottom:

    [start: fresh RL optimizer, frozen reference policy]
    sample prompts -> roll out groups (rank 0) -> reward -> build the UpdateBatch (signal builder)
    -> broadcast -> update_policy (every rank: old/reference log-probs, PPO mini-batches x epochs)
    -> sync weights -> log -> evaluate / save on schedule

``rl.mode: more_sft`` replaces each step's rollout + update by one more SFT step (the control arm).
"""

from __future__ import annotations

import time

from recast_mcore.trainer.collective import Step0, follow
from recast_mcore.trainer.data_feed import EpochSampler
from recast_mcore.trainer.hooks import draw_plots, due, evaluate_and_log, save_checkpoint
from recast_mcore.trainer.rl_update import more_sft_step, start_rl_stage, update_policy
from recast_mcore.trainer.rollout_step import build_step_batch
from recast_mcore.trainer.sft import sft_feed
from recast_mcore.trainer.weights import after_rollout, before_rollout, push_weights, reseed_engine
from recast_mcore.utils.dist import is_rank0
from recast_mcore.utils.rng import derive_seed, seed_everything


def run_rl(job) -> None:
    cfg, st = job.cfg.rl, job.state
    if st.stage != "rl":
        return
    start_rl_stage(job)
    prompts = EpochSampler(job.dataset.examples("train"), cfg.prompts_per_step, job.cfg.seed, "rl_epoch")
    feed = sft_feed(job) if cfg.mode == "more_sft" else None
    job.logger.start_bar("rl", cfg.steps, st.rl_step)
    while cfg.enabled and st.rl_step < cfg.steps:
        step = st.rl_step + 1
        seed_everything(derive_seed(job.cfg.seed, "rl", step))
        if feed is not None:
            actor_metrics, actor_time = more_sft_step(job, feed, step)
            batch, rollout = None, {"rollouts": 0.0, "rollout_time_s": 0.0}
        else:
            start = time.perf_counter()
            before_rollout(job.engine, job.cfg.rollout, job.actor)  # colocated servers: memory back, optimizer to CPU
            batch, rollout = collect_update_batch(job, prompts, step)
            after_rollout(job.engine, job.cfg.rollout, job.actor)
            rollout["rollout_time_s"] = time.perf_counter() - start
            actor_metrics, actor_time = update_policy(job, batch, step)
        if actor_metrics:  # the weights changed: serve them as the next policy version
            st.policy_version += 1
            push_weights(job.engine, job.cfg.rollout, job.actor, job.cfg.model, job.dataset.vocab.vocab_size, st.policy_version)
        st.rl_step, st.rollout_budget = step, st.rollout_budget + int(rollout["rollouts"])
        log_rl_step(job, step, rollout, batch, actor_metrics, actor_time)
        if due(step, cfg.eval_every, cfg.steps):
            evaluate_and_log(job, "rl", step)
        if due(step, job.cfg.checkpoint.save_interval, cfg.steps):
            save_checkpoint(job, "rl", step)
    job.logger.close_bar()
    st.stage = "done"
    draw_plots(job)


def collect_update_batch(job, prompts: EpochSampler, step: int):
    """Rank 0 rolls out, rewards and builds the batch (asking the other ranks to join actor.logprobs);
    the (UpdateBatch, rollout metrics) pair is then broadcast to every rank."""
    if not is_rank0():
        return follow(job.actor)
    lead = Step0(job.actor)
    try:
        reseed_engine(job.engine, derive_seed(job.cfg.seed, "rollout", step))
        result = build_step_batch(step, job.engine, prompts, job.dataset.vocab, job.cfg.rollout,
                                  job.cfg.reward, job.cfg.signal, lead.score)
    except Exception as exc:
        lead.abort(f"{type(exc).__name__}: {exc}")
        raise
    return lead.finish(result)


def log_rl_step(job, step, rollout, batch, actor_metrics, actor_time) -> None:
    if not is_rank0():
        return
    figures = {
        **rollout,
        "actor_time_s": actor_time,
        "policy_version": float(job.state.policy_version),
        **{f"actor/{k}": v for k, v in actor_metrics.items()},
    }
    if batch is not None:
        figures.update({"update_width": batch.stats.update_width, "update_sequences": float(batch.num_sequences),
                        **batch.stats.to_metrics("signal/")})
    figures["step_time_s"] = figures["rollout_time_s"] + actor_time
    if due(step, job.cfg.rl.log_every, job.cfg.rl.steps):
        job.logger.log("rl", step, job.state.rollout_budget, figures)
    if batch is None:
        job.logger.update_bar({"loss": actor_metrics.get("loss", float("nan")), "budget": job.state.rollout_budget})
        return
    job.logger.update_bar({"reward": rollout["reward_mean"], "hit": rollout["hit_rate"],
                           "width": batch.stats.update_width, "budget": job.state.rollout_budget})
