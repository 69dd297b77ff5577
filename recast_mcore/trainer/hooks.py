"""What the stage loops do on schedule: evaluate, save a checkpoint, draw plots.

Best evaluation (SFT with ``sft.eval_every > 0``; RL with ``eval.keep_best``): every evaluation of the
stage is compared on ``eval.select_metric`` (higher is better, a tie is not an improvement); a new best
is recorded in the trainer state (``best_step``, ``best_value``, ``evals_since_best``) and saved at once
as the regular checkpoint ``<stage>_step_N``, which pruning then never deletes. Because the record
lives in the trainer state saved with every checkpoint, a resumed run continues the same comparison.
"""

from __future__ import annotations

from recast_mcore.eval.evaluate import eval_examples, evaluate, seen_items
from recast_mcore.trainer import checkpoints as ckpt
from recast_mcore.trainer.collective import Step0, follow
from recast_mcore.trainer.weights import ensure_resident
from recast_mcore.utils.dist import barrier, is_rank0
from recast_mcore.utils.plots import plot_run


def due(step: int, every: int, last: int) -> bool:
    """True on every ``every``-th step and on the last step (``every`` = 0: last step only)."""
    return step == last or (every > 0 and step % every == 0)


def tracks_best(cfg, stage: str) -> bool:
    """Whether evaluations of ``stage`` pick a best checkpoint (module docstring)."""
    return (stage == "sft" and cfg.sft.eval_every > 0) or (stage == "rl" and cfg.eval.keep_best)


def note_evaluation(state, value: float, step: int) -> bool:
    """Compare one evaluation with the stage's best so far; update the state; True when it is a new best."""
    if state.best_value is None or value > state.best_value:
        state.best_step, state.best_value, state.evals_since_best = step, float(value), 0
        return True
    state.evals_since_best += 1
    return False


def evaluate_and_log(job, at_stage: str, step: int) -> dict[str, float] | None:
    """Rank 0: beam-search evaluation with the engine's current weights, logged as an ``eval`` record.
    The other ranks wait in ``collective.follow`` (control plane: no NCCL timeout, resyncs served).

    When the stage tracks its best evaluation, every rank then updates the trainer state (the value is
    broadcast from rank 0) and a new best is saved as a checkpoint (collective)."""
    metrics = None
    if job.engine is None:
        follow(job.actor)
    else:
        lead = Step0(job.actor)
        try:
            ensure_resident(job.engine)  # colocated servers released after a rollout without update
            examples = eval_examples(job.dataset, job.cfg.eval)
            seen = seen_items(job.dataset, examples, job.cfg.eval.split)
            metrics = evaluate(job.engine, job.dataset.vocab, examples, job.cfg.eval, seen)
        except Exception as exc:
            lead.abort(f"{type(exc).__name__}: {exc}")
            raise
        lead.finish(None)
        job.logger.log("eval", step, job.state.rollout_budget, metrics, at_stage=at_stage)
        shown = {k: metrics[k] for k in ("pass@1", "recall@10", "ndcg@10") if k in metrics}
        job.logger.write_line(f"[eval {at_stage} step {step}] " + " ".join(f"{k}={v:.4f}" for k, v in shown.items()))
        draw_plots(job)
    if tracks_best(job.cfg, at_stage):
        value = broadcast_value(metrics[job.cfg.eval.select_metric] if metrics is not None else None)
        if note_evaluation(job.state, value, step):
            save_checkpoint(job, at_stage, step)
    return metrics


def broadcast_value(value: float | None) -> float:
    """Rank 0's ``value`` on every rank (a no-op without a process group)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return float(value)
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return float(box[0])


def best_checkpoint_name(state) -> str | None:
    """Name of the checkpoint holding the current stage's best evaluation (None when none is tracked)."""
    if not state.best_step:
        return None
    return ckpt.checkpoint_name("rl" if state.stage == "done" else state.stage, state.best_step)


def save_checkpoint(job, stage: str, step: int) -> None:
    """Collective: ``actor.save`` into ``checkpoints/<stage>_step_N`` (atomic, sealed by a manifest that records
    the dataset fingerprint; it moves ``latest``), then prune (never the best evaluation's checkpoint).

    A second save of the same step with an unchanged trainer state (a best evaluation saved just before
    the regular save of that step) is skipped."""
    name = ckpt.checkpoint_name(stage, step)
    state = job.state.to_dict()
    if job.last_saved == (name, state):
        return
    root = ckpt.checkpoints_root(job.run_dir)
    path = job.actor.save(root / name, state, info={"dataset": job.dataset.fingerprint}, update_latest=True)
    job.last_saved = (name, state)
    if is_rank0():
        best = best_checkpoint_name(job.state)
        ckpt.prune(root, job.cfg.checkpoint.keep_last, path, keep=(best,) if best else ())
        job.logger.flush()
    barrier()


def draw_plots(job) -> None:
    if is_rank0() and job.cfg.logging.plots:
        plot_run(job.logger.jsonl_path, job.run_dir / "plots")
