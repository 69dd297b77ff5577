"""Benchmark: one actor -> rollout weight sync at TP x PP on gloo; peak extra memory and wall time per rank.

The model is built on every rank (Megatron-Core GPTModel chunks, no optimizer: the sync only reads the
weights). One sync is then timed:

- ``--path gather`` (the design before issue #11): ``gather_object`` of the whole TP/PP-gathered fp32 model
  to rank 0, ``mcore_to_hf`` there, then the transport on rank 0 (``disk``: one ``model.safetensors``).
- ``--path stream`` (issue #11): bucketed streaming (``actor/weight_export.py``): TP all-gather per tensor,
  each pipeline stage converts and emits its own layers bucket by bucket (``disk``: sharded safetensors
  written by each stage's source rank).

``--transport none`` stops after the gather/convert (what every transport pays). Memory: each rank resets
its peak RSS (``/proc/self/clear_refs`` = 5) right before the sync and reports ``VmHWM - VmRSS(before)``,
the extra resident memory the sync needed at its peak. Launch (it re-launches itself under torchrun):

    python tools/bench_weight_sync.py --tp 2 --pp 2 --path gather --json bench_results/sync_before.json
    python tools/bench_weight_sync.py --tp 2 --pp 2 --path stream --json bench_results/sync_after.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tp", type=int, default=2)
    p.add_argument("--pp", type=int, default=2)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--ffn", type=int, default=4096)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--groups", type=int, default=8)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--path", choices=["gather", "stream"], required=True)
    p.add_argument("--transport", choices=["disk", "none"], default="disk")
    p.add_argument("--bucket-mb", type=float, default=64.0, help="stream path: bucket size in MiB")
    p.add_argument("--out-dir", default="", help="disk transport target ('' = a temporary directory)")
    p.add_argument("--json", required=True, help="where rank 0 writes the results")
    return p.parse_args()


def _status_kb(key: str) -> int:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{key}:\s+(\d+)", text).group(1))


def reset_peak_rss() -> int:
    """Reset VmHWM to the current RSS; return the current RSS in KiB."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status_kb("VmRSS")


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def launch(args: argparse.Namespace) -> int:
    """Re-run this script under torchrun with tp*pp processes."""
    n = args.tp * args.pp
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(n), "--master-addr", "127.0.0.1",
           "--master-port", _free_port(), __file__, *sys.argv[1:]]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    return subprocess.call(cmd, env=env)


def sync_gather(chunks, model_cfg, vocab: int, transport: str, out_dir: Path) -> dict:
    """The pre-#11 sync: full fp32 gather to rank 0, HF mapping and (disk) one safetensors file there."""
    import torch.distributed as dist

    from recast_mcore.actor.state_dict import gather_full
    from recast_mcore.checkpoint.hf_mapping import mcore_to_hf

    full = gather_full(chunks, model_cfg.tie_embeddings)
    if dist.get_rank() != 0:
        return {}
    hf = mcore_to_hf(full, model_cfg, vocab)
    del full
    if transport == "disk":  # what the pre-#11 disk transport did: one model.safetensors of the whole model
        from safetensors.torch import save_file

        (out_dir / "v00000001").mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in hf.items()}, str(out_dir / "v00000001" / "model.safetensors"))
    return {"tensors": len(hf), "bytes": sum(t.numel() * t.element_size() for t in hf.values())}


def sync_stream(chunks, model_cfg, vocab: int, transport: str, out_dir: Path, bucket_bytes: int) -> dict:
    """The #11 sync: bucketed streaming export; disk = sharded safetensors per stage and bucket."""
    from recast_mcore.actor.weight_export import export_buckets
    from recast_mcore.checkpoint.hf_mapping import hf_shapes
    from recast_mcore.rollout.sync_disk import DiskSender
    from recast_mcore.rollout.weight_sync import SyncTarget

    target = SyncTarget(method="disk", version=1, endpoints=[], bucket_bytes=bucket_bytes, dtype="float32",
                        shapes=hf_shapes(model_cfg, vocab), request_timeout_s=60, snapshot_dir=str(out_dir / "v00000001"))
    sender = None
    stats = {"tensors": 0, "bytes": 0, "buckets": 0, "max_bucket_bytes": 0}
    for bucket in export_buckets(chunks, model_cfg, vocab, bucket_bytes=bucket_bytes, dtype=None):
        stats["tensors"] += len(bucket.tensors)
        stats["bytes"] += bucket.nbytes
        stats["buckets"] += 1
        stats["max_bucket_bytes"] = max(stats["max_bucket_bytes"], bucket.nbytes)
        if transport == "disk":
            sender = sender or DiskSender(target, bucket.stage)
            sender.push(bucket.index, bucket.tensors)
        del bucket
    return stats


