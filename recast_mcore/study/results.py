"""Reading a study back from its directory alone (study.yaml, references.json, the run directories).

Per run: the validation curve (its RL-stage evaluations, x = cumulative rollout budget; for the more-SFT
control x = step x the rollouts one RL step of its config samples, the budget an RL arm spends in as many
steps), the test
metrics at its best validation (``test_at_best.json``), the per-step mechanism and cost figures of RL
records. Nothing here is recomputed from a model: every number is read from files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from recast_mcore.utils.metric_log import read_records

CURVE_METRICS = ("pass@1", "recall@10", "ndcg@10")
MECHANISM = {
    "signal/frac_all_zero": "all-zero groups",
    "signal/frac_single_hit": "single-hit groups",
    "signal/frac_repaired": "repaired groups",
    "update_width": "update width (rows / prompt)",
    "signal/mean_pair_margin": "pair margin s+ - s- (old policy)",
    "hit_rate": "sampled hit rate",
}
COST = {
    "actor_time_s": "actor update s/step",
    "rollout_time_s": "rollout s/step",
    "actor/peak_memory_bytes": "actor peak memory MB",
    "update_sequences": "rows / step",
}


def eval_records(run_dir: Path, stage: str) -> list[dict[str, Any]]:
    """Evaluation records of ``stage`` (``sft`` or ``rl``) in the run's metrics.jsonl, in log order."""
    return [r for r in read_records(Path(run_dir) / "metrics.jsonl") if r["stage"] == "eval" and r.get("at_stage") == stage]


def best_evaluation(records: list[dict[str, Any]], metric: str) -> dict[str, Any] | None:
    """The first record with the highest ``metric`` (the trainer's rule: a tie is not an improvement)."""
    best = None
    for r in records:
        if r.get(metric) is not None and (best is None or r[metric] > best[metric]):
            best = r
    return best


@dataclass
class RunResult:
    """One run of an arm."""

    arm: str
    seed: int
    curve: list[tuple[int, dict[str, float]]]
    """(rollout budget, valid metrics) per evaluation."""
    test: dict[str, Any] | None
    """test_at_best.json (None while the run is unfinished)."""
    steps: list[dict[str, Any]] = field(default_factory=list)
    """RL step records (mechanism and cost figures)."""


@dataclass
class StudyResults:
    study: dict[str, Any]
    references: dict[str, Any]
    sft: dict[str, Any] | None
    """The SFT stage's test_at_best.json."""
    sft_curve: list[tuple[int, dict[str, float]]]
    """The SFT stage's evaluations as (SFT step, valid metrics)."""
    sasrec: dict[str, Any] | None
    """sasrec/metrics.json, or {"not_run": reason}."""
    runs: list[RunResult]

    def arms(self) -> list[str]:
        return [a["name"] for a in self.study["arms"]]

    def by_arm(self, arm: str) -> list[RunResult]:
        return [r for r in self.runs if r.arm == arm]


def _json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.is_file() else None


def _metrics(record: dict[str, Any]) -> dict[str, float]:
    return {k: record[k] for k in record if "@" in k and record[k] is not None}


def eval_budget(record: dict[str, Any], config: dict[str, Any]) -> int:
    """x of an RL-stage evaluation: its rollout budget; for the more-SFT control (``rl.mode: more_sft``, which
    samples nothing) RL step x the candidates one RL step of its config would sample."""
    if config.get("rl", {}).get("mode", "rl") != "more_sft":
        return int(record["rollout_budget"])
    from recast_mcore.config.base import from_dict
    from recast_mcore.config.run import RunConfig
    from recast_mcore.study.spec import step_rollouts

    return int(record["step"]) * step_rollouts(from_dict(RunConfig, config, source="run config.yaml"))


def read_run(run_dir: Path, arm: str, seed: int) -> RunResult:
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").is_file() else {}
    curve = [(eval_budget(r, config), _metrics(r)) for r in eval_records(run_dir, "rl")]
    steps = [r for r in read_records(run_dir / "metrics.jsonl") if r["stage"] == "rl" and r.get("rollouts")]
    return RunResult(arm=arm, seed=seed, curve=curve, test=_json(run_dir / "test_at_best.json"), steps=steps)


def sft_dir(root: Path, study: dict[str, Any]) -> Path:
    """The SFT run the arms started from: the study's own ``sft/``, or ``sft_run`` when it reuses one."""
    return Path(study["sft_run"]) if study.get("sft_run") else root / "sft"


def read_study(root: str | Path) -> StudyResults:
    """Everything the report shows, from ``root`` alone."""
    root = Path(root)
    study = yaml.safe_load((root / "study.yaml").read_text())
    runs = []
    for seed in study["seeds"]:
        for arm in study["arms"]:
            run_dir = root / "runs" / arm["name"] / f"seed_{seed}"
            if (run_dir / "metrics.jsonl").is_file():
                runs.append(read_run(run_dir, arm["name"], seed))
    sasrec = _json(root / "sasrec" / "metrics.json")
    if sasrec is None and (root / "sasrec" / "not_run.txt").is_file():
        sasrec = {"not_run": (root / "sasrec" / "not_run.txt").read_text().strip()}
    sft = sft_dir(root, study)
    sft_curve = [(r["step"], _metrics(r)) for r in eval_records(sft, "sft")] if sft.is_dir() else []
    return StudyResults(study=study, references=_json(root / "references.json") or {}, sft=_json(sft / "test_at_best.json"),
                        sft_curve=sft_curve, sasrec=sasrec, runs=runs)
