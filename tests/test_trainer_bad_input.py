"""recast-train stops early, before building any model, with a message that says what to fix."""

import json

import pytest
import yaml

from recast_mcore.checkpoint import manifest
from recast_mcore.config.actor import ModelConfig
from recast_mcore.config.base import to_dict
from recast_mcore.trainer.cli import main

TINY_DATA = {
    "dataset": "synthetic", "kcore": 3, "max_history": 6,
    "synthetic": {"num_users": 60, "num_items": 30, "num_clusters": 3, "mean_history": 8},
    "semantic_ids": {"levels": 2, "codes_per_level": 8, "embedding_dim": 8, "kmeans_iters": 5},
}
MODEL = {"num_layers": 1, "hidden_size": 32, "ffn_hidden_size": 64, "num_attention_heads": 2, "num_query_groups": 1,
         "max_seq_len": 32}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_input")
    (root / "data.yaml").write_text(yaml.safe_dump({"data": TINY_DATA}))
    from recast_mcore.data.cli import main as data_main

    assert data_main(["prepare", "--config", str(root / "data.yaml"), "--out", str(root / "data")]) == 0
    return root


def _run(tmp_path, capsys, **sections):
    cfg = {"run_dir": str(tmp_path / "run"), "data": {**TINY_DATA, "prepared_dir": sections.pop("prepared_dir")},
           "model": MODEL, "rollout": {"engine": "torch"}, "eval": {"ks": [1, 5], "beam_width": 5}, **sections}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    code = main(["--config", str(path)])
    return code, capsys.readouterr().err


def test_missing_dataset(tmp_path, capsys):
    code, err = _run(tmp_path, capsys, prepared_dir=str(tmp_path / "nowhere"))
    assert code == 2
    assert "prepared dataset not found" in err and "recast-data prepare" in err


def test_parallel_layout_not_dividing_world_size(tmp_path, capsys, prepared, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    code, err = _run(tmp_path, capsys, prepared_dir=str(prepared / "data"),
                     parallel={"tensor_parallel": 2}, rollout={"engine": "sglang"})
    assert code == 2
    assert "does not divide WORLD_SIZE=3" in err and "tensor_parallel" in err


def test_model_not_matching_checkpoint(tmp_path, capsys, prepared):
    ckpt = tmp_path / "other_run" / "checkpoints" / "sft_step_000010"
    ckpt.mkdir(parents=True)
    saved = to_dict(ModelConfig(**{**MODEL, "hidden_size": 64, "ffn_hidden_size": 128}))
    (ckpt / "actor_meta.json").write_text(json.dumps({"model": saved, "vocab_size": 999}))
    other_data = {"vocab": "0" * 64, "items": "1" * 64, "splits": "2" * 64, "path": "/elsewhere"}
    manifest.write_manifest(ckpt, manifest.hash_files(ckpt, manifest.list_files(ckpt)), {"dataset": other_data})
    code, err = _run(tmp_path, capsys, prepared_dir=str(prepared / "data"),
                     checkpoint={"load_dir": str(tmp_path / "other_run")})
    assert code == 2
    assert "does not match checkpoint" in err and "trained on /elsewhere" in err
    assert "model.hidden_size: checkpoint 64 vs config 32" in err and "vocabulary size: checkpoint 999" in err
    assert "dataset vocabulary and item codes (vocab.json): checkpoint 000000000000" in err and "item ids (items.tsv)" in err


def test_unreachable_rollout_server(tmp_path, capsys, prepared):
    code, err = _run(tmp_path, capsys, prepared_dir=str(prepared / "data"),
                     rollout={"engine": "sglang", "sglang": {"mode": "attach", "urls": ["http://127.0.0.1:9"]}})
    assert code == 2
    assert "rollout server http://127.0.0.1:9 is unreachable" in err and "mode=launch" in err


def test_sequence_longer_than_model(tmp_path, capsys, prepared):
    code, err = _run(tmp_path, capsys, prepared_dir=str(prepared / "data"), model={**MODEL, "max_seq_len": 8})
    assert code == 2
    assert "model.max_seq_len=8" in err


def test_unknown_config_key(tmp_path, capsys, prepared):
    code, err = _run(tmp_path, capsys, prepared_dir=str(prepared / "data"), rl={"stepz": 3})
    assert code == 2
    assert "unknown key 'rl.stepz'" in err


# ---- inputs that used to crash late or be accepted silently (docs/reliability.md) -----------------------
def _fake_run_checkpoint(run_dir, name, data_dir, vocab_size=None):
    """A checkpoint-shaped directory of this config's model, sealed with the dataset's fingerprint."""
    from recast_mcore.data.dataset import PreparedDataset

    ds = PreparedDataset.load(data_dir)
    ckpt = run_dir / "checkpoints" / name
    ckpt.mkdir(parents=True)
    (ckpt / "__0_0.distcp").write_bytes(b"w" * 64)
    (ckpt / "actor_meta.json").write_text(json.dumps({"model": to_dict(ModelConfig(**MODEL)),
                                                      "vocab_size": vocab_size or ds.vocab.vocab_size}))
    manifest.write_manifest(ckpt, manifest.hash_files(ckpt, manifest.list_files(ckpt)), {"dataset": ds.fingerprint})
    return ckpt


def test_grpo_with_group_size_one_stops_in_the_preflight(tmp_path, capsys, prepared):
    code, err = _run(tmp_path, capsys, prepared_dir=str(prepared / "data"),
                     signal={"builder": "grpo"}, rollout={"engine": "torch", "sampling": {"group_size": 1}})
    assert code == 2 and "signal.builder=grpo needs rollout.sampling.group_size >= 2 (got 1)" in err


def test_nan_learning_rate(tmp_path, capsys, prepared):
    code, err = _run(tmp_path, capsys, prepared_dir=str(prepared / "data"), optim={"lr": float("nan")})
    assert code == 2 and "'optim.lr' is NaN" in err


def test_unwritable_metrics_log(tmp_path, capsys, prepared):
    (tmp_path / "run" / "metrics.jsonl").mkdir(parents=True)
    code, err = _run(tmp_path, capsys, prepared_dir=str(prepared / "data"))
    assert code == 2 and "metrics.jsonl is a directory, not a file" in err


def test_beam_wider_than_the_catalog(tmp_path, capsys, prepared):
    code, err = _run(tmp_path, capsys, prepared_dir=str(prepared / "data"), eval={"ks": [1, 150], "beam_width": 150})
    assert code == 2 and "eval.beam_width=150 exceeds the catalog's" in err


def test_data_settings_that_differ_from_the_prepared_dataset(tmp_path, capsys, prepared):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "model": MODEL, "rollout": {"engine": "torch"},
                                    "data": {"prepared_dir": str(prepared / "data"), "kcore": 99, "max_history": 6}}))
    assert main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "data.kcore: run config 99 vs prepared dataset 3" in err and "max_history" not in err  # 6 = as prepared
    assert not (tmp_path / "run").exists()  # nothing written


