"""Preflight checks: bad input stops the job before anything expensive starts, saying what to fix.

Each check raises ``SetupError`` with a message that names the offending setting and the fix.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from recast_mcore.config.actor import ModelConfig, ParallelConfig
from recast_mcore.config.base import to_dict

MODEL_META = "recast_model.json"
"""File (inside every checkpoint directory) recording the model config and vocabulary size it was built with."""


class SetupError(RuntimeError):
    """The run cannot start as configured; the message says what to change."""


def check_prepared_dataset(prepared_dir: str, required_files: tuple[str, ...] = ("meta.json",)) -> Path:
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


def model_meta(model_cfg: ModelConfig, vocab_size: int) -> dict[str, Any]:
    """What a checkpoint must agree on with the config to be loadable: the model shape and the vocabulary."""
    meta = {k: v for k, v in to_dict(model_cfg).items() if k not in ("fp8", "fp8_recipe", "transformer_impl", "params_dtype")}
    meta["vocab_size"] = int(vocab_size)
    return meta


def write_model_meta(checkpoint_dir: str | Path, model_cfg: ModelConfig, vocab_size: int) -> None:
    path = Path(checkpoint_dir) / MODEL_META
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(model_meta(model_cfg, vocab_size), indent=1, sort_keys=True))
    tmp.replace(path)


def check_checkpoint_matches(checkpoint_dir: str | Path, model_cfg: ModelConfig, vocab_size: int) -> None:
    """The checkpoint was written for this model shape and vocabulary (else name every differing field)."""
    path = Path(checkpoint_dir)
    if not path.is_dir():
        raise SetupError(f"checkpoint directory {path} does not exist")
    meta_path = path / MODEL_META
    if not meta_path.is_file():
        raise SetupError(f"{path} is not a recast checkpoint (no {MODEL_META}); was it written by recast-train?")
    saved = json.loads(meta_path.read_text())
    wanted = model_meta(model_cfg, vocab_size)
    diffs = [
        f"{'data vocabulary' if k == 'vocab_size' else 'model.' + k}: checkpoint {saved.get(k)!r} vs config {wanted.get(k)!r}"
        for k in sorted(set(saved) | set(wanted))
        if saved.get(k) != wanted.get(k)
    ]
    if diffs:
        raise SetupError(
            f"the config's model does not match checkpoint {path}:\n  " + "\n  ".join(diffs) +
            "\nSet these model.* values to the checkpoint's (or use the dataset it was trained on), "
            "or start from a fresh run_dir / another checkpoint."
        )
