"""Preflight checks: bad input stops the job before anything expensive starts, saying what to fix.

Each check raises ``SetupError`` with a message that names the offending setting and the fix.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from recast_mcore.config.actor import ModelConfig, OptimConfig, ParallelConfig
from recast_mcore.config.base import to_dict
from recast_mcore.config.train import DDP_FIXED_OPTIM_FIELDS
from recast_mcore.config.rollout import RolloutConfig
from recast_mcore.data.dataset import REQUIRED_FILES


class SetupError(RuntimeError):
    """The run cannot start as configured; the message says what to change."""


def check_prepared_dataset(prepared_dir: str, required_files: tuple[str, ...] = REQUIRED_FILES) -> Path:
    """The prepared dataset directory exists and holds the files training reads."""
    if not prepared_dir:
        raise SetupError("data.prepared_dir is empty: set it to the output of `recast-data prepare` (see examples/quickstart.sh)")
    path = Path(prepared_dir)
    if not path.is_dir():
        raise SetupError(
            f"prepared dataset not found: data.prepared_dir={prepared_dir} does not exist. "
            f"Run `recast-data prepare --config <your config>` first (examples/quickstart.sh does it), "
            f"or point data.prepared_dir at an existing prepared dataset."
        )
    missing = [name for name in required_files if not (path / name).exists()]
    if missing:
        raise SetupError(
            f"data.prepared_dir={prepared_dir} is not a prepared dataset (missing {', '.join(missing)}); "
            f"re-run `recast-data prepare` into it"
        )
    return path


def world_size_from_env() -> int:
    """WORLD_SIZE as torchrun sets it (1 when launched without torchrun)."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(raw)
    except ValueError as exc:
        raise SetupError(f"environment variable WORLD_SIZE={raw!r} is not an integer") from exc


def check_parallel_layout(parallel_cfg: ParallelConfig, world_size: int, num_layers: int, num_heads: int) -> int:
    """world_size = TP * PP * DP must hold; TP divides the heads, PP (x VPP) divides the layers. Returns DP."""
    tp, pp, vpp = parallel_cfg.tensor_parallel, parallel_cfg.pipeline_parallel, parallel_cfg.virtual_pipeline_parallel
    model_parallel = tp * pp
    if world_size % model_parallel:
        options = sorted({d for d in range(1, world_size + 1) if world_size % d == 0})
        raise SetupError(
            f"parallel layout does not divide the world size: tensor_parallel({tp}) * pipeline_parallel({pp}) = "
            f"{model_parallel} does not divide WORLD_SIZE={world_size}. Launch a multiple of {model_parallel} processes "
            f"(torchrun --nproc-per-node) or choose tensor_parallel*pipeline_parallel among {options}."
        )
    if num_heads % tp:
        raise SetupError(f"parallel.tensor_parallel={tp} must divide model.num_attention_heads={num_heads}")
    if num_layers % (pp * vpp):
        raise SetupError(
            f"model.num_layers={num_layers} must be divisible by pipeline_parallel*virtual_pipeline_parallel = {pp}*{vpp}"
        )
    return world_size // model_parallel


ACTOR_META = "actor_meta.json"
"""File the actor writes last into every complete checkpoint: layout, model config and vocab_size."""

_NUMERICS_ONLY = ("fp8", "fp8_recipe", "transformer_impl", "params_dtype", "init_method_std",
                  "recompute_granularity", "recompute_method", "recompute_num_layers", "recompute_modules")
"""Model fields that may change between save and load (they do not change the weights' shapes)."""


