"""examples/scaling/: the imported Qwen3 sizes and the CPU ladder load strictly and differ only in size."""

import subprocess
from pathlib import Path

import pytest

from recast_mcore.checkpoint.hf_import import model_config_from_hf
from recast_mcore.config.base import load_config, to_dict
from recast_mcore.config.run import RunConfig

SCALING = Path(__file__).resolve().parents[1] / "examples" / "scaling"
# The Hugging Face config.json fields of Qwen/Qwen3-{0.6B,1.7B,8B} that fix the model's shape.
HF_QWEN3 = {
    "0.6b": dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16, tie_word_embeddings=True),
    "1.7b": dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16, tie_word_embeddings=True),
    "8b": dict(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32, tie_word_embeddings=False),
}
SIZE_DEPENDENT = {"run_dir", "model", "parallel"}


def _load(name: str) -> dict:
    return to_dict(load_config(RunConfig, SCALING / f"{name}.yaml"))


def test_gpu_sizes_are_the_hf_checkpoints_and_differ_only_in_size():
    configs = {size: _load(f"qwen3-{size}") for size in HF_QWEN3}
    for size, cfg in configs.items():
        hf = {"model_type": "qwen3", "num_key_value_heads": 8, "head_dim": 128, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
              "max_position_embeddings": 40960, **HF_QWEN3[size]}
        want = to_dict(model_config_from_hf(hf, max_seq_len=cfg["model"]["max_seq_len"], params_dtype="bf16"))
        for key in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups", "kv_channels",
                    "qk_layernorm", "tie_embeddings", "rotary_base", "norm_epsilon"):
            assert cfg["model"][key] == want[key], (size, key)
        assert cfg["sft"]["init_checkpoint"] == f"runs/import/qwen3-{size}/weights"
        assert cfg["data"]["prompt"] == {**cfg["data"]["prompt"], "format": "text", "tokenizer_dir": f"runs/import/qwen3-{size}/hf_tokenizer"}
        assert cfg["signal"]["builder"] == "recast"  # the GRPO arm is --set signal.builder=grpo (run_gpu.sh)
    def common(cfg):
        out = {k: v for k, v in cfg.items() if k not in SIZE_DEPENDENT}
        out["sft"] = {k: v for k, v in cfg["sft"].items() if k != "init_checkpoint"}
        out["data"] = {**cfg["data"], "prompt": {k: v for k, v in cfg["data"]["prompt"].items() if k != "tokenizer_dir"}}
        # server count, GPUs per server and (multi-node: the node's address + key) follow the layout
        network = ("num_servers", "host", "allow_non_loopback", "api_key_env")
        out["rollout"] = {**cfg["rollout"], "sglang": {k: v for k, v in cfg["rollout"]["sglang"].items() if k not in network},
                          "weight_sync": None, "placement": None}
        return out
    first, *rest = (common(c) for c in configs.values())
    assert all(r == first for r in rest)


def test_cpu_ladder_differs_only_in_the_model_and_grows():
    configs = [_load(f"cpu-{size}") for size in "sml"]
    params = []
    for cfg in configs:
        m = cfg["model"]
        params.append(m["num_layers"] * (4 * m["hidden_size"] ** 2 + 3 * m["hidden_size"] * m["ffn_hidden_size"]))
        assert cfg["rollout"]["engine"] == "torch"
    assert params[0] < params[1] < params[2]
    stripped = [{k: v for k, v in c.items() if k not in ("run_dir", "model")} for c in configs]
    assert stripped[0] == stripped[1] == stripped[2]


@pytest.mark.parametrize("script", ["run_gpu.sh", "run_cpu_ladder.sh"])
def test_scaling_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(SCALING / script)]).returncode == 0
