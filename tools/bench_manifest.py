"""Cost of checkpoint manifests: sha256 throughput of ``checkpoint/manifest.py`` on this machine.

    python tools/bench_manifest.py --gib 2 --files 8 --procs 1 2

Writes ``--files`` shard-like files totalling ``--gib`` GiB into a temp dir (page cache warm, as right
after a save), then hashes them with ``manifest.hash_files`` split by ``manifest.assign`` across P worker
processes (like P ranks), for each P in ``--procs``. Prints one JSON line per P: bytes, seconds, GB/s.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from recast_mcore.checkpoint import manifest


def _hash_share(args: tuple[str, list[str]]) -> float:
    start = time.perf_counter()
    manifest.hash_files(args[0], args[1])
    return time.perf_counter() - start


def bench(directory: Path, procs: int) -> dict:
    sizes = manifest.list_files(directory)
    shares = manifest.assign(sizes, procs, owner=lambda name: None)
    start = time.perf_counter()
    with ProcessPoolExecutor(procs) as pool:
        per_rank = list(pool.map(_hash_share, [(str(directory), share) for share in shares]))
    wall = time.perf_counter() - start
    total = sum(sizes.values())
    return {"procs": procs, "bytes": total, "seconds": round(wall, 3), "slowest_rank_s": round(max(per_rank), 3),
            "GB_per_s": round(total / wall / 1e9, 3), "GB_per_s_per_proc": round(total / max(per_rank) / procs / 1e9, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--procs", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_manifest_") as tmp:
        size = int(args.gib * (1 << 30) / args.files)
        block = os.urandom(1 << 20)
        for i in range(args.files):
            with open(Path(tmp) / f"__{i}_0.distcp", "wb") as f:
                for _ in range(size >> 20):
                    f.write(block)
        for procs in args.procs:
            print(json.dumps(bench(Path(tmp), procs)), flush=True)


if __name__ == "__main__":
    main()
