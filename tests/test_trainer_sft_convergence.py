"""SFT to convergence: window examples, periodic evaluation, early stopping on patience, SFT ending on its
best evaluation's weights, and exact resume after a kill in the middle of it (tiny model, torch engine)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from recast_mcore.actor.forward_backward import sft_token_mask
from recast_mcore.data.tokens import PAD_ID
from test_trainer_e2e import KILL_DRIVER, REPO, TINY, _env, _records, _stable


def test_sft_token_mask_drops_pad_tokens_and_pad_rows():
    y = torch.tensor([[4, 5, 6], [4, PAD_ID, PAD_ID], [4, 5, 6]])
    mask = sft_token_mask(y, n_real=2)
    assert mask.tolist() == [[True, True, True], [True, False, False], [False, False, False]]
    assert int(mask.sum()) == 4  # the SFT loss's denominator


def test_encode_windows_pads_to_the_longest_window():
    from recast_mcore.data.dataset import Example
    from recast_mcore.data.tokens import ItemVocab
    from recast_mcore.trainer.sft import encode_windows

    vocab = ItemVocab(torch.tensor([[0, 0], [0, 1], [1, 0]]), [2, 2])
    prompts, responses = encode_windows(vocab, [Example(0, [0], [1, 2]), Example(1, [2], [0])])
    assert prompts == [vocab.encode_prompt([0]), vocab.encode_prompt([2])]
    assert responses.tolist() == [vocab.item_tokens[[1, 2]].reshape(-1).tolist(), vocab.item_tokens[0].tolist() + [PAD_ID, PAD_ID]]


SFT_ONLY = {
    "sft": {"max_steps": 40, "epochs": 100, "batch_size": 16, "examples": "windows", "eval_every": 2, "patience": 2, "save_every": 2,
            "log_every": 1},
    "rl": {"enabled": False},
    "optim": {"lr": 0.03},  # large enough that validation stops improving within a few evaluations
    "checkpoint": {"keep_last": 1},
    "eval": {"ks": [1, 5], "beam_width": 5, "max_users": 24, "batch_size": 24, "select_metric": "ndcg@5"},
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sftconv")
    (root / "data.yaml").write_text(yaml.safe_dump({"data": TINY["data"]}))
    from recast_mcore.data.cli import main as data_main

    assert data_main(["prepare", "--config", str(root / "data.yaml"), "--out", str(root / "data")]) == 0
    return root


def _config(root: Path, name: str) -> Path:
    cfg = json.loads(json.dumps(TINY))
    cfg.update(json.loads(json.dumps(SFT_ONLY)))
    cfg["data"]["prepared_dir"] = str(root / "data")
    cfg["run_dir"] = str(root / name)
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run(config: Path, kill: tuple[str, int] | None = None) -> subprocess.CompletedProcess:
    if kill is None:
        cmd = [sys.executable, "-m", "recast_mcore.trainer.cli", "--config", str(config)]
    else:
        driver = config.parent / "kill_driver.py"
        driver.write_text(KILL_DRIVER.replace("mid_update", "mid_sft").replace(
            "actor_mod.MegatronActor.update", "actor_mod.MegatronActor.sft_step"))
        cmd = [sys.executable, str(driver), kill[0], str(kill[1]), "--config", str(config)]
    return subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600, start_new_session=True)


@pytest.mark.slow
def test_early_stopping_ends_on_the_best_checkpoint_and_resumes_exactly(workdir):
    config = _config(workdir, "full")
    proc = _run(config)
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = _records(workdir / "full")
    evals = [r for r in records if r["stage"] == "eval"]
    scores = [r["ndcg@5"] for r in evals]
    best = max(range(len(scores)), key=lambda i: (scores[i], -i))
    # early stop: the last two periodic evaluations did not beat the best, and SFT stopped there
    assert len(evals) == best + 3 and all(s <= scores[best] for s in scores[best + 1 :])
    last_step = max(r["step"] for r in records if r["stage"] == "sft")
    assert last_step == evals[-1]["step"] < SFT_ONLY["sft"]["max_steps"]
    assert "early stop at step" in proc.stdout + proc.stderr and "ends on the weights of step" in proc.stdout + proc.stderr
    # the end-of-SFT checkpoint holds the best evaluation's weights: recast-eval reproduces its metrics
    out = workdir / "final_eval.json"
    ev = subprocess.run([sys.executable, "-m", "recast_mcore.eval.cli", "--config", str(config), "--out", str(out)],
                        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert ev.returncode == 0, ev.stderr[-3000:]
    final = json.loads(out.read_text())
    assert final["checkpoint"].endswith(f"sft_step_{last_step:06d}")
    assert final["ndcg@5"] == pytest.approx(scores[best], abs=1e-9) and final["pass@1"] == pytest.approx(evals[best]["pass@1"], abs=1e-9)
    # killed in the middle of SFT (after a few evaluations), resumed: the same log, record for record
    killed = _config(workdir, "killed")
    proc = _run(killed, kill=("mid_sft", evals[1]["step"] + 1))
    assert proc.returncode == -9, proc.stderr[-3000:]
    proc = _run(killed)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resume from" in proc.stdout + proc.stderr
    assert _stable(_records(workdir / "killed")) == _stable(records)
