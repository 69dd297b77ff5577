"""Actor worker for the multi-process tests (run with torchrun, or plain python for world size 1).

    python tests/dist/actor_worker.py ref OUT            # TP1/PP1 reference: logprobs, grads, one step; SFT run
    torchrun --nproc-per-node N tests/dist/actor_worker.py layout NAME OUT
                                                         # load ref weights at layout NAME, compare everything
                                                         # (NAME=tp2 then runs the checkpoint flow: save/load
                                                         #  exact, then the process is killed mid-save)
    python tests/dist/actor_worker.py resume OUT         # TP1: load the TP2 checkpoint, continue the run

Every comparison raises AssertionError with the largest difference; results land in OUT/*.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
from actor_common import TP_PP_LAYOUTS, catalog, contrast_batch, grpo_batch, model_cfg, optim_cfg, parallel_cfg, prompts_and_items  # noqa: E402

TOL = 2e-5


def _build(tp: int, pp: int, vpp: int, **pkw):
    from recast_mcore.actor import MegatronActor, initialize_distributed

    vocab, trie = catalog()
    distributed = pkw.pop("distributed_optimizer", False)
    pc = parallel_cfg(tp, pp, vpp, **pkw)
    initialize_distributed(pc)
    actor = MegatronActor(model_cfg(tie_embeddings=True), pc, optim_cfg(distributed_optimizer=distributed), vocab.vocab_size, trie)
    return actor, vocab, trie


def _inputs(vocab):
    prompts, responses, _ = prompts_and_items(vocab, 10, seed=3)
    return prompts, responses, grpo_batch(vocab, groups=3, group_size=4, seed=5), contrast_batch(vocab, groups=4, seed=7)


def _max_diff(a: dict, b: dict) -> tuple[float, str]:
    assert a.keys() == b.keys(), f"key mismatch: {sorted(set(a) ^ set(b))}"
    worst = max(((float((a[k].float() - b[k].float()).abs().max()), k) for k in a), default=(0.0, ""))
    return worst


def _measure(actor, vocab) -> dict:
    """logprobs, SFT grads, GRPO grads, contrast grads, weights after one GRPO step (full dicts on rank 0)."""
    prompts, responses, grpo, contrast = _inputs(vocab)
    out = {"logprobs": actor.logprobs(prompts, responses)}
    reference = actor.build_reference()  # local shards of the current (initial) weights, no gather
    out["ref_logprobs"] = reference.logprobs(prompts, responses)
    out["ref_minus_actor"] = float((out["ref_logprobs"] - out["logprobs"]).abs().max())
    grpo.old_logprobs = actor.logprobs(grpo.prompt_ids, grpo.responses) - 0.05
    grads = actor.full_grads if not actor.optim_cfg.distributed_optimizer else (lambda: None)  # DO: grads are DP shards
    out["sft_sums"] = actor.forward_backward_sft(prompts, responses)
    out["sft_grads"] = grads()
    out["grpo_sums"], _ = actor.forward_backward_policy(grpo)
    out["grpo_grads"] = grads()
    out["contrast_sums"], _ = actor.forward_backward_policy(contrast)
    out["contrast_grads"] = grads()
    out["grpo_metrics"] = actor.update(grpo)
    out["weights_after_step"] = actor.full_state_dict()
    # the RL stage's own optimizer: fresh moments and schedule over the same DDP buffers
    sft_optim = actor.optim_cfg
    actor.use_optimizer(optim_cfg(lr=1e-3, weight_decay=0.1, distributed_optimizer=sft_optim.distributed_optimizer))
    actor.update(grpo)
    out["weights_after_rl_step"] = actor.full_state_dict()
    out["ref_after_updates"] = float((reference.logprobs(prompts, responses) - out["ref_logprobs"]).abs().max())
    actor.reference = None
    actor.use_optimizer(sft_optim)  # later flows (SFT run, checkpoints) start from a fresh optimizer as before
    return out


def run_ref(out: Path) -> None:
    actor, vocab, trie = _build(1, 1, 1)
    torch.save(actor.full_state_dict(), out / "init.pt")
    torch.save(_measure(actor, vocab), out / "ref.pt")
    # trie-masked log-probs vs a plain-torch reference (allowed sets by scanning the catalog, not the trie)
    prompts, responses, _ = prompts_and_items(vocab, 6, seed=11)
    lp = actor.logprobs(prompts, responses)
    ref = torch.zeros_like(lp)
    items = vocab.item_tokens.tolist()
    for i, (p, r) in enumerate(zip(prompts, responses.tolist())):
        logits = actor.logits_fn(torch.tensor([p + r]))[0]
        for t in range(len(r)):
            if t < vocab.item_len:
                allowed = sorted({it[t] for it in items if it[:t] == r[:t]})
            else:
                allowed = [vocab.eos_id]
            z = logits[len(p) + t - 1]
            ref[i, t] = z[r[t]] - torch.logsumexp(z[allowed], 0)
    trie_diff = float((lp - ref).abs().max())
    # old log-probs recomputed by the actor: the PPO ratio of the first optimizer step is 1, nothing clips
    recomputed = grpo_batch(vocab, groups=3, group_size=4, seed=21)
    recomputed.old_logprobs = actor.logprobs(recomputed.prompt_ids, recomputed.responses)
    first = actor.update(recomputed)
    # a short SFT run lowers the loss
    sft_prompts, sft_responses, _ = prompts_and_items(vocab, 16, seed=13)
    losses = [actor.sft_step(sft_prompts, sft_responses)["loss"] for _ in range(15)]
    (out / "ref.json").write_text(json.dumps({"trie_logprob_max_diff": trie_diff, "sft_losses": losses,
                                              "first_step_ratio_mean": first["ratio_mean"],
                                              "first_step_clipfrac": first["clipfrac_mean"]}))


def run_layout(name: str, out: Path) -> None:
    tp, pp, vpp = TP_PP_LAYOUTS[name]
    extra = {"micro_batch_size": 4}
    if name == "dp2":
        extra["distributed_optimizer"] = True
    actor, vocab, _ = _build(tp, pp, vpp, **extra)
    compare_layout(actor, vocab, name, out)
    check_streamed_export(actor, vocab, name, out)
    if name == "pp2vpp2":  # virtual-stage checkpoint: save -> perturb -> load is exact
        saved = actor.full_state_dict()
        actor.save(out / "ckpts_vpp" / "a", {"k": 1})
        actor.load_full_state_dict(torch.load(out / "init.pt"))
        state = actor.load(out / "ckpts_vpp")
        reloaded = actor.full_state_dict()
        if dist.get_rank() == 0:
            result = json.loads((out / f"layout_{name}.json").read_text())
            result["ckpt_reload_max_diff"] = _max_diff(saved, reloaded)[0]
            result["ckpt_trainer_state"] = state
            (out / f"layout_{name}.json").write_text(json.dumps(result))
    if name == "dp2":  # DistributedOptimizer (dp_reshardable) resume at the same layout continues the run
        actor.save(out / "ckpts_dp2" / "a", {"k": 2})
        _train_steps(actor, vocab, range(5, 6))
        before = actor.full_state_dict()  # weights after the step depend on the Adam moments too
        actor.load(out / "ckpts_dp2")
        _train_steps(actor, vocab, range(5, 6))
        after = actor.full_state_dict()
        if dist.get_rank() == 0:
            result = json.loads((out / f"layout_{name}.json").read_text())
            result["resume_weights_diff"] = _max_diff(before, after)[0]
            (out / f"layout_{name}.json").write_text(json.dumps(result))
    if name == "tp2":  # the same launch then runs the checkpoint flow (one launch per layout)
        run_ckpt(actor, vocab, out)


def compare_layout(actor, vocab, name: str, out: Path) -> None:
    actor.load_full_state_dict(torch.load(out / "init.pt"))
    got = _measure(actor, vocab)
    result = {}
    if dist.get_rank() == 0:
        ref = torch.load(out / "ref.pt", weights_only=True)
        result["logprobs"] = float((got["logprobs"] - ref["logprobs"]).abs().max())
        result["ref_logprobs"] = float((got["ref_logprobs"] - ref["ref_logprobs"]).abs().max())
        result["ref_minus_actor"], result["ref_after_updates"] = got["ref_minus_actor"], got["ref_after_updates"]
        for key in ("sft_grads", "grpo_grads", "contrast_grads", "weights_after_step", "weights_after_rl_step"):
            if got[key] is not None:
                result[key], result[key + "_worst"] = _max_diff(got[key], ref[key])
        for key in ("sft_sums", "grpo_sums", "contrast_sums"):
            result[key] = abs(got[key]["loss_sum"] / got[key]["denom"] - ref[key]["loss_sum"] / ref[key]["denom"])
        result["micro_batches"] = got["grpo_sums"]["micro_batches"]
        (out / f"layout_{name}.json").write_text(json.dumps(result))


def check_streamed_export(actor, vocab, name: str, out: Path) -> None:
    """The streamed weight export (actor.export_buckets, trainer.weights.stream_weights to sharded safetensors)
    equals mcore_to_hf of the fully gathered model; buckets respect the size; only stage sources get buckets."""
    from safetensors.torch import load_file

    from recast_mcore.actor.weight_export import is_stage_source
    from recast_mcore.checkpoint.hf_mapping import hf_shapes, mcore_to_hf
    from recast_mcore.rollout.sync_disk import finalize_snapshot
    from recast_mcore.rollout.weight_sync import SyncTarget, check_complete
    from recast_mcore.trainer.weights import stream_weights
    from recast_mcore.utils.dist import all_gather_object

    full = actor.full_state_dict()
    bucket_bytes = 40_000
    mine, sizes = {}, []
    for bucket in actor.export_buckets(bucket_bytes, torch.float32):
        assert bucket.stage == actor.pipeline_stage
        sizes.append((bucket.nbytes, len(bucket.tensors)))
        mine.update((n, t.clone()) for n, t in bucket.tensors)
    assert bool(mine) == is_stage_source(), (dist.get_rank(), len(mine))
    assert all(size <= bucket_bytes or count == 1 for size, count in sizes), sizes
    parts = all_gather_object(mine)
    snap = out / f"stream_{name}"
    target = SyncTarget(method="disk", version=1, endpoints=[], bucket_bytes=bucket_bytes, dtype="float32",
                        shapes=hf_shapes(actor.model_cfg, actor.vocab_size), request_timeout_s=60,
                        snapshot_dir=str(snap) + ".tmp")
    pushed = stream_weights(actor, target)
    if dist.get_rank() == 0:
        finalize_snapshot(Path(target.snapshot_dir), snap, check_complete(pushed, target.shapes))
        ref = mcore_to_hf(full, actor.model_cfg, actor.vocab_size)
        streamed = {k: v for part in parts for k, v in part.items()}
        on_disk = {}
        for f in sorted(snap.glob("*.safetensors")):
            on_disk.update(load_file(str(f)))
        result = json.loads((out / f"layout_{name}.json").read_text())
        result["export_keys_match"] = streamed.keys() == ref.keys() == on_disk.keys()
        result["export_max_diff"] = _max_diff(streamed, ref)[0] if result["export_keys_match"] else -1.0
        result["export_disk_max_diff"] = _max_diff(on_disk, ref)[0] if result["export_keys_match"] else -1.0
        result["export_shards"] = len(list(snap.glob("*.safetensors")))
        (out / f"layout_{name}.json").write_text(json.dumps(result))


def _train_steps(actor, vocab, steps: range) -> list[float]:
    losses = []
    for s in steps:
        batch = grpo_batch(vocab, groups=3, group_size=4, seed=100 + s)
        batch.old_logprobs = actor.logprobs(batch.prompt_ids, batch.responses)
        losses.append(actor.update(batch)["loss"])
    return losses


def run_ckpt(actor, vocab, out: Path) -> None:
    """TP2: two steps, save, step 3, load (exact), step 3 again (same loss), then die in the middle of saving step 3."""
    from recast_mcore.actor import checkpointing

    actor.load_full_state_dict(torch.load(out / "init.pt"))
    _train_steps(actor, vocab, range(2))
    root = out / "ckpts"
    actor.save(root / "step_2", {"rl_step": 2, "note": "after two steps"})
    saved = actor.full_state_dict()
    step3 = _train_steps(actor, vocab, range(2, 3))
    state = actor.load(root)  # via the `latest` pointer
    reloaded = actor.full_state_dict()
    step3_again = _train_steps(actor, vocab, range(2, 3))
    after3 = actor.full_state_dict()
    if dist.get_rank() == 0:
        torch.save({"step2": saved, "step3": after3}, out / "ckpt_weights.pt")
        exact, worst = _max_diff(saved, reloaded)
        (out / "ckpt.json").write_text(json.dumps({
            "trainer_state": state, "reload_max_diff": exact, "step3_loss": step3[0], "step3_loss_after_reload": step3_again[0],
        }))
    # simulate a crash in the middle of saving step 3: the sharded files are written, then the process dies
    real_save = checkpointing.dist_checkpointing.save

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        dist.barrier()
        print("CKPT_FLOW_REACHED_KILL", flush=True)
        # die before the rename: the on-disk state is that of a kill at this point. (A real SIGKILL
        # would orphan the multiprocessing Manager dist_checkpointing.save spawned.)
        raise SystemExit(17)

    checkpointing.dist_checkpointing.save = save_then_die
    actor.save(root / "step_3", {"rl_step": 3})


def run_resume(out: Path) -> None:
    actor, vocab, _ = _build(1, 1, 1)
    root = out / "ckpts"
    state = actor.load(root)
    loaded = actor.full_state_dict()
    loss3 = _train_steps(actor, vocab, range(2, 3))[0]
    after3 = actor.full_state_dict()
    want = torch.load(out / "ckpt_weights.pt")
    record = json.loads((out / "ckpt.json").read_text())
    (out / "resume.json").write_text(json.dumps({
        "trainer_state": state,
        "latest": (root / "latest").read_text().strip(),
        "partial_dirs": sorted(p.name for p in root.iterdir() if p.name.startswith(".")),
        "load_max_diff": _max_diff(loaded, want["step2"])[0],
        "step3_loss_diff": abs(loss3 - record["step3_loss"]),
        "step3_weights_max_diff": _max_diff(after3, want["step3"])[0],
    }))


if __name__ == "__main__":
    mode, rest = sys.argv[1], sys.argv[2:]
    torch.use_deterministic_algorithms(True)
    if mode == "ref":
        run_ref(Path(rest[0]))
    elif mode == "layout":
        run_layout(rest[0], Path(rest[1]))
    elif mode == "resume":
        run_resume(Path(rest[0]))
    else:
        raise SystemExit(f"unknown mode {mode}")
    from recast_mcore.actor import destroy_distributed

    destroy_distributed()
