"""The whole run's configuration: one sub-config per component, each owned by its package.

A YAML file mirrors this structure (unknown keys are errors); `--set section.key=value` overrides it.
Each component receives only its own section.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from recast_mcore.config.actor import CheckpointConfig, ModelConfig, OptimConfig, ParallelConfig
from recast_mcore.config.data import DataConfig
from recast_mcore.config.rollout import RolloutConfig
from recast_mcore.config.signal import RewardConfig, SignalConfig
from recast_mcore.config.train import EvalConfig, LoggingConfig, RlConfig, SftConfig


@dataclass(kw_only=True)
class RunConfig:
    """Top-level config of a `recast-train` run."""

    run_dir: str = "runs/default"
    """Directory holding the resolved config, logs, plots and checkpoints (a rerun resumes from it)."""
    seed: int = 1234
    """Global seed: every random draw of the job derives from (seed, stage, step)."""
    data: DataConfig = field(default_factory=DataConfig)
    """Dataset and semantic IDs (`data.prepared_dir` is what training reads)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Policy model shape and numerics (actor)."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """Tensor/pipeline/data-parallel layout (actor)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and learning-rate schedule (actor)."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """How often checkpoints are saved, how many are kept, where to resume from (actor format)."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Rollout engine (sglang / in-process torch), group sampling, servers and weight sync."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Reward of a candidate item against the prompt's targets."""
    signal: SignalConfig = field(default_factory=SignalConfig)
    """Signal builder (grpo / recast) and dynamic sampling."""
    sft: SftConfig = field(default_factory=SftConfig)
    """Supervised next-item stage."""
    rl: RlConfig = field(default_factory=RlConfig)
    """The RL loop."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Constrained beam-search evaluation."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Progress bar, JSONL, TensorBoard and plots."""
