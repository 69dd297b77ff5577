"""PNG plots of a run's JSONL metrics (matplotlib, Agg backend), against step and against rollout budget.

`plot_run(jsonl, out_dir)` draws:
  rl_<metric>_vs_step.png and rl_<metric>_vs_budget.png for every RL curve in ``RL_CURVES`` present in
  the log (reward, hit rate, all-zero-group fraction, update width, actor time), and
  eval_vs_step.png / eval_vs_budget.png with one line per eval metric (RL-stage evaluations; the
  post-SFT evaluation is the point at step 0), and sft_loss.png.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from recast_mcore.utils.metric_log import read_records  # noqa: E402

RL_CURVES = {
    "reward_mean": "mean reward per candidate",
    "hit_rate": "hit rate (candidates that are a target)",
    "all_zero_group_frac": "all-zero-reward group fraction",
    "update_width": "update width (sequences trained on)",
    "actor_time_s": "actor update time (s)",
}


def _series(records: list[dict[str, Any]], key: str, x_key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for r in records:
        if r.get(key) is not None:
            xs.append(r[x_key])
            ys.append(r[key])
    return xs, ys


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_one(records, key: str, title: str, x_key: str, xlabel: str, path: Path) -> None:
    xs, ys = _series(records, key, x_key)
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot(xs, ys, marker="." if len(xs) < 50 else None)
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    _save(fig, path)


def _eval_records(records):
    """Eval records placed on the RL axis: post-SFT eval at step 0 / budget 0, RL evals at their step."""
    out = []
    for r in records:
        if r["stage"] != "eval":
            continue
        if r.get("at_stage") == "sft":
            r = {**r, "step": 0, "rollout_budget": 0}
        out.append(r)
    return out


def plot_run(jsonl: str | Path, out_dir: str | Path) -> list[Path]:
    """Draw every plot the log has data for; returns the written paths."""
    records = read_records(jsonl)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    rl = [r for r in records if r["stage"] == "rl"]
    for key, title in RL_CURVES.items():
        if not any(r.get(key) is not None for r in rl):
            continue
        for x_key, xlabel, suffix in (("step", "RL step", "step"), ("rollout_budget", "rollout budget (candidates sampled)", "budget")):
            path = out / f"rl_{key}_vs_{suffix}.png"
            _plot_one(rl, key, title, x_key, xlabel, path)
            written.append(path)
    evals = _eval_records(records)
    keys = sorted({k for r in evals for k in r if "@" in k})
    if evals and keys:
        for x_key, xlabel, suffix in (("step", "RL step (0 = after SFT)", "step"), ("rollout_budget", "rollout budget", "budget")):
            fig, ax = plt.subplots(figsize=(6, 4))
            for key in keys:
                xs, ys = _series(evals, key, x_key)
                ax.plot(xs, ys, marker="o", label=key)
            ax.set_xlabel(xlabel)
            ax.set_title("evaluation")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6, ncol=3)
            path = out / f"eval_vs_{suffix}.png"
            _save(fig, path)
            written.append(path)
    sft = [r for r in records if r["stage"] == "sft"]
    if any(r.get("loss") is not None for r in sft):
        path = out / "sft_loss.png"
        _plot_one(sft, "loss", "SFT loss", "step", "SFT step", path)
        written.append(path)
    return written
