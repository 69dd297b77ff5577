"""Pretrained-LLM import: tiny random HF Qwen3 / Llama models with a tokenizer trained here stand in for
Qwen3-0.6B & co. (tests/hf_helpers.py; no hub downloads).

One world-size-1 worker (tests/dist/hf_import_worker.py) imports both at TP1 with the item vocabulary
appended, exports them back and re-imports the export; the tests compare against transformers. TP2 / PP2
imports run in one torchrun launch; SGLang serves the exported Qwen3 with its real tokenizer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests/dist/hf_import_worker.py"
sys.path.insert(0, str(Path(__file__).resolve().parent))
from hf_helpers import make_hf_model  # noqa: E402

TOL = 1e-5


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "HF_HUB_OFFLINE": "1"}


def _tiny_data(out: Path) -> None:
    from recast_mcore.config.data import DataConfig, SemanticIdConfig, SyntheticConfig
    from recast_mcore.data.prepare import prepare_dataset

    cfg = DataConfig(dataset="synthetic", kcore=3, max_history=6,
                     synthetic=SyntheticConfig(num_users=120, num_items=40, num_clusters=4, mean_history=8),
                     semantic_ids=SemanticIdConfig(levels=2, codes_per_level=8, embedding_dim=8, kmeans_iters=10))
    prepare_dataset(cfg, out)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf_import")
    _tiny_data(root / "data")
    models = {kind: make_hf_model(root / f"base_{kind}", kind)[0] for kind in ("qwen", "llama")}
    proc = subprocess.run([sys.executable, str(WORKER), "single", str(root)], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return root, models


def _load(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.mark.dist  # the fixture runs a world-size-1 Megatron process
@pytest.mark.parametrize("kind", ["qwen", "llama"])
def test_imported_actor_matches_transformers_on_text_item_prompts(imported, kind):
    """Megatron logits (full sequence) and constrained log-probs of every item == transformers on the export."""
    from recast_mcore.rollout.catalog import ItemCatalog
    from recast_mcore.rollout.testing import constrained_logprobs

    root, _ = imported
    probe = torch.load(root / kind / "probe.pt", weights_only=False)
    model = _load(root / kind / "hf_export")
    worst = 0.0
    for prompt, response, logits in zip(probe["prompts"], probe["responses"], probe["logits"]):
        with torch.no_grad():
            ref = model(input_ids=torch.tensor([prompt + response.tolist()])).logits[0]
        worst = max(worst, float((ref - logits).abs().max()))
    assert worst <= TOL, worst
    summary = probe["summary"]
    vocab_size, eos = summary["vocab_size"], summary["eos_id"]
    items = probe["responses"][:, :-1]
    catalog = ItemCatalog(items, vocab_size, eos)
    n = items.shape[0]
    ref = constrained_logprobs(model, catalog, [p for p in probe["prompts"] for _ in range(n)],
                               probe["responses"].repeat(len(probe["prompts"]), 1))
    err = float((ref.reshape(probe["logprobs"].shape) - probe["logprobs"]).abs().max())
    print(f"{kind}: max |logits Megatron - transformers| {worst:.2e}, constrained log-probs {err:.2e}")
    assert err <= TOL, err
    # the prompt holds text, the history's item tokens and the appended specials
    first = probe["prompts"][0]
    assert min(first) < summary["base_vocab_size"] and max(first) >= summary["item_offset"]
    assert summary["base_vocab_size"] in first  # <|sid_begin|>, the first appended special


@pytest.mark.dist
@pytest.mark.parametrize("kind", ["qwen", "llama"])
def test_export_is_the_base_model_plus_new_rows(imported, kind):
    """Every base tensor comes back bit for bit; only the appended rows are new and follow the documented rule."""
    root, models = imported
    base = {k: v for k, v in models[kind].state_dict().items()}
    summary = json.loads((root / kind / "import.json").read_text())
    b, v = summary["source_rows"], summary["vocab_size"]
    export = _safetensors(root / kind / "hf_export")
    vocab_keys = ["model.embed_tokens.weight"] + ([] if kind == "qwen" else ["lm_head.weight"])
    assert ("lm_head.weight" in export) == (kind == "llama")
    for key, value in export.items():
        if key in vocab_keys:
            assert value.shape[0] == v and torch.equal(value[:b], base[key][:b]), key
            new = value[b:].double()
            mean, std = base[key][:b].double().mean(0), base[key][:b].double().std(0, unbiased=False)
            z = (new - mean) / std  # mean + 0.1 * std * N(0, 1)
            assert abs(float(z.mean())) < 0.03 and 0.07 < float(z.std()) < 0.13, (key, float(z.mean()), float(z.std()))
        else:
            assert torch.equal(value, base[key]), key
    if kind == "qwen":  # Qwen-style padding rows beyond the tokenizer are not carried over
        assert base["model.embed_tokens.weight"].shape[0] > b


@pytest.mark.dist
@pytest.mark.parametrize("kind", ["qwen", "llama"])
def test_round_trip_export_loads_and_reimports_unchanged(imported, kind):
    from recast_mcore.data.prompts import load_tokenizer

    root, _ = imported
    reimport = json.loads((root / kind / "reimport.json").read_text())
    assert reimport == {"kind": "expanded", "keys_equal": True, "max_diff": 0.0}
    summary = json.loads((root / kind / "import.json").read_text())
    tok = load_tokenizer(root / kind / "hf_export")  # what transformers / SGLang load: the real tokenizer
    assert len(tok) == summary["vocab_size"] and tok.chat_template
    ids = tok("next: <|sid_begin|><a_3><b_0><c_1><|sid_end|>", add_special_tokens=False)["input_ids"]
    off = summary["item_offset"]
    assert ids[-5:] == [summary["base_vocab_size"], off + 3, off + 8, off + 16 + 1, summary["eos_id"]]
    assert tok.decode(ids[-4:-1]) == "<a_3><b_0><c_1>"
    config = json.loads((root / kind / "hf_export" / "config.json").read_text())
    assert config["vocab_size"] == summary["vocab_size"] and config["model_type"] == ("qwen3" if kind == "qwen" else "llama")


@pytest.mark.dist
def test_tp2_and_pp2_imports_equal_tp1(imported):
    """One torchrun launch: Qwen3 at TP2, Llama at PP2; each rank reads only its slices; same weights, same log-probs;
    the streamed (weight-sync) export of the expanded model equals the TP1 export."""
    root, _ = imported
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(WORKER), "layouts", str(root)]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600, start_new_session=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    for kind in ("qwen", "llama"):
        result = json.loads((root / f"layout_{kind}.json").read_text())
        assert result["keys_equal"] and result["weights_max_diff"] == 0.0, result
        assert result["logprobs_max_diff"] <= 1e-6, result
        assert len(result["memory_per_rank"]) == 2
        # the servers' initial directory, streamed by stage and bucket (trainer/weights.export_initial) with the
        # expanded tokenizer: the same tensors, config and tokenizer files as the TP1 mcore_to_hf export
        assert result["streamed_keys_equal"] and result["streamed_max_diff"] == 0.0 and result["streamed_shards"] >= 2, result
        assert result["streamed_config_equal"] and result["streamed_files_equal"], result


@pytest.mark.dist
@pytest.mark.sglang
def test_sglang_serves_the_export_with_its_tokenizer_and_matches_actor_and_transformers(imported, tmp_path):
    """SGLang loads the to-hf export (expanded Qwen3 + its BPE tokenizer and chat template) as is; constrained
    sampling after text+item prompts returns catalog items whose log-probs equal the Megatron actor's (the
    worker scored every item) and transformers'; beam search ranks like the actor's exhaustive scores."""
    from recast_mcore.config.rollout import SamplingConfig, SGLangServerConfig, WeightSyncConfig
    from recast_mcore.data.prompts import load_tokenizer
    from recast_mcore.rollout.catalog import ItemCatalog
    from recast_mcore.rollout.sglang_engine import SGLangRolloutEngine
    from recast_mcore.rollout.testing import constrained_logprobs

    root, _ = imported
    export = root / "qwen" / "hf_export"
    probe = torch.load(root / "qwen" / "probe.pt", weights_only=False)
    summary, prompts, actor_lp = probe["summary"], probe["prompts"], probe["logprobs"]  # actor_lp [P, items, T]
    catalog = ItemCatalog(probe["responses"][:, :-1], summary["vocab_size"], summary["eos_id"])
    cfg = SGLangServerConfig(max_total_tokens=4096, omp_threads=1, log_dir=str(tmp_path / "logs"), request_timeout_s=120,
                             skip_tokenizer_init=False)  # the server loads the exported tokenizer
    engine = SGLangRolloutEngine(cfg, WeightSyncConfig(method="disk"), catalog, str(export), work_dir=str(tmp_path / "work"))
    try:
        g = 4
        groups = engine.generate(prompts, [[0]] * len(prompts), SamplingConfig(group_size=g))
        beams = engine.beam_search(prompts[:1], beam_width=catalog.num_items)
        text = load_tokenizer(export).decode(prompts[0])
        served = engine.pool.clients[0].generate({"text": text, "sampling_params": {"max_new_tokens": 1}})[0]
    finally:
        engine.close()
    assert bool((groups.item_ids >= 0).all())
    actor = actor_lp[torch.arange(len(prompts))[:, None], groups.item_ids]  # [P, G, T]
    err_actor = float((groups.token_logprobs - actor).abs().max())
    ref = constrained_logprobs(_load(export), catalog, [p for p in prompts for _ in range(g)], groups.responses.reshape(-1, catalog.response_len))
    err_hf = float((groups.token_logprobs.reshape(ref.shape) - ref).abs().max())
    print(f"max |SGLang - actor| {err_actor:.2e}, |SGLang - transformers| {err_hf:.2e}")
    assert err_actor < 1e-4 and err_hf < 1e-4
    exact = actor_lp[:1].sum(-1).sort(dim=1, descending=True)
    assert torch.equal(beams.item_ids, exact.indices)
    assert float((beams.scores - exact.values).abs().max()) < 1e-4
    assert served["meta_info"]["prompt_tokens"] == len(prompts[0])  # SGLang's own tokenizer gives the same prompt


@pytest.mark.dist
@pytest.mark.slow
def test_sft_then_rl_step_from_the_import(imported):
    """recast-train from the imported Qwen3: text prompts, SFT steps, then a GRPO step (torch rollout engine)."""
    import yaml

    root, _ = imported
    out = root / "run"
    cfg = {
        "run_dir": str(out), "seed": 1,
        "data": {"prepared_dir": str(root / "data"), "prompt": {"format": "text", "tokenizer_dir": str(root / "qwen" / "hf_tokenizer")}},
        "model": yaml.safe_load((root / "qwen" / "model.yaml").read_text()),
        "optim": {"lr": 1e-3},
        "rollout": {"engine": "torch", "sampling": {"group_size": 4}},
        "signal": {"builder": "grpo"},
        "sft": {"max_steps": 3, "batch_size": 16, "log_every": 1, "init_checkpoint": str(root / "qwen" / "weights"), "eval_at_end": False},
        "rl": {"steps": 1, "prompts_per_step": 4, "eval_every": 0},
        "eval": {"ks": [1, 5], "beam_width": 5, "max_users": 8, "batch_size": 8},
        "logging": {"progress_bar": False, "tensorboard": False, "plots": False},
    }
    (root / "run.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "recast_mcore.trainer.cli", "--config", str(root / "run.yaml")],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert "initialized weights from" in proc.stdout + proc.stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    sft = [r for r in records if r["stage"] == "sft"]
    rl = [r for r in records if r["stage"] == "rl"]
    assert len(sft) == 3 and len(rl) == 1
    assert all(r["loss"] is not None for r in sft) and rl[0]["actor/loss"] is not None  # finite (JSON null otherwise)
    assert abs(rl[0]["actor/approx_kl_old_mean"]) < 1e-5  # the rollout's log-probs are the actor's (ratio 1 at the first step)
    assert any(r["stage"] == "eval" for r in records)
