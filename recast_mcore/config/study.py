"""Configuration of a study (``recast-study --config STUDY.yaml``, recast_mcore/study/): one SFT stage,
then arms x seeds at a matched rollout budget, then a report. Owned by recast_mcore/study.

A study file names a base run config and lists run-config overrides (``key=value``, as ``recast-train
--set``): for every run, for the SFT stage, for each arm. ``quick:`` is a mapping merged over the file's
own top-level keys by ``--quick`` (lists are replaced), so a test can run the same study tiny.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


@dataclass(kw_only=True)
class ArmConfig:
    """One arm: run-config overrides applied on top of the base config for each seed."""

    name: str
    """Short name (a directory name: letters, digits, '-', '_'); the report's label."""
    set: list[str] = field(default_factory=list)
    """Run-config overrides of this arm, e.g. `signal.builder=grpo`; the more-SFT control is `rl.mode=more_sft`
    (same steps, evaluations and checkpoints, one more SFT step each instead of a rollout and RL update)."""

    def validate(self) -> None:
        _require(bool(self.name) and all(c.isalnum() or c in "-_" for c in self.name),
                 f"arm name {self.name!r} must be non-empty letters, digits, '-' or '_'")


@dataclass(kw_only=True)
class BudgetConfig:
    """The matched rollout budget: every arm is run to (and compared at) the same number of sampled candidates."""

    rollouts: int = 20480
    """Candidates sampled per run (RL steps = rollouts / (prompts_per_step x group_size), must divide)."""
    eval_every: int = 4096
    """Validation every this many rollouts (a multiple of one step's rollouts); the test split is scored once,
    at each run's best validation by `eval.select_metric`."""

    def validate(self) -> None:
        _require(self.rollouts > 0 and self.eval_every > 0, "budget.rollouts and budget.eval_every must be > 0")
        _require(self.rollouts % self.eval_every == 0, "budget.rollouts must be a multiple of budget.eval_every")


@dataclass(kw_only=True)
class SasrecConfig:
    """The SASRec reference row (RecBole 1.2.1 in its own virtual environment, tools/recbole/)."""

    enabled: bool = True
    """Train and score SASRec on the same split (needs tools/recbole/setup.sh; the report says so when it is missing)."""
    python: str = "tools/recbole/.venv/bin/python"
    """Python of the RecBole environment (relative to the repository root)."""
    epochs: int = 200
    """Upper bound on SASRec epochs (RecBole early-stops on valid NDCG@10)."""
    stopping_step: int = 10
    """Epochs without a better valid NDCG@10 before SASRec stops."""
    extra_args: list[str] = field(default_factory=list)
    """Further arguments of tools/recbole/run_sasrec.py (e.g. `--hidden-size`, `64`)."""


@dataclass(kw_only=True)
class StudyConfig:
    """A study: base run config, SFT stage, arms x seeds, budget, references."""

    name: str = "study"
    """Title of the report."""
    study_dir: str = "runs/study"
    """Where everything goes: sft/, runs/<arm>/seed_<s>/, sasrec/, references.json, report.md, plots."""
    base: str = ""
    """Base run config YAML (relative paths: to the study file's directory, then the working directory)."""
    base_set: list[str] = field(default_factory=list)
    """Overrides applied to every run of the study (SFT and arms)."""
    sft_set: list[str] = field(default_factory=list)
    """Overrides of the SFT stage (e.g. sft.eval_every, sft.patience); also applied to every arm (a
    `rl.mode=more_sft` arm continues SFT with them). No `eval.*` or `data.*` keys: budget 0 of every curve is
    the SFT evaluation."""
    rl_set: list[str] = field(default_factory=list)
    """Overrides applied to every arm before its own (e.g. `rl.optim.lr`, the RL learning rate)."""
    sft_run: str = ""
    """Start every arm from this finished SFT run directory (e.g. another study's `sft/`, which must hold its
    test_at_best.json) instead of training one: sweeps over arm settings share one SFT stage."""
    arms: list[ArmConfig] = field(default_factory=list)
    """The arms compared."""
    seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    """Seeds of every arm (`seed` of the run config: prompts, rollouts, everything random)."""
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    """Matched rollout budget and validation schedule."""
    test_max_users: int = 0
    """Users scored on the test split (the first N, 0 = all); validation uses the base config's `eval.max_users`."""
    baseline_arm: str = "grpo"
    """Arm the report's relative gains and budget-to-match are measured against."""
    sasrec: SasrecConfig = field(default_factory=SasrecConfig)
    """The SASRec reference."""
    engine_note: str = ""
    """Free text added to the report's setup section (e.g. why a non-default engine was chosen)."""
    quick: dict[str, Any] = field(default_factory=dict)
    """Mapping merged over this file's top-level keys by `--quick` (the tiny variant a test runs)."""

    def validate(self) -> None:
        _require(bool(self.base), "base: a base run config is required")
        _require(self.test_max_users >= 0, f"test_max_users must be >= 0, got {self.test_max_users}")
        _require(bool(self.arms), "arms: list at least one arm")
        names = [a.name for a in self.arms]
        _require(len(set(names)) == len(names), f"arm names must be unique, got {names}")
        _require(bool(self.seeds) and len(set(self.seeds)) == len(self.seeds), f"seeds must be distinct, got {self.seeds}")
        shared = [o for o in self.sft_set if o.split("=")[0].strip().startswith(("eval.", "data."))]
        shared += [o for a in self.arms for o in a.set if o.split("=")[0].strip().startswith("data.")]
        shared += [o for o in self.rl_set if o.split("=")[0].strip().startswith("data.")]
        _require(not shared, f"sft_set may not change eval.* or data.*, arms and rl_set not data.* "
                             f"(one prepared dataset and one evaluation protocol per study): {shared}")
