"""The prepared dataset on disk and its loader (``PreparedDataset``, see docs/contracts.md).

Files in a prepared directory (all written by ``recast-data prepare``):
  meta.json        figures: users, items, interactions, sparsity, semantic IDs, timings, baselines
  config.yaml      the resolved ``DataConfig`` that produced the directory
  vocab.json       ``ItemVocab.to_state()``: ``{"codes": [[...]], "codes_per_level": [...]}``
  items.tsv        ``item_index <TAB> raw_item_id <TAB> semantic_id`` (header line; ids escaped, data/ids.py)
  users.tsv        ``user_index <TAB> raw_user_id`` (header line; ids escaped, data/ids.py)
  sequences.jsonl  one JSON object per user index: ``{"user", "train", "valid", "test"}`` item indices

Examples (H = max_history, the most recent H items are kept; k = target_set_size):
  train: history = train[:-k], targets = train[-k:]       (RL prompts; users with empty history skipped)
  valid: history = train,      targets = valid
  test:  history = train + valid, targets = test
  sft:   for every i >= 1: history = train[:i], targets = [train[i]]   (next-item SFT)
  sft windows (``sft_windows``): runs of at most H + 1 consecutive training items, cut from the end of
         each sequence (ends n, n - H, n - 2H, ...); history = [first item], targets = the rest. Trained
         as one causal sequence, every target is predicted from the window items before it, so each
         training position i >= 1 is a target exactly once per epoch (as in the prefix examples, with
         between 1 and H items of context instead of min(i, H)).

``PreparedDataset.fingerprint`` identifies the data a checkpoint was trained on (checkpoint manifests
record it): the sha256 of vocab.json (vocabulary and every item's codes), of items.tsv (item ids) and of
users.tsv + sequences.jsonl (users and splits). Hashing costs one pass over bytes ``load`` reads anyway.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

from recast_mcore.data.ids import escape_id
from recast_mcore.data.sequences import SplitSequences
from recast_mcore.data.tokens import ItemVocab
from recast_mcore.data.trie import ItemTrie

REQUIRED_FILES = ("meta.json", "config.yaml", "vocab.json", "items.tsv", "users.tsv", "sequences.jsonl")
Split = Literal["train", "valid", "test", "sft"]
SPLITS = ("train", "valid", "test", "sft")
FINGERPRINT_PARTS = {"vocab": ("vocab.json",), "items": ("items.tsv",), "splits": ("users.tsv", "sequences.jsonl")}
"""Fingerprint part -> the files hashed into it (in this order)."""


@dataclass
class Example:
    """One prompt: a user's history (oldest first, at most max_history items) and its target items."""

    user: int
    """User index."""
    history: list[int]
    """Item indices, oldest first."""
    targets: list[int]
    """The next item, or the next target_set_size items."""


