"""The trainer's position in a run, saved inside every checkpoint (``actor.save(dir, trainer_state)``).

Together with the actor's weights and optimizer state this is everything a resumed run needs:
all randomness is derived from ``(seed, stage, step)`` (utils/rng.py), so no RNG state is stored.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

Stage = Literal["sft", "rl", "done"]


@dataclass
class TrainerState:
    """Where the run is: stage, completed steps, rollout budget spent, policy version."""

    stage: Stage = "sft"
    """Stage being run (or "done")."""
    sft_step: int = 0
    """Completed SFT optimizer steps."""
    rl_step: int = 0
    """Completed RL steps."""
    rollout_budget: int = 0
    """Candidates sampled so far in RL (every candidate, dynamic sampling's extra rounds included)."""
    policy_version: int = 0
    """Weight version last pushed to the rollout engine (incremented per actor update)."""
    sft_evaluated: bool = False
    """Whether the end-of-SFT evaluation was logged."""
    rl_optimizer: bool = False
    """Whether the actor runs the RL stage's own optimizer (``rl.optim``, fresh at RL start); a resumed run
    switches to it before loading the checkpoint's optimizer state."""
    best_step: int = 0
    """Step (of the current stage) of its best evaluation by `eval.select_metric`; 0 = none tracked yet."""
    best_value: float | None = None
    """That evaluation's `eval.select_metric` value."""
    evals_since_best: int = 0
    """Tracked evaluations since the best one (SFT early stopping compares it with `sft.patience`)."""
    sft_stopped: bool = False
    """SFT stopped early (patience ran out)."""
    sft_best_step: int = 0
    """The SFT step whose weights ended SFT when periodic evaluation picked a best (0 = the last step)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainerState:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"checkpoint trainer state has unknown keys {sorted(unknown)}; expected {sorted(names)}")
        return cls(**data)

    @property
    def position(self) -> tuple[str, int]:
        """(stage, step) of the last completed step, used to cut the metric log back on resume."""
        if self.stage == "sft" or (self.stage != "done" and self.rl_step == 0):
            return "sft", self.sft_step
        return "rl", self.rl_step
