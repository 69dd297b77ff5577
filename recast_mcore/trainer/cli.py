"""``recast-train --config FILE [--set key=value ...]``: SFT, then RL, in one run directory.

    recast-train --config examples/quickstart.yaml                       # one process
    torchrun --nproc-per-node 4 -m recast_mcore.trainer.cli --config examples/qwen3-0.6b.yaml

Re-running the same command resumes from the run's newest complete checkpoint (trainer/restore.py);
``--start-over`` begins a new run instead, moving the old one's files to ``<run_dir>/previous/<time>/``.
Bad input, damaged checkpoints and a run directory in use exit with code 2 and a message.
"""

from __future__ import annotations

import argparse
import sys
import time

from recast_mcore.checkpoint.manifest import CheckpointError
from recast_mcore.config.base import ConfigError, apply_overrides, load_config, load_yaml
from recast_mcore.config.run import RunConfig
from recast_mcore.trainer.checks import SetupError, given_keys


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="recast-train", description="SFT then RL (GRPO / ReCast) for generative recommenders")
    parser.add_argument("--config", required=True, help="run config YAML (see examples/)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set rl.steps=20 (repeatable)")
    parser.add_argument("--start-over", action="store_true",
                        help="begin a new run even though run_dir holds one (its files move to run_dir/previous/<time>/)")
    return parser.parse_args(argv)


def data_keys_given(config: str, overrides: list[str]) -> set[str]:
    """The data.* keys the config file and --set overrides actually set (checked against the prepared dataset)."""
    raw = apply_overrides(load_yaml(config), list(overrides))
    return given_keys(raw.get("data"))


def train(cfg: RunConfig, *, start_over: bool = False, data_keys: set[str] | None = None):
    """Build the job, run SFT then RL; returns the final TrainerState."""
    from recast_mcore.trainer.job import build_job
    from recast_mcore.trainer.rl import run_rl
    from recast_mcore.trainer.sft import run_sft

    job = build_job(cfg, start_over=start_over, data_keys=data_keys)
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
        train(cfg, start_over=args.start_over, data_keys=data_keys_given(args.config, args.overrides))
    except (ConfigError, SetupError, CheckpointError) as exc:
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
