"""GPU worker of tests/test_weight_sync_gpu.py (CUDA only): optimizer-state offload and the GPU export.

    python tests/dist/gpu_sync_worker.py OUT     -> OUT/gpu_offload.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from actor_common import catalog, model_cfg, optim_cfg, parallel_cfg, prompts_and_items  # noqa: E402


def main(out: Path) -> None:
    from recast_mcore.actor import MegatronActor, destroy_distributed, initialize_distributed

    vocab, trie = catalog()
    initialize_distributed(parallel_cfg(1, 1))
    actor = MegatronActor(model_cfg(tie_embeddings=False, params_dtype="bf16", hidden_size=256, ffn_hidden_size=512),
                          parallel_cfg(1, 1), optim_cfg(), vocab.vocab_size, trie)
    prompts, responses, _ = prompts_and_items(vocab, 16, seed=3)
    first = actor.sft_step(prompts, responses)["loss"]
    before = torch.cuda.memory_allocated()
    moved = actor.offload_optimizer()
    offloaded = torch.cuda.memory_allocated()
    restored_bytes = actor.restore_optimizer()
    second = actor.sft_step(prompts, responses)["loss"]
    buckets = list(actor.export_buckets(1 << 16, torch.bfloat16))
    result = {
        "moved_bytes": moved, "restored_bytes": restored_bytes, "allocated_before": before,
        "allocated_offloaded": offloaded, "losses": [first, second],
        "bucket_devices": sorted({str(t.device.type) for b in buckets for _, t in b.tensors}),
        "bucket_dtypes": sorted({str(t.dtype) for b in buckets for _, t in b.tensors}),
    }
    (out / "gpu_offload.json").write_text(json.dumps(result))
    destroy_distributed()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
