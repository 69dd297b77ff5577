"""Worker of tests/test_hf_import.py: import tiny HF Qwen3 / Llama models (tests/hf_helpers.py) as actors.

    python tests/dist/hf_import_worker.py single ROOT           # world size 1
    torchrun --nproc-per-node 2 tests/dist/hf_import_worker.py layouts ROOT

ROOT holds ``data/`` (a prepared dataset) and ``base_{qwen,llama}/`` (the HF models). ``single`` imports each
model at TP1 into ROOT/{kind} and writes there: ``probe.pt`` (text+item prompts, their full-sequence logits,
the constrained log-probs of every catalog item after every prompt), ``full.pt`` (the imported weights),
``hf_export/`` (to-hf of the imported actor) and ``reimport.json`` (importing hf_export again changes
nothing). ``layouts`` imports qwen at TP2 and llama at PP2 and writes ``layout_{kind}.json``: the largest
difference of the weights and of the probe log-probs from the TP1 import.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

KINDS = {"qwen": (2, 1), "llama": (1, 2)}  # the (TP, PP) layout each model is imported at by `layouts`
PROBE_HISTORIES = [[0, 1, 2], [5], [7, 3, 9, 11], [2, 2]]


def _import(root: Path, kind: str, tp: int, pp: int, out: Path):
    from recast_mcore.checkpoint.convert import ImportOptions, import_hf, import_model_config
    from recast_mcore.checkpoint.hf_import import read_hf_config
    from recast_mcore.config.actor import ParallelConfig
    from recast_mcore.data.dataset import PreparedDataset

    from recast_mcore.actor.parallel import initialize_distributed

    parallel_cfg = ParallelConfig(tensor_parallel=tp, pipeline_parallel=pp)
    initialize_distributed(parallel_cfg)
    hf = root / f"base_{kind}"
    model_cfg = import_model_config(read_hf_config(hf), None, max_seq_len=256)
    data = PreparedDataset.load(root / "data")
    summary, actor = import_hf(hf, data.vocab, out, model_cfg, parallel_cfg, ImportOptions(), dataset_fingerprint=data.fingerprint)
    return summary, actor


def _probe(actor, tokenizer_dir: Path):
    """Text prompts of PROBE_HISTORIES and the constrained log-probs of every catalog item after each."""
    from recast_mcore.config.data import PromptConfig
    from recast_mcore.data.dataset import PreparedDataset
    from recast_mcore.data.prompts import model_vocab

    root = tokenizer_dir.parents[1]
    vocab = model_vocab(PreparedDataset.load(root / "data").vocab, PromptConfig(format="text", tokenizer_dir=str(tokenizer_dir)))
    prompts = [vocab.encode_prompt(h) for h in PROBE_HISTORIES]
    items = torch.arange(vocab.num_items)
    responses = torch.tensor([vocab.encode_response(int(i)) for i in items])
    rows = [p for p in prompts for _ in items]
    lp = actor.logprobs(rows, responses.repeat(len(prompts), 1)).reshape(len(prompts), vocab.num_items, -1)
    return vocab, prompts, responses, lp


def run_single(root: Path) -> None:
    from recast_mcore.checkpoint.convert import export_hf, import_hf, ImportOptions
    from recast_mcore.config.actor import ParallelConfig
    from recast_mcore.data.dataset import PreparedDataset

    for kind in KINDS:
        out = root / kind
        summary, actor = _import(root, kind, 1, 1, out)
        vocab, prompts, responses, lp = _probe(actor, out / "hf_tokenizer")
        logits = [actor.logits_fn(torch.tensor([p + r.tolist()])).squeeze(0) for p, r in zip(prompts, responses[:4])]
        torch.save({"prompts": prompts, "responses": responses, "logprobs": lp, "logits": logits,
                    "summary": summary}, out / "probe.pt")
        full = actor.full_state_dict()
        torch.save(full, out / "full.pt")
        export_hf(actor, vocab, out / "hf_export", tokenizer_dir=out / "hf_tokenizer", dtype=torch.float32)
        data = PreparedDataset.load(root / "data")
        again, actor2 = import_hf(out / "hf_export", data.vocab, out / "reimport", actor.model_cfg, ParallelConfig(),
                                  ImportOptions(), dataset_fingerprint=data.fingerprint)
        full2 = actor2.full_state_dict()
        diff = max(float((full[k] - full2[k]).abs().max()) for k in full)
        (out / "reimport.json").write_text(json.dumps({"kind": again["kind"], "keys_equal": full.keys() == full2.keys(),
                                                       "max_diff": diff}))


def _streamed_export(actor, vocab, out: Path) -> Path:
    """The servers' initial HF directory as the trainer writes it (trainer/weights.export_initial: streamed,
    sharded by stage and bucket, small buckets), with the expanded tokenizer."""
    from recast_mcore.config.rollout import RolloutConfig, SGLangServerConfig, WeightSyncConfig
    from recast_mcore.trainer.weights import export_initial

    cfg = RolloutConfig(engine="sglang", sglang=SGLangServerConfig(dtype="float32"), weight_sync=WeightSyncConfig(bucket_mb=0.05))
    return export_initial(actor, cfg, actor.model_cfg, vocab, out / "streamed", tokenizer_dir=str(out / "hf_tokenizer"))


def _compare_exports(streamed: Path, reference: Path) -> dict:
    """Streamed shards vs the TP1 ``mcore_to_hf`` export: tensors, config.json and the other files."""
    from safetensors.torch import load_file

    ref = load_file(str(reference / "model.safetensors"))
    shards = sorted(streamed.glob("*.safetensors"))
    got = {k: v for f in shards for k, v in load_file(str(f)).items()}
    files = lambda d: sorted(p.name for p in d.iterdir() if not p.name.startswith("model"))  # noqa: E731
    return {"streamed_keys_equal": got.keys() == ref.keys(), "streamed_shards": len(shards),
            "streamed_max_diff": max(float((got[k] - ref[k]).abs().max()) for k in ref) if got.keys() == ref.keys() else None,
            "streamed_config_equal": json.loads((streamed / "config.json").read_text()) == json.loads((reference / "config.json").read_text()),
            "streamed_files_equal": files(streamed) == files(reference)}


def run_layouts(root: Path) -> None:
    import torch.distributed as dist

    for kind, (tp, pp) in KINDS.items():
        out = root / f"{kind}_tp{tp}pp{pp}"
        summary, actor = _import(root, kind, tp, pp, out)
        vocab, _, _, lp = _probe(actor, out / "hf_tokenizer")
        full = actor.full_state_dict()
        streamed = _streamed_export(actor, vocab, out)
        if dist.get_rank() == 0:
            ref_full = torch.load(root / kind / "full.pt")
            ref = torch.load(root / kind / "probe.pt", weights_only=False)
            result = {
                "keys_equal": ref_full.keys() == full.keys(),
                "weights_max_diff": max(float((ref_full[k] - full[k]).abs().max()) for k in ref_full),
                "logprobs_max_diff": float((lp - ref["logprobs"]).abs().max()),
                "memory_per_rank": summary["memory_per_rank"],
                **_compare_exports(streamed, root / kind / "hf_export"),
            }
            (root / f"layout_{kind}.json").write_text(json.dumps(result))
        dist.barrier()


if __name__ == "__main__":
    mode, root = sys.argv[1], Path(sys.argv[2])
    from recast_mcore.actor.parallel import destroy_distributed

    run_single(root) if mode == "single" else run_layouts(root)
    destroy_distributed()
