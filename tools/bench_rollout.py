"""Rollout throughput: SGLang engine vs the in-process torch engine, same model, catalog and batch.

    OMP_NUM_THREADS=2 .venv/bin/python tools/bench_rollout.py --json bench_results/rollout.json

Builds a random tiny Llama (HF, fp32) and a random fixed-length catalog, launches ONE SGLang server
(CPU bridges applied on CPU), then times ``generate`` (B prompts x G samples) and ``beam_search`` on both
engines after one warm-up call each (median of ``--repeats``). Also times the trie mask of the SGLang
logit processor on a 100k-item catalog. Startup time is reported separately, not in throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from recast_mcore.config.rollout import SamplingConfig, SGLangServerConfig, WeightSyncConfig
from recast_mcore.rollout.catalog import ItemCatalog
from recast_mcore.rollout.sglang_engine import SGLangRolloutEngine
from recast_mcore.rollout.testing import hf_logits_fn, make_tiny_llama, random_catalog
from recast_mcore.rollout.torch_engine import TorchRolloutEngine


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", required=True, help="where to write the results")
    p.add_argument("--prompts", type=int, default=64, help="B")
    p.add_argument("--group-size", type=int, default=8, help="G")
    p.add_argument("--history", type=int, default=10, help="history items per prompt")
    p.add_argument("--items", type=int, default=1000, help="catalog size")
    p.add_argument("--codes", type=int, nargs="+", default=[16, 16, 16], help="codes per level")
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--beam-prompts", type=int, default=8)
    p.add_argument("--beam-width", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--server-threads", type=int, default=0, help="OMP_NUM_THREADS of the server (0 = inherit)")
    p.add_argument("--servers", type=int, default=1, help="SGLang servers (data-parallel rollout)")
    return p.parse_args()


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_engine(name, engine, prompts, sampling, args) -> dict:
    gen_s = timed(lambda: engine.generate(prompts, [[0]] * len(prompts), sampling), args.repeats)
    beam_prompts = prompts[: args.beam_prompts]
    beam_s = timed(lambda: engine.beam_search(beam_prompts, args.beam_width), args.repeats)
    n_items = len(prompts) * sampling.group_size
    row = {
        "engine": name, "generate_s": gen_s, "items_per_s": n_items / gen_s, "prompts_per_s": len(prompts) / gen_s,
        "beam_s": beam_s, "beam_prompts_per_s": len(beam_prompts) / beam_s,
    }
    print(json.dumps(row))
    return row


def bench_mask_100k() -> dict:
    vocab = random_catalog(100_000, [64, 64, 64], seed=0)
    t0 = time.perf_counter()
    catalog = ItemCatalog.from_vocab(vocab)
    build_s = time.perf_counter() - t0
    rows = vocab.item_tokens[torch.randperm(100_000)[:512], :2].tolist()
    mask_s = timed(lambda: catalog.allowed_mask(rows), 20)
    return {"items": 100_000, "edges": int(catalog.tables["edge_key"].numel()), "build_s": build_s,
            "mask_512_rows_ms": 1e3 * mask_s}


def main() -> None:
    args = parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
    vocab = random_catalog(args.items, args.codes, seed=0)
    catalog = ItemCatalog.from_vocab(vocab)
    model = make_tiny_llama(root / "hf", vocab.vocab_size, hidden=args.hidden, layers=args.layers)
    g = torch.Generator().manual_seed(0)
    prompts = [vocab.encode_prompt(torch.randint(0, args.items, (args.history,), generator=g).tolist())
               for _ in range(args.prompts)]
    sampling = SamplingConfig(group_size=args.group_size)
    results = {
        "setup": {k: v for k, v in vars(args).items() if k != "json"} | {
            "vocab_size": vocab.vocab_size, "prompt_len": len(prompts[0]), "response_len": catalog.response_len,
            "torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "cpu_count": os.cpu_count(), "machine": platform.machine(), "cuda": torch.cuda.is_available(),
            "loadavg_start": os.getloadavg(),
        },
        "engines": [],
    }
    torch_engine = TorchRolloutEngine(catalog, hf_logits_fn(model), batch_size=1024)
    results["engines"].append(bench_engine("torch (in-process)", torch_engine, prompts, sampling, args))
    per_server = -(-args.prompts // args.servers)
    cfg = SGLangServerConfig(max_total_tokens=32768, omp_threads=args.server_threads,  # logs kept only on failure
                             prompts_per_request=per_server, num_servers=args.servers)
    t0 = time.perf_counter()
    with SGLangRolloutEngine(cfg, WeightSyncConfig(), catalog, str(root / "hf"), work_dir=str(root / "work")) as eng:
        results["sglang_startup_s"] = time.perf_counter() - t0
        results["engines"].append(bench_engine(f"sglang ({args.servers} server(s), HTTP)", eng, prompts, sampling, args))
    shutil.rmtree(root, ignore_errors=True)
    results["processor_mask_100k"] = bench_mask_100k()
    results["setup"]["loadavg_end"] = os.getloadavg()
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
