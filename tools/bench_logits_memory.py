"""Benchmark: host memory and time of the actor's losses at an LLM-sized vocabulary (CPU, world size 1).

The actor computes the output layer only at the T response-predicting positions (vocab-parallel; see
actor/forward_backward.py); before, it computed and all-gathered ``[b, S, V]`` logits. Peak memory added by a
step (RSS sampled every 5 ms above the RSS before the step) is measured for ``actor.logprobs`` (forward only,
constrained), ``actor.sft_step`` and ``actor.update`` (GRPO, ppo_clip). Run it once with this checkout and once
with an older one on PYTHONPATH to compare (the script only uses the public actor API).

    python tools/bench_logits_memory.py --json bench_results/logits_memory.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from recast_mcore.config.actor import ModelConfig, OptimConfig, ParallelConfig
from recast_mcore.config.signal import PpoLossConfig
from recast_mcore.data.tokens import ItemVocab
from recast_mcore.data.trie import ItemTrie
from recast_mcore.signal.batch import Role, UpdateBatch


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--vocab", type=int, default=176_251, help="vocabulary size V (151,669 Qwen3 tokens + 2 + 3 x 8,192 items)")
    p.add_argument("--rows", type=int, default=16, help="b: sequences per step (one micro-batch)")
    p.add_argument("--prompt-len", type=int, default=124, help="prompt tokens per row (S = prompt + 4)")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", required=True)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    from recast_mcore.actor import MegatronActor, destroy_distributed, initialize_distributed

    levels = 3
    per_level = (args.vocab - 4) // levels
    g = torch.Generator().manual_seed(0)
    codes = torch.unique(torch.randint(0, per_level, (4000, levels), generator=g), dim=0)[:2000]
    vocab = ItemVocab(codes, [per_level] * levels)
    trie = ItemTrie(vocab.item_tokens, vocab.vocab_size, vocab.eos_id)
    model_cfg = ModelConfig(num_layers=args.layers, hidden_size=args.hidden, ffn_hidden_size=2 * args.hidden,
                            num_attention_heads=4, num_query_groups=2, max_seq_len=args.prompt_len + 8)
    parallel_cfg = ParallelConfig(max_tokens_per_micro_batch=args.rows * (args.prompt_len + 4))
    initialize_distributed(parallel_cfg)
    actor = MegatronActor(model_cfg, parallel_cfg, OptimConfig(lr=1e-6), vocab.vocab_size, trie)
    n, history = args.rows, (args.prompt_len - 1) // levels
    prompts = [[vocab.bos_id] + vocab.item_tokens[torch.randint(0, 2000, (history,), generator=g)].reshape(-1).tolist()
               for _ in range(n)]
    responses = torch.tensor([vocab.encode_response(int(i)) for i in torch.randint(0, 2000, (n,), generator=g)])
    t = responses.shape[1]
    batch = UpdateBatch(prompt_ids=prompts, responses=responses, old_logprobs=-torch.rand(n, t, generator=g),
                        advantages=torch.randn(n, generator=g), weights=torch.ones(n), roles=torch.full((n,), int(Role.SAMPLED)),
                        group_index=torch.arange(n) // 4, token_mask=torch.ones(n, t, dtype=torch.bool),
                        pairs=torch.zeros(0, 2, dtype=torch.long), pair_weights=torch.zeros(0), loss_name="ppo_clip",
                        loss_params=PpoLossConfig())
    calls = {"logprobs": lambda: actor.logprobs(prompts, responses), "sft_step": lambda: actor.sft_step(prompts, responses),
             "update": lambda: actor.update(batch)}
    for fn in calls.values():  # warm-up: optimizer state, allocator pools
        fn()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recast_mcore" / "utils"))
    from memory import PeakRss as peak_rss  # this checkout's, by path: the measured actor may be an older checkout
    results = {}
    for name, fn in calls.items():
        runs = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            with peak_rss() as peak:
                fn()
            runs.append((peak.anon_added, time.perf_counter() - t0))
        results[name] = {"peak_added_mib": max(r[0] for r in runs) / 2**20, "seconds_median": statistics.median(r[1] for r in runs)}
        print(f"{name:9s} peak +{results[name]['peak_added_mib']:8.1f} MiB  {results[name]['seconds_median']:.3f} s")
    import recast_mcore

    out = {"vocab_size": vocab.vocab_size, "rows": n, "seq_len": len(prompts[0]) + t, "response_len": t,
           "model": vars(model_cfg), "code": str(Path(recast_mcore.__file__).parent), "machine": platform.machine(),
           "full_logits_mib": n * (len(prompts[0]) + t) * vocab.vocab_size * 4 / 2**20,
           "response_logits_mib": n * t * vocab.vocab_size * 4 / 2**20, "results": results}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2))
    destroy_distributed()


if __name__ == "__main__":
    main()
