"""Where a run starts: its own last checkpoint, another run's, a stage's init checkpoint, or scratch.

``select_start`` decides (first that applies):
1. ``resume``:   ``<run_dir>/checkpoints/latest`` exists: weights, optimizer, scheduler and trainer
   state of this run; the metric log is cut back to the checkpoint, so the run continues its curves.
2. ``continue``: ``checkpoint.load_dir`` is set: the same, from that directory's ``latest``.
3. ``init``:     the run starts with SFT and ``sft.init_checkpoint`` is set, or starts with RL
   (``sft.enabled: false``) and ``rl.init_checkpoint`` is set: weights only (fresh optimizer and state).
4. ``fresh``:    a new model; an old metric log in the run directory is discarded.
The chosen checkpoint is checked against the config's model and the dataset's vocabulary in the
preflight, before any process group or model is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from recast_mcore.config.run import RunConfig
from recast_mcore.trainer import checkpoints as ckpt
from recast_mcore.trainer.checks import ACTOR_META, SetupError
from recast_mcore.trainer.state import TrainerState
from recast_mcore.utils.metric_log import MetricLogger


@dataclass(frozen=True)
class StartPoint:
    kind: Literal["resume", "continue", "init", "fresh"]
    path: Path | None = None


def resolve_checkpoint(path: str | Path, setting: str) -> Path:
    """A complete checkpoint: ``path`` itself, or what the ``latest`` of ``path`` (or ``path/checkpoints``) names."""
    path = Path(path)
    if (path / ACTOR_META).is_file():
        return path
    for root in (path, path / "checkpoints"):
        if (root / ckpt.LATEST).is_file():
            return ckpt.read_latest(root)
    raise SetupError(f"{setting}={path}: no complete checkpoint there (no {ACTOR_META} and no '{ckpt.LATEST}' pointer)")


def select_start(cfg: RunConfig) -> StartPoint:
    own = ckpt.read_latest(ckpt.checkpoints_root(cfg.run_dir))
    if own is not None:
        return StartPoint("resume", own)
    if cfg.checkpoint.load_dir:
        return StartPoint("continue", resolve_checkpoint(cfg.checkpoint.load_dir, "checkpoint.load_dir"))
    if cfg.sft.enabled and cfg.sft.init_checkpoint:
        return StartPoint("init", resolve_checkpoint(cfg.sft.init_checkpoint, "sft.init_checkpoint"))
    if not cfg.sft.enabled and cfg.rl.init_checkpoint:
        return StartPoint("init", resolve_checkpoint(cfg.rl.init_checkpoint, "rl.init_checkpoint"))
    return StartPoint("fresh")


def restore_state(start: StartPoint, cfg: RunConfig, actor: Any, logger: MetricLogger) -> TrainerState:
    """Load what ``start`` names into the actor (collective) and return the trainer state to continue from."""
    if start.kind in ("resume", "continue"):
        if actor.saved_trainer_state(start.path).get("rl_optimizer"):  # its optimizer state is the RL optimizer's
            actor.use_optimizer(cfg.rl.optim)
        state = TrainerState.from_dict(actor.load(start.path))
        if start.kind == "resume":
            logger.truncate_after(*state.position)
        else:
            logger.reset()
        logger.write_line(f"[recast-train] {start.kind} from {start.path} at {state.position[0]} step {state.position[1]}")
        return state
    logger.reset()
    if start.kind == "init":
        actor.load(start.path, load_optimizer=False)
        logger.write_line(f"[recast-train] initialized weights from {start.path}")
    return TrainerState(stage="sft" if cfg.sft.enabled else "rl")
