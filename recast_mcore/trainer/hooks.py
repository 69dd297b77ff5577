"""What the stage loops do on schedule: evaluate, save a checkpoint, draw plots."""

from __future__ import annotations

from recast_mcore.eval.evaluate import eval_examples, evaluate
from recast_mcore.trainer import checkpoints as ckpt
from recast_mcore.trainer.collective import Step0, follow
from recast_mcore.trainer.weights import ensure_resident
from recast_mcore.utils.dist import barrier, is_rank0
from recast_mcore.utils.plots import plot_run


def due(step: int, every: int, last: int) -> bool:
    """True on every ``every``-th step and on the last step (``every`` = 0: last step only)."""
    return step == last or (every > 0 and step % every == 0)


def evaluate_and_log(job, at_stage: str, step: int) -> dict[str, float] | None:
    """Rank 0: beam-search evaluation with the engine's current weights, logged as an ``eval`` record.
    The other ranks wait in ``collective.follow`` (control plane: no NCCL timeout, resyncs served)."""
    if job.engine is None:
        follow(job.actor)
        return None
    lead = Step0(job.actor)
    try:
        ensure_resident(job.engine)  # colocated servers released after a rollout without update
        metrics = evaluate(job.engine, job.dataset.vocab, eval_examples(job.dataset, job.cfg.eval), job.cfg.eval)
    except Exception as exc:
        lead.abort(f"{type(exc).__name__}: {exc}")
        raise
    lead.finish(None)
    job.logger.log("eval", step, job.state.rollout_budget, metrics, at_stage=at_stage)
    shown = {k: metrics[k] for k in ("pass@1", "recall@10", "ndcg@10") if k in metrics}
    job.logger.write_line(f"[eval {at_stage} step {step}] " + " ".join(f"{k}={v:.4f}" for k, v in shown.items()))
    draw_plots(job)
    return metrics


def save_checkpoint(job, stage: str, step: int) -> None:
    """Collective: ``actor.save`` into ``checkpoints/<stage>_step_N`` (atomic, sealed by a manifest that records
    the dataset fingerprint; it moves ``latest``), then prune."""
    root = ckpt.checkpoints_root(job.run_dir)
    path = job.actor.save(root / ckpt.checkpoint_name(stage, step), job.state.to_dict(),
                          info={"dataset": job.dataset.fingerprint}, update_latest=True)
    if is_rank0():
        ckpt.prune(root, job.cfg.checkpoint.keep_last, path)
        job.logger.flush()
    barrier()


def draw_plots(job) -> None:
    if is_rank0() and job.cfg.logging.plots:
        plot_run(job.logger.jsonl_path, job.run_dir / "plots")
