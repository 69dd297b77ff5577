"""Megatron <-> HF mapping: exact round trip, and an exported dir reproduces the real Megatron model's logits."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from recast_mcore.checkpoint.hf_mapping import (
    _merge_qkv,
    _split_qkv,
    hf_architecture,
    hf_to_mcore,
    mcore_to_hf,
)
from recast_mcore.config.actor import ModelConfig

ROOT = Path(__file__).resolve().parents[1]


def _export(tmp_path: Path, qk: bool, tie: bool) -> dict:
    subprocess.run(
        [sys.executable, str(ROOT / "tests/dist/hf_export_worker.py"), str(tmp_path), str(int(qk)), str(int(tie))],
        check=True, cwd=ROOT, timeout=300,
    )
    return torch.load(tmp_path / "megatron.pt", weights_only=True)


def test_qkv_grouping_matches_megatron_layout():
    """Rows of linear_qkv are [q heads of group g | k_g | v_g] per group; split/merge are inverse."""
    cfg = ModelConfig(hidden_size=8, num_attention_heads=4, num_query_groups=2, kv_channels=2, ffn_hidden_size=8)
    h, r = 2, 2
    rows = torch.arange(2 * (r + 2) * h, dtype=torch.float).unsqueeze(1)  # row index as value
    q, k, v = _split_qkv(rows, cfg)
    assert q.squeeze(1).tolist() == [0, 1, 2, 3, 8, 9, 10, 11]
    assert k.squeeze(1).tolist() == [4, 5, 12, 13]
    assert v.squeeze(1).tolist() == [6, 7, 14, 15]
    assert torch.equal(_merge_qkv(q, k, v, cfg), rows)
    with pytest.raises(ValueError, match="linear_qkv has 15 rows"):
        _split_qkv(rows[:15], cfg)


@pytest.mark.dist  # spawns a world-size-1 Megatron process
@pytest.mark.parametrize("qk,tie", [(True, False), (False, True)])
def test_export_roundtrip_and_logits_match_transformers(tmp_path, qk, tie):
    from recast_mcore.rollout.cpu_bridge import declare_torchvision_ops_in_process

    declare_torchvision_ops_in_process()  # transformers imports torchvision (see rollout/cpu_bridge.py)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    saved = _export(tmp_path, qk, tie)
    cfg = ModelConfig(**saved["model_cfg"])
    mcore_sd = saved["mcore_sd"]
    vocab = saved["logits"].shape[-1]
    hf_sd = mcore_to_hf(mcore_sd, cfg, vocab)
    assert ("lm_head.weight" in hf_sd) == (not tie)
    back = hf_to_mcore(hf_sd, cfg, padded_vocab=mcore_sd["embedding.word_embeddings.weight"].shape[0])
    # exact round trip on the real vocab rows (padding rows come back as zeros)
    assert back.keys() == mcore_sd.keys()
    for key, value in mcore_sd.items():
        if key in ("embedding.word_embeddings.weight", "output_layer.weight"):
            assert torch.equal(back[key][:vocab], value[:vocab]) and not back[key][vocab:].any()
        else:
            assert torch.equal(back[key], value), key

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "hf", dtype=torch.float32).eval()
    assert type(model).__name__ == hf_architecture(cfg)
    with torch.no_grad():
        hf_logits = model(input_ids=saved["tokens"]).logits
    torch.testing.assert_close(hf_logits, saved["logits"], atol=1e-5, rtol=1e-5)

    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert len(tok) == vocab
    assert tok("<bos><a_3><b_0><c_7>", add_special_tokens=False)["input_ids"] == [1, 4 + 3, 4 + 8, 4 + 16 + 7]
    assert tok.decode([4 + 3, 4 + 8]) == "<a_3><b_0>"


def test_missing_key_names_the_key():
    cfg = ModelConfig()
    with pytest.raises(KeyError, match="embedding.word_embeddings.weight"):
        mcore_to_hf({}, cfg, 10)
    with pytest.raises(KeyError, match="model.embed_tokens.weight"):
        hf_to_mcore({}, cfg, 128)
