"""The SASRec reference row: RecBole 1.2.1 in its own environment (tools/recbole/), scored by our metrics.

``tools/recbole/run_sasrec.py`` (run with ``sasrec.python``, the RecBole venv) writes the study's split as
RecBole benchmark files, trains SASRec with early stopping on valid NDCG@10 and writes the full-catalog
top-50 item indices of every valid and test user. Here those ranked lists are scored (after dropping the
user's seen items when the study's ``eval.exclude_history`` is on, as for every other row) with
``recast_mcore.eval.metrics.ranking_metrics`` against the prepared targets, exactly like the generative
model's beam-search lists, into ``sasrec/metrics.json``. When the RecBole environment is missing the
study does not fail: it writes ``sasrec/not_run.txt`` saying so and how to create it, and the report
prints that line in place of the row.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from recast_mcore.eval.evaluate import drop_seen
from recast_mcore.eval.metrics import ranking_metrics

KS = [1, 5, 10]
REPO = Path(__file__).resolve().parents[2]
DRIVER = REPO / "tools" / "recbole" / "run_sasrec.py"


def score_ranked(ranked: list[list[int]], targets: list[list[int]], seen: list[list[int]] | None = None) -> dict[str, float]:
    """Our metrics of ranked item lists (users in prepared order) against the split's target sets; with
    ``seen``, those items are dropped first (the generative model's ``eval.exclude_history``)."""
    if len(ranked) != len(targets):
        raise ValueError(f"{len(ranked)} ranked lists for {len(targets)} users")
    lists = torch.tensor(ranked, dtype=torch.long)
    if seen is not None:
        lists = drop_seen(lists, seen)
    return ranking_metrics(lists, targets, KS)


def run_sasrec(plan, prepared: Path, echo) -> None:
    from recast_mcore.data.dataset import PreparedDataset
    from recast_mcore.study.runner import add_timing, run_logged

    cfg = plan.cfg.sasrec
    out = plan.root / "sasrec"
    if (out / "metrics.json").is_file():
        return
    out.mkdir(parents=True, exist_ok=True)
    python = Path(cfg.python) if Path(cfg.python).is_absolute() else REPO / cfg.python
    if not python.is_file() or not DRIVER.is_file():
        reason = (f"SASRec not run: the RecBole environment {python} does not exist; create it with "
                  f"`bash tools/recbole/setup.sh` and rerun the study (finished runs are skipped)")
        (out / "not_run.txt").write_text(reason + "\n")
        echo(f"[study] WARNING {reason}")
        return
    (out / "not_run.txt").unlink(missing_ok=True)
    echo("[study] SASRec (RecBole) on the same split")
    cmd = [python, DRIVER, "--prepared", prepared.resolve(), "--out", out.resolve(), "--epochs", str(cfg.epochs),
           "--stopping-step", str(cfg.stopping_step), *cfg.extra_args]
    seconds, cpu = run_logged(cmd, plan.root / "logs" / "sasrec.log", "SASRec (tools/recbole/run_sasrec.py)")
    add_timing(out, "sasrec", seconds, cpu)
    ds = PreparedDataset.load(prepared)
    exclude = bool(plan.sft.config.get("eval", {}).get("exclude_history", False))
    seen = {"valid": ds.train_sequences, "test": [t + v for t, v in zip(ds.train_sequences, ds.valid_targets)]}
    result = {"exclude_history": exclude, "recbole": json.loads((out / "recbole_metrics.json").read_text())}
    users = json.loads((plan.root / "references.json").read_text())["users_scored"]  # the same users as every row
    for split, targets in (("valid", ds.valid_targets), ("test", ds.test_targets)):
        n = users[split]
        ranked = json.loads((out / f"ranked_{split}.json").read_text())[:n]
        result[split] = score_ranked(ranked, targets[:n], seen[split][:n] if exclude else None)
    (out / "metrics.json").write_text(json.dumps(result, indent=1) + "\n")
