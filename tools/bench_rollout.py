"""Rollout benchmarks (JSON): the trie processor per decode step, beam search at scale, engine throughput.

    # processor time per step, 256/1,024/4,096 rows, 1e6-item 3x8192 catalog and a 1k catalog; with
    # --baseline-ref: the processors of those git revisions are timed side by side in the same run
    OMP_NUM_THREADS=1 .venv/bin/python tools/bench_rollout.py --json bench_results/processor.json \
        processor --baseline-ref 0d8052c cd03c23
    # beam search, 256 prompts x K=32 on the 1e6-item catalog, tiny model, one launched SGLang server:
    # wall time, HTTP requests, bytes sent/received
    OMP_NUM_THREADS=1 .venv/bin/python tools/bench_rollout.py --json bench_results/beam.json beam
    # generate + beam throughput, SGLang vs the in-process engine (small catalog)
    OMP_NUM_THREADS=1 .venv/bin/python tools/bench_rollout.py --json bench_results/rollout.json engines

The 1e6-item catalog is synthetic (``random_catalog``: distinct random 3-level codes, seed 0), built at run time,
never stored. "Rows at depth d" are prefixes of d item tokens drawn from random catalog items; "mixed" is a
quarter of the rows at each depth 0..3. The processor is called exactly as SGLang calls it (a list of
``custom_params`` dicts whose ``__req__`` carries ``origin_input_ids`` / ``output_ids`` as ``array('q')``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path
from types import SimpleNamespace

import torch

from recast_mcore.config.rollout import SamplingConfig, SGLangServerConfig, WeightSyncConfig
from recast_mcore.rollout.catalog import ItemCatalog
from recast_mcore.rollout.sglang_engine import SGLangRolloutEngine
from recast_mcore.rollout.testing import hf_logits_fn, make_tiny_llama, random_catalog
from recast_mcore.rollout.torch_engine import TorchRolloutEngine
from recast_mcore.rollout.trie_processor import ItemTrieLogitProcessor, trie_params

ROOT = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    proc = sub.add_parser("processor", help="trie processor time per decode step")
    proc.add_argument("--rows", type=int, nargs="+", default=[256, 1024, 4096])
    proc.add_argument("--repeats", type=int, default=7)
    proc.add_argument("--baseline-ref", nargs="*", default=[],
                      help="git revisions (or trie_processor.py files) whose processors are timed side by side")
    beam = sub.add_parser("beam", help="SGLang beam search at scale")
    beam.add_argument("--prompts", type=int, default=256)
    beam.add_argument("--beam-width", type=int, default=32)
    beam.add_argument("--items", type=int, default=1_000_000)
    beam.add_argument("--codes", type=int, nargs="+", default=[8192, 8192, 8192])
    beam.add_argument("--prompts-per-request", type=int, default=16)
    beam.add_argument("--servers", type=int, default=1)
    eng = sub.add_parser("engines", help="generate + beam throughput, SGLang vs in-process")
    eng.add_argument("--prompts", type=int, default=64, help="B")
    eng.add_argument("--group-size", type=int, default=8, help="G")
    eng.add_argument("--items", type=int, default=1000, help="catalog size")
    eng.add_argument("--codes", type=int, nargs="+", default=[16, 16, 16], help="codes per level")
    eng.add_argument("--beam-prompts", type=int, default=8)
    eng.add_argument("--beam-width", type=int, default=32)
    eng.add_argument("--repeats", type=int, default=3)
    eng.add_argument("--servers", type=int, default=1, help="SGLang servers (data-parallel rollout)")
    for s in (beam, eng):
        s.add_argument("--hidden", type=int, default=64)
        s.add_argument("--layers", type=int, default=2)
        s.add_argument("--history", type=int, default=10, help="history items per prompt")
        s.add_argument("--server-threads", type=int, default=1, help="OMP_NUM_THREADS of the server (0 = inherit)")
    p.add_argument("--json", required=True, help="where to write the results")
    return p.parse_args()


def setup_info() -> dict:
    return {"torch_threads": torch.get_num_threads(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "cpu_count": os.cpu_count(), "machine": platform.machine(), "cuda": torch.cuda.is_available(),
            "loadavg_start": os.getloadavg()}


def median_ms(fn, repeats: int, setup=None, clock=time.perf_counter) -> float:
    """Median time of ``fn(setup())`` in ms (``setup`` untimed); one untimed warm-up call first.

    ``clock=time.thread_time`` measures the CPU time of this thread (torch runs single-threaded ops on the calling
    thread with OMP_NUM_THREADS=1): unlike wall time it does not count the time other processes of a shared
    machine hold the cores."""
    setup = setup or (lambda: None)
    fn(setup())  # warm-up (loads the tables on the first call)
    times = []
    for _ in range(repeats):
        arg = setup()
        t0 = clock()
        fn(arg)
        times.append(clock() - t0)
    return 1e3 * statistics.median(times)


# ---- processor ----------------------------------------------------------------------------------------
def baseline_processor(ref: str):
    """``(processor, takes_current_params)``: the ``ItemTrieLogitProcessor`` of git revision ``ref`` (``git show``)
    or of the file ``ref``, and whether it takes today's ``custom_params`` (``trie_params``) or the pre-#10 ones."""
    if Path(ref).is_file():
        src = Path(ref).read_text()
    else:
        src = subprocess.run(["git", "show", f"{ref}:recast_mcore/rollout/trie_processor.py"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="baseline-")) / "baseline_trie_processor.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("baseline_trie_processor", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.ItemTrieLogitProcessor(), hasattr(mod, "trie_params")


