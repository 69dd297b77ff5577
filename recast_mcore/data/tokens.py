"""Item vocabulary: semantic-ID codes <-> token ids (see docs/contracts.md, "Tokens and items").

THE one place that maps (item, level, code) to a token id. Everything downstream (trie, rewards,
rollout engines, beam search, evaluation, the actor) reads ``item_tokens``, ``eos_id`` and
``vocab_size`` from here and works unchanged on any layout.

Token layout (V = vocab_size), given a ``TokenLayout`` (B = base_vocab_size, A = len(added_specials))::

    [0, B)          the base model's vocabulary (a pretrained tokenizer's tokens; empty when B = 0)
    [B, B + A)      special tokens appended after it (``added_specials``)
    then one token per (level, code):  token_id = item_offset + level_offset[level] + code,
    item_offset = B + A,   level_offset[l] = sum_{j<l} K_j,   V = item_offset + sum_l K_l.

``ITEM_ONLY`` (the default, for models trained from scratch) is B = 0 with the four specials
``<pad>``=0, ``<bos>``=1, ``<eos>``=2, ``<sep>``=3, so ``token_id = 4 + level_offset[level] + code``.
A pretrained LLM's layout (``convert_checkpoint.py from-hf``) has B = len(tokenizer), A = the specials
it lacked (e.g. ``<|sid_begin|>``, ``<|sid_end|>``) and pad/bos/eos ids chosen in either range.

Level l uses the letter ``chr(ord('a') + l)``: ``<a_12><b_7><c_201>``; when items collide after
the L k-means levels a de-duplication level follows (``<d_..>`` for L = 3). Every item has the same
number of tokens ``item_len`` (= number of levels, including the dedup level when present).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch

PAD_ID, BOS_ID, EOS_ID, SEP_ID = 0, 1, 2, 3
SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<sep>"]
NUM_SPECIAL = len(SPECIAL_TOKENS)
_TOKEN_RE = re.compile(r"<([a-z])_(\d+)>")


@dataclass(frozen=True)
class TokenLayout:
    """Where the special tokens and the item tokens sit in the model's vocabulary (module doc)."""

    base_vocab_size: int
    """B: ids [0, B) are the base (text) vocabulary; 0 for an item-only model."""
    added_specials: tuple[str, ...]
    """Special tokens appended at ids [B, B + len(added_specials)), before the item tokens."""
    pad_id: int
    """Id used to right-pad sequences (never a label)."""
    bos_id: int
    """First token of an item-only prompt (``-1``: the text prompt template decides)."""
    eos_id: int
    """Token that ends every response (the only token allowed after a complete item)."""

    @property
    def item_offset(self) -> int:
        return self.base_vocab_size + len(self.added_specials)

    def validate(self) -> None:
        if self.base_vocab_size < 0:
            raise ValueError(f"base_vocab_size must be >= 0, got {self.base_vocab_size}")
        if len(set(self.added_specials)) != len(self.added_specials):
            raise ValueError(f"added_specials contains duplicates: {list(self.added_specials)}")
        for name in ("pad_id", "eos_id"):
            if not 0 <= getattr(self, name) < self.item_offset:
                raise ValueError(f"{name}={getattr(self, name)} must be a base or added special token id in [0, {self.item_offset})")
        if not -1 <= self.bos_id < self.item_offset:
            raise ValueError(f"bos_id={self.bos_id} must be -1 or in [0, {self.item_offset})")

    def to_state(self) -> dict[str, Any]:
        state = asdict(self)
        state["added_specials"] = list(self.added_specials)
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "TokenLayout":
        missing = {"base_vocab_size", "added_specials", "pad_id", "bos_id", "eos_id"} - set(state)
        if missing:
            raise ValueError(f"TokenLayout state is missing {sorted(missing)}")
        layout = cls(base_vocab_size=int(state["base_vocab_size"]), added_specials=tuple(state["added_specials"]),
                     pad_id=int(state["pad_id"]), bos_id=int(state["bos_id"]), eos_id=int(state["eos_id"]))
        layout.validate()
        return layout


