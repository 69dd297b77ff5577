"""Running a study, one subprocess after another, resumable at any point.

Order: prepare the dataset (when its ``meta.json`` is missing) -> references.json -> the SFT stage ->
its test score -> SASRec (RecBole) -> every arm x seed (seed-major) -> the report (rewritten after every
finished run, so a long study shows partial results).

A run is finished when its ``test_at_best.json`` exists; otherwise ``recast-train`` is called on its
config (which resumes from the run's own ``checkpoints/latest``, or returns at once when training is
done) and the test split is scored. So a killed study resumes where it stopped: finished runs are
skipped, a half-trained run continues from its last checkpoint, every subprocess appends to
``logs/<run>.log``; its wall and CPU seconds go to ``<run_dir>/study_timing.json``. Every run is a normal run directory (``recast-train``/``recast-eval`` work on it).

The test split is scored ONCE per run, at its best validation by ``eval.select_metric`` (the first maximum
over the run's evaluations; no test-set selection): arms keep that checkpoint (``eval.keep_best``), the SFT
run ends on it (trainer/sft.py).
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from recast_mcore.study.results import best_evaluation, eval_budget, eval_records
from recast_mcore.study.spec import RunSpec, StudyPlan

Echo = Callable[[str], None]
TEST_FILE = "test_at_best.json"
TIMING_FILE = "study_timing.json"


class StudyError(RuntimeError):
    """A stage of the study failed; the message names it and ends with its log's last lines."""


