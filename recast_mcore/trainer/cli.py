"""``recast-train --config FILE [--set key=value ...]``: SFT, then RL, in one run directory.

    recast-train --config examples/quickstart.yaml                       # one process
    torchrun --nproc-per-node 4 -m recast_mcore.trainer.cli --config examples/qwen3-0.6b.yaml

Re-running the same command resumes from ``<run_dir>/checkpoints/latest``.
"""

from __future__ import annotations

import argparse
import sys
import time

from recast_mcore.config.base import ConfigError, load_config
from recast_mcore.config.run import RunConfig
from recast_mcore.trainer.checks import SetupError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="recast-train", description="SFT then RL (GRPO / ReCast) for generative recommenders")
    parser.add_argument("--config", required=True, help="run config YAML (see examples/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set rl.steps=20 (repeatable)")
    return parser.parse_args(argv)


def train(cfg: RunConfig):
    """Build the job, run SFT then RL; returns the final TrainerState."""
    from recast_mcore.trainer.job import build_job
    from recast_mcore.trainer.rl import run_rl
    from recast_mcore.trainer.sft import run_sft

    job = build_job(cfg)
    try:
        start = time.perf_counter()
        run_sft(job)
        run_rl(job)
        job.logger.write_line(f"[recast-train] done in {time.perf_counter() - start:.1f} s; run directory {job.run_dir}")
        return job.state
    finally:
        job.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(RunConfig, args.config, args.overrides)
        train(cfg)
    except (ConfigError, SetupError) as exc:
        print(f"recast-train: error: {exc}", file=sys.stderr)
        return 2
    finally:
        destroy_process_groups()
    return 0


def destroy_process_groups() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        from recast_mcore.actor.parallel import destroy_distributed

        destroy_distributed()


if __name__ == "__main__":
    sys.exit(main())
