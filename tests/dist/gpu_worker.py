"""GPU worker (NCCL, Transformer Engine): run by tests/test_actor_gpu.py and tools/gpu_smoke.sh on a CUDA machine only.

    python tests/dist/gpu_worker.py te_vs_local OUT   # TE spec reproduces the local spec's logits and log-probs (fp32)
    python tests/dist/gpu_worker.py bf16 OUT          # bf16 mixed precision SFT lowers the loss; MFU + peak memory
    python tests/dist/gpu_worker.py fp8 OUT           # FP8 (hybrid, delayed) SFT steps run and lower the loss
    python tests/dist/gpu_worker.py fp8_recipes OUT   # one FP8 step each with the tensorwise and delayed recipes
    python tests/dist/gpu_worker.py te_layouts OUT    # bf16 TE: THD packing (cu_seqlens) vs padded rows; selective
                                                      # recompute (layernorm, mlp) vs none
    python tests/dist/gpu_worker.py reference_offload OUT  # KL reference kept in pinned host memory between uses

Every number is measured; tests/test_actor_gpu.py holds the thresholds. Results: OUT/gpu_<mode>.json.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from actor_common import catalog, grpo_batch, model_cfg, optim_cfg, parallel_cfg, prompts_and_items  # noqa: E402


def _actor(vocab, trie, parallel_kw=None, **model_kw):
    from recast_mcore.actor import MegatronActor

    return MegatronActor(model_cfg(tie_embeddings=True, **model_kw), parallel_cfg(1, 1, **(parallel_kw or {})), optim_cfg(),
                         vocab.vocab_size, trie)


def _metrics(m: dict) -> dict:
    keys = ("loss", "grad_norm", "mfu", "peak_memory_bytes", "peak_reserved_bytes", "update_seconds", "tf32", "padding_fraction")
    return {k: m.get(k) for k in keys}


def te_vs_local(vocab, trie, prompts, responses) -> dict:
    local = _actor(vocab, trie, transformer_impl="local")
    te = _actor(vocab, trie, transformer_impl="transformer_engine")
    te.load_full_state_dict(local.full_state_dict())
    tokens = torch.tensor([prompts[0] + responses[0].tolist()])
    return {
        "logprob_max_diff": float((te.logprobs(prompts, responses) - local.logprobs(prompts, responses)).abs().max()),
        "logits_max_diff": float((te.logits_fn(tokens) - local.logits_fn(tokens)).abs().max()),
        "te_param_names": [n for n, _ in te.chunks[0].named_parameters()][:6],
    }


def sft_run(vocab, trie, prompts, responses, steps: int, **kw) -> dict:
    actor = _actor(vocab, trie, params_dtype="bf16", **kw)
    metrics = [actor.sft_step(prompts, responses) for _ in range(steps)]
    return {"losses": [m["loss"] for m in metrics], **_metrics(metrics[-1]),
            "logprobs_finite": bool(torch.isfinite(actor.logprobs(prompts, responses)).all())}


def fp8_recipes(vocab, trie, prompts, responses) -> dict:
    out = {}
    for recipe in ("tensorwise", "delayed"):
        t0 = time.perf_counter()
        try:
            run = sft_run(vocab, trie, prompts, responses, 1, fp8="hybrid", fp8_recipe=recipe, transformer_impl="transformer_engine")
            out[recipe] = {"ok": True, "seconds": time.perf_counter() - t0, **run}
        except Exception as exc:  # record and go on: the smoke run should report every recipe
            out[recipe] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:2000]}
    return out


def _grads_and_lp(actor, vocab, prompts, responses) -> tuple[torch.Tensor, dict, dict]:
    lp = actor.logprobs(prompts, responses)
    actor.forward_backward_sft(prompts, responses)
    sft = actor.full_grads()
    batch = grpo_batch(vocab, groups=4, group_size=4, seed=5)
    actor.forward_backward_policy(batch)
    return lp, sft, actor.full_grads()


def _rel(a: dict, b: dict) -> float:
    """max over tensors of ||a - b|| / ||b|| (bf16 runs differ by rounding only)."""
    return max(float((a[k].float() - b[k].float()).norm() / (b[k].float().norm() + 1e-12)) for k in b)


def te_layouts(vocab, trie, prompts, responses) -> dict:
    padded = _actor(vocab, trie, parallel_kw={"sequence_packing": "off"}, params_dtype="bf16", transformer_impl="transformer_engine")
    thd = _actor(vocab, trie, parallel_kw={"sequence_packing": "thd"}, params_dtype="bf16", transformer_impl="transformer_engine")
    init = padded.full_state_dict()
    thd.load_full_state_dict(init)
    lp0, sft0, pol0 = _grads_and_lp(padded, vocab, prompts, responses)
    lp1, sft1, pol1 = _grads_and_lp(thd, vocab, prompts, responses)
    recompute = _actor(vocab, trie, parallel_kw={"sequence_packing": "off"}, params_dtype="bf16", transformer_impl="transformer_engine",
                       recompute_granularity="selective", recompute_modules=["layernorm", "mlp"])
    recompute.load_full_state_dict(init)
    lp2, sft2, pol2 = _grads_and_lp(recompute, vocab, prompts, responses)
    return {
        "thd_layout": [thd.layout.mode, thd.layout.use_cu_seqlens],
        "thd_logprob_max_diff": float((lp1 - lp0).abs().max()), "thd_sft_grad_rel": _rel(sft1, sft0), "thd_policy_grad_rel": _rel(pol1, pol0),
        "recompute_logprob_max_diff": float((lp2 - lp0).abs().max()), "recompute_sft_grad_rel": _rel(sft2, sft0),
        "recompute_policy_grad_rel": _rel(pol2, pol0),
    }


def reference_offload(vocab, trie, prompts, responses) -> dict:
    """bf16 actor: the KL reference with offload lives in pinned host memory between uses and gives the same
    log-probs as a reference kept on the device."""
    actor = _actor(vocab, trie, params_dtype="bf16")
    kept = actor.build_reference(offload=False).logprobs(prompts, responses)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    actor.reference = None
    torch.cuda.empty_cache()
    ref = actor.build_reference(offload=True)
    params = ref.parameters()
    result = {
        "offloaded_on_host": all(p.device.type == "cpu" and p.is_pinned() for p in params),
        "device_bytes_saved": before - torch.cuda.memory_allocated(),
        "param_bytes": sum(p.numel() * p.element_size() for p in params),
    }
    result["logprob_max_diff"] = float((ref.logprobs(prompts, responses) - kept).abs().max())
    result["back_on_host"] = all(p.device.type == "cpu" for p in ref.parameters())
    return result


def main() -> None:
    from recast_mcore.actor import destroy_distributed, initialize_distributed
    from recast_mcore.actor.parallel import resolve_backend

    mode, out = sys.argv[1], Path(sys.argv[2])
    vocab, trie = catalog()
    initialize_distributed(parallel_cfg(1, 1))
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"  # CPU: dry run of the script
    result = {"backend": resolve_backend(parallel_cfg(1, 1)), "device": device}
    prompts, responses, _ = prompts_and_items(vocab, 16, seed=3)
    if mode == "te_vs_local":
        result.update(te_vs_local(vocab, trie, prompts, responses))
    elif mode == "bf16":
        result.update(sft_run(vocab, trie, prompts, responses, 15))
    elif mode == "fp8":
        result.update(sft_run(vocab, trie, prompts, responses, 15, fp8="hybrid", fp8_recipe="delayed", transformer_impl="transformer_engine"))
    elif mode == "fp8_recipes":
        result.update(fp8_recipes(vocab, trie, prompts, responses))
    elif mode == "te_layouts":
        result.update(te_layouts(vocab, trie, prompts, responses))
    elif mode == "reference_offload":
        result.update(reference_offload(vocab, trie, prompts, responses))
    else:
        raise SystemExit(f"unknown mode {mode}")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"gpu_{mode}.json").write_text(json.dumps(result, indent=1))
    destroy_distributed()


if __name__ == "__main__":
    main()
