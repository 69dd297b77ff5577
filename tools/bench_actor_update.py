"""Benchmark: actor update on all G candidates per prompt (GRPO) vs on 2 per prompt (ReCast).

Same model, same B prompts. For every G in --group-sizes, one update on B*G rows (ppo_clip) and one on
B*2 rows (pairwise_contrast, 1 pair per prompt) are timed alternately (the order flips every repeat),
--repeats times after --warmup untimed rounds; medians are reported. Each update is the full
forward + backward + optimizer step through MegatronActor.update (micro-batching included).

    python tools/bench_actor_update.py --group-sizes 8,16,32,64 --json bench.json
    torchrun --nproc-per-node 2 tools/bench_actor_update.py ... --tp 2      # any layout

Ideal time ratio is G/2 (update cost linear in rows). Columns: t_G / t_2 seconds, the ratio and its
fraction of G/2, fwd+bwd and optimizer-step medians (the optimizer step does not shrink with rows),
tokens/s and peak memory of each (CPU: peak RSS delta, GPU: max_memory_allocated, max over ranks; see
actor/instrument.py) and, on a GPU with a known peak, MFU from the real sequence lengths (nan elsewhere).

    python tools/bench_actor_update.py --model examples/models/qwen3-0.6b.yaml --params-dtype bf16 \
        --history 50 --group-sizes 8,16,32,64 --repeats 3 --json gpu_bench.json      # the GPU smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from recast_mcore.config.actor import ModelConfig, OptimConfig, ParallelConfig
from recast_mcore.config.base import load_config
from recast_mcore.config.signal import ContrastLossConfig, PpoLossConfig
from recast_mcore.data.tokens import ItemVocab
from recast_mcore.data.trie import ItemTrie
from recast_mcore.signal.batch import Role, UpdateBatch


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--group-sizes", default="8,16,32,64", help="comma-separated G values")
    p.add_argument("--prompts", type=int, default=8, help="B prompts per update")
    p.add_argument("--history", type=int, default=10, help="history items per prompt")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--model", default="", help="ModelConfig YAML (default: 4 layers, d=256)")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--max-tokens-per-micro-batch", type=int, default=4096)
    p.add_argument("--params-dtype", choices=["fp32", "bf16"], default="", help="override the model's params_dtype")
    p.add_argument("--packing", choices=["auto", "off", "rows", "thd"], default="auto", help="parallel.sequence_packing")
    p.add_argument("--codes", type=int, default=32, help="codes per semantic-ID level (3 levels)")
    p.add_argument("--json", required=True, help="where to write the results")
    return p.parse_args()


def make_catalog(codes: int, num_items: int = 2000) -> tuple[ItemVocab, ItemTrie]:
    g = torch.Generator().manual_seed(0)
    item_codes = torch.unique(torch.randint(0, codes, (num_items * 2, 3), generator=g), dim=0)
    item_codes = item_codes[torch.randperm(item_codes.shape[0], generator=g)[:num_items]]
    vocab = ItemVocab(item_codes, [codes] * 3)
    return vocab, ItemTrie(vocab.item_tokens, vocab.vocab_size, vocab.eos_id)


def make_batch(vocab: ItemVocab, prompts: list[list[int]], rows_per_prompt: int, contrast: bool, seed: int) -> UpdateBatch:
    """B prompts x rows_per_prompt random catalog candidates (ppo_clip), or 2 rows + 1 pair (contrast)."""
    g = torch.Generator().manual_seed(seed)
    b = len(prompts)
    n = b * rows_per_prompt
    items = torch.randint(0, vocab.num_items, (n,), generator=g).tolist()
    responses = torch.tensor([vocab.encode_response(i) for i in items])
    t = responses.shape[1]
    roles = torch.full((n,), int(Role.SAMPLED))
    pairs = torch.zeros(0, 2, dtype=torch.long)
    loss_name, params = "ppo_clip", PpoLossConfig()
    if contrast:
        roles = torch.tensor([int(Role.POSITIVE), int(Role.NEGATIVE)] * b)
        pairs = torch.stack([torch.arange(0, n, 2), torch.arange(1, n, 2)], 1)
        loss_name, params = "pairwise_contrast", ContrastLossConfig()
    return UpdateBatch(
        prompt_ids=[prompts[i // rows_per_prompt] for i in range(n)], responses=responses,
        old_logprobs=torch.full((n, t), -1.0), advantages=torch.randn(n, generator=g) * (not contrast),
        weights=torch.ones(n), roles=roles, group_index=torch.arange(b).repeat_interleave(rows_per_prompt),
        token_mask=torch.ones(n, t, dtype=torch.bool), pairs=pairs, pair_weights=torch.ones(pairs.shape[0]),
        loss_name=loss_name, loss_params=params,
    )


def timed_update(actor, batch: UpdateBatch) -> dict[str, float]:
    """One full update; returns wall time plus its fwd+bwd / optimizer split and instrumentation."""
    t0 = time.perf_counter()
    metrics = actor.update(batch)
    total = time.perf_counter() - t0
    return {"seconds": total, "optimizer_seconds": metrics["optimizer_seconds"], "tokens_per_second": metrics["tokens_per_second"],
            "peak_memory_bytes": metrics["peak_memory_bytes"], "peak_reserved_bytes": metrics.get("peak_reserved_bytes", 0.0),
            "mfu": metrics.get("mfu", float("nan")), "padding_fraction": metrics["padding_fraction"],
            "tokens": metrics["update_tokens"], "rows": metrics["update_sequences"]}


def summarize(runs: list[dict[str, float]]) -> dict[str, float]:
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    med["fwd_bwd_seconds"] = med["seconds"] - med["optimizer_seconds"]
    return med


def main() -> None:
    args = parse_args()
    from recast_mcore.actor import MegatronActor, destroy_distributed, initialize_distributed

    model_cfg = load_config(ModelConfig, args.model) if args.model else ModelConfig(
        num_layers=4, hidden_size=256, ffn_hidden_size=768, num_attention_heads=8, num_query_groups=4,
        qk_layernorm=True, tie_embeddings=True, max_seq_len=256)
    if args.params_dtype:
        model_cfg.params_dtype = args.params_dtype
    parallel_cfg = ParallelConfig(tensor_parallel=args.tp, pipeline_parallel=args.pp, sequence_packing=args.packing,
                                  max_tokens_per_micro_batch=args.max_tokens_per_micro_batch)
    initialize_distributed(parallel_cfg)
    vocab, trie = make_catalog(args.codes)
    actor = MegatronActor(model_cfg, parallel_cfg, OptimConfig(lr=1e-6), vocab.vocab_size, trie)
    g = torch.Generator().manual_seed(1)
    prompts = [vocab.encode_prompt(torch.randint(0, vocab.num_items, (args.history,), generator=g).tolist()) for _ in range(args.prompts)]
    group_sizes = [int(x) for x in args.group_sizes.split(",")]
    results = []
    for G in group_sizes:
        full, two = make_batch(vocab, prompts, G, False, seed=G), make_batch(vocab, prompts, 2, True, seed=G + 1)
        for _ in range(args.warmup):
            timed_update(actor, full), timed_update(actor, two)
        runs_full, runs_two = [], []
        for r in range(args.repeats):
            order = [(full, runs_full), (two, runs_two)]
            for batch, sink in order if r % 2 == 0 else order[::-1]:
                sink.append(timed_update(actor, batch))
        f, t = summarize(runs_full), summarize(runs_two)
        ratio = f["seconds"] / t["seconds"]
        results.append({
            "G": G, "full": f, "two": t, "time_ratio": ratio, "ideal_ratio": G / 2, "fraction_of_ideal": ratio / (G / 2),
            "fwd_bwd_ratio": f["fwd_bwd_seconds"] / t["fwd_bwd_seconds"],
            "peak_memory_ratio": f["peak_memory_bytes"] / max(t["peak_memory_bytes"], 1.0),
        })
    if torch.distributed.get_rank() == 0:
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
        out = {"device": device, "world_size": torch.distributed.get_world_size(), "prompts": args.prompts, "history": args.history,
               "packing": actor.layout.mode, "tf32": bool(torch.backends.cuda.matmul.allow_tf32),
               "repeats": args.repeats, "model": vars(model_cfg), "vocab_size": vocab.vocab_size, "results": results}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"device: {device}; B={args.prompts} prompts, medians of {args.repeats}")
        print("|  G | rows G/2 | t_G s | t_2 s | ratio | ideal | % ideal | fwd+bwd ratio | opt step s | tok/s G | tok/s 2 | mem G MiB | mem 2 MiB | mem ratio | MFU G | MFU 2 |")
        print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in results:
            f, t = r["full"], r["two"]
            print(f"| {r['G']} | {int(f['rows'])}/{int(t['rows'])} | {f['seconds']:.3f} | {t['seconds']:.3f} | {r['time_ratio']:.2f} | "
                  f"{r['ideal_ratio']:.0f} | {100 * r['fraction_of_ideal']:.0f}% | {r['fwd_bwd_ratio']:.2f} | {t['optimizer_seconds']:.3f} | "
                  f"{f['tokens_per_second']:.0f} | {t['tokens_per_second']:.0f} | {f['peak_memory_bytes'] / 2**20:.1f} | "
                  f"{t['peak_memory_bytes'] / 2**20:.1f} | {r['peak_memory_ratio']:.2f} | {f['mfu']:.3f} | {t['mfu']:.3f} |")
    destroy_distributed()


if __name__ == "__main__":
    main()