def write_prepared(
    out_dir: Path, split: SplitSequences, vocab: ItemVocab, meta: dict[str, Any]
) -> None:
    """Write every file but config.yaml (the caller saves the resolved config)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_text(out_dir / "vocab.json", json.dumps(vocab.to_state(), separators=(",", ":")))
    items = ["item_index\traw_item_id\tsemantic_id"]
    items += [f"{i}\t{escape_id(raw)}\t{vocab.item_string(i)}" for i, raw in enumerate(split.item_ids)]
    _write_text(out_dir / "items.tsv", "\n".join(items) + "\n")
    users = ["user_index\traw_user_id"] + [f"{u}\t{escape_id(raw)}" for u, raw in enumerate(split.user_ids)]
    _write_text(out_dir / "users.tsv", "\n".join(users) + "\n")
    lines = [
        json.dumps({"user": u, "train": tr, "valid": va, "test": te}, separators=(",", ":"))
        for u, (tr, va, te) in enumerate(zip(split.train, split.valid, split.test))
    ]
    _write_text(out_dir / "sequences.jsonl", "\n".join(lines) + "\n")
    write_meta(out_dir, meta)


def write_meta(out_dir: Path, meta: dict[str, Any]) -> None:
    _write_text(out_dir / "meta.json", json.dumps(meta, indent=2, sort_keys=True) + "\n")


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


class PreparedDataset:
    """A prepared directory loaded into memory: ``meta``, ``vocab``, ``trie``, splits and examples."""

    def __init__(self, root: Path, meta: dict[str, Any], vocab: ItemVocab, sequences: list[dict[str, list[int]]],
                 fingerprint: dict[str, str] | None = None):
        self.root = root
        self.fingerprint = fingerprint or {}
        """{"vocab", "items", "splits": sha256 hex, "path": where it was loaded from} (see module docstring)."""
        self.meta = meta
        self.vocab = vocab
        self.trie = ItemTrie(vocab.item_tokens, vocab.vocab_size, vocab.eos_id)
        self.train_sequences = [s["train"] for s in sequences]
        self.valid_targets = [s["valid"] for s in sequences]
        self.test_targets = [s["test"] for s in sequences]
        self.max_history = int(meta["max_history"])

    @classmethod
    def load(cls, directory: str | Path) -> "PreparedDataset":
        root = Path(directory)
        if not root.is_dir():
            raise FileNotFoundError(f"prepared dataset directory not found: {root} (run `recast-data prepare`)")
        missing = [name for name in REQUIRED_FILES if not (root / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{root} is not a prepared dataset: missing {', '.join(missing)}")
        meta = json.loads((root / "meta.json").read_text())
        raw = {name: (root / name).read_bytes() for name in ("vocab.json", "sequences.jsonl")}
        vocab = ItemVocab.from_state(json.loads(raw["vocab.json"]))
        sequences = [json.loads(line) for line in raw["sequences.jsonl"].decode().splitlines() if line]
        _check_consistent(root, meta, vocab, sequences)
        return cls(root, meta, vocab, sequences, fingerprint(root, raw))

    def use_vocab(self, vocab: ItemVocab) -> None:
        """Place the same items in another vocabulary layout (a pretrained LLM's, data/prompts.py); rebuilds the trie."""
        if not torch.equal(vocab.codes, self.vocab.codes):
            raise ValueError("use_vocab: the vocabulary's item codes differ from the prepared dataset's")
        self.vocab = vocab
        self.trie = ItemTrie(vocab.item_tokens, vocab.vocab_size, vocab.eos_id)

    @property
    def num_users(self) -> int:
        return len(self.train_sequences)

    @property
    def num_items(self) -> int:
        return self.vocab.num_items

    def examples(self, split: Split) -> list[Example]:
        """Examples of ``split`` (see module docstring for the exact history/targets)."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        if split == "sft":
            return self.sft_examples()
        out = []
        for user, train in enumerate(self.train_sequences):
            if split == "train":
                k = len(self.valid_targets[user])
                history, targets = train[:-k], train[-k:]
                if not history:
                    continue
            elif split == "valid":
                history, targets = train, self.valid_targets[user]
            else:
                history, targets = train + self.valid_targets[user], self.test_targets[user]
            out.append(Example(user=user, history=history[-self.max_history :], targets=list(targets)))
        return out

    def sft_examples(self) -> list[Example]:
        """Every prefix of every training sequence -> its next item."""
        return [
            Example(user=user, history=train[max(0, i - self.max_history) : i], targets=[train[i]])
            for user, train in enumerate(self.train_sequences)
            for i in range(1, len(train))
        ]

    def sft_windows(self) -> list[Example]:
        """Windows of at most ``max_history + 1`` consecutive training items (module docstring)."""
        h = self.max_history
        out = []
        for user, train in enumerate(self.train_sequences):
            for end in range(len(train), 1, -h):
                window = train[max(0, end - h - 1) : end]
                out.append(Example(user=user, history=window[:1], targets=window[1:]))
        return out


def fingerprint(root: str | Path, loaded: dict[str, bytes] | None = None) -> dict[str, str]:
    """sha256 per ``FINGERPRINT_PARTS`` part of the prepared directory ``root`` (``loaded``: bytes already read)."""
    root, loaded = Path(root), loaded or {}
    out = {}
    for part, names in FINGERPRINT_PARTS.items():
        digest = hashlib.sha256()
        for name in names:
            data = loaded[name] if name in loaded else (root / name).read_bytes()
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
        out[part] = digest.hexdigest()
    out["path"] = str(root.resolve())
    return out


def _check_consistent(root: Path, meta: dict[str, Any], vocab: ItemVocab, sequences: list[dict[str, Any]]) -> None:
    for key in ("users", "items", "max_history", "target_set_size"):
        if key not in meta:
            raise ValueError(f"{root / 'meta.json'} lacks '{key}'")
    if vocab.num_items != meta["items"]:
        raise ValueError(f"{root}: vocab.json has {vocab.num_items} items but meta.json says {meta['items']}")
    if len(sequences) != meta["users"]:
        raise ValueError(f"{root}: sequences.jsonl has {len(sequences)} users but meta.json says {meta['users']}")
    for line_no, seq in enumerate(sequences, start=1):
        if seq.get("user") != line_no - 1 or not all(k in seq for k in ("train", "valid", "test")):
            raise ValueError(f"{root / 'sequences.jsonl'}:{line_no}: expected user {line_no - 1} with train/valid/test")
        items = seq["train"] + seq["valid"] + seq["test"]
        if items and (min(items) < 0 or max(items) >= vocab.num_items):
            raise ValueError(f"{root / 'sequences.jsonl'}:{line_no}: item index outside [0, {vocab.num_items})")
