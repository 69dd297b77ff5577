"""What a study runs: its config (``--quick`` merged in), and the run config of every stage and run.

Layout of ``study_dir`` (everything the report reads is in here)::

    study.yaml                     the resolved StudyConfig
    configs/<run>.yaml             the full run config each recast-train / recast-eval call gets
    references.json                popularity / count-Markov (/ oracle) on valid and test
    sft/                           the SFT run directory (+ test_at_best.json)
    sasrec/                        RecBole SASRec output (+ metrics.json, our metrics of its rankings)
    runs/<arm>/seed_<s>/           one run directory per arm and seed (+ test_at_best.json)
    logs/<run>.log                 stdout/stderr of every subprocess
    report.md, valid_vs_budget.png, mechanism.png

Run configs: base file -> ``base_set`` -> ``sft_set`` -> (arms) ``rl_set`` -> the arm's ``set`` -> what the
study fixes (run_dir, seed, stage switches, the budget's steps and evaluation schedule). Every arm continues
the SFT run's final checkpoint (which holds its best evaluation's weights) with ``checkpoint.load_dir``: RL
arms start their fresh RL optimizer there (``rl.optim``), the more-SFT control (``rl.mode=more_sft``)
continues SFT's optimizer and data feed for as many steps as an RL arm has.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from recast_mcore.config.base import ConfigError, apply_overrides, from_dict, load_yaml, to_dict
from recast_mcore.config.run import RunConfig
from recast_mcore.config.study import ArmConfig, StudyConfig


def step_rollouts(run: RunConfig) -> int:
    """Candidates one RL step samples: B x G, or B x beam_width in ``rollout.mode: beam`` (every beam counts).
    A ``rl.mode=more_sft`` arm samples nothing; its x axis is this figure of its config per step."""
    per_prompt = run.rollout.beam_width if run.rollout.mode == "beam" else run.rollout.sampling.group_size
    return run.rl.prompts_per_step * per_prompt


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` merged into a copy of ``base``: mappings recursively, everything else (lists too) replaced."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_study(path: str | Path, quick: bool = False, overrides: list[str] | None = None) -> tuple[StudyConfig, Path]:
    """The StudyConfig of ``path`` (with its ``quick`` mapping merged when ``quick``) and the resolved base path."""
    path = Path(path)
    data = load_yaml(path)
    source = str(path)
    if quick:
        if not data.get("quick"):
            raise ConfigError(f"{path}: --quick needs a 'quick:' mapping in the study file")
        data = deep_merge(data, data["quick"])
        source += " (quick)"
    if overrides:
        data = apply_overrides(data, list(overrides))
        source += " + --set overrides"
    cfg = from_dict(StudyConfig, data, source=source)
    return cfg, resolve_path(cfg.base, path.parent, "base")


def resolve_path(name: str, study_dir_of_file: Path, what: str) -> Path:
    """``name`` relative to the study file's directory, else to the working directory."""
    for candidate in (study_dir_of_file / name, Path(name)):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"{what}: {name} not found (looked in {study_dir_of_file} and {Path.cwd()})")


@dataclass(frozen=True)
class RunSpec:
    """One recast-train run of the study."""

    name: str
    """Unique name: ``sft`` or ``<arm>_seed<s>`` (config and log file names)."""
    run_dir: Path
    arm: str
    """Arm name (``sft`` for the SFT stage)."""
    kind: str
    """``sft_stage`` (the SFT run) or ``arm``."""
    seed: int
    config: dict[str, Any]
    """The full run-config mapping (validated)."""



class StudyPlan:
    """Every run of a study, in execution order, with validated run configs."""

    def __init__(self, cfg: StudyConfig, base_path: Path) -> None:
        self.cfg = cfg
        self.root = Path(cfg.study_dir)
        self.base = apply_overrides(load_yaml(base_path), list(cfg.base_set))
        self.base_run = self._validated(self.base, f"{base_path} + base_set")
        self.sft = self._sft_stage()
        self.runs = [self._arm_run(arm, seed) for seed in cfg.seeds for arm in cfg.arms]

    # ------------------------------------------------------------------ helpers
    def _validated(self, data: dict[str, Any], source: str) -> RunConfig:
        return from_dict(RunConfig, copy.deepcopy(data), source=source)

    def config_path(self, spec: RunSpec) -> Path:
        return self.root / "configs" / f"{spec.name}.yaml"

    def log_path(self, spec: RunSpec) -> Path:
        return self.root / "logs" / f"{spec.name}.log"

    # ------------------------------------------------------------------ stages
    def _sft_stage(self) -> RunSpec:
        data = apply_overrides(copy.deepcopy(self.base), list(self.cfg.sft_set))
        run_dir = self.root / "sft"
        if self.cfg.sft_run:
            run_dir = Path(self.cfg.sft_run)
            if not (run_dir / "test_at_best.json").is_file():
                raise ConfigError(f"sft_run={run_dir}: not a finished study SFT run (no test_at_best.json)")
        data = apply_overrides(data, [
            f"run_dir={run_dir}", "sft.enabled=true", "rl.enabled=false", "eval.split=valid",
            "logging.progress_bar=false",
        ])
        self._validated(data, "sft stage")
        return RunSpec(name="sft", run_dir=run_dir, arm="sft", kind="sft_stage", seed=int(data.get("seed", 1234)), config=data)

    def _arm_run(self, arm: ArmConfig, seed: int) -> RunSpec:
        data = apply_overrides(copy.deepcopy(self.base), list(self.cfg.sft_set) + list(self.cfg.rl_set) + list(arm.set))
        run_dir = self.root / "runs" / arm.name / f"seed_{seed}"
        per_step = step_rollouts(self._validated(data, f"arm {arm.name}"))
        budget = self.cfg.budget
        if budget.rollouts % per_step or budget.eval_every % per_step:
            raise ConfigError(
                f"arm {arm.name}: budget.rollouts={budget.rollouts} and budget.eval_every={budget.eval_every} must be "
                f"multiples of one step's rollouts ({per_step} = prompts_per_step x group_size, or x beam_width in beam mode)"
            )
        steps, every = budget.rollouts // per_step, budget.eval_every // per_step
        data = apply_overrides(data, [
            f"run_dir={run_dir}", f"seed={seed}", "eval.split=valid", "logging.progress_bar=false",
            "sft.enabled=false", "rl.enabled=true", "rl.init_checkpoint=", f"checkpoint.load_dir={self.sft.run_dir}",
            f"rl.steps={steps}", f"rl.eval_every={every}", "eval.keep_best=true",
            f"checkpoint.save_interval={every}", "checkpoint.keep_last=1",
        ])
        self._validated(data, f"arm {arm.name} seed {seed}")
        return RunSpec(name=f"{arm.name}_seed{seed}", run_dir=run_dir, arm=arm.name, kind="arm", seed=seed, config=data)

    def write_configs(self) -> None:
        """Write study.yaml and configs/<run>.yaml (what every subprocess reads)."""
        (self.root / "configs").mkdir(parents=True, exist_ok=True)
        (self.root / "study.yaml").write_text(yaml.safe_dump(to_dict(self.cfg), sort_keys=False))
        for spec in [self.sft, *self.runs]:
            self.config_path(spec).write_text(yaml.safe_dump(spec.config, sort_keys=False))
