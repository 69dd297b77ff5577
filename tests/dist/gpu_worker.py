"""GPU worker (NCCL, Transformer Engine): run by tests/test_actor_gpu.py on a CUDA machine only.

    python tests/dist/gpu_worker.py te_vs_local OUT   # TE spec reproduces the local spec's log-probs (fp32)
    python tests/dist/gpu_worker.py bf16 OUT          # bf16 mixed precision SFT lowers the loss
    python tests/dist/gpu_worker.py fp8 OUT           # FP8 (hybrid, TE) SFT steps run and lower the loss
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from actor_common import catalog, model_cfg, optim_cfg, parallel_cfg, prompts_and_items  # noqa: E402


def _actor(vocab, trie, **model_kw):
    from recast_mcore.actor import MegatronActor

    return MegatronActor(model_cfg(tie_embeddings=True, **model_kw), parallel_cfg(1, 1), optim_cfg(), vocab.vocab_size, trie)


def main() -> None:
    from recast_mcore.actor import destroy_distributed, initialize_distributed
    from recast_mcore.actor.parallel import resolve_backend

    mode, out = sys.argv[1], Path(sys.argv[2])
    vocab, trie = catalog()
    initialize_distributed(parallel_cfg(1, 1))
    result = {"backend": resolve_backend(parallel_cfg(1, 1))}
    prompts, responses, _ = prompts_and_items(vocab, 16, seed=3)
    if mode == "te_vs_local":
        local = _actor(vocab, trie, transformer_impl="local")
        te = _actor(vocab, trie, transformer_impl="transformer_engine")
        te.load_full_state_dict(local.full_state_dict())
        result["logprob_max_diff"] = float((te.logprobs(prompts, responses) - local.logprobs(prompts, responses)).abs().max())
        result["te_param_names"] = [n for n, _ in te.chunks[0].named_parameters()][:6]
    elif mode in ("bf16", "fp8"):
        kw = {"params_dtype": "bf16"}
        if mode == "fp8":
            kw.update(fp8="hybrid", fp8_recipe="delayed", transformer_impl="transformer_engine")
        actor = _actor(vocab, trie, **kw)
        metrics = [actor.sft_step(prompts, responses) for _ in range(15)]
        result["losses"] = [m["loss"] for m in metrics]
        result["mfu"] = metrics[-1].get("mfu")
        result["peak_memory_bytes"] = metrics[-1]["peak_memory_bytes"]
        result["logprobs_finite"] = bool(torch.isfinite(actor.logprobs(prompts, responses)).all())
    else:
        raise SystemExit(f"unknown mode {mode}")
    (out / f"gpu_{mode}.json").write_text(json.dumps(result))
    destroy_distributed()


if __name__ == "__main__":
    main()