def worker(args: argparse.Namespace) -> None:
    import torch
    import torch.distributed as dist

    from recast_mcore.actor.model import build_model_chunks
    from recast_mcore.actor.parallel import destroy_distributed, initialize_distributed
    from recast_mcore.config.actor import ModelConfig, ParallelConfig

    torch.set_num_threads(1)
    model_cfg = ModelConfig(num_layers=args.layers, hidden_size=args.hidden, ffn_hidden_size=args.ffn,
                            num_attention_heads=args.heads, num_query_groups=args.groups, qk_layernorm=True,
                            tie_embeddings=False, max_seq_len=256, transformer_impl="local")
    parallel_cfg = ParallelConfig(tensor_parallel=args.tp, pipeline_parallel=args.pp)
    initialize_distributed(parallel_cfg)
    t0 = time.perf_counter()
    chunks, _ = build_model_chunks(model_cfg, parallel_cfg, args.vocab)
    build_s = time.perf_counter() - t0
    from megatron.core import parallel_state

    # full-model parameters held by this rank's stage (counted on TP rank 0 only; TP shards scaled back up)
    stage_params = 0
    if parallel_state.get_tensor_model_parallel_rank() == 0:
        stage_params = sum(p.numel() * (args.tp if getattr(p, "tensor_model_parallel", False) else 1)
                           for c in chunks for p in c.parameters())
    box = [args.out_dir or (tempfile.mkdtemp(prefix="recast-bench-sync-") if dist.get_rank() == 0 else None)]
    dist.broadcast_object_list(box, src=0)
    out_dir = Path(box[0])
    dist.barrier()
    rss0 = reset_peak_rss()
    t0 = time.perf_counter()
    if args.path == "gather":
        stats = sync_gather(chunks, model_cfg, args.vocab, args.transport, out_dir)
    else:
        stats = sync_stream(chunks, model_cfg, args.vocab, args.transport, out_dir, int(args.bucket_mb * 2**20))
    dist.barrier()
    wall = time.perf_counter() - t0
    peak = _status_kb("VmHWM")
    mine = {"rank": dist.get_rank(), "stage_params": stage_params, "rss_before_mb": rss0 / 1024,
            "peak_extra_mb": (peak - rss0) / 1024, "sync_wall_s": wall, **stats}
    rows = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(mine, rows, dst=0)
    if dist.get_rank() == 0:
        total_params = sum(r["stage_params"] for r in rows)  # PP stages are disjoint
        result = {
            "path": args.path, "transport": args.transport, "tp": args.tp, "pp": args.pp,
            "bucket_mb": args.bucket_mb if args.path == "stream" else None,
            "model": {"layers": args.layers, "hidden": args.hidden, "ffn": args.ffn, "heads": args.heads,
                      "groups": args.groups, "vocab": args.vocab, "params": total_params,
                      "fp32_bytes": total_params * 4},
            "build_s": build_s, "ranks": rows,
            "rank0_peak_extra_mb": rows[0]["peak_extra_mb"],
            "max_peak_extra_mb": max(r["peak_extra_mb"] for r in rows),
            "sync_wall_s": max(r["sync_wall_s"] for r in rows),
            "host": platform.node(), "cpus": os.cpu_count(), "load_avg": os.getloadavg(),
            "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(json.dumps({k: v for k, v in result.items() if k != "ranks"}, indent=2))
    if not args.out_dir:
        dist.barrier()
        if dist.get_rank() == 0:
            import shutil

            shutil.rmtree(out_dir, ignore_errors=True)
    destroy_distributed()


def main() -> None:
    args = parse_args()
    if "RANK" not in os.environ:
        sys.exit(launch(args))
    worker(args)


if __name__ == "__main__":
    main()
