"""Where a run starts: its own newest complete checkpoint, another run's, a stage's init checkpoint, or scratch.

``select_start`` decides (first that applies), before any process group exists:
1. ``resume``:   ``<run_dir>/checkpoints`` holds a checkpoint whose manifest and file sizes check out
   (newest first; ``latest`` is not needed): weights, optimizer, scheduler and trainer state of this run.
   Newer checkpoints that fail the check are named; ``checkpoint.on_corrupt`` says whether to fall back
   past them or stop. Checkpoint directories but none complete: stop (``--start-over`` begins anew).
2. ``continue``: ``checkpoint.load_dir`` is set: the same, from that directory's newest complete checkpoint.
3. ``init``:     the run starts with SFT and ``sft.init_checkpoint`` is set, or starts with RL
   (``sft.enabled: false``) and ``rl.init_checkpoint`` is set: weights only (fresh optimizer and state).
4. ``fresh``:    a new model.
``start_over`` (``recast-train --start-over``) skips 1: the run's old files are moved to
``<run_dir>/previous/<time>/`` (``archive_run``), never deleted.

``restore_state`` (collective, under the run lock) verifies the sha256 of the chosen checkpoint on all ranks
in parallel, falls back to the previous one when it fails (or stops), loads it and cuts the metric log back
to it; records cut away go to the side file (utils/metric_log.py). The model and dataset fingerprint are
checked against the config in the preflight (trainer/checks.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from recast_mcore.config.run import RunConfig
from recast_mcore.trainer import checkpoints as ckpt
from recast_mcore.trainer.checks import SetupError, check_checkpoint_matches
from recast_mcore.trainer.state import TrainerState
from recast_mcore.utils.dist import barrier, is_rank0
from recast_mcore.utils.metric_log import MetricLogger
from recast_mcore.utils.paths import unique_path

START_OVER_HINT = "re-run with --start-over to begin a new run (the old files move to <run_dir>/previous/<time>/)"


@dataclass(frozen=True)
class StartPoint:
    kind: Literal["resume", "continue", "init", "fresh"]
    path: Path | None = None
    fallbacks: tuple[Path, ...] = ()
    """resume: older complete checkpoints of the run, newest first (used when ``path`` fails verification)."""
    damaged: dict[Path, list[str]] = field(default_factory=dict)
    """resume: checkpoints newer than ``path`` that failed the structural check, with their problems."""


def resolve_checkpoint(path: str | Path, setting: str) -> Path:
    """A complete checkpoint given by ``setting`` (SetupError naming the problems otherwise)."""
    try:
        return ckpt.resolve(path, setting)
    except ValueError as exc:
        raise SetupError(str(exc)) from None


def select_start(cfg: RunConfig, start_over: bool = False) -> StartPoint:
    if not start_over:
        own = own_checkpoint(cfg)
        if own is not None:
            return own
    if cfg.checkpoint.load_dir:
        return StartPoint("continue", resolve_checkpoint(cfg.checkpoint.load_dir, "checkpoint.load_dir"))
    if cfg.sft.enabled and cfg.sft.init_checkpoint:
        return StartPoint("init", resolve_checkpoint(cfg.sft.init_checkpoint, "sft.init_checkpoint"))
    if not cfg.sft.enabled and cfg.rl.init_checkpoint:
        return StartPoint("init", resolve_checkpoint(cfg.rl.init_checkpoint, "rl.init_checkpoint"))
    return StartPoint("fresh")


def own_checkpoint(cfg: RunConfig) -> StartPoint | None:
    """The run's newest structurally complete checkpoint (None when the run has no checkpoint directories)."""
    root = ckpt.checkpoints_root(cfg.run_dir)
    good, bad = ckpt.usable(root)
    if not good and not bad:
        return None
    if not good:
        raise SetupError(f"{root} holds checkpoints but none is complete:\n{ckpt.describe(bad)}\n"
                         f"Nothing was changed. To use a checkpoint written before checkpoints carried a manifest, seal it "
                         f"(python tools/convert_checkpoint.py seal --checkpoint DIR --dataset PREPARED_DIR); or {START_OVER_HINT}.")
    newer_bad = {p: problems for p, problems in bad.items() if ckpt.order(p) > ckpt.order(good[0])}
    if newer_bad and cfg.checkpoint.on_corrupt == "stop":
        raise SetupError(f"the newest checkpoint of {cfg.run_dir} is damaged (checkpoint.on_corrupt=stop):\n{ckpt.describe(newer_bad)}\n"
                         f"Nothing was changed. Set checkpoint.on_corrupt=fallback to resume from {good[0].name}, "
                         f"repair or remove the damaged checkpoint, or {START_OVER_HINT}.")
    return StartPoint("resume", good[0], tuple(good[1:]), newer_bad)


