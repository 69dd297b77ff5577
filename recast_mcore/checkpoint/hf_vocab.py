"""The vocabulary of an imported Hugging Face model: its own tokenizer plus our special and item tokens.

``plan_vocab(hf_dir, vocab, ...)`` looks at the HF directory and the prepared dataset's items and says
what the import does (``VocabPlan.kind``):

- ``expand``: a pretrained LLM (Qwen3, Llama). B = ``len(tokenizer)``; the special tokens we need that
  the tokenizer lacks (default ``<|sid_begin|>``, ``<|sid_end|>``), then every item token ``<a_0>`` ...,
  are added to the tokenizer as special added tokens (never merged with text) and get ids B, B+1, ...;
  the embedding (and an untied lm_head) grows by the same rows (checkpoint/hf_import.py: new-row rule).
  EOS of a response is ``item_eos`` (default ``<|sid_end|>``), pad the tokenizer's pad (else its eos).
- ``expanded``: the directory was already expanded by us (a ``to-hf`` export: ``recast_vocab.json``
  present): its layout is kept and every row comes from the checkpoint.
- ``items``: an item-only model (a ``to-hf`` export of a model trained from scratch): the tokenizer is
  exactly the item-only vocabulary ``<pad> <bos> <eos> <sep> <a_0> ...``; nothing is added.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from recast_mcore.data.prompts import VOCAB_FILE, check_tokenizer_layout, load_tokenizer, read_vocab_file, write_vocab_file
from recast_mcore.data.tokens import ITEM_ONLY, ItemVocab, TokenLayout

DEFAULT_SPECIALS = ("<|sid_begin|>", "<|sid_end|>")
DEFAULT_ITEM_EOS = "<|sid_end|>"


@dataclass
class VocabPlan:
    """What the import does with the vocabulary (module doc)."""

    kind: Literal["expand", "expanded", "items"]
    vocab: ItemVocab
    """The dataset's items in the imported model's layout."""
    source_rows: int
    """Embedding rows taken from the checkpoint; rows [source_rows, vocab_size) are new."""
    tokenizer: Any
    """The (expanded) HF tokenizer."""
    hf_config: dict
    """The base model's config.json (kept for the export)."""


def _is_item_only(tokenizer, vocab: ItemVocab) -> bool:
    if len(tokenizer) != vocab.vocab_size:
        return False
    return tokenizer.convert_tokens_to_ids(vocab.token_strings) == list(range(vocab.vocab_size))


def _add_tokens(tokenizer, strings: list[str]) -> None:
    from transformers import AddedToken

    tokens = [AddedToken(s, special=True, normalized=False, lstrip=False, rstrip=False) for s in strings]
    added = tokenizer.add_tokens(tokens, special_tokens=True)
    if added != len(strings):
        raise ValueError(f"the tokenizer added {added} of {len(strings)} new tokens (some already existed)")


def plan_vocab(hf_dir: str | Path, vocab: ItemVocab, hf_config: dict, *, specials: tuple[str, ...] = DEFAULT_SPECIALS,
               item_eos: str = DEFAULT_ITEM_EOS) -> VocabPlan:
    """Decide and build the imported model's vocabulary (module doc); the tokenizer is expanded in memory."""
    hf_dir = Path(hf_dir)
    tokenizer = load_tokenizer(hf_dir)
    rows = int(hf_config["vocab_size"])
    if (hf_dir / VOCAB_FILE).is_file():
        state = read_vocab_file(hf_dir)
        if list(state["codes_per_level"]) != vocab.codes_per_level:
            raise ValueError(f"{hf_dir} was expanded for codes_per_level {state['codes_per_level']}, the dataset has {vocab.codes_per_level}")
        expanded = vocab.with_layout(state["layout"])
        check_tokenizer_layout(tokenizer, expanded, str(hf_dir))
        return VocabPlan("expanded", expanded, expanded.vocab_size, tokenizer, state.get("hf_config") or hf_config)
    if _is_item_only(tokenizer, vocab):
        return VocabPlan("items", vocab.with_layout(ITEM_ONLY), vocab.vocab_size, tokenizer, hf_config)
    base = len(tokenizer)
    if base > rows:
        raise ValueError(f"{hf_dir}: the tokenizer has {base} tokens but the embedding only {rows} rows")
    known = tokenizer.get_vocab()
    clash = [s for s in vocab.appended_tokens if s in known and s not in ITEM_ONLY.added_specials]
    if clash:
        raise ValueError(f"{hf_dir}: the tokenizer already has item-like tokens {clash[:5]}: cannot append the item vocabulary")
    missing = [s for s in specials if s not in known]
    if item_eos not in known and item_eos not in missing:
        missing.append(item_eos)
    eos_id = known[item_eos] if item_eos in known else base + missing.index(item_eos)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    layout = TokenLayout(base_vocab_size=base, added_specials=tuple(missing), eos_id=eos_id,
                         pad_id=eos_id if pad_id is None else pad_id,
                         bos_id=-1 if tokenizer.bos_token_id is None else tokenizer.bos_token_id)
    expanded = vocab.with_layout(layout)
    _add_tokens(tokenizer, expanded.appended_tokens)
    check_tokenizer_layout(tokenizer, expanded, f"{hf_dir} (expanded)")
    return VocabPlan("expand", expanded, base, tokenizer, hf_config)


def save_tokenizer(plan: VocabPlan, out_dir: str | Path, **extra: Any) -> Path:
    """The expanded tokenizer plus ``recast_vocab.json`` (layout, codes_per_level, base config) in ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plan.tokenizer.save_pretrained(str(out_dir))
    write_vocab_file(out_dir, plan.vocab.layout, plan.vocab.codes_per_level, hf_config=plan.hf_config, **extra)
    return out_dir


_SHAPE_KEYS = ("architectures", "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
               "num_attention_heads", "num_key_value_heads", "head_dim", "tie_word_embeddings", "torch_dtype", "dtype")


def expanded_export_files(tokenizer_dir: str | Path, model_cfg, dtype: str) -> tuple[int, dict[str, dict], list[Path]]:
    """For an HF export of an expanded model: (vocab_size, JSON files to write, tokenizer files to copy).

    config.json is the base model's config with the shape, vocabulary size, tying and dtype of ``model_cfg``;
    the tokenizer files (with ``recast_vocab.json``) are copied, so the export is again a valid ``--hf`` and
    ``data.prompt.tokenizer_dir``.
    """
    from recast_mcore.checkpoint.hf_mapping import hf_config_dict

    tokenizer_dir = Path(tokenizer_dir)
    state = read_vocab_file(tokenizer_dir)
    layout: TokenLayout = state["layout"]
    vocab_size = layout.item_offset + sum(state["codes_per_level"])
    base = dict(state.get("hf_config") or {})
    ours = hf_config_dict(model_cfg, vocab_size, pad_id=layout.pad_id, bos_id=max(layout.bos_id, 0), eos_id=layout.eos_id,
                          torch_dtype=dtype)
    config = {**ours, **base, **{k: ours[k] for k in _SHAPE_KEYS}} if base else ours
    generation = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if config.get(k) is not None}
    copies = [p for p in sorted(tokenizer_dir.iterdir()) if p.is_file() and p.name not in ("config.json", "generation_config.json")
              and not p.name.endswith(".safetensors") and p.name != "model.safetensors.index.json"]
    return vocab_size, {"config.json": config, "generation_config.json": generation}, copies