def check_checkpoint_matches(checkpoint_dir: str | Path, model_cfg: ModelConfig, vocab_size: int) -> None:
    """The checkpoint was written for this model shape and vocabulary (else name every differing field)."""
    path = Path(checkpoint_dir)
    if not path.is_dir():
        raise SetupError(f"checkpoint directory {path} does not exist")
    meta_path = path / ACTOR_META
    if not meta_path.is_file():
        raise SetupError(f"{path} is not a complete actor checkpoint (no {ACTOR_META}); was it written by recast-train?")
    meta = json.loads(meta_path.read_text())
    stored = {**to_dict(ModelConfig()), **meta["model"]}  # fields newer than the checkpoint: their defaults
    saved = {k: v for k, v in stored.items() if k not in _NUMERICS_ONLY}
    wanted = {k: v for k, v in to_dict(model_cfg).items() if k not in _NUMERICS_ONLY}
    diffs = [
        f"model.{k}: checkpoint {saved.get(k)!r} vs config {wanted.get(k)!r}"
        for k in sorted(set(saved) | set(wanted))
        if saved.get(k) != wanted.get(k)
    ]
    if int(meta["vocab_size"]) != int(vocab_size):
        diffs.append(f"vocabulary size: checkpoint {meta['vocab_size']} vs prepared dataset {vocab_size} (another dataset or semantic-ID setting?)")
    if diffs:
        raise SetupError(
            f"the config's model does not match checkpoint {path}:\n  " + "\n  ".join(diffs) +
            "\nSet these model.* values to the checkpoint's (or use the dataset it was trained on), "
            "or start from a fresh run_dir / another checkpoint."
        )


def check_rollout_layout(rollout_cfg: RolloutConfig, world_size: int) -> None:
    """The in-process torch engine runs the actor's model inside rank 0: it needs a single process."""
    if rollout_cfg.engine == "torch" and world_size != 1:
        raise SetupError(
            f"rollout.engine=torch runs the actor's own model in process and needs WORLD_SIZE=1 (got {world_size}); "
            f"use rollout.engine=sglang for multi-process runs"
        )


def check_rollout_servers(rollout_cfg: RolloutConfig) -> None:
    """With ``rollout.sglang.mode: attach`` every listed server must answer /health now."""
    if rollout_cfg.engine != "sglang" or rollout_cfg.sglang.mode != "attach":
        return
    from recast_mcore.rollout.client import SGLangClient

    for url in rollout_cfg.sglang.urls:
        if not SGLangClient(url, rollout_cfg.sglang.request_timeout_s).healthy(timeout_s=5.0):
            raise SetupError(
                f"rollout server {url} is unreachable (no HTTP 200 from {url.rstrip('/')}/health within 5 s). "
                f"Start it (python -m sglang.launch_server --model-path <hf dir> --port ...), fix rollout.sglang.urls, "
                f"or set rollout.sglang.mode=launch to let recast-train start servers itself."
            )


def check_stage_inits(sft_enabled: bool, rl_init_checkpoint: str) -> None:
    """``rl.init_checkpoint`` only makes sense when RL does not follow this run's SFT."""
    if sft_enabled and rl_init_checkpoint:
        raise SetupError(
            "rl.init_checkpoint is set but sft.enabled is true: RL would start from this run's SFT result. "
            "Set sft.enabled=false to start RL from the checkpoint (or clear rl.init_checkpoint)."
        )


def check_sequence_fits(longest_prompt: int, item_len: int, max_seq_len: int) -> None:
    """The longest prompt (a max_history history) plus a response (item + <eos>) fits the model."""
    longest = longest_prompt + item_len + 1
    if longest > max_seq_len:
        raise SetupError(
            f"model.max_seq_len={max_seq_len} is shorter than the longest sequence {longest} "
            f"(prompt of a full history {longest_prompt} + item_len {item_len} + 1): raise model.max_seq_len "
            f"or prepare the data with a smaller data.max_history"
        )


def check_rl_optimizer(rl_optim: OptimConfig, optim: OptimConfig) -> None:
    """The RL optimizer reuses the actor's DDP wrappers, built from some of ``optim``'s fields."""
    differ = [f"rl.optim.{k}={getattr(rl_optim, k)} differs from optim.{k}={getattr(optim, k)}"
              for k in DDP_FIXED_OPTIM_FIELDS if getattr(rl_optim, k) != getattr(optim, k)]
    if differ:
        raise SetupError("; ".join(differ) + ": the RL optimizer reuses the actor's DDP wrappers, set both to the same value")


def check_more_sft(rl_mode: str, rl_init_checkpoint: str) -> None:
    """``rl.mode=more_sft`` continues SFT (its data position and optimizer): a weights-only init cannot."""
    if rl_mode == "more_sft" and rl_init_checkpoint:
        raise SetupError(
            "rl.mode=more_sft continues the SFT stage (its optimizer and data position), but rl.init_checkpoint loads "
            "weights only: use checkpoint.load_dir=<the SFT checkpoint> instead (or run SFT in this run)"
        )
