"""sglang-router vs the built-in pool on the same launched SGLang servers (issue 10, "Several servers"), side by side.

    OMP_NUM_THREADS=1 flock /tmp/recast-heavy.lock .venv/bin/python tools/bench_router.py --json bench_results/router.json

One engine launches ``--servers`` CPU/GPU SGLang servers (tiny random Llama, 40-item catalog of the tests) with
``use_router: true``; each measurement runs once through the router and once through the pool (the same engine
with its router bypassed: round-robin + beam ``affinity``), alternating, ``--repeats`` times, after a cache flush
on every server. Reported: wall time (median), HTTP requests, the prompt tokens the servers' radix caches served
(``meta_info.cached_tokens`` / ``prompt_tokens``) for beam levels >= 1 (a level served by its chunk's level-0
worker finds the prompt cached; on another worker it does not, the caches being flushed), the router process's
resident memory, and the extra hop (median latency of a 1-token request through the router minus direct).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from recast_mcore.config.rollout import SamplingConfig, SGLangServerConfig, WeightSyncConfig
from recast_mcore.rollout.sglang_engine import SGLangRolloutEngine
from recast_mcore.rollout.testing import exported_tiny_llama


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--servers", type=int, default=2)
    p.add_argument("--prompts", type=int, default=32)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--beam-width", type=int, default=8)
    p.add_argument("--prompts-per-request", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--hop-requests", type=int, default=30)
    p.add_argument("--json", default="")
    return p.parse_args()


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its children (the router is one Rust process; MiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Recorder:
    """Wraps ``pool.map`` to count each map's cached / prompt tokens (one map = one beam level or one batch)."""

    def __init__(self, pool):
        self.pool, self.orig, self.maps = pool, pool.map, []
        pool.map = self.map

    def map(self, payloads, call, affinity=None):
        stats = []

        def recorded(client, body):
            out = call(client, body)
            stats.append([sum(o["meta_info"].get("cached_tokens", 0) for o in out),
                          sum(o["meta_info"].get("prompt_tokens", 0) for o in out)])
            return out

        result = self.orig(payloads, recorded, affinity)
        self.maps.append([sum(s[0] for s in stats), sum(s[1] for s in stats)])
        return result


def run(engine, routed: bool, fn) -> dict:
    pool = engine.pool
    saved = pool.router_client
    pool.router_client = saved if routed else None
    try:
        for c in pool.clients:
            c.flush_cache()
        rec, before = Recorder(pool), pool.traffic()
        t0 = time.perf_counter()
        fn()
        wall = time.perf_counter() - t0
        pool.map = rec.orig
        after = pool.traffic()
        return {"wall_s": wall, "maps": rec.maps, **{k: after[k] - before[k] for k in after}}
    finally:
        pool.router_client = saved


def hop_ms(engine, n: int) -> dict:
    body = {"input_ids": [[1, 5, 6]], "sampling_params": {"max_new_tokens": 1, "temperature": 0.0}}
    out = {}
    for name, client in (("direct", engine.pool.clients[0]), ("router", engine.pool.router_client)):
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            client.generate(body)
            times.append((time.perf_counter() - t0) * 1e3)
        out[name] = statistics.median(times)
    out["extra_ms"] = out["router"] - out["direct"]
    return out


def main() -> None:
    args = parse_args()
    root = Path(tempfile.mkdtemp(prefix="recast-bench-router-"))
    vocab, catalog, _ = exported_tiny_llama(root)
    prompts = [vocab.encode_prompt([(i * 7 + j) % 40 for j in range(1 + i % 5)]) for i in range(args.prompts)]
    cfg = SGLangServerConfig(num_servers=args.servers, use_router=True, max_total_tokens=8192, omp_threads=1,
                             prompts_per_request=args.prompts_per_request, request_timeout_s=300,
                             startup_timeout_s=900, log_dir=str(root / "logs"))
    t0 = time.perf_counter()
    engine = SGLangRolloutEngine(cfg, WeightSyncConfig(method="disk"), catalog, str(root / "hf"),
                                 work_dir=str(root / "work"))
    startup = time.perf_counter() - t0
    sampling = SamplingConfig(group_size=args.group_size)
    jobs = {"generate": lambda: engine.generate(prompts, [[0]] * len(prompts), sampling),
            "beam_search": lambda: engine.beam_search(prompts, beam_width=args.beam_width)}
    results = {"setup": {"servers": args.servers, "prompts": args.prompts, "group_size": args.group_size,
                         "beam_width": args.beam_width, "prompts_per_request": args.prompts_per_request,
                         "item_len": catalog.item_len, "startup_s_servers_and_router": startup,
                         "machine": "2-core CPU shared with other jobs; figures are ratios of one run"}}
    try:
        for name, fn in jobs.items():
            fn()  # warm-up (processor strings deserialized, tables loaded on every server)
            runs = {"router": [], "pool": []}
            for _ in range(args.repeats):
                for how in ("router", "pool"):
                    runs[how].append(run(engine, how == "router", fn))
            summary = {}
            for how, rs in runs.items():
                later = [m for r in rs for m in r["maps"][1:]] if name == "beam_search" else []
                summary[how] = {
                    "wall_s_median": statistics.median(r["wall_s"] for r in rs),
                    "requests": rs[0]["requests"], "bytes_sent": rs[0]["bytes_sent"],
                    "bytes_received": rs[0]["bytes_received"],
                    "cached_over_prompt_tokens_levels_ge1": (sum(m[0] for m in later) / max(1, sum(m[1] for m in later)))
                    if later else None,
                }
            summary["router_over_pool_wall"] = summary["router"]["wall_s_median"] / summary["pool"]["wall_s_median"]
            results[name] = summary
        results["router_rss_mib"] = rss_mib(engine.pool.router.proc.pid)
        results["hop_ms"] = hop_ms(engine, args.hop_requests)
    finally:
        engine.close()
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