def depth_prefixes(vocab, rows: int, depth, g: torch.Generator) -> list[list[int]]:
    depths = [d for d in range(vocab.item_len + 1) for _ in range(rows // (vocab.item_len + 1))] \
        if depth == "mixed" else [depth] * rows
    picks = torch.randint(0, vocab.num_items, (len(depths),), generator=g).tolist()
    tokens = vocab.item_tokens[picks].tolist()
    return [t[:d] for t, d in zip(tokens, depths)]


def zipf_catalog(num_items: int, codes: list[int], s: float = 1.0, seed: int = 0):
    """Distinct 3-level codes whose level-0 code is Zipf(s)-distributed (popular codes hold many items, so many
    level-1 nodes have more than 256 children: the processor's dense path); the other levels uniform."""
    from recast_mcore.data.tokens import ItemVocab

    g = torch.Generator().manual_seed(seed)
    inner = codes[1] * codes[2]
    weights = 1.0 / torch.arange(1, codes[0] + 1, dtype=torch.float64) ** s
    flat = torch.zeros(0, dtype=torch.long)
    while flat.numel() < num_items:
        n = int(1.2 * (num_items - flat.numel())) + 1024
        draw = torch.multinomial(weights, n, replacement=True, generator=g) * inner + torch.randint(0, inner, (n,), generator=g)
        flat = torch.unique(torch.cat([flat, draw]))
    flat = flat[torch.randperm(flat.numel(), generator=g)[:num_items]]
    return ItemVocab(torch.stack([flat // inner, (flat // codes[2]) % codes[1], flat % codes[2]], 1), codes)


def bench_processor(args) -> list[dict]:
    catalogs = [("1e6 items, 3x8192 codes, V=24,580", random_catalog(1_000_000, [8192] * 3, seed=0)),
                ("1e6 items, 3x8192 codes, Zipf(1) level-0 codes, V=24,580", zipf_catalog(1_000_000, [8192] * 3)),
                ("1k items, 3x16 codes, V=52", random_catalog(1000, [16, 16, 16], seed=0))]
    baselines = {ref: baseline_processor(ref) for ref in args.baseline_ref}
    proc, rows_out = ItemTrieLogitProcessor(), []
    work = Path(tempfile.mkdtemp(prefix="bench-proc-"))
    for name, vocab in catalogs:
        t0 = time.perf_counter()
        catalog = ItemCatalog.from_vocab(vocab)
        path = catalog.save(work)
        info = {"catalog": name, "edges": int(catalog.tables["edge_key"].numel()), "build_s": time.perf_counter() - t0}
        prepared = ItemTrieLogitProcessor._prepare(catalog.tables)
        info |= {"narrow": prepared["narrow"], "wide_nodes": int(prepared["wide_bias"].shape[0] - 1),
                 "table_bytes": sum(v.numel() * v.element_size() for v in prepared.values() if torch.is_tensor(v))}
        print(json.dumps(info), flush=True)
        g = torch.Generator().manual_seed(1)
        for rows in args.rows:
            for depth in (0, 1, 2, 3, "mixed"):
                prefixes = depth_prefixes(vocab, rows, depth, g)
                prompt = array("q", [1] * 31)
                reqs = [SimpleNamespace(origin_input_ids=prompt, output_ids=array("q", p)) for p in prefixes]
                params = [dict(trie_params(path), __req__=r) for r in reqs]
                logits = torch.randn(len(prefixes), catalog.vocab_size)
                fresh = logits.clone  # each call masks a fresh copy (untimed), as SGLang hands it one
                reps = 3 if rows * catalog.vocab_size > 5e6 else args.repeats
                row = dict(info, rows=len(prefixes), depth=depth,
                           cpu_ms=median_ms(lambda x: proc(x, params), args.repeats, fresh, time.thread_time),
                           wall_ms=median_ms(lambda x: proc(x, params), args.repeats, fresh))
                for ref, (base, current) in baselines.items():
                    old = params if current else [{"trie_path": str(path), "__req__": SimpleNamespace(output_ids=list(p))}
                                                  for p in prefixes]
                    row.setdefault("baseline_cpu_ms", {})[ref] = median_ms(lambda x: base(x, old), reps, fresh,
                                                                           time.thread_time)
                print(json.dumps({k: row[k] for k in ("catalog", "rows", "depth", "cpu_ms", "wall_ms", "baseline_cpu_ms")
                                  if k in row}), flush=True)
                rows_out.append(row)
                if args.json:  # partial results survive a timeout
                    Path(args.json).write_text(json.dumps({"processor_partial": rows_out}, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return rows_out


# ---- beam search at scale -----------------------------------------------------------------------------
def prompts_for(vocab, n: int, history: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [vocab.encode_prompt(torch.randint(0, vocab.num_items, (history,), generator=g).tolist()) for _ in range(n)]


def bench_beam(args) -> dict:
    root = Path(tempfile.mkdtemp(prefix="bench-beam-"))
    vocab = random_catalog(args.items, args.codes, seed=0)
    catalog = ItemCatalog.from_vocab(vocab)
    make_tiny_llama(root / "hf", vocab.vocab_size, hidden=args.hidden, layers=args.layers)
    prompts = prompts_for(vocab, args.prompts, args.history)
    cfg = SGLangServerConfig(max_total_tokens=131072, omp_threads=args.server_threads, request_timeout_s=1800,
                             startup_timeout_s=1200,
                             prompts_per_request=args.prompts_per_request, num_servers=args.servers)
    t0 = time.perf_counter()
    with SGLangRolloutEngine(cfg, WeightSyncConfig(), catalog, str(root / "hf"), work_dir=str(root / "work")) as eng:
        startup = time.perf_counter() - t0
        eng.beam_search(prompts[:2], 4)  # warm-up: loads the trie tables in the server
        before = eng.pool.traffic()
        t0 = time.perf_counter()
        result = eng.beam_search(prompts, args.beam_width)
        wall = time.perf_counter() - t0
        after = eng.pool.traffic()
    shutil.rmtree(root, ignore_errors=True)
    out = {"prompts": args.prompts, "beam_width": args.beam_width, "items": args.items, "vocab_size": vocab.vocab_size,
           "servers": args.servers, "prompts_per_request": args.prompts_per_request, "wall_s": wall,
           "sglang_startup_s": startup, "valid_items": bool((result.item_ids >= 0).all()),
           "beams_per_prompt": int(result.item_ids.shape[1])}
    out |= {f"http_{k}": after[k] - before[k] for k in after}
    print(json.dumps(out), flush=True)
    return out


# ---- engine throughput --------------------------------------------------------------------------------
def timed(fn, repeats: int) -> float:
    return median_ms(lambda _: fn(), repeats) / 1e3


def bench_engine(name, engine, prompts, sampling, args) -> dict:
    gen_s = timed(lambda: engine.generate(prompts, [[0]] * len(prompts), sampling), args.repeats)
    beam_prompts = prompts[: args.beam_prompts]
    beam_s = timed(lambda: engine.beam_search(beam_prompts, args.beam_width), args.repeats)
    n_items = len(prompts) * sampling.group_size
    row = {"engine": name, "generate_s": gen_s, "items_per_s": n_items / gen_s, "prompts_per_s": len(prompts) / gen_s,
           "beam_s": beam_s, "beam_prompts_per_s": len(beam_prompts) / beam_s}
    print(json.dumps(row), flush=True)
    return row


def bench_engines(args) -> dict:
    root = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
    vocab = random_catalog(args.items, args.codes, seed=0)
    catalog = ItemCatalog.from_vocab(vocab)
    model = make_tiny_llama(root / "hf", vocab.vocab_size, hidden=args.hidden, layers=args.layers)
    prompts = prompts_for(vocab, args.prompts, args.history)
    sampling = SamplingConfig(group_size=args.group_size)
    out = {"engines": []}
    out["engines"].append(bench_engine("torch (in-process)", TorchRolloutEngine(catalog, hf_logits_fn(model),
                                                                                batch_size=1024), prompts, sampling, args))
    cfg = SGLangServerConfig(max_total_tokens=32768, omp_threads=args.server_threads,
                             prompts_per_request=-(-args.prompts // args.servers), num_servers=args.servers)
    t0 = time.perf_counter()
    with SGLangRolloutEngine(cfg, WeightSyncConfig(), catalog, str(root / "hf"), work_dir=str(root / "work")) as eng:
        out["sglang_startup_s"] = time.perf_counter() - t0
        out["engines"].append(bench_engine(f"sglang ({args.servers} server(s), HTTP)", eng, prompts, sampling, args))
    shutil.rmtree(root, ignore_errors=True)
    return out


def main() -> None:
    args = parse_args()
    results = {"what": args.what, "args": {k: v for k, v in vars(args).items() if k != "json"}, "setup": setup_info()}
    if args.what == "processor":
        results["processor"] = bench_processor(args)
    elif args.what == "beam":
        results["beam"] = bench_beam(args)
    else:
        results |= bench_engines(args)
    results["setup"]["loadavg_end"] = os.getloadavg()
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
