"""SGLang smoke check (the rollout section of tools/gpu_smoke.sh): a launched server with the item-trie
logit processor must sample only catalog items, with log-probs equal to an fp32 HF reference under the trie
mask, and its beam search over the whole catalog must equal exhaustive enumeration.

    python tools/gpu_smoke_rollout.py --out runs/gpu_smoke            # CUDA server (or the CPU server here)

Tiny random Llama (2 layers, d=64) exported by the project's own HF export, 40 items x 3 levels. On CUDA the
server runs fp32 with ``--attention-backend torch_native`` (FlashInfer kernels are fp16/bf16 only) and no CUDA
graphs (faster start). Writes OUT/rollout.json; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from pathlib import Path

import torch

from recast_mcore.checkpoint.hf_mapping import export_hf_dir
from recast_mcore.config.actor import ModelConfig
from recast_mcore.config.rollout import SamplingConfig, SGLangServerConfig, WeightSyncConfig
from recast_mcore.rollout.catalog import ItemCatalog
from recast_mcore.rollout.sglang_engine import SGLangRolloutEngine
from recast_mcore.rollout.testing import constrained_logprobs, exhaustive_scores, make_tiny_llama, random_catalog

TOL = 1e-4


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--attention-backend", default="torch_native", help="CUDA only: SGLang --attention-backend")
    return p.parse_args()


def server_config(root: Path, backend: str) -> SGLangServerConfig:
    extra = ["--attention-backend", backend, "--disable-cuda-graph"] if torch.cuda.is_available() else []
    return SGLangServerConfig(max_total_tokens=4096, omp_threads=1, log_dir=str(root / "logs"), request_timeout_s=120,
                              mem_fraction_static=0.3 if torch.cuda.is_available() else 0.0, extra_args=extra)


def checks(engine, vocab, catalog, model) -> dict:
    prompts = [vocab.encode_prompt([i, (3 * i) % 40, (5 * i + 1) % 40][: 1 + i % 3]) for i in range(8)]
    groups = engine.generate(prompts, [[0]] * len(prompts), SamplingConfig(group_size=6))
    flat = groups.responses.reshape(-1, catalog.response_len)
    ref = constrained_logprobs(model, catalog, [p for p in prompts for _ in range(6)], flat)
    out = {
        "sampled_valid_fraction": float((groups.item_ids >= 0).float().mean()),
        "sampled_distinct_items": int(len(torch.unique(groups.item_ids))),
        "logprob_max_err": float((groups.token_logprobs.reshape(-1, catalog.response_len) - ref).abs().max()),
    }
    full = engine.beam_search(prompts[:2], beam_width=catalog.num_items)
    equal, err = True, 0.0
    for b, prompt in enumerate(prompts[:2]):
        exact = exhaustive_scores(model, catalog, prompt).topk(catalog.num_items)
        equal &= bool(torch.equal(full.item_ids[b], exact.indices))
        err = max(err, float((full.scores[b] - exact.values).abs().max()))
    out.update(beam_equals_exhaustive=equal, beam_score_max_err=err)
    out["ok"] = out["sampled_valid_fraction"] == 1.0 and out["logprob_max_err"] < TOL and equal and err < TOL
    return out


def main() -> int:
    args = parse_args()
    out_dir = Path(args.out)
    root = out_dir / "rollout_work"
    root.mkdir(parents=True, exist_ok=True)
    result = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "tolerance": TOL}
    t0 = time.perf_counter()
    engine = None
    try:
        vocab = random_catalog(40, [6, 5, 4], seed=3)
        catalog = ItemCatalog.from_vocab(vocab)
        model = make_tiny_llama(root / "hf_raw", vocab.vocab_size)
        shape = ModelConfig(num_layers=2, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, num_query_groups=2,
                            qk_layernorm=False, tie_embeddings=False, max_seq_len=512, init_method_std=0.2)
        export_hf_dir(root / "hf", model.state_dict(), shape, vocab.token_strings,
                      pad_id=vocab.pad_id, bos_id=vocab.bos_id, eos_id=vocab.eos_id)
        cfg = server_config(root, args.attention_backend)
        result["server_extra_args"] = cfg.extra_args
        engine = SGLangRolloutEngine(cfg, WeightSyncConfig(method="disk"), catalog, str(root / "hf"), work_dir=str(root / "work"))
        result.update(checks(engine, vocab, catalog, model))
    except Exception as exc:  # reported in the JSON, and the section fails
        result.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:4000], traceback=traceback.format_exc()[-4000:])
    finally:
        if engine is not None:
            engine.close()
    result["seconds"] = time.perf_counter() - t0
    (out_dir / "rollout.json").write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "traceback"}, indent=1))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