def archive_run(run_dir: str | Path, keep: tuple[str, ...] = ("previous", "run.lock")) -> Path | None:
    """Rank 0, under the run lock: move everything in ``run_dir`` but ``keep`` to ``run_dir/previous/<time>/``."""
    run_dir = Path(run_dir)
    entries = [p for p in run_dir.iterdir() if p.name not in keep] if run_dir.is_dir() else []
    if not entries:
        return None
    target = unique_path(run_dir / "previous" / time.strftime("%Y%m%dT%H%M%S"))
    target.mkdir(parents=True)
    for entry in entries:
        entry.rename(target / entry.name)
    return target


def restore_state(start: StartPoint, cfg: RunConfig, actor: Any, logger: MetricLogger,
                  dataset_fingerprint: dict[str, str]) -> tuple[TrainerState, StartPoint]:
    """Load what ``start`` names into the actor (collective); returns the trainer state to continue from and
    the start point actually loaded (a resume may have fallen back to an older checkpoint)."""
    if start.kind in ("resume", "continue"):
        if start.kind == "resume":
            path = verified_resume_point(start, cfg, actor, logger, dataset_fingerprint)
        else:
            path = start.path
            problems = actor.verify_checkpoint(path)
            if problems:
                raise SetupError(f"checkpoint.load_dir: checkpoint {path} failed verification:\n  " + "\n  ".join(problems))
        if actor.saved_trainer_state(path).get("rl_optimizer"):  # its optimizer state is the RL optimizer's
            actor.use_optimizer(cfg.rl.optim)
        state = TrainerState.from_dict(actor.load(path, verify=False))
        if start.kind == "resume":
            logger.truncate_after(*state.position, reason=f"resumed from {path.name}")
        else:
            logger.start_new(f"new run continuing from {path}")
        logger.write_line(f"[recast-train] {start.kind} from {path} at {state.position[0]} step {state.position[1]}")
        return state, StartPoint(start.kind, path)
    logger.start_new(f"new run ({start.kind})")
    if start.kind == "init":
        actor.load(start.path, load_optimizer=False)
        logger.write_line(f"[recast-train] initialized weights from {start.path}")
    return TrainerState(stage="sft" if cfg.sft.enabled else "rl"), start


def verified_resume_point(start: StartPoint, cfg: RunConfig, actor: Any, logger: MetricLogger,
                          dataset_fingerprint: dict[str, str]) -> Path:
    """The newest of the run's checkpoints whose every file matches its sha256 (all ranks hash in parallel);
    a damaged one is renamed ``<name>.corrupt`` and named in the log, or stops the run (``on_corrupt: stop``)."""
    root = ckpt.checkpoints_root(cfg.run_dir)
    for path, problems in start.damaged.items():
        _set_aside(path, problems, logger)
    for path in (start.path, *start.fallbacks):
        problems = actor.verify_checkpoint(path)
        if not problems:
            if path != start.path:
                check_checkpoint_matches(path, cfg.model, actor.vocab_size, dataset_fingerprint)
            if is_rank0() and (path != start.path or start.damaged):
                ckpt.write_latest(root, path)
            barrier()
            return path
        if cfg.checkpoint.on_corrupt == "stop":
            raise SetupError(f"checkpoint {path} failed verification (checkpoint.on_corrupt=stop):\n  " + "\n  ".join(problems) +
                             f"\nNothing was changed. Set checkpoint.on_corrupt=fallback to resume from the previous checkpoint, or {START_OVER_HINT}.")
        _set_aside(path, problems, logger)
    raise SetupError(f"no checkpoint of {cfg.run_dir} passed verification (the damaged ones were renamed *.corrupt); {START_OVER_HINT}")


def _set_aside(path: Path, problems: list[str], logger: MetricLogger) -> None:
    """Rank 0 renames a damaged checkpoint out of the resume scan; every rank waits for it."""
    if is_rank0():
        moved = ckpt.quarantine(path)
        logger.write_line(f"[recast-train] checkpoint {path.name} is damaged, falling back to the previous one; "
                          f"kept as {moved.name} for inspection:\n  " + "\n  ".join(problems))
    barrier()
