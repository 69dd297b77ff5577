"""Building a run: preflight checks, process groups, dataset, actor, resume, rollout engine, logger.

``Job`` holds what the stage loops need; ``build_job`` creates it on every rank. Order matters:
cheap checks first (they fail in seconds with a message saying what to fix), then the process groups,
the run-directory lock (rank 0; nothing in the run directory is written before it is held), the actor,
the checkpoint restore, and only then the rollout engine, which starts from the restored weights at the
restored policy version.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from recast_mcore.config.base import save_config
from recast_mcore.config.run import RunConfig
from recast_mcore.data.dataset import PreparedDataset
from recast_mcore.data.prompts import model_vocab
from recast_mcore.rollout.base import RolloutEngine
from recast_mcore.trainer import run_lock
from recast_mcore.trainer.checks import (
    SetupError,
    check_checkpoint_matches,
    check_data_matches_prepared,
    check_eval_fits_catalog,
    check_eval_selection,
    check_group_size,
    check_parallel_layout,
    check_prepared_dataset,
    check_rollout_layout,
    check_rollout_servers,
    check_run_dir_writable,
    check_sequence_fits,
    check_more_sft,
    check_rl_optimizer,
    check_stage_inits,
    world_size_from_env,
)
from recast_mcore.trainer.restore import StartPoint, archive_run, restore_state, select_start
from recast_mcore.trainer.state import TrainerState
from recast_mcore.trainer.weights import build_engine
from recast_mcore.utils.dist import barrier, is_rank0
from recast_mcore.utils.metric_log import MetricLogger


@dataclass
class Job:
    """Everything the SFT and RL loops use (the engine only on rank 0)."""

    cfg: RunConfig
    run_dir: Path
    dataset: PreparedDataset
    actor: Any
    engine: RolloutEngine | None
    logger: MetricLogger
    state: TrainerState
    start: StartPoint
    """Where the run started: the checkpoint actually loaded (a mid-RL resume reloads its reference policy from it)."""
    lock: run_lock.RunLock | None = None
    """The run directory's lock (flock + PID/host), held by every rank until ``close``; None in tests without one."""
    last_saved: tuple[str, dict] | None = None
    """(checkpoint name, trainer state) of the last save of this process (hooks.save_checkpoint)."""

    def close(self) -> None:
        self.logger.close()
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        if self.lock is not None:
            self.lock.release()


def preflight_data(cfg: RunConfig, data_keys: set[str] | None = None) -> tuple[PreparedDataset, RunConfig]:
    """Dataset, layout and rollout checks that need no process group; returns the loaded dataset and ``cfg``
    with the dataset's own ``data`` section (``data_keys``: the data.* keys the user set, see
    ``check_data_matches_prepared``)."""
    check_prepared_dataset(cfg.data.prepared_dir)
    cfg = replace(cfg, data=check_data_matches_prepared(cfg.data, data_keys))
    world = world_size_from_env()
    check_parallel_layout(cfg.parallel, world, cfg.model.num_layers, cfg.model.num_attention_heads)
    check_rollout_layout(cfg.rollout, world)
    if is_rank0_env():
        check_rollout_servers(cfg.rollout)
    try:
        dataset = PreparedDataset.load(cfg.data.prepared_dir)
    except (FileNotFoundError, ValueError) as exc:
        raise SetupError(f"cannot load data.prepared_dir={cfg.data.prepared_dir}: {exc}") from exc
    try:
        dataset.use_vocab(model_vocab(dataset.vocab, cfg.data.prompt))
    except (FileNotFoundError, ValueError) as exc:
        raise SetupError(f"data.prompt (format {cfg.data.prompt.format}): {exc}") from exc
    longest_prompt = len(dataset.vocab.encode_prompt([0] * dataset.max_history))
    check_sequence_fits(longest_prompt, dataset.vocab.item_len, cfg.model.max_seq_len)
    check_eval_fits_catalog(cfg.eval, dataset.num_items)
    return dataset, cfg


def preflight(cfg: RunConfig, start_over: bool = False, data_keys: set[str] | None = None
              ) -> tuple[PreparedDataset, StartPoint, RunConfig]:
    """All checks that need no process group; returns the dataset, where the run starts and the resolved config."""
    check_stage_inits(cfg.sft.enabled, cfg.rl.init_checkpoint)
    check_rl_optimizer(cfg.rl.optim, cfg.optim)
    check_more_sft(cfg.rl.mode, cfg.rl.init_checkpoint)
    check_group_size(cfg.signal, cfg.rollout.sampling.group_size, cfg.rl.mode)
    check_eval_selection(cfg.sft.eval_every if cfg.sft.enabled else 0, cfg.eval)
    if is_rank0_env():
        check_run_dir_writable(cfg.run_dir, cfg.logging.jsonl_name)
    dataset, cfg = preflight_data(cfg, data_keys)
    start = select_start(cfg, start_over)
    if start.path is not None:
        check_checkpoint_matches(start.path, cfg.model, dataset.vocab.vocab_size, dataset.fingerprint)
    return dataset, start, cfg


def is_rank0_env() -> bool:
    """Rank 0 as torchrun says, before the process group exists."""
    return os.environ.get("RANK", "0") == "0"


def build_actor(cfg: RunConfig, dataset: PreparedDataset) -> Any:
    """Process groups (gloo on CPU, NCCL on GPU) and the Megatron actor, on every rank."""
    from recast_mcore.actor.actor import MegatronActor
    from recast_mcore.actor.parallel import initialize_distributed

    initialize_distributed(cfg.parallel)
    return MegatronActor(cfg.model, cfg.parallel, cfg.optim, dataset.vocab.vocab_size, dataset.trie)


def build_job(cfg: RunConfig, *, start_over: bool = False, data_keys: set[str] | None = None) -> Job:
    """Every rank: checks, process groups, run lock (rank 0), actor, resume, engine (rank 0), logger (rank 0 writes)."""
    from recast_mcore.actor.parallel import initialize_distributed

    dataset, start, cfg = preflight(cfg, start_over, data_keys)
    initialize_distributed(cfg.parallel)
    lock = run_lock.acquire(cfg.run_dir)
    try:
        return _build_locked(cfg, dataset, start, start_over, lock)
    except BaseException:
        if lock is not None:
            lock.release()
        raise


def _build_locked(cfg: RunConfig, dataset: PreparedDataset, start: StartPoint, start_over: bool,
                  lock: run_lock.RunLock | None) -> Job:
    run_dir = Path(cfg.run_dir)
    logger = MetricLogger(run_dir, cfg.logging, enabled=is_rank0())
    if lock is not None and lock.previous:
        logger.write_line(f"[recast-train] took over the lock of a job that is gone: {run_lock.describe_holder(lock.previous)}")
    if is_rank0() and start_over:
        moved = archive_run(run_dir)
        if moved is not None:
            logger.write_line(f"[recast-train] --start-over: the previous run's files moved to {moved}")
    actor = build_actor(cfg, dataset)
    if is_rank0():
        save_config(cfg, run_dir / "config.yaml")
    barrier()
    state, start = restore_state(start, cfg, actor, logger, dataset.fingerprint)
    engine = build_engine(cfg.rollout, cfg.model, dataset.vocab, actor, state.policy_version, run_dir / "rollout",
                          tokenizer_dir=cfg.data.prompt.hf_tokenizer_dir)
    return Job(cfg=cfg, run_dir=run_dir, dataset=dataset, actor=actor, engine=engine, logger=logger, state=state,
               start=start, lock=lock)
