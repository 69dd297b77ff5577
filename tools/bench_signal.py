"""Signal-builder time at production shape (B prompts x G candidates), pure torch, one thread.

    OMP_NUM_THREADS=1 .venv/bin/python tools/bench_signal.py --prompts 256 --group-size 32 [--case recast:update=advantages ...]

A random step: I catalog items of item_len 3, a 5% per-candidate hit rate, random rollout log-probs, a constant
``score_fn`` (the actor's anchor scoring is not timed). Each case is ``builder[:key=value,...]`` with keys of
``signal.recast`` (or ``signal.grpo``); prints the median and min over ``--repeats`` builds after a warm-up.
"""

from __future__ import annotations

import argparse
import time

import torch

from recast_mcore.config.signal import RewardConfig, SignalConfig
from recast_mcore.rewards import compute_rewards
from recast_mcore.rollout.types import RolloutGroups
from recast_mcore.signal import SignalInputs, build_update_batch

DEFAULT_CASES = ["grpo", "grpo_gt", "recast", "recast:update=advantages", "recast:num_negatives=4"]


def make_inputs(b: int, g: int, num_items: int = 2000, item_len: int = 3, seed: int = 0) -> SignalInputs:
    gen = torch.Generator().manual_seed(seed)
    item_tokens = torch.stack([4 + 32 * level + torch.randint(0, 32, (num_items,), generator=gen) for level in range(item_len)], 1)
    targets = [[int(t)] for t in torch.randint(0, num_items, (b,), generator=gen)]
    hit = torch.rand(b, g, generator=gen) < 0.05
    ids = torch.where(hit, torch.tensor([t[0] for t in targets])[:, None], torch.randint(0, num_items, (b, g), generator=gen))
    groups = RolloutGroups(
        prompt_ids=[[1] + list(range(4, 24))] * b, responses=torch.cat([item_tokens[ids], torch.full((b, g, 1), 2)], -1),
        token_logprobs=torch.cat([-torch.rand(b, g, item_len, generator=gen) * 3, torch.zeros(b, g, 1)], -1),
        item_ids=ids, targets=targets, policy_version=0, num_sampled=b * g)

    def score(prompt_ids, responses):
        return torch.cat([-torch.ones(responses.shape[0], item_len), torch.zeros(responses.shape[0], 1)], 1)

    rewards = compute_rewards(ids, targets, item_tokens, RewardConfig())
    return SignalInputs(groups=groups, rewards=rewards, item_tokens=item_tokens, eos_id=2, score_fn=score)


def config(case: str) -> SignalConfig:
    name, _, settings = case.partition(":")
    cfg = SignalConfig(builder=name)
    section = cfg.recast if name == "recast" else cfg.grpo
    for item in filter(None, settings.split(",")):
        key, value = item.split("=")
        old = getattr(section, key)
        setattr(section, key, type(old)(value) if not isinstance(old, str) else value)
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="signal-builder time per step")
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--group-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--case", action="append", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    inputs = make_inputs(args.prompts, args.group_size)
    for case in args.case or DEFAULT_CASES:
        cfg = config(case)
        build_update_batch(inputs, cfg)  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            batch = build_update_batch(inputs, cfg)
            times.append(time.perf_counter() - start)
        times.sort()
        st = batch.stats
        print(f"{case:28s} median {times[len(times) // 2] * 1e3:6.1f} ms  min {times[0] * 1e3:6.1f} ms  N={batch.num_sequences} "
              f"width={st.update_width:.2f} pairs={st.num_pairs} all_zero={st.frac_all_zero:.3f} repaired={st.frac_repaired:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