ITEM_ONLY = TokenLayout(base_vocab_size=0, added_specials=tuple(SPECIAL_TOKENS), pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID)
"""Today's item-only vocabulary (``<pad> <bos> <eos> <sep>`` then the item tokens): the default."""

PromptFn = Callable[[torch.Tensor], list[int]]
"""``history item tokens [H, item_len] -> prompt token ids`` (a text template, data/prompts.py)."""


def level_letter(level: int) -> str:
    """Letter of a code level: 0 -> 'a', 1 -> 'b', ... (at most 26 levels)."""
    if not 0 <= level < 26:
        raise ValueError(f"level {level} out of range 0..25")
    return chr(ord("a") + level)


class ItemVocab:
    """Maps item ids (rows of ``codes``) to fixed-length token sequences.

    Args:
        codes: LongTensor [num_items, item_len], ``codes[i, l]`` in ``[0, codes_per_level[l])``.
            Rows must be unique (one token sequence identifies exactly one item).
        codes_per_level: K_l for every level l (length item_len).
        layout: where specials and item tokens sit (``ITEM_ONLY`` by default; module doc).
        prompt_fn: how a history becomes prompt ids (``None``: ``[bos]`` + the items' tokens; a text
            template from data/prompts.py for a pretrained LLM).
    """

    def __init__(self, codes: torch.Tensor, codes_per_level: Sequence[int], layout: TokenLayout = ITEM_ONLY,
                 prompt_fn: PromptFn | None = None):
        codes = torch.as_tensor(codes, dtype=torch.long)
        self.codes_per_level = [int(k) for k in codes_per_level]
        _check_codes(codes, self.codes_per_level)
        layout.validate()
        self.codes, self.layout, self.prompt_fn = codes, layout, prompt_fn
        self.pad_id, self.bos_id, self.eos_id = layout.pad_id, layout.bos_id, layout.eos_id
        offsets = [0]
        for k in self.codes_per_level[:-1]:
            offsets.append(offsets[-1] + k)
        self.level_offset = offsets
        self.item_len = len(self.codes_per_level)
        self.item_offset = layout.item_offset
        self.vocab_size = self.item_offset + sum(self.codes_per_level)
        offset_t = torch.tensor(offsets, dtype=torch.long)
        self.item_tokens = codes + self.item_offset + offset_t  # [num_items, item_len]
        self.appended_tokens = list(layout.added_specials)
        for level, k in enumerate(self.codes_per_level):
            letter = level_letter(level)
            self.appended_tokens.extend(f"<{letter}_{c}>" for c in range(k))
        self._token_index = {s: layout.base_vocab_size + i for i, s in enumerate(self.appended_tokens)}

    @property
    def token_strings(self) -> list[str]:
        """The whole vocabulary's strings (item-only layouts; a base vocabulary lives in its HF tokenizer)."""
        if self.layout.base_vocab_size:
            raise ValueError("token_strings: this vocabulary extends a pretrained tokenizer; its text tokens are "
                             "in that tokenizer (appended_tokens lists the ids from base_vocab_size on)")
        return self.appended_tokens

    @property
    def sep_id(self) -> int:
        """``<sep>`` of the item-only layout."""
        return self._token_index["<sep>"]

    def with_layout(self, layout: TokenLayout, prompt_fn: PromptFn | None = None) -> "ItemVocab":
        """The same items (codes) placed in another vocabulary layout."""
        return ItemVocab(self.codes, self.codes_per_level, layout, prompt_fn)

    @property
    def num_items(self) -> int:
        return self.codes.shape[0]

    def token_id(self, level: int, code: int) -> int:
        """``item_offset + level_offset[level] + code``."""
        if not 0 <= level < self.item_len or not 0 <= code < self.codes_per_level[level]:
            raise ValueError(f"(level={level}, code={code}) outside codes_per_level={self.codes_per_level}")
        return self.item_offset + self.level_offset[level] + code

    def encode_prompt(self, history_item_ids: Sequence[int]) -> list[int]:
        """Prompt ids of a history (oldest first): ``[bos]`` + the items' tokens, or the text template's ids."""
        ids = self._check_item_ids(history_item_ids)
        if self.prompt_fn is not None:
            return self.prompt_fn(self.item_tokens[ids])
        if self.bos_id < 0:
            raise ValueError("this vocabulary has no <bos>: its prompts need a text template (data.prompt.format: text)")
        return [self.bos_id] + self.item_tokens[ids].reshape(-1).tolist()

    def encode_response(self, item_id: int) -> list[int]:
        """The item's ``item_len`` tokens followed by ``[eos]`` (length T = item_len + 1)."""
        (idx,) = self._check_item_ids([item_id])
        return self.item_tokens[idx].tolist() + [self.eos_id]

    def item_string(self, item_id: int) -> str:
        """E.g. ``'<a_12><b_7><c_201>'``."""
        (idx,) = self._check_item_ids([item_id])
        base = self.layout.base_vocab_size
        return "".join(self.appended_tokens[t - base] for t in self.item_tokens[idx].tolist())

    def tokens_from_string(self, text: str) -> list[int]:
        """Parse ``'<bos><a_1><b_2>...'`` back to token ids (appended tokens only); unknown tokens raise."""
        pieces = re.findall(r"<[^<>]+>", text)
        if "".join(pieces) != text.replace(" ", ""):
            raise ValueError(f"text {text!r} is not a sequence of <...> tokens")
        try:
            return [self._token_index[p] for p in pieces]
        except KeyError as exc:
            raise ValueError(f"unknown token {exc.args[0]!r} (vocab has {self.vocab_size} tokens)") from None

    def to_state(self) -> dict[str, Any]:
        """Plain JSON-able form: ``{"codes": [[...], ...], "codes_per_level": [...]}``."""
        return {"codes": self.codes.tolist(), "codes_per_level": list(self.codes_per_level)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "ItemVocab":
        missing = {"codes", "codes_per_level"} - set(state)
        if missing:
            raise ValueError(f"ItemVocab state is missing {sorted(missing)}")
        codes = torch.as_tensor(state["codes"], dtype=torch.long).reshape(-1, len(state["codes_per_level"]))
        return cls(codes, state["codes_per_level"])

    def _check_item_ids(self, item_ids: Sequence[int]) -> list[int]:
        ids = [int(i) for i in item_ids]
        bad = [i for i in ids if not 0 <= i < self.num_items]
        if bad:
            raise ValueError(f"item ids {bad[:5]} outside the catalog [0, {self.num_items})")
        return ids


def _check_codes(codes: torch.Tensor, codes_per_level: list[int]) -> None:
    if codes.dim() != 2 or codes.shape[0] == 0:
        raise ValueError(f"codes must be a non-empty [num_items, item_len] tensor, got shape {tuple(codes.shape)}")
    if codes.shape[1] != len(codes_per_level):
        raise ValueError(f"codes have {codes.shape[1]} levels but codes_per_level has {len(codes_per_level)}")
    if any(k < 1 for k in codes_per_level):
        raise ValueError(f"codes_per_level must be positive, got {codes_per_level}")
    limits = torch.tensor(codes_per_level, dtype=torch.long)
    bad = (codes < 0) | (codes >= limits)
    if bad.any():
        row, level = (int(x) for x in bad.nonzero()[0])
        raise ValueError(
            f"item {row} level {level}: code {int(codes[row, level])} outside [0, {codes_per_level[level]})"
        )
    if torch.unique(codes, dim=0).shape[0] != codes.shape[0]:
        raise ValueError("codes contain duplicate rows: two items would share one token sequence")
