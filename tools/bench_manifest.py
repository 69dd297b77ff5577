"""Cost of checkpoint manifests: sha256 throughput of ``checkpoint/manifest.py`` on this machine.

    python tools/bench_manifest.py --gib 2 --files 8 --procs 1 2

Writes ``--files`` shard-like files totalling ``--gib`` GiB into a temp dir (page cache warm, as right
after a save), then, for each P in ``--procs``, reads them split by ``manifest.assign`` across P worker
processes (like P ranks) twice, side by side: once only reading (what any load costs at least), once
hashing with ``manifest.hash_files`` (what verification costs). Prints one JSON line per P: bytes, seconds,
GB/s of both, and the ratio hash / read.
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


def _read_only(directory: str, names: list[str]) -> None:
    buf = bytearray(8 << 20)
    for name in names:
        with open(Path(directory) / name, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


def _share(args: tuple[str, str, list[str]]) -> float:
    mode, directory, names = args
    start = time.perf_counter()
    manifest.hash_files(directory, names) if mode == "hash" else _read_only(directory, names)
    return time.perf_counter() - start


def _timed(mode: str, directory: Path, shares: list[list[str]]) -> tuple[float, float]:
    start = time.perf_counter()
    with ProcessPoolExecutor(len(shares)) as pool:
        per_rank = list(pool.map(_share, [(mode, str(directory), share) for share in shares]))
    return time.perf_counter() - start, max(per_rank)


def bench(directory: Path, procs: int) -> dict:
    sizes = manifest.list_files(directory)
    shares = manifest.assign(sizes, procs, owner=lambda name: None)
    total = sum(sizes.values())
    read_wall, read_slowest = _timed("read", directory, shares)
    hash_wall, hash_slowest = _timed("hash", directory, shares)
    return {"procs": procs, "bytes": total,
            "read_s": round(read_wall, 3), "read_GB_per_s": round(total / read_wall / 1e9, 3),
            "hash_s": round(hash_wall, 3), "hash_slowest_rank_s": round(hash_slowest, 3),
            "hash_GB_per_s": round(total / hash_wall / 1e9, 3),
            "hash_GB_per_s_per_proc": round(total / hash_slowest / procs / 1e9, 3),
            "hash_over_read": round(hash_wall / read_wall, 2)}


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
