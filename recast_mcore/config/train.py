"""Configs of the training job itself: the SFT stage, the RL loop, evaluation and logging.

The model, parallel layout, optimizer and checkpoint format belong to the actor (config/actor.py);
sampling belongs to the rollout (config/rollout.py); the signal builder and reward to config/signal.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from recast_mcore.config.actor import OptimConfig


DDP_FIXED_OPTIM_FIELDS = ("distributed_optimizer", "overlap_grad_reduce", "overlap_param_gather", "nonfinite_policy")
"""OptimConfig fields the actor's DDP wrappers are built from: `rl.optim` must keep `optim`'s values."""


def openonerec_rl_optim() -> OptimConfig:
    """OpenOneRec-RL's actor optimizer (verl_rl/recipe/onerec/run_grpo.sh): AdamW lr 2e-6, 10 linear warmup
    steps then constant, weight decay 0.1, gradient-norm clip 1.0. The large-model default of ``rl.optim``."""
    return OptimConfig(lr=2e-6, warmup_steps=10, decay_style="constant", weight_decay=0.1, clip_grad=1.0)


@dataclass(kw_only=True)
class SftConfig:
    """Supervised next-item training: every prefix of a user's training sequence predicts the next item."""

    enabled: bool = True
    """Run the SFT stage (set false to go straight to RL, e.g. from `rl.init_checkpoint`)."""
    epochs: float = 1.0
    """Passes over the SFT examples; fractional values stop part-way through the last epoch."""
    max_steps: int = 0
    """Upper bound on optimizer steps (0 = no bound; the epochs decide)."""
    batch_size: int = 64
    """Global number of (prompt, next item) examples per optimizer step."""
    init_checkpoint: str = ""
    """Start SFT from this actor checkpoint directory (empty = fresh initialization)."""
    save_every: int = 0
    """Save a checkpoint every this many SFT steps (0 = only at the end of the stage)."""
    log_every: int = 10
    """Log SFT metrics every this many steps (the last step is always logged)."""
    eval_at_end: bool = True
    """Evaluate (recast-eval's metrics on the eval split) once SFT finishes."""
    examples: Literal["prefixes", "windows"] = "prefixes"
    """`prefixes`: one example per training position (history = the previous <= max_history items ->
    the next item). `windows`: runs of max_history + 1 consecutive items trained as one causal sequence,
    every item after the first a target (the same targets per epoch, ~max_history times fewer tokens;
    data/dataset.py `sft_windows`). `batch_size` counts examples of the chosen kind."""
    eval_every: int = 0
    """Evaluate on the eval split every this many SFT steps (0 = only at the end). With evaluations the
    best one by `eval.select_metric` is kept as a checkpoint and SFT ends on its weights."""
    patience: int = 0
    """Early stopping: stop after this many periodic evaluations without a new best (0 = never stop early)."""

    def validate(self) -> None:
        if self.eval_every < 0 or self.patience < 0:
            raise ValueError(f"eval_every and patience must be >= 0, got {self.eval_every}, {self.patience}")
        if self.patience and not self.eval_every:
            raise ValueError("patience needs eval_every > 0 (early stopping counts periodic evaluations)")
        if self.epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        for name in ("max_steps", "save_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {self.log_every}")


