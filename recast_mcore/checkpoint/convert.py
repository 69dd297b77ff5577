"""Import a Hugging Face Llama / Qwen3 model as an actor checkpoint, and export one back (collectives).

``import_hf`` and ``export_hf`` run on every rank after ``initialize_distributed`` (tools/convert_checkpoint.py
is their command line). Import output directory::

    OUT/weights/        actor checkpoint, model weights only (use as sft.init_checkpoint / rl.init_checkpoint)
    OUT/hf_tokenizer/   the expanded tokenizer + recast_vocab.json (data.prompt.tokenizer_dir); not for item-only models
    OUT/model.yaml      the ModelConfig of the imported model (the run config's ``model:`` section)
    OUT/import.json     what was done: vocabulary rows, new-row rule, layout, peak host memory per rank
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import yaml

from recast_mcore.checkpoint.hf_import import HfCheckpoint, HfShardSource, VocabRows, model_config_from_hf, read_hf_config
from recast_mcore.checkpoint.hf_mapping import export_hf_dir, mcore_to_hf
from recast_mcore.checkpoint.hf_vocab import DEFAULT_ITEM_EOS, DEFAULT_SPECIALS, plan_vocab, save_tokenizer
from recast_mcore.config.actor import ModelConfig, OptimConfig, ParallelConfig
from recast_mcore.config.base import to_dict
from recast_mcore.data.tokens import ItemVocab
from recast_mcore.data.trie import ItemTrie

_SHAPE = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups", "head_dim",
          "qk_layernorm", "tie_embeddings", "rotary_base", "rope_scaling_factor")


@dataclass(kw_only=True)
class ImportOptions:
    """How ``import_hf`` builds the expanded vocabulary (docs/checkpoints.md)."""

    new_rows: Literal["mean_noise", "normal"] = "mean_noise"
    """Init of appended embedding / lm_head rows (checkpoint/hf_import.py)."""
    new_row_noise: float = 0.1
    """mean_noise: noise in units of the per-dimension std (0 = exactly the mean row); normal: the std."""
    seed: int = 1234
    """Seed of the new rows' noise (the same rows on any TP/PP layout)."""
    special_tokens: tuple[str, ...] = DEFAULT_SPECIALS
    """Special tokens appended when the tokenizer lacks them (used by the default prompt template)."""
    item_eos: str = DEFAULT_ITEM_EOS
    """Token that ends every response (appended when missing)."""


def import_model_config(hf_config: dict, given: ModelConfig | None, *, max_seq_len: int = 4096,
                        params_dtype: str = "", given_source: str = "model config") -> ModelConfig:
    """From config.json (params dtype: ``params_dtype`` or the checkpoint's); ``given`` must agree in shape
    (ValueError naming every differing key, ``given_source`` saying where ``given`` came from)."""
    dtype = params_dtype or ("fp32" if hf_config.get("torch_dtype", hf_config.get("dtype")) == "float32" else "bf16")
    derived = model_config_from_hf(hf_config, max_seq_len=max_seq_len, params_dtype=dtype)
    if given is None:
        return derived
    diffs = [f"{key}: config.json {getattr(derived, key)!r} vs {given_source} {getattr(given, key)!r}"
             for key in _SHAPE if getattr(given, key) != getattr(derived, key)]
    if diffs:
        raise ValueError(f"config.json does not describe the model the {given_source} gives:\n  " + "\n  ".join(diffs) +
                         f"\nGive the ModelConfig of this model's shape (or leave it out: the shape comes from config.json).")
    return given


def import_hf(hf_dir: str | Path, dataset_vocab: ItemVocab, out: str | Path, model_cfg: ModelConfig,
              parallel_cfg: ParallelConfig, options: ImportOptions, *, dataset_fingerprint: dict[str, str]):
    """Collective: stream ``hf_dir`` into a new actor, expand its vocabulary, write OUT (module doc).
    ``dataset_fingerprint`` (``PreparedDataset.fingerprint`` of the dataset ``dataset_vocab`` comes from) goes
    into the checkpoint's manifest with the source: the trainer refuses the import with another dataset.
    Returns (the summary written to import.json, the actor holding the imported weights) on every rank."""
    import torch.distributed as dist

    from recast_mcore.actor.actor import MegatronActor
    from recast_mcore.actor.model import padded_vocab_size
    from recast_mcore.utils.memory import PeakRss

    hf_dir, out = Path(hf_dir), Path(out)
    hf_config = read_hf_config(hf_dir)
    plan = plan_vocab(hf_dir, dataset_vocab, hf_config, specials=options.special_tokens, item_eos=options.item_eos)
    vocab = plan.vocab
    rows = VocabRows(plan.source_rows, vocab.vocab_size, padded_vocab_size(vocab.vocab_size), init=options.new_rows,
                     noise=options.new_row_noise, seed=options.seed)
    actor = MegatronActor(model_cfg, parallel_cfg, OptimConfig(), vocab.vocab_size,
                          ItemTrie(vocab.item_tokens, vocab.vocab_size, vocab.eos_id))
    with PeakRss() as load:
        count = actor.load_shards(HfShardSource(HfCheckpoint(hf_dir), model_cfg, rows))
    with PeakRss() as save:
        # never stepped: weights only; no `latest` pointer (OUT is not a run's checkpoints/)
        actor.save(out / "weights", {}, info={"dataset": dataset_fingerprint, "source": str(hf_dir.resolve()),
                                             "import": plan.kind}, update_latest=False)
    memory = [None] * dist.get_world_size()
    dist.all_gather_object(memory, {"rss_before_load": load.before, "load_peak": load.peak, "load_added": load.added,
                                    "load_anon_added": load.anon_added, "save_added": save.added,
                                    "save_anon_added": save.anon_added, "params": count})
    summary = {"source": str(hf_dir), "kind": plan.kind, "base_vocab_size": vocab.layout.base_vocab_size,
               "source_rows": rows.source_rows, "vocab_size": vocab.vocab_size, "padded_vocab": rows.padded,
               "item_offset": vocab.item_offset, "added_specials": list(vocab.layout.added_specials),
               "eos_id": vocab.eos_id, "new_rows": {"init": rows.init, "noise": rows.noise, "seed": rows.seed},
               "layout": {"tensor_parallel": parallel_cfg.tensor_parallel, "pipeline_parallel": parallel_cfg.pipeline_parallel},
               "memory_per_rank": memory}
    if dist.get_rank() == 0:
        if plan.kind != "items":
            save_tokenizer(plan, out / "hf_tokenizer", source=str(hf_dir))
        (out / "model.yaml").write_text(yaml.safe_dump(to_dict(model_cfg), sort_keys=False))
        (out / "import.json").write_text(json.dumps(summary, indent=2))
    dist.barrier()
    return summary, actor


def export_hf(actor, vocab: ItemVocab, out: str | Path, *, tokenizer_dir: str | Path | None, dtype: torch.dtype) -> Path | None:
    """Collective: the actor's weights as an HF directory (rank 0 writes; returns its path there, None elsewhere)."""
    full = actor.full_state_dict()
    if full is None:
        return None
    hf = {k: v.to(dtype) for k, v in mcore_to_hf(full, actor.model_cfg, vocab.vocab_size).items()}
    strings = None if tokenizer_dir else vocab.token_strings
    return export_hf_dir(out, hf, actor.model_cfg, strings, pad_id=vocab.pad_id, bos_id=vocab.bos_id, eos_id=vocab.eos_id,
                         tokenizer_dir=tokenizer_dir or None)
