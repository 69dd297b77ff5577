"""CPU and wall seconds of a study's building blocks for one run config (how docs/study.md sizes studies).

    python tools/bench_study_cost.py --config examples/study/stochastic.run.yaml --set model.ffn_hidden_size=256
    python tools/bench_study_cost.py --config FILE --set rollout.engine=torch --check-engine

Measures, with one torch thread (process CPU seconds are nearly load-independent on a shared machine;
wall seconds are not): one SFT step of 64 window examples, one rollout of 32 prompts x G plus the signal
builder, one actor update on that batch, and a beam-search evaluation of 100 valid users (the config's
beam width and history exclusion). ``--check-engine`` also compares the configured engine's rollout
log-probs with the Megatron actor's and its beam lists with the plain torch engine's.
Needs a prepared dataset at ``data.prepared_dir``.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from recast_mcore.config.base import load_config
from recast_mcore.config.rollout import SamplingConfig
from recast_mcore.config.run import RunConfig


def timed(fn, reps: int = 1):
    """(CPU seconds, wall seconds) per call, averaged over ``reps`` calls, and the last result."""
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(reps):
        out = fn()
    return round((time.process_time() - cpu0) / reps, 3), round((time.perf_counter() - wall0) / reps, 3), out


def check_engine(job) -> dict[str, float]:
    from recast_mcore.rollout.catalog import ItemCatalog
    from recast_mcore.rollout.torch_engine import TorchRolloutEngine
    from recast_mcore.trainer.weights import push_weights

    vocab = job.dataset.vocab
    job.state.policy_version += 1  # the timings above updated the actor: serve its current weights first
    push_weights(job.engine, job.cfg.rollout, job.actor, job.cfg.model, vocab.vocab_size, job.state.policy_version)
    examples = job.dataset.examples("valid")[:40]
    prompts = [vocab.encode_prompt(e.history) for e in examples]
    groups = job.engine.generate(prompts, [e.targets for e in examples], SamplingConfig(group_size=4))
    flat = groups.responses.reshape(-1, groups.responses.shape[-1])
    actor_lp = job.actor.logprobs([p for p in prompts for _ in range(4)], flat)
    reference = TorchRolloutEngine(ItemCatalog.from_vocab(vocab), job.actor.logits_fn)
    a, b = job.engine.beam_search(prompts, 20), reference.beam_search(prompts, 20)
    return {"max_abs_logprob_diff_vs_actor": float((actor_lp - groups.token_logprobs.reshape(actor_lp.shape)).abs().max()),
            "beam_lists_equal_torch_engine": float(torch.equal(a.item_ids, b.item_ids)),
            "max_abs_beam_score_diff": float((a.scores - b.scores).abs().max())}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--check-engine", action="store_true")
    args = parser.parse_args(argv)
    from recast_mcore.eval.evaluate import eval_examples, evaluate, seen_items
    from recast_mcore.trainer.data_feed import EpochSampler
    from recast_mcore.trainer.job import build_job
    from recast_mcore.trainer.rollout_step import build_step_batch
    from recast_mcore.trainer.sft import encode_windows

    cfg = load_config(RunConfig, args.config, args.overrides)
    torch.set_num_threads(1)
    job = build_job(cfg)
    ds, vocab = job.dataset, job.dataset.vocab
    out = {"engine": cfg.rollout.engine, "ffn_hidden_size": cfg.model.ffn_hidden_size}
    windows = EpochSampler(ds.sft_windows(), 64, 1, "bench")
    out["sft_step_64_windows"] = timed(lambda: job.actor.sft_step(*encode_windows(vocab, windows.batch(0))), 3)[:2]
    prompts = EpochSampler(ds.examples("train"), 32, 1, "bench")

    def rollout():
        return build_step_batch(1, job.engine, prompts, vocab, cfg.rollout, cfg.reward, cfg.signal, job.actor.logprobs)

    cpu, wall, (batch, _) = timed(rollout, 2)
    out[f"rollout_32xG{cfg.rollout.sampling.group_size}_and_batch"] = (cpu, wall)
    out[f"update_{cfg.signal.builder}_{batch.num_sequences}_rows"] = timed(lambda: job.actor.update(batch), 2)[:2]
    users = eval_examples(ds, cfg.eval)[:100]
    out["eval_100_users"] = timed(lambda: evaluate(job.engine, vocab, users, cfg.eval, seen_items(ds, users, cfg.eval.split)))[:2]
    if args.check_engine:
        out.update(check_engine(job))
    print(json.dumps(out))
    job.close()


if __name__ == "__main__":
    main()
