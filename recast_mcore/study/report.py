"""The study report: ``report.md`` + ``valid_vs_budget.png`` + ``mechanism.png`` in the study directory,
built from the directory alone (results.py), so ``recast-study --config X --report-only`` regenerates it.

Aggregation: over the seeds of an arm, mean and sample standard deviation (n - 1; "sd" is 0 with one
seed). Relative gain over the baseline arm: (mean_arm - mean_base) / mean_base. Budget to match: the
baseline arm's best mean validation Pass@1 is reached at budget B_base; an arm's budget to match is the
first budget at which its mean validation Pass@1 is at least that value, reported as a percentage of B_base
(the paper's "4.1% of the rollout budget" figure); budget 0 is the shared SFT checkpoint.
"""

from __future__ import annotations

import math
from pathlib import Path
from statistics import mean, stdev
from typing import Any, Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from recast_mcore.study.results import COST, CURVE_METRICS, MECHANISM, RunResult, StudyResults, read_study, sft_dir  # noqa: E402

TABLE_METRICS = ("pass@1", "recall@10", "ndcg@10")


def _ms(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return float("nan"), float("nan")
    return mean(values), stdev(values) if len(values) > 1 else 0.0


def _fmt(m: float, s: float | None = None, digits: int = 4) -> str:
    if m is None or math.isnan(m):
        return "-"
    return f"{m:.{digits}f}" if s is None else f"{m:.{digits}f} ± {s:.{digits}f}"


def mean_curve(runs: list[RunResult], start: dict[str, float] | None) -> dict[int, dict[str, tuple[float, float]]]:
    """budget -> metric -> (mean, sd) over the runs that have that budget; budget 0 = ``start`` (the SFT point)."""
    budgets = sorted({b for r in runs for b, _ in r.curve})
    out = {}
    if start:
        out[0] = {k: (start[k], 0.0) for k in CURVE_METRICS if k in start}
    for b in budgets:
        points = [m for r in runs for bb, m in r.curve if bb == b]
        out[b] = {k: _ms([p.get(k) for p in points]) for k in CURVE_METRICS}
    return out


def budget_to_match(base: dict[int, dict[str, tuple[float, float]]], arm: dict[int, dict[str, tuple[float, float]]],
                    metric: str = "pass@1") -> tuple[float | None, int | None, int | None]:
    """(arm budget / base budget in %, arm budget, base budget) to reach the base's best mean ``metric``."""
    scored = [(b, v[metric][0]) for b, v in sorted(base.items()) if b > 0 and not math.isnan(v[metric][0])]
    if not scored:
        return None, None, None
    best_b, best_v = max(scored, key=lambda bv: (bv[1], -bv[0]))
    reach = next((b for b, v in sorted(arm.items()) if b > 0 and not math.isnan(v[metric][0]) and v[metric][0] >= best_v), None)
    if reach is None:
        return None, None, best_b
    return 100.0 * reach / best_b, reach, best_b


def _ref_rows(res: StudyResults) -> list[tuple[str, dict[str, float] | None, str]]:
    base = res.references.get("baselines", {})
    rows = []
    for name, label in (("popularity", "popularity (count)"), ("markov", "count-Markov (first order)"),
                        ("oracle", "oracle (Bayes-optimal, knows the generator)")):
        if name in (base.get("test") or {}):
            rows.append((label, base["test"][name], "expected value" if name == "oracle" else ""))
    if res.sasrec is None:
        rows.append(("SASRec (RecBole)", None, "not run yet"))
    elif "not_run" in res.sasrec:
        rows.append(("SASRec (RecBole)", None, res.sasrec["not_run"]))
    else:
        epochs = res.sasrec["recbole"].get("epochs_run")
        rows.append(("SASRec (RecBole 1.2.1)", res.sasrec["test"], f"{epochs} epochs, best {res.sasrec['recbole'].get('best_epoch')}"))
    if res.sft:
        rows.append(("SFT (the arms' start)", res.sft["test"], f"best valid at SFT step {res.sft['best_step']}"))
    return rows


def _test_table(res: StudyResults) -> list[str]:
    base_arm = res.study.get("baseline_arm", "grpo")
    lines = ["| model | n | budget at best valid | Pass@1 | Recall@10 | NDCG@10 | Pass@1 vs " + base_arm
             + " | NDCG@10 vs " + base_arm + " |", "| --- | ---: | ---: | --- | --- | --- | ---: | ---: |"]
    for label, metrics, note in _ref_rows(res):
        cells = [_fmt(metrics[k]) if metrics and k in metrics else "-" for k in TABLE_METRICS]
        lines.append(f"| {label}{' (' + note + ')' if note else ''} | 1 | | " + " | ".join(cells) + " | | |")
    base_means = _arm_test_means(res.by_arm(base_arm))
    for arm in res.arms():
        runs = [r for r in res.by_arm(arm) if r.test]
        if not runs:
            lines.append(f"| {arm} | 0 | | | | | | |")
            continue
        stats = {k: _ms([r.test["test"][k] for r in runs]) for k in TABLE_METRICS}
        budget = mean(r.test["best_budget"] for r in runs)
        gains = []
        for k in ("pass@1", "ndcg@10"):
            b = base_means.get(k)
            gains.append(f"{100 * (stats[k][0] - b) / b:+.1f}%" if b else "-")
        cells = [_fmt(*stats[k]) for k in TABLE_METRICS]
        lines.append(f"| {arm} | {len(runs)} | {budget:,.0f} | " + " | ".join(cells) + " | " + " | ".join(gains) + " |")
    return lines


def _arm_test_means(runs: list[RunResult]) -> dict[str, float]:
    runs = [r for r in runs if r.test]
    return {k: mean(r.test["test"][k] for r in runs) for k in TABLE_METRICS} if runs else {}


def _match_lines(res: StudyResults, curves: dict[str, dict]) -> list[str]:
    base_arm = res.study.get("baseline_arm", "grpo")
    if base_arm not in curves:
        return [f"(no runs of the baseline arm `{base_arm}` yet)"]
    lines = ["| arm | budget to reach the best mean valid Pass@1 of " + base_arm + " | % of " + base_arm + "'s budget at its best |",
             "| --- | ---: | ---: |"]
    for arm, curve in curves.items():
        if arm == base_arm:
            continue
        pct, reach, best_b = budget_to_match(curves[base_arm], curve)
        if best_b is None:
            continue
        lines.append(f"| {arm} | {reach:,} | {pct:.1f}% |" if reach is not None
                     else f"| {arm} | not reached within {max(curve):,} | - |")
    if len(lines) > 2:
        _, _, best_b = budget_to_match(curves[base_arm], curves[base_arm])
        best_v = curves[base_arm][best_b]["pass@1"][0]
        start = curves[base_arm].get(0, {}).get("pass@1", (float("nan"),))[0]
        lines.append(f"\n{base_arm}'s best mean valid Pass@1 is {best_v:.4f} at budget {best_b:,} "
                     f"(budget 0 = the SFT checkpoint, mean valid Pass@1 {start:.4f}).")
        if not best_v > start:
            lines.append(f"{base_arm} never improved on the SFT checkpoint's valid Pass@1, so these budgets say nothing "
                         "about learning speed.")
    return lines


def _plot_curves(res: StudyResults, curves: dict[str, dict], path: Path) -> None:
    fig, axes = plt.subplots(1, len(CURVE_METRICS), figsize=(4.2 * len(CURVE_METRICS), 3.3))
    refs = res.references.get("baselines", {}).get("valid") or {}
    sasrec_valid = res.sasrec.get("valid") if res.sasrec and "valid" in res.sasrec else None
    for ax, metric in zip(axes, CURVE_METRICS):
        for arm, curve in curves.items():
            xs = sorted(curve)
            ms = [curve[x][metric][0] for x in xs]
            sds = [curve[x][metric][1] for x in xs]
            (line,) = ax.plot(xs, ms, marker=".", label=arm)
            ax.fill_between(xs, [m - s for m, s in zip(ms, sds)], [m + s for m, s in zip(ms, sds)], alpha=0.15, color=line.get_color())
        if "markov" in refs and metric in refs["markov"]:
            ax.axhline(refs["markov"][metric], ls="--", color="gray", lw=1, label="count-Markov")
        if sasrec_valid:
            ax.axhline(sasrec_valid[metric], ls=":", color="black", lw=1, label="SASRec")
        ax.set_title(f"valid {metric}")
        ax.set_xlabel("rollout budget (candidates sampled)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _step_series(runs: list[RunResult], key: str) -> tuple[list[int], list[float]]:
    """Mean over seeds of a per-step figure, by budget."""
    by_budget: dict[int, list[float]] = {}
    for r in runs:
        for s in r.steps:
            v = s.get(key)
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                by_budget.setdefault(s["rollout_budget"], []).append(v)
    xs = sorted(by_budget)
    return xs, [mean(by_budget[x]) for x in xs]


def _plot_mechanism(res: StudyResults, path: Path) -> bool:
    rl_arms = [a for a in res.arms() if any(r.steps for r in res.by_arm(a))]
    if not rl_arms:
        return False
    keys = list(MECHANISM)
    cols = 3
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows))
    for ax, key in zip(axes.flat, keys):
        for arm in rl_arms:
            xs, ys = _step_series(res.by_arm(arm), key)
            if xs:
                window = max(1, len(ys) // 15)
                smooth = [mean(ys[max(0, i - window + 1) : i + 1]) for i in range(len(ys))]
                ax.plot(xs, smooth, label=arm)
        ax.set_title(MECHANISM[key], fontsize=9)
        ax.set_xlabel("rollout budget")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    list(axes.flat)[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def _per_step_table(res: StudyResults, columns: dict[str, str], scale: dict[str, float]) -> list[str]:
    lines = ["| arm | " + " | ".join(columns.values()) + " |", "| --- |" + " ---: |" * len(columns)]
    for arm in res.arms():
        steps = [s for r in res.by_arm(arm) for s in r.steps]
        if not steps:
            continue
        cells = []
        for key in columns:
            m, _ = _ms([s.get(key) for s in steps])
            cells.append(_fmt(m * scale.get(key, 1.0), digits=3))
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return lines


def _runs_table(res: StudyResults, root: Path) -> list[str]:
    lines = ["| arm | seed | best step | budget at best | valid (select) | test Pass@1 | test Recall@10 | test NDCG@10 | wall s | CPU s |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in res.runs:
        wall = _timing(root / "runs" / r.arm / f"seed_{r.seed}", "wall")
        cpu = _timing(root / "runs" / r.arm / f"seed_{r.seed}", "cpu")
        if r.test is None:
            lines.append(f"| {r.arm} | {r.seed} | (running) | | | | | | {wall} | {cpu} |")
            continue
        t, sel = r.test, r.test["select_metric"]
        lines.append(f"| {r.arm} | {r.seed} | {t['best_step']} | {t['best_budget']:,} | {sel} {t['valid'].get(sel, float('nan')):.4f} | "
                     + " | ".join(_fmt(t["test"][k]) for k in TABLE_METRICS) + f" | {wall} | {cpu} |")
    return lines


def _timing(run_dir: Path, kind: str) -> str:
    """Total wall or CPU seconds of a directory's completed subprocesses (study_timing.json), or '-'."""
    timing = _read_json(run_dir / "study_timing.json")
    if not timing:
        return "-"
    return f"{sum(sum(v) for k, v in timing.items() if k.endswith(f'_{kind}_s')):.0f}"


def study_totals(root: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of the completed SASRec and arm subprocesses (the SFT stage is added by the caller)."""
    wall = cpu = 0.0
    for path in [root / "sasrec", *sorted((root / "runs").glob("*/seed_*"))]:
        timing = _read_json(path / "study_timing.json") or {}
        wall += sum(sum(v) for k, v in timing.items() if k.endswith("_wall_s"))
        cpu += sum(sum(v) for k, v in timing.items() if k.endswith("_cpu_s"))
    return wall, cpu


def _read_json(path: Path) -> Any:
    import json

    return json.loads(path.read_text()) if path.is_file() else None


def _setup_lines(res: StudyResults, root: Path) -> list[str]:
    import yaml

    ds = res.references.get("dataset", {})
    study = res.study
    sft = sft_dir(root, study)
    sft_cfg = yaml.safe_load((sft / "config.yaml").read_text()) if (sft / "config.yaml").is_file() else {}
    lines = [
        f"- data: `{ds.get('dataset')}` from `{res.references.get('prepared_dir')}`: {ds.get('users')} users, {ds.get('items')} items, "
        f"{ds.get('interactions')} interactions, max history {ds.get('max_history')}, target-set size {ds.get('target_set_size')}, "
        f"semantic IDs {ds.get('semantic_ids', {}).get('codes_per_level')} (collision rate {ds.get('semantic_ids', {}).get('collision_rate', 0):.3f})",
        f"- seeds {study['seeds']}; matched budget {study['budget']['rollouts']:,} rollouts per run, validation every "
        f"{study['budget']['eval_every']:,}; test scored once per run at its best validation by `{sft_cfg.get('eval', {}).get('select_metric', 'ndcg@10')}`",
    ]
    if sft_cfg:
        s, m, r, e = sft_cfg["sft"], sft_cfg["model"], sft_cfg["rollout"], sft_cfg["eval"]
        lines.append(f"- model: {m['num_layers']} layers, d={m['hidden_size']}, ffn {m['ffn_hidden_size']}, {m['num_attention_heads']} heads; "
                     f"SFT `{s['examples']}` examples, batch {s['batch_size']}, lr {sft_cfg['optim']['lr']}, eval every {s['eval_every']} steps, "
                     f"patience {s['patience']}" + (f"; SFT ended on step {res.sft['best_step']}" if res.sft else ""))
        lines.append(f"- rollout engine `{r['engine']}` (G={r['sampling']['group_size']}, temperature {r['sampling']['temperature']}); "
                     f"evaluation: exact constrained beam search, width {e['beam_width']}, seen items "
                     f"{'dropped' if e.get('exclude_history') else 'kept'}, valid on {e['max_users'] or 'all'} users, "
                     f"test on {study.get('test_max_users') or 'all'} users")
    for arm in study["arms"]:
        lines.append(f"- arm `{arm['name']}`: " + (", ".join(f"`{s}`" for s in arm.get("set", [])) or "base config"))
    for key, label in (("sft_set", "SFT stage"), ("rl_set", "every arm")):
        if study.get(key):
            lines.append(f"- {label}: " + ", ".join(f"`{s}`" for s in study[key]))
    if study.get("engine_note"):
        lines.append(f"- {study['engine_note']}")
    wall, cpu = study_totals(root)
    sft_wall, sft_cpu = _timing(sft, "wall"), _timing(sft, "cpu")
    if study.get("sft_run"):
        lines.append(f"- the arms start from the SFT run `{study['sft_run']}` (shared with another study; its time is not counted below)")
    else:
        wall += float(sft_wall) if sft_wall != "-" else 0.0
        cpu += float(sft_cpu) if sft_cpu != "-" else 0.0
    lines.append(f"- time of the completed subprocesses: {wall / 60:.1f} min wall, {cpu / 60:.1f} min CPU "
                 f"(SFT stage {sft_wall} s wall / {sft_cpu} s CPU); wall times depend on the machine's load, CPU "
                 "seconds much less (a quiet 2-core machine needs roughly CPU / 2 to CPU of wall time)")
    return lines


def render(res: StudyResults, root: Path) -> str:
    curves = {}
    sft_start = res.sft["valid"] if res.sft else None
    for arm in res.arms():
        runs = res.by_arm(arm)
        if runs:
            curves[arm] = mean_curve(runs, sft_start)
    out = [f"# Study: {res.study['name']}", "", "Generated by `recast-study` from the run directories under "
           f"`{root}` (regenerate: `recast-study --config STUDY.yaml --report-only`).", "", "## Setup", ""]
    out += _setup_lines(res, root)
    out += ["", "## Test metrics at each run's best validation (mean ± sd over seeds)", ""]
    out += _test_table(res)
    scored = res.references.get("users_scored", {})
    out += ["", f"Every row is scored on the same {scored.get('test', 'all')} test users (history = train + valid items; "
            f"validation: {scored.get('valid', 'all')} users). Reference rows are single runs; the oracle row is the "
            "expected value of the Bayes-optimal ranking (synthetic data only).", ""]
    out += ["## Rollout budget to reach the baseline's best validation Pass@1", ""] + _match_lines(res, curves) + [""]
    if curves:
        _plot_curves(res, curves, root / "valid_vs_budget.png")
        out += ["## Validation metrics vs rollout budget", "", "![valid vs budget](valid_vs_budget.png)", "",
                "Mean over seeds (line) ± sd (band); budget 0 is the shared SFT checkpoint.", ""]
    if _plot_mechanism(res, root / "mechanism.png"):
        out += ["## Mechanism over training (mean over seeds)", "", "![mechanism](mechanism.png)", ""]
        out += _per_step_table(res, MECHANISM, {}) + [""]
        out += ["## Cost per RL step (mean over steps and seeds)", ""]
        out += _per_step_table(res, COST, {"actor/peak_memory_bytes": 1e-6}) + [""]
    out += ["## Runs", ""] + _runs_table(res, root) + [""]
    return "\n".join(out)


def write_report(root: str | Path, echo: Callable[[str], None] = print) -> Path:
    root = Path(root)
    text = render(read_study(root), root)
    path = root / "report.md"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text + "\n")
    tmp.replace(path)
    echo(f"[study] report: {path}")
    return path