def run_logged(cmd: list[str], log_path: Path, what: str) -> tuple[float, float]:
    """Run ``cmd`` with stdout/stderr appended to ``log_path``; raise StudyError on failure.

    Returns (wall seconds, CPU seconds of the subprocess tree: user + system, RUSAGE_CHILDREN delta). On a
    shared machine the CPU seconds are the load-independent cost (a quiet 2-core machine runs a 2-thread
    job in about CPU seconds / 2 to CPU seconds of wall time)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with log_path.open("a") as log:
        log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(map(str, cmd))}\n")
        log.flush()
        proc = subprocess.run([str(c) for c in cmd], stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
    if proc.returncode != 0:
        tail = "\n".join(log_path.read_text().splitlines()[-25:])
        raise StudyError(f"{what} failed (exit code {proc.returncode}); last lines of {log_path}:\n{tail}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return time.perf_counter() - start, cpu


def _python_module(module: str) -> list[str]:
    return [sys.executable, "-m", module]


def prepare_data(plan: StudyPlan, echo: Echo) -> Path:
    """The prepared dataset every run reads (prepared from the SFT stage's data section when missing)."""
    dirs = {spec.config["data"]["prepared_dir"] for spec in [plan.sft, *plan.runs]}
    if len(dirs) != 1:
        raise StudyError(f"all runs of a study must read one prepared dataset (the SFT checkpoint is tied to it); got {sorted(dirs)}")
    prepared = Path(dirs.pop())
    if not (prepared / "meta.json").is_file():
        echo(f"[study] preparing {prepared}")
        run_logged(_python_module("recast_mcore.data.cli") + ["prepare", "--config", plan.config_path(plan.sft), "--out", prepared],
                   plan.root / "logs" / "prepare.log", "recast-data prepare")
    return prepared


def write_references(plan: StudyPlan, prepared: Path) -> None:
    """references.json: the prepared dataset's summary and its count baselines (and, on synthetic data, the
    oracle) on exactly the users the models are scored on: the first ``eval.max_users`` valid users and the
    first ``test_max_users`` test users (0 = all); counts always come from every training sequence."""
    out = plan.root / "references.json"
    if out.is_file():
        return
    from recast_mcore.data.baseline import count_baselines
    from recast_mcore.data.dataset import PreparedDataset

    ds = PreparedDataset.load(prepared)
    n_valid = plan.sft.config.get("eval", {}).get("max_users", 0) or ds.num_users
    n_test = plan.cfg.test_max_users or ds.num_users
    train, valid, test = ds.train_sequences, ds.valid_targets, ds.test_targets
    baselines = {
        "valid": count_baselines(train, valid[:n_valid], ds.num_items, histories=train[:n_valid]),
        "test": count_baselines(train, test[:n_test], ds.num_items, histories=[t + v for t, v in zip(train[:n_test], valid)]),
    }
    if ds.meta.get("dataset") == "synthetic":
        add_oracle(prepared, baselines, {"valid": (valid, n_valid), "test": (test, n_test)})
    keys = ("dataset", "users", "items", "interactions", "sparsity", "mean_sequence_length", "max_history", "target_set_size")
    summary = {k: ds.meta.get(k) for k in keys}
    summary["semantic_ids"] = {k: ds.meta["semantic_ids"].get(k) for k in ("codes_per_level", "item_len", "collision_rate")}
    _write_json(out, {"prepared_dir": str(prepared), "dataset": summary, "users_scored": {"valid": n_valid, "test": n_test},
                      "baselines": baselines})


def add_oracle(prepared: Path, baselines: dict, splits: dict) -> None:
    """The Bayes-optimal oracle (data/oracle.py) of the generator in the prepared config, on the same users."""
    from recast_mcore.config.base import load_config
    from recast_mcore.config.data import DataConfig
    from recast_mcore.data.oracle import oracle_metrics

    cfg = load_config(DataConfig, prepared / "config.yaml")
    users = [line.split("\t")[1] for line in (prepared / "users.tsv").read_text().splitlines()[1:]]
    items = [line.split("\t")[1] for line in (prepared / "items.tsv").read_text().splitlines()[1:]]
    for split, (targets, n) in splits.items():
        baselines[split]["oracle"] = oracle_metrics(cfg.synthetic, users[:n], items, targets[:n])


def train(plan: StudyPlan, spec: RunSpec, echo: Echo) -> None:
    """recast-train on the run's config (resumes or returns at once when it is done)."""
    echo(f"[study] {spec.name}: training in {spec.run_dir}")
    seconds, cpu = run_logged(_python_module("recast_mcore.trainer.cli") + ["--config", plan.config_path(spec)],
                              plan.log_path(spec), f"recast-train {spec.name}")
    add_timing(spec.run_dir, "train", seconds, cpu)


def add_timing(run_dir: Path, what: str, seconds: float, cpu: float) -> None:
    """Append one completed subprocess's wall and CPU seconds to the run's study_timing.json."""
    path = run_dir / TIMING_FILE
    timing = json.loads(path.read_text()) if path.is_file() else {}
    timing.setdefault(f"{what}_wall_s", []).append(round(seconds, 1))
    timing.setdefault(f"{what}_cpu_s", []).append(round(cpu, 1))
    _write_json(path, timing)


def best_checkpoint(spec: RunSpec, step: int) -> Path:
    """Arms: the kept ``rl_step_<best>``; the SFT stage: its final checkpoint (it holds the best weights)."""
    root = spec.run_dir / "checkpoints"
    path = root / (f"rl_step_{step:06d}" if spec.kind == "arm" else (root / "latest").read_text().strip())
    if not path.is_dir():
        raise StudyError(f"{spec.name}: the best-validation checkpoint {path} is missing (was it pruned?)")
    return path


def score_test(plan: StudyPlan, spec: RunSpec, echo: Echo) -> dict:
    """test_at_best.json: the run's best validation and the test metrics of that checkpoint (once)."""
    out = spec.run_dir / TEST_FILE
    if out.is_file():
        return json.loads(out.read_text())
    stage = "rl" if spec.kind == "arm" else "sft"
    select = spec.config.get("eval", {}).get("select_metric", "ndcg@10")
    best = best_evaluation(eval_records(spec.run_dir, stage), select)
    if best is None:
        raise StudyError(f"{spec.name}: no {stage} evaluation in {spec.run_dir / 'metrics.jsonl'} to select from")
    checkpoint = best_checkpoint(spec, best["step"])
    tmp = spec.run_dir / "test_eval.json"
    echo(f"[study] {spec.name}: test split at step {best['step']} ({checkpoint.name})")
    seconds, cpu = run_logged(_python_module("recast_mcore.eval.cli") + ["--config", plan.config_path(spec), "--checkpoint",
                                                                       checkpoint, "--split", "test", "--out", tmp,
                                                                       "--set", f"eval.max_users={plan.cfg.test_max_users}"],
                              plan.log_path(spec), f"recast-eval {spec.name}")
    add_timing(spec.run_dir, "test", seconds, cpu)
    result = {"run": spec.name, "arm": spec.arm, "kind": spec.kind, "seed": spec.seed, "select_metric": select,
              "best_step": best["step"], "best_budget": eval_budget(best, spec.config) if spec.kind == "arm" else 0,
              "checkpoint": str(checkpoint),
              "valid": {k: v for k, v in best.items() if "@" in k}, "test": json.loads(tmp.read_text())}
    _write_json(out, result)
    tmp.unlink()
    return result


def run_study(plan: StudyPlan, echo: Echo = print, shared_only: bool = False) -> None:
    """Everything, in order, skipping what is already done (module docstring); ``shared_only`` stops
    after the stages every arm shares (data, references, SFT, SASRec)."""
    from recast_mcore.study.report import write_report
    from recast_mcore.study.sasrec import run_sasrec

    plan.write_configs()
    prepared = prepare_data(plan, echo)
    write_references(plan, prepared)
    if not (plan.sft.run_dir / TEST_FILE).is_file():
        train(plan, plan.sft, echo)
        score_test(plan, plan.sft, echo)
    if plan.cfg.sasrec.enabled:
        run_sasrec(plan, prepared, echo)
    if shared_only:
        write_report(plan.root, echo=echo)
        return
    for spec in plan.runs:
        if (spec.run_dir / TEST_FILE).is_file():
            continue
        train(plan, spec, echo)
        score_test(plan, spec, echo)
        write_report(plan.root, echo=lambda _: None)
    write_report(plan.root, echo=echo)


def _write_json(path: Path, data) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)
