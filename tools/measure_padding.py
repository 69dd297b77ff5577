"""Padding fraction of the actor's micro-batches on real prompts: padded rows vs dense packing vs THD.

Runs the actor's own planner (``plan_update`` for a GRPO-shaped policy update of B prompts x G candidates,
``plan_rows`` for an SFT batch) on every DP rank and packs each micro-batch in the three layouts of
actor/packing.py. Padding fraction = 1 - real tokens / token slots, over all micro-batches of all DP ranks.
No model is built (pure planning); prompts are histories from a prepared dataset.

    recast-data fetch ml-100k
    recast-data prepare --dataset ml-100k --set max_history=50 --out runs/data/ml-100k-h50
    python tools/measure_padding.py --prepared runs/data/ml-100k-h50 --prompts 256 --group-size 16 --json out.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_actor_update import make_batch  # noqa: E402

from recast_mcore.actor.microbatch import micro_batch_rows, plan_rows, plan_update, step_seq_len  # noqa: E402
from recast_mcore.actor.packing import Layout, pack_micro_batches, padding_fraction  # noqa: E402
from recast_mcore.data.dataset import PreparedDataset  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prepared", required=True, help="prepared dataset directory (recast-data prepare)")
    p.add_argument("--prompts", type=int, default=256, help="B prompts of the policy update")
    p.add_argument("--group-size", type=int, default=16, help="G candidates per prompt")
    p.add_argument("--sft-batch", type=int, default=512, help="rows of the SFT batch")
    p.add_argument("--dp", type=int, default=1, help="data-parallel size")
    p.add_argument("--max-tokens-per-micro-batch", type=int, default=4096)
    p.add_argument("--micro-batch-size", type=int, default=0)
    p.add_argument("--thd-multiple", type=int, default=1, help="T_pack multiple (16 with FP8, x TP with SP)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", required=True)
    return p.parse_args()


def fractions(per_rank_seqs: list[list[tuple]], seq_len: int, thd_multiple: int) -> dict[str, float]:
    """Padding fraction of each layout over all ranks' micro-batches."""
    out = {}
    for mode in ("off", "rows", "thd"):
        layout = Layout(mode, 0, thd_multiple if mode == "thd" else 1, use_cu_seqlens=mode == "thd")
        packed = [pk for seqs in per_rank_seqs for pk in pack_micro_batches(seqs, layout, seq_len, equal_shapes=False)]
        out[mode] = padding_fraction(packed)
    return out


def policy_update(ds: PreparedDataset, prompts: list[list[int]], args) -> dict:
    batch = make_batch(ds.vocab, prompts, args.group_size, False, seed=args.seed)
    per_rank, plan = [], None
    for r in range(args.dp):
        plan = plan_update(batch, args.dp, r, micro_batch_size=args.micro_batch_size,
                           max_tokens_per_micro_batch=args.max_tokens_per_micro_batch, equal_rows=False)
        per_rank.append([(mb.prompt_ids, mb.responses) for mb in plan.micro_batches])
    return {"rows": batch.num_sequences, "seq_len": plan.seq_len, "micro_batches_per_rank": len(per_rank[0]),
            "padding": fractions(per_rank, plan.seq_len, args.thd_multiple)}


def sft_batch(ds: PreparedDataset, rng: random.Random, args) -> dict:
    examples = rng.sample(ds.sft_examples(), args.sft_batch)
    prompts = [ds.vocab.encode_prompt(e.history) for e in examples]
    responses = torch.tensor([ds.vocab.encode_response(e.targets[0]) for e in examples])
    s = step_seq_len(prompts, responses.shape[1])
    m = micro_batch_rows(1, s, args.micro_batch_size, args.max_tokens_per_micro_batch)
    per_rank = [[([prompts[i] for i in rows], responses[rows]) for rows in plan_rows(len(prompts), args.dp, r, m)] for r in range(args.dp)]
    return {"rows": len(prompts), "seq_len": s, "padding": fractions(per_rank, s, args.thd_multiple)}


def main() -> None:
    args = parse_args()
    ds = PreparedDataset.load(args.prepared)
    rng = random.Random(args.seed)
    examples = rng.sample(ds.examples("train"), args.prompts)
    prompts = [ds.vocab.encode_prompt(e.history) for e in examples]
    lengths = sorted(len(p) for p in prompts)
    result = {
        "prepared": str(args.prepared), "max_history": ds.max_history, "prompts": args.prompts, "group_size": args.group_size,
        "dp": args.dp, "max_tokens_per_micro_batch": args.max_tokens_per_micro_batch, "thd_multiple": args.thd_multiple,
        "prompt_tokens": {"min": lengths[0], "median": lengths[len(lengths) // 2], "max": lengths[-1]},
        "policy_update": policy_update(ds, prompts, args), "sft": sft_batch(ds, rng, args),
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"prompt tokens min/median/max = {lengths[0]}/{lengths[len(lengths) // 2]}/{lengths[-1]}")
    print("| batch | rows | S | padded rows | dense packing | THD |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in ("policy_update", "sft"):
        r = result[name]
        pad = r["padding"]
        print(f"| {name} | {r['rows']} | {r['seq_len']} | {100 * pad['off']:.1f}% | {100 * pad['rows']:.1f}% | {100 * pad['thd']:.1f}% |")


if __name__ == "__main__":
    main()