@dataclass(kw_only=True)
class RlConfig:
    """The RL loop: sample prompts, roll out groups, reward, build the update batch, update, sync, eval, save.

    How often RL checkpoints are saved is the actor's ``checkpoint.save_interval``.
    """

    enabled: bool = True
    """Run the RL stage after SFT."""
    steps: int = 50
    """Number of RL steps (one actor update each)."""
    prompts_per_step: int = 32
    """B: training prompts sampled per step (users drawn without replacement within an epoch)."""
    init_checkpoint: str = ""
    """Start RL from this actor checkpoint (empty = the SFT result of this run, or a fresh model)."""
    eval_every: int = 10
    """Evaluate every this many RL steps (0 = only at the end)."""
    log_every: int = 1
    """Write the step's metrics every this many steps (the rollout budget is logged with every record)."""
    mode: Literal["rl", "more_sft"] = "rl"
    """`rl`: the RL loop. `more_sft`: the "same steps on more SFT" control: each of the `steps` steps is one more
    SFT optimizer step (the SFT data feed and optimizer continued, no rollouts, rollout budget 0), with the same
    evaluation and checkpoint schedule as an RL run, logged as `rl` records."""
    optim: OptimConfig = field(default_factory=openonerec_rl_optim)
    """The RL stage's own optimizer and LR schedule, started fresh when RL starts (zero Adam moments, step 0
    of this schedule). Default: OpenOneRec-RL's values for large models; the CPU examples set small-model values.
    `distributed_optimizer`, `overlap_grad_reduce`, `overlap_param_gather`, `nonfinite_policy` must equal `optim`'s
    (the DDP wrappers are built from them)."""
    ppo_mini_batch_size: int = 0
    """Prompts (groups, never split) per optimizer step, as verl's ppo_mini_batch_size; 0 = all the step's
    prompts (one optimizer step per epoch). The step's rollout budget does not depend on it."""
    ppo_epochs: int = 1
    """Passes over the step's batch (verl ppo_epochs); optimizer steps per RL step = epochs x mini-batches."""
    ppo_shuffle: bool = True
    """Shuffle the groups into mini-batches every epoch with a seed derived from (seed, step, epoch);
    false takes them in order (verl's `shuffle: false`)."""
    recompute_old_logprobs: Literal["auto", "always", "never"] = "auto"
    """Replace the rollout log-probs by the actor's forward-only log-probs before the first optimizer step
    (so the PPO ratio starts at exactly 1). `auto`: when there is more than one optimizer step per batch or
    the rollout engine runs at another precision than the actor (SGLang dtype vs model.params_dtype)."""
    reference_offload: bool = False
    """GPU: keep the KL reference policy's weights in pinned host memory between uses (signal.kl.use_kl)."""

    def validate(self) -> None:
        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        if self.ppo_mini_batch_size < 0 or self.ppo_epochs < 1:
            raise ValueError(f"ppo_mini_batch_size must be >= 0 and ppo_epochs >= 1, got {self.ppo_mini_batch_size}, {self.ppo_epochs}")
        if self.prompts_per_step < 1:
            raise ValueError(f"prompts_per_step must be >= 1, got {self.prompts_per_step}")
        if self.eval_every < 0:
            raise ValueError(f"eval_every must be >= 0, got {self.eval_every}")
        if self.log_every < 1:
            raise ValueError(f"log_every must be >= 1, got {self.log_every}")


@dataclass(kw_only=True)
class EvalConfig:
    """Constrained beam search over the full catalog, scored with ranking metrics."""

    split: Literal["valid", "test"] = "valid"
    """Which leave-one-out target is scored (valid = second-last item, test = last item; see data/dataset.py)."""
    ks: list[int] = field(default_factory=lambda: [1, 5, 10, 32])
    """Cut-offs K for Pass@K, Recall@K and NDCG@K."""
    beam_width: int = 32
    """Beams kept per user; the ranked list has this many items, so it must be >= max(ks)."""
    max_users: int = 0
    """Score only the first this many users of the split (0 = all users)."""
    batch_size: int = 64
    """Users per beam-search call."""
    exclude_history: bool = False
    """Drop items the user already interacted with (the full history, not only the prompt's) from the
    ranked list before scoring, as the count baselines do; use a beam_width above max(ks) to leave room."""
    select_metric: str = "ndcg@10"
    """Metric (`pass@K`, `recall@K` or `ndcg@K`, K in `ks`) that picks the best evaluation: SFT early
    stopping and `keep_best`."""
    keep_best: bool = False
    """RL: save a checkpoint at every evaluation that improves `select_metric` and never prune it (the
    best-valid checkpoint; its step is `best_step` in the trainer state). SFT with `sft.eval_every` always does."""

    def validate(self) -> None:
        if not self.ks:
            raise ValueError("ks must list at least one cut-off")
        if not re.fullmatch(r"(pass|recall|ndcg)@\d+", self.select_metric):
            raise ValueError(f"select_metric must be pass@K, recall@K or ndcg@K, got {self.select_metric!r}")
        if self.keep_best and not self.selects_from_ks():
            raise ValueError(f"keep_best needs select_metric={self.select_metric!r} with its K in ks={self.ks}")
        if any(k < 1 for k in self.ks):
            raise ValueError(f"every K in ks must be >= 1, got {self.ks}")
        if self.beam_width < max(self.ks):
            raise ValueError(f"beam_width ({self.beam_width}) must be >= max(ks) ({max(self.ks)})")
        if self.max_users < 0 or self.batch_size < 1:
            raise ValueError("max_users must be >= 0 and batch_size >= 1")

    def selects_from_ks(self) -> bool:
        """Whether `select_metric`'s K is one of the evaluated cut-offs."""
        return int(self.select_metric.split("@")[1]) in self.ks


@dataclass(kw_only=True)
class LoggingConfig:
    """Where metrics go: progress bar, JSONL, TensorBoard, PNG plots."""

    progress_bar: bool = True
    """Show a tqdm bar with the key figures (rank 0 only)."""
    tensorboard: bool = True
    """Write TensorBoard event files under <run_dir>/tensorboard."""
    plots: bool = True
    """Draw PNG plots (vs step and vs rollout budget) under <run_dir>/plots at eval/save time and at the end."""
    jsonl_name: str = "metrics.jsonl"
    """File name (inside the run directory) of the JSONL with every logged metric record."""
