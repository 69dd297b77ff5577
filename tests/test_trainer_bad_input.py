"""recast-train stops early, before building any model, with a message that says what to fix."""

import json

import pytest
import yaml

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
           "model": MODEL, "rollout": {"engine": "torch"}, **sections}
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
    (ckpt.parent / "latest").write_text("sft_step_000010\n")
    code, err = _run(tmp_path, capsys, prepared_dir=str(prepared / "data"),
                     checkpoint={"load_dir": str(tmp_path / "other_run")})
    assert code == 2
    assert "does not match checkpoint" in err
    assert "model.hidden_size: checkpoint 64 vs config 32" in err and "vocabulary size: checkpoint 999" in err


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
