"""Preflight checks: bad input stops the job before anything expensive starts, saying what to fix.

Each check raises ``SetupError`` with a message that names the offending setting and the fix.
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from recast_mcore.checkpoint.manifest import dataset_differences, read_manifest
from recast_mcore.config.actor import ModelConfig, OptimConfig, ParallelConfig
from recast_mcore.config.base import ConfigError, load_config, to_dict
from recast_mcore.config.data import DataConfig
from recast_mcore.config.rollout import RolloutConfig
from recast_mcore.config.signal import SignalConfig
from recast_mcore.config.train import DDP_FIXED_OPTIM_FIELDS, EvalConfig
from recast_mcore.data.dataset import REQUIRED_FILES
from recast_mcore.utils.paths import unwritable_reason


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


def check_checkpoint_matches(checkpoint_dir: str | Path, model_cfg: ModelConfig, vocab_size: int,
                             dataset_fingerprint: dict[str, str] | None = None) -> None:
    """The checkpoint was written for this model shape, vocabulary and (when given) prepared dataset: its
    manifest's dataset fingerprint (vocabulary + item codes, item ids, splits) must match. Names every difference."""
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
    trained_on = ""
    if dataset_fingerprint is not None:
        saved_fp = read_manifest(path).get("dataset")
        diffs += dataset_differences(saved_fp, dataset_fingerprint)
        trained_on = f" (it was trained on {saved_fp.get('path')})" if saved_fp else ""
    if diffs:
        raise SetupError(
            f"the config's model or dataset does not match checkpoint {path}{trained_on}:\n  " + "\n  ".join(diffs) +
            "\nSet these model.* values to the checkpoint's, use the prepared dataset it was trained on "
            "(data.prepared_dir), or start from a fresh run_dir / another checkpoint."
        )


RUN_TIME_DATA = ("prompt.",)
"""``data.*`` keys the run itself uses (not how the dataset was prepared): never checked against the dataset."""


def check_data_matches_prepared(data_cfg: DataConfig, given_keys: set[str] | None = None) -> DataConfig:
    """``data.*`` settings other than ``prepared_dir`` and ``prompt`` (how prompts are rendered, a run-time
    setting) only describe how the prepared dataset was built (training reads its files): each one given must
    equal the dataset's own config.yaml. ``given_keys``: the dotted keys the user set (None: those differing
    from the defaults). Returns the dataset's DataConfig with the run's ``prepared_dir`` and ``prompt``, which
    is what the run's config.yaml records."""
    source = Path(data_cfg.prepared_dir) / "config.yaml"
    try:
        prepared = replace(load_config(DataConfig, source), prepared_dir=data_cfg.prepared_dir, prompt=data_cfg.prompt)
    except ConfigError as exc:
        raise SetupError(f"cannot read the prepared dataset's config: {exc}") from None
    run, built, default = _leaves(to_dict(data_cfg)), _leaves(to_dict(prepared)), _leaves(to_dict(DataConfig()))
    keys = given_keys if given_keys is not None else {k for k in run if run[k] != default.get(k)}
    diffs = [f"data.{k}: run config {run[k]!r} vs prepared dataset {built.get(k)!r}"
             for k in sorted(keys - {"prepared_dir"}) if k in run and not k.startswith(RUN_TIME_DATA)
             and not _same_setting(k, run[k], built.get(k))]
    if diffs:
        raise SetupError(
            f"data settings given to the run differ from how data.prepared_dir={data_cfg.prepared_dir} was prepared "
            f"({source}); training only reads the prepared files:\n  " + "\n  ".join(diffs) +
            "\nRemove these data.* keys from the run config, or prepare a dataset with them (recast-data prepare "
            "--config <this config> --out NEW_DIR) and point data.prepared_dir at it."
        )
    return prepared


def _leaves(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_leaves(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def given_keys(raw_section: object, prefix: str = "") -> set[str]:
    """Dotted leaf keys of a raw YAML section (what the user actually wrote)."""
    return set(_leaves(raw_section, prefix)) if isinstance(raw_section, dict) else set()


def _same_setting(key: str, a: object, b: object) -> bool:
    if key == "path" and a and b:
        return a == b or Path(str(a)).resolve() == Path(str(b)).resolve()
    return a == b


def check_run_dir_writable(run_dir: str, jsonl_name: str) -> None:
    """The run directory and its metric log can be written (checked before any work, nothing is created)."""
    problem = unwritable_reason(run_dir, directory=True) or unwritable_reason(Path(run_dir) / jsonl_name)
    if problem:
        raise SetupError(f"cannot write the run's outputs: {problem}. Fix it or set another run_dir / logging.jsonl_name.")


def check_eval_fits_catalog(eval_cfg: EvalConfig, num_items: int) -> None:
    """A ranked list longer than the catalog holds every item: Pass@K would be 1 by construction."""
    if eval_cfg.beam_width > num_items:
        raise SetupError(
            f"eval.beam_width={eval_cfg.beam_width} exceeds the catalog's {num_items} items (Pass@K for K >= {num_items} "
            f"would be 1 whatever the model): set eval.beam_width and eval.ks to at most {num_items}"
        )


def check_group_size(signal_cfg: SignalConfig, group_size: int, rl_mode: str = "rl") -> None:
    """GRPO (and grpo_gt) normalizes rewards within a group: it needs at least two candidates per prompt."""
    if rl_mode == "rl" and signal_cfg.builder in ("grpo", "grpo_gt") and group_size < 2:
        raise SetupError(
            f"signal.builder={signal_cfg.builder} needs rollout.sampling.group_size >= 2 (got {group_size}): the "
            f"group-relative advantage of a single candidate is undefined. Raise the group size or use signal.builder=recast."
        )


def check_rollout_layout(rollout_cfg: RolloutConfig, world_size: int) -> None:
    """The in-process torch engine runs the actor's model inside rank 0: it needs a single process."""
    if rollout_cfg.engine == "torch" and world_size != 1:
        raise SetupError(
            f"rollout.engine=torch runs the actor's own model in process and needs WORLD_SIZE=1 (got {world_size}); "
            f"use rollout.engine=sglang for multi-process runs"
        )


def check_rollout_servers(rollout_cfg: RolloutConfig) -> None:
    """The API key variable is set; launched servers fit the GPUs (placement); with ``rollout.sglang.mode:
    attach`` every listed server must answer /health now."""
    if rollout_cfg.engine != "sglang":
        return
    key_env = rollout_cfg.sglang.api_key_env
    if key_env and not os.environ.get(key_env):
        raise SetupError(f"rollout.sglang.api_key_env names ${key_env}, which is unset or empty: export the servers' key")
    try:
        from recast_mcore.trainer.weights import server_plan

        server_plan(rollout_cfg)
    except ValueError as exc:
        raise SetupError(f"rollout.placement: {exc}") from exc
    if rollout_cfg.sglang.mode != "attach":
        return
    from recast_mcore.rollout.client import SGLangClient

    for url in rollout_cfg.sglang.urls:
        if not SGLangClient(url, rollout_cfg.sglang.request_timeout_s).healthy(timeout_s=5.0):  # /health needs no key
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


def check_eval_selection(sft_eval_every: int, eval_cfg) -> None:
    """Periodic SFT evaluation picks its best by ``eval.select_metric``: its K must be evaluated."""
    if sft_eval_every and not eval_cfg.selects_from_ks():
        raise SetupError(
            f"sft.eval_every={sft_eval_every} selects the best SFT evaluation by eval.select_metric="
            f"{eval_cfg.select_metric!r}, but eval.ks={eval_cfg.ks} lacks its K: add it to eval.ks or change select_metric"
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