def test_prompt_settings_are_the_runs_own_not_the_prepared_datasets(prepared):
    """data.prompt (how prompts are rendered, e.g. an imported LLM's text template) is never checked against the
    dataset's config.yaml, and the run keeps it."""
    from recast_mcore.config.data import DataConfig, PromptConfig
    from recast_mcore.trainer.checks import check_data_matches_prepared

    prompt = PromptConfig(format="text", tokenizer_dir="runs/import/x/hf_tokenizer", system="be brief")
    given = {"prepared_dir", "kcore", "prompt.format", "prompt.tokenizer_dir", "prompt.system"}
    data = check_data_matches_prepared(DataConfig(prepared_dir=str(prepared / "data"), kcore=3, prompt=prompt), given)
    assert data.prompt == prompt and data.kcore == 3 and data.synthetic.num_users == 60  # the rest: as prepared


def test_checkpoint_of_another_dataset_with_the_same_vocabulary_size(tmp_path, capsys, prepared):
    """Semantic IDs re-run with another seed: same vocab size, other item codes. Used to run to the end (Pass@1 0)."""
    import shutil

    from recast_mcore.eval.cli import main as eval_main

    _fake_run_checkpoint(tmp_path / "run", "sft_step_000002", prepared / "data")
    other = tmp_path / "other_data"
    shutil.copytree(prepared / "data", other)
    vocab = json.loads((other / "vocab.json").read_text())
    vocab["codes"][0], vocab["codes"][1] = vocab["codes"][1], vocab["codes"][0]
    (other / "vocab.json").write_text(json.dumps(vocab))
    code, err = _run(tmp_path, capsys, prepared_dir=str(other))
    assert code == 2 and "dataset vocabulary and item codes (vocab.json): checkpoint" in err
    assert f"trained on {(prepared / 'data').resolve()}" in err and "item ids" not in err and "splits" not in err
    assert eval_main(["--config", str(tmp_path / "run.yaml")]) == 2
    assert "dataset vocabulary and item codes" in capsys.readouterr().err


def test_damaged_newest_checkpoint_with_on_corrupt_stop(tmp_path, capsys, prepared):
    import os

    _fake_run_checkpoint(tmp_path / "run", "sft_step_000002", prepared / "data")
    newest = _fake_run_checkpoint(tmp_path / "run", "sft_step_000004", prepared / "data")
    os.truncate(newest / "__0_0.distcp", 10)
    code, err = _run(tmp_path, capsys, prepared_dir=str(prepared / "data"), checkpoint={"on_corrupt": "stop"})
    assert code == 2 and "is damaged (checkpoint.on_corrupt=stop)" in err and "__0_0.distcp has 10 bytes" in err
    assert newest.is_dir()  # nothing renamed or deleted


def test_run_with_checkpoints_but_none_complete_is_not_restarted_silently(tmp_path, capsys, prepared):
    ckpt = _fake_run_checkpoint(tmp_path / "run", "rl_step_000004", prepared / "data")
    (ckpt / "manifest.json").unlink()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"stage": "rl", "step": 4, "rollout_budget": 1}\n')
    code, err = _run(tmp_path, capsys, prepared_dir=str(prepared / "data"))
    assert code == 2 and "none is complete" in err and "--start-over" in err
    assert (tmp_path / "run" / "metrics.jsonl").read_text().count("\n") == 1


def test_eval_out_unwritable_fails_before_evaluating(tmp_path, capsys, prepared):
    from recast_mcore.eval.cli import main as eval_main

    _run(tmp_path, capsys, prepared_dir=str(tmp_path / "nowhere"))  # writes run.yaml
    (tmp_path / "afile").write_text("x")
    assert eval_main(["--config", str(tmp_path / "run.yaml"), "--out", str(tmp_path / "afile" / "m.json")]) == 2
    assert "afile is a file, not a directory" in capsys.readouterr().err
