"""The study report from run directories alone: aggregation, gains, budget to match, regeneration,
and the study config / plan (fast: hand-written run directories, no training)."""

import json
from pathlib import Path

import pytest
import yaml

from recast_mcore.config.base import ConfigError, load_yaml
from recast_mcore.study.report import budget_to_match, mean_curve, write_report
from recast_mcore.study.results import best_evaluation, read_study
from recast_mcore.study.spec import StudyPlan, deep_merge, load_study

REPO = Path(__file__).resolve().parents[1]
B, G = 4, 2  # rollouts per step = 8


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _run(root: Path, arm: str, seed: int, valid_p1: list[float], test_p1: float, more_sft: bool = False) -> None:
    """A finished run: evals at steps 1..n (budget 8 per step; 0 for the more-SFT control), RL step records,
    config.yaml, test_at_best.json."""
    run_dir = root / "runs" / arm / f"seed_{seed}"
    records = []
    for step, p1 in enumerate(valid_p1, start=1):
        budget = 0 if more_sft else 8 * step
        records.append({"stage": "rl", "step": step, "rollout_budget": budget, "rollouts": 0.0 if more_sft else 8.0,
                        "actor_time_s": 0.5 * seed, "signal/frac_all_zero": 0.25, "update_width": 2.0})
        records.append({"stage": "eval", "step": step, "rollout_budget": budget, "at_stage": "rl",
                        "pass@1": p1, "recall@10": 2 * p1, "ndcg@10": 1.5 * p1})
    _write(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    config = {"rl": {"prompts_per_step": B, "mode": "more_sft" if more_sft else "rl"}, "rollout": {"sampling": {"group_size": G}}}
    _write(run_dir / "config.yaml", yaml.safe_dump(config))
    best = best_evaluation([r for r in records if r["stage"] == "eval"], "ndcg@10")
    test = {"pass@1": test_p1, "recall@10": 2 * test_p1, "ndcg@10": 1.5 * test_p1}
    _write(run_dir / "test_at_best.json", json.dumps({
        "run": f"{arm}_seed{seed}", "arm": arm, "kind": "arm", "seed": seed, "select_metric": "ndcg@10",
        "best_step": best["step"], "best_budget": 8 * best["step"], "valid": {"ndcg@10": best["ndcg@10"]}, "test": test}))


@pytest.fixture
def study_dir(tmp_path):
    root = tmp_path / "study"
    study = {"name": "toy", "seeds": [1, 2], "baseline_arm": "grpo", "budget": {"rollouts": 32, "eval_every": 8},
             "arms": [{"name": "grpo", "set": []}, {"name": "recast", "set": []}, {"name": "more-sft", "set": ["rl.mode=more_sft"]}]}
    _write(root / "study.yaml", yaml.safe_dump(study))
    _write(root / "references.json", json.dumps({"prepared_dir": "x", "dataset": {"dataset": "synthetic"}, "baselines": {
        "valid": {"markov": {"pass@1": 0.2, "recall@10": 0.5, "ndcg@10": 0.3}},
        "test": {"markov": {"pass@1": 0.21, "recall@10": 0.51, "ndcg@10": 0.31}, "popularity": {"pass@1": 0.01, "recall@10": 0.05, "ndcg@10": 0.02}}}}))
    _write(root / "sft" / "test_at_best.json", json.dumps({"best_step": 7, "valid": {"pass@1": 0.1, "recall@10": 0.2, "ndcg@10": 0.15},
                                                           "test": {"pass@1": 0.11, "recall@10": 0.22, "ndcg@10": 0.16}}))
    _write(root / "sasrec" / "not_run.txt", "SASRec not run: the RecBole environment is missing\n")
    _run(root, "grpo", 1, [0.10, 0.12, 0.16, 0.14], 0.20)
    _run(root, "grpo", 2, [0.12, 0.14, 0.18, 0.16], 0.30)
    _run(root, "recast", 1, [0.16, 0.18, 0.10, 0.10], 0.25)
    _run(root, "recast", 2, [0.18, 0.16, 0.10, 0.10], 0.35)
    _run(root, "more-sft", 1, [0.11, 0.11, 0.11, 0.11], 0.10, more_sft=True)
    _run(root, "more-sft", 2, [0.11, 0.11, 0.11, 0.11], 0.12, more_sft=True)
    return root


def test_curves_and_budget_to_match_by_hand(study_dir):
    res = read_study(study_dir)
    grpo = mean_curve(res.by_arm("grpo"), res.sft["valid"])
    recast = mean_curve(res.by_arm("recast"), res.sft["valid"])
    assert grpo[0]["pass@1"] == (0.1, 0.0)  # the SFT point
    assert grpo[24]["pass@1"][0] == pytest.approx(0.17) and grpo[24]["pass@1"][1] == pytest.approx(0.0141421, abs=1e-6)
    # grpo's best mean valid Pass@1 is 0.17 at budget 24; recast's mean curve first reaches it at budget 8 (0.17)
    assert budget_to_match(grpo, recast) == (pytest.approx(100 * 8 / 24), 8, 24)
    more = mean_curve(res.by_arm("more-sft"), None)
    assert sorted(more) == [8, 16, 24, 32]  # steps x B x G (the control samples nothing)
    assert budget_to_match(grpo, more)[0] is None


def test_report_numbers_and_regeneration_from_run_directories(study_dir):
    write_report(study_dir, echo=lambda _: None)
    text = (study_dir / "report.md").read_text()
    assert "| grpo | 2 | 24 | 0.2500 ± 0.0707 |" in text  # test Pass@1 mean ± sd of 0.2 and 0.3, best at budget 24
    assert "| recast | 2 | 12 | 0.3000 ± 0.0707 |" in text and "+20.0%" in text  # (0.30 - 0.25) / 0.25; best at 16 and 8
    assert "| recast | 8 | 33.3% |" in text
    assert "| more-sft | not reached within 32 | - |" in text
    assert "SASRec not run: the RecBole environment is missing" in text
    assert "count-Markov (first order) | 1 | | 0.2100 | 0.5100 | 0.3100" in text
    assert (study_dir / "valid_vs_budget.png").stat().st_size > 1000 and (study_dir / "mechanism.png").is_file()
    (study_dir / "report.md").unlink()
    write_report(study_dir, echo=lambda _: None)
    assert (study_dir / "report.md").read_text() == text


def test_quick_merge_and_plan_fix_the_budget(tmp_path):
    assert deep_merge({"a": {"b": 1, "c": [1]}, "d": 1}, {"a": {"c": [2]}}) == {"a": {"b": 1, "c": [2]}, "d": 1}
    cfg, base = load_study(REPO / "examples" / "study" / "stochastic.yaml", quick=True,
                           overrides=[f"study_dir={tmp_path / 's'}"])
    plan = StudyPlan(cfg, base)
    assert [s.name for s in plan.runs][:2] == ["grpo_seed1", "recast-contrast_seed1"]
    grpo = plan.runs[0].config
    per_step = grpo["rl"]["prompts_per_step"] * grpo["rollout"]["sampling"]["group_size"]
    assert grpo["rl"]["steps"] * per_step == cfg.budget.rollouts and grpo["sft"]["enabled"] is False
    assert grpo["checkpoint"]["load_dir"] == str(plan.sft.run_dir) and grpo["eval"]["keep_best"] is True
    assert grpo["signal"]["builder"] == "grpo" and grpo["rl"]["eval_every"] * per_step == cfg.budget.eval_every
    more = next(s.config for s in plan.runs if s.arm == "more-sft")
    assert more["rl"]["mode"] == "more_sft" and more["rl"]["steps"] == grpo["rl"]["steps"]
    assert more["sft"]["examples"] == plan.sft.config["sft"]["examples"]  # continues the SFT stage's feed
    with pytest.raises(ConfigError, match="multiples of one step's rollouts"):
        StudyPlan(load_study(REPO / "examples" / "study" / "stochastic.yaml", quick=True,
                             overrides=["budget.rollouts=60", "budget.eval_every=20"])[0], base)
    with pytest.raises(ConfigError, match="arm names must be unique"):
        load_study(REPO / "examples" / "study" / "stochastic.yaml", overrides=["arms=[{name: a}, {name: a}]"])


@pytest.mark.parametrize("size", ["s", "m", "l"])
def test_cpu_ladder_study_plans_every_size(tmp_path, size):
    """examples/scaling/cpu-ladder.study.yaml: one study per ladder size (--set base=cpu-SIZE.yaml)."""
    study = REPO / "examples" / "scaling" / "cpu-ladder.study.yaml"
    cfg, base = load_study(study, overrides=[f"base=cpu-{size}.yaml", f"study_dir={tmp_path / size}"])
    plan = StudyPlan(cfg, base)
    ladder = load_yaml(REPO / "examples" / "scaling" / f"cpu-{size}.yaml")
    assert [s.name for s in plan.runs][:3] == ["grpo_seed7", "recast-contrast_seed7", "recast-adv_seed7"]
    assert len(plan.runs) == 3 * 3 and plan.sft.config["sft"]["eval_every"] == 40
    for spec in plan.runs:
        run = spec.config
        assert run["model"] == ladder["model"] and run["rl"]["optim"] == ladder["rl"]["optim"]
        assert run["rl"]["steps"] == ladder["rl"]["steps"] == 40 and run["rl"]["eval_every"] == 10
        assert run["checkpoint"]["load_dir"] == str(tmp_path / size / "sft")
