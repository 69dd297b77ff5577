"""recast-study end to end (default suite): the --quick variant of examples/study/stochastic.yaml (one seed,
three of its five arms: GRPO, ReCast contrast loss, more SFT; the plan of all five is checked in
test_study_report.py), killed in the middle of its second arm, resumed (finished runs skipped, the killed run
continued), then the report regenerated from the run directories alone (identical)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "examples" / "study" / "stochastic.yaml"
ARMS = ("grpo", "recast-contrast", "more-sft")
ARM_SET = ("arms=[{name: grpo, set: [signal.builder=grpo]}, {name: recast-contrast, set: [signal.builder=recast, "
           "signal.recast.update=contrast_loss]}, {name: more-sft, set: [rl.mode=more_sft]}]")


def _cmd(*extra: str) -> list[str]:
    return [sys.executable, "-m", "recast_mcore.study.cli", "--config", str(STUDY), "--quick", "--set", "seeds=[1]", "--set", ARM_SET, *extra]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
            "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def test_quick_study_killed_resumed_and_report_regenerated(tmp_path):
    root = tmp_path / "runs" / "study" / "quick"
    killed_run = root / "runs" / "recast-contrast" / "seed_1"
    proc = subprocess.Popen(_cmd(), cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.time() + 600
    while not (killed_run / "metrics.jsonl").is_file() or "rl" not in (killed_run / "metrics.jsonl").read_text():
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        assert time.time() < deadline, "the study never reached its second arm"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the study and the recast-train it is running
    proc.wait()
    first = root / "runs" / "grpo" / "seed_1"
    assert (first / "test_at_best.json").is_file() and not (killed_run / "test_at_best.json").exists()
    first_test = (first / "test_at_best.json").read_text()

    done = subprocess.run(_cmd(), cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "grpo_seed1: training" not in done.stdout  # finished runs are skipped
    assert (first / "test_at_best.json").read_text() == first_test
    assert len(json.loads((killed_run / "study_timing.json").read_text())["train_wall_s"]) == 1  # the completed segment
    log = (root / "logs" / "recast-contrast_seed1.log").read_text()
    assert log.count("recast_mcore.trainer.cli") == 2  # the killed training and the one that continued it
    rl_steps = [json.loads(line)["step"] for line in (killed_run / "metrics.jsonl").read_text().splitlines()
                if json.loads(line)["stage"] == "rl"]
    assert rl_steps == sorted(set(rl_steps)) and rl_steps[-1] == 2  # resumed: every step once
    for arm in ARMS:
        result = json.loads((root / "runs" / arm / "seed_1" / "test_at_best.json").read_text())
        assert result["test"]["split"] == "test" and 0.0 <= result["test"]["ndcg@10"] <= 1.0
        assert result["best_budget"] in (32, 64)

    report = (root / "report.md").read_text()
    for arm in ARMS:
        assert f"| {arm} | 1 |" in report
    assert "count-Markov" in report and "SFT (the arms' start)" in report
    for name in ("report.md", "valid_vs_budget.png", "mechanism.png"):
        (root / name).unlink()
    again = subprocess.run(_cmd("--report-only"), cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (root / "report.md").read_text() == report and (root / "valid_vs_budget.png").is_file()
