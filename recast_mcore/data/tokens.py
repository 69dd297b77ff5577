"""Item vocabulary: semantic-ID codes <-> token ids (see docs/contracts.md, "Tokens and items").

Token layout (V = vocab_size)::

    0 <pad>, 1 <bos>, 2 <eos>, 3 <sep>,
    then one token per (level, code):  token_id = 4 + level_offset[level] + code,
    level_offset[l] = sum_{j<l} K_j,   V = 4 + sum_l K_l.

Level l uses the letter ``chr(ord('a') + l)``: ``<a_12><b_7><c_201>``; when items collide after
the L k-means levels a de-duplication level follows (``<d_..>`` for L = 3). Every item has the same
number of tokens ``item_len`` (= number of levels, including the dedup level when present).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import torch

PAD_ID, BOS_ID, EOS_ID, SEP_ID = 0, 1, 2, 3
SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<sep>"]
NUM_SPECIAL = len(SPECIAL_TOKENS)
_TOKEN_RE = re.compile(r"<([a-z])_(\d+)>")


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
    """

    pad_id = PAD_ID
    bos_id = BOS_ID
    eos_id = EOS_ID
    sep_id = SEP_ID

    def __init__(self, codes: torch.Tensor, codes_per_level: Sequence[int]):
        codes = torch.as_tensor(codes, dtype=torch.long)
        self.codes_per_level = [int(k) for k in codes_per_level]
        _check_codes(codes, self.codes_per_level)
        self.codes = codes
        offsets = [0]
        for k in self.codes_per_level[:-1]:
            offsets.append(offsets[-1] + k)
        self.level_offset = offsets
        self.item_len = len(self.codes_per_level)
        self.vocab_size = NUM_SPECIAL + sum(self.codes_per_level)
        offset_t = torch.tensor(offsets, dtype=torch.long)
        self.item_tokens = codes + NUM_SPECIAL + offset_t  # [num_items, item_len]
        self.token_strings = list(SPECIAL_TOKENS)
        for level, k in enumerate(self.codes_per_level):
            letter = level_letter(level)
            self.token_strings.extend(f"<{letter}_{c}>" for c in range(k))
        self._token_index = {s: i for i, s in enumerate(self.token_strings)}

    @property
    def num_items(self) -> int:
        return self.codes.shape[0]

    def token_id(self, level: int, code: int) -> int:
        """``4 + level_offset[level] + code``."""
        if not 0 <= level < self.item_len or not 0 <= code < self.codes_per_level[level]:
            raise ValueError(f"(level={level}, code={code}) outside codes_per_level={self.codes_per_level}")
        return NUM_SPECIAL + self.level_offset[level] + code

    def encode_prompt(self, history_item_ids: Sequence[int]) -> list[int]:
        """``[bos]`` + the tokens of each history item, oldest first."""
        ids = self._check_item_ids(history_item_ids)
        return [BOS_ID] + self.item_tokens[ids].reshape(-1).tolist()

    def encode_response(self, item_id: int) -> list[int]:
        """The item's ``item_len`` tokens followed by ``[eos]`` (length T = item_len + 1)."""
        (idx,) = self._check_item_ids([item_id])
        return self.item_tokens[idx].tolist() + [EOS_ID]

    def item_string(self, item_id: int) -> str:
        """E.g. ``'<a_12><b_7><c_201>'``."""
        (idx,) = self._check_item_ids([item_id])
        return "".join(self.token_strings[t] for t in self.item_tokens[idx].tolist())

    def tokens_from_string(self, text: str) -> list[int]:
        """Parse ``'<bos><a_1><b_2>...'`` back to token ids; unknown tokens raise."""
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
