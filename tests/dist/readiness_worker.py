"""GPU-readiness checks that run on CPU (gloo): packing layouts, activation recompute, the NaN guard, the
overlapped DDP switches. Run by tests/test_actor_packing.py (world1) and tests/test_actor_overlap.py (dp2).

    python tests/dist/readiness_worker.py world1 OUT           # packing rows/thd == padded; recompute; NaN guard
    torchrun --nproc-per-node 2 tests/dist/readiness_worker.py dp2 OUT
                                                               # DP2 DistributedOptimizer: overlap on == off;
                                                               # NaN on one rank skips the step everywhere

Results land in OUT/readiness_<mode>.json; every comparison is a measured max |difference|.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from actor_common import catalog, contrast_batch, grpo_batch, model_cfg, optim_cfg, parallel_cfg, prompts_and_items  # noqa: E402
from actor_worker import _max_diff  # noqa: E402


def _actor(vocab, trie, model_kw=None, optim_kw=None, **parallel_kw):
    from recast_mcore.actor import MegatronActor

    return MegatronActor(
        model_cfg(tie_embeddings=True, **(model_kw or {})), parallel_cfg(1, 1, **parallel_kw), optim_cfg(**(optim_kw or {})),
        vocab.vocab_size, trie,
    )


def _measure(actor, vocab) -> dict:
    """Log-probs, loss sums and full gradients of SFT / GRPO / contrast, plus the metrics of one SFT step."""
    prompts, responses, _ = prompts_and_items(vocab, 10, seed=3)
    grpo, contrast = grpo_batch(vocab, groups=3, group_size=4, seed=5), contrast_batch(vocab, groups=4, seed=7)
    out = {"logprobs": actor.logprobs(prompts, responses)}
    out["sft_sums"] = actor.forward_backward_sft(prompts, responses)
    out["sft_grads"] = actor.full_grads()
    out["grpo_sums"], _ = actor.forward_backward_policy(grpo)
    out["grpo_grads"] = actor.full_grads()
    out["contrast_sums"], _ = actor.forward_backward_policy(contrast)
    out["contrast_grads"] = actor.full_grads()
    return out


def _compare(got: dict, ref: dict) -> dict:
    res = {"logprobs": float((got["logprobs"] - ref["logprobs"]).abs().max())}
    for key in ("sft", "grpo", "contrast"):
        res[f"{key}_grads"] = _max_diff(got[f"{key}_grads"], ref[f"{key}_grads"])[0]
        g, r = got[f"{key}_sums"], ref[f"{key}_sums"]
        res[f"{key}_loss"] = abs(g["loss_sum"] / g["denom"] - r["loss_sum"] / r["denom"])
        res[f"{key}_padding"] = 1 - g["real_slots"] / g["token_slots"]
    return res


def _nan_hook(actor, ranks=None):
    """Forward hook making the final norm's output NaN (on ``ranks``, default all): loss and grads turn NaN."""
    if ranks is not None and dist.get_rank() not in ranks:
        return None
    norm = actor.chunks[0].decoder.final_layernorm
    return norm.register_forward_hook(lambda mod, inp, out: out * float("nan"))


def _optimizer_state(actor) -> dict:
    state = actor.optimizer.state_dict()
    flat = {}

    def walk(prefix, obj):
        if isinstance(obj, torch.Tensor):
            flat[prefix] = obj.detach().clone()
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}.{k}", v)
        elif isinstance(obj, (list, tuple)):
            for i, v in enumerate(obj):
                walk(f"{prefix}.{i}", v)

    walk("opt", state)
    return flat


def check_packing(vocab, trie, init) -> dict:
    from recast_mcore.actor.packing import resolve_layout

    actor = _actor(vocab, trie, micro_batch_size=4)
    actor.load_full_state_dict(init)
    ref = _measure(actor, vocab)
    out = {"off_padding": _compare(ref, ref)}
    for mode in ("rows", "thd"):
        actor.layout = resolve_layout(mode, False, actor.layout.pad_id, 1)
        out[mode] = _compare(_measure(actor, vocab), ref)
    return out


def check_recompute(vocab, trie, init) -> dict:
    ref_actor = _actor(vocab, trie, micro_batch_size=4)
    ref_actor.load_full_state_dict(init)
    ref = _measure(ref_actor, vocab)
    out = {}
    for name, kw in {"full": dict(recompute_granularity="full", recompute_num_layers=1),
                     "selective": dict(recompute_granularity="selective", recompute_modules=["core_attn"])}.items():
        actor = _actor(vocab, trie, model_kw=kw, micro_batch_size=4)
        actor.load_full_state_dict(init)
        out[name] = _compare(_measure(actor, vocab), ref)
        out[name]["recompute_granularity"] = actor.config.recompute_granularity
    return out


def check_nan_guard(vocab, trie, init) -> dict:
    from recast_mcore.actor.nonfinite import NonFiniteStepError

    prompts, responses, _ = prompts_and_items(vocab, 8, seed=21)
    actor = _actor(vocab, trie, optim_kw=dict(max_consecutive_skips=2))
    actor.load_full_state_dict(init)
    actor.sft_step(prompts, responses)  # a real step first: Adam state exists
    weights, opt, step, lr = actor.full_state_dict(), _optimizer_state(actor), actor.step_count, actor.optimizer.param_groups[0]["lr"]
    hook = _nan_hook(actor)
    skipped = actor.sft_step(prompts, responses)
    hook.remove()
    out = {
        "skipped_metrics": {k: skipped[k] for k in ("nonfinite_skipped", "skipped_steps_total", "loss", "grad_norm")},
        "weights_diff_after_skip": _max_diff(actor.full_state_dict(), weights)[0],
        "optimizer_state_diff_after_skip": _max_diff(_optimizer_state(actor), opt)[0],
        "step_count_unchanged": actor.step_count == step,
        "lr_unchanged": actor.optimizer.param_groups[0]["lr"] == lr,
    }
    good = actor.sft_step(prompts, responses)
    after = actor.full_state_dict()
    out["next_step"] = {"nonfinite_skipped": good["nonfinite_skipped"], "loss": good["loss"],
                        "weights_moved": _max_diff(after, weights)[0], "weights_finite": all(bool(torch.isfinite(v).all()) for v in after.values())}
    hook = _nan_hook(actor)
    actor.sft_step(prompts, responses)
    try:
        actor.sft_step(prompts, responses)
        out["consecutive_limit"] = "no error"
    except NonFiniteStepError as exc:
        out["consecutive_limit"] = str(exc)
    hook.remove()
    stop = _actor(vocab, trie, optim_kw=dict(nonfinite_policy="stop"))
    stop.load_full_state_dict(init)
    hook = _nan_hook(stop)
    try:
        stop.sft_step(prompts, responses)
        out["stop_policy"] = "no error"
    except RuntimeError as exc:
        out["stop_policy"] = f"{type(exc).__name__}: {exc}"
    hook.remove()
    out["stop_weights_diff"] = _max_diff(stop.full_state_dict(), init)[0]
    return out


def run_world1(out: Path) -> None:
    from recast_mcore.actor import initialize_distributed

    vocab, trie = catalog()
    initialize_distributed(parallel_cfg(1, 1))
    init = _actor(vocab, trie).full_state_dict()
    result = {"packing": check_packing(vocab, trie, init), "recompute": check_recompute(vocab, trie, init),
              "nan_guard": check_nan_guard(vocab, trie, init)}
    (out / "readiness_world1.json").write_text(json.dumps(result, indent=1))


def _two_updates(actor, vocab) -> tuple[list[float], list]:
    losses, weights = [], []
    for s in range(2):
        batch = grpo_batch(vocab, groups=4, group_size=4, seed=40 + s)
        batch.old_logprobs = actor.logprobs(batch.prompt_ids, batch.responses)
        losses.append(actor.update(batch)["loss"])
        weights.append(actor.full_state_dict())  # right after the step: needs the pending param all-gather
    return losses, weights


def run_dp2(out: Path) -> None:
    from recast_mcore.actor import initialize_distributed

    vocab, trie = catalog()
    initialize_distributed(parallel_cfg(1, 1))
    base = dict(distributed_optimizer=True)
    plain = _actor(vocab, trie, optim_kw=base, micro_batch_size=4)
    init = plain.full_state_dict()
    init = [init]
    dist.broadcast_object_list(init, src=0)
    init = init[0]
    plain.load_full_state_dict(init)
    overlap = _actor(vocab, trie, optim_kw=dict(base, overlap_grad_reduce=True, overlap_param_gather=True), micro_batch_size=4)
    overlap.load_full_state_dict(init)
    losses_a, weights_a = _two_updates(plain, vocab)
    losses_b, weights_b = _two_updates(overlap, vocab)
    prompts, responses, _ = prompts_and_items(vocab, 6, seed=9)
    lp_diff = float((plain.logprobs(prompts, responses) - overlap.logprobs(prompts, responses)).abs().max())
    # a NaN on rank 1 only: both ranks skip the step (global grad norm), weights stay
    before = overlap.full_state_dict()
    hook = _nan_hook(overlap, ranks={1})
    metrics = overlap.sft_step(prompts, responses)
    if hook is not None:
        hook.remove()
    skipped = [None, None]
    dist.all_gather_object(skipped, metrics["nonfinite_skipped"])
    mem = [None, None]
    dist.all_gather_object(mem, (metrics["peak_memory_bytes"], metrics["peak_memory_bytes_this_rank"]))
    after = overlap.full_state_dict()
    if dist.get_rank() == 0:
        result = {
            "loss_diff": max(abs(a - b) for a, b in zip(losses_a, losses_b)),
            "weights_diff": max(_max_diff(a, b)[0] for a, b in zip(weights_a, weights_b)),
            "logprobs_diff": lp_diff,
            "skipped_on_ranks": skipped,
            "weights_diff_after_skip": _max_diff(after, before)[0],
            "peak_memory_max": [m[0] for m in mem],
            "peak_memory_this_rank": [m[1] for m in mem],
            "ddp_overlap": [overlap.model[0].ddp_config.overlap_grad_reduce, overlap.model[0].ddp_config.overlap_param_gather],
        }
        (out / "readiness_dp2.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    mode, target = sys.argv[1], Path(sys.argv[2])
    torch.use_deterministic_algorithms(True)
    {"world1": run_world1, "dp2": run_dp2}[mode](target)
    from recast_mcore.actor import destroy_distributed

    destroy_distributed()
