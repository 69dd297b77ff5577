"""The item catalog as the rollout engines see it: trie tables, next-token masks, item lookup (pure torch).

Both engines use the same mask code as the SGLang processor (``ItemTrieLogitProcessor._mask_logits``, the
code that runs inside SGLang, applied to zero logits), so in-process sampling, beam search and the SGLang
processor constrain identically.
"""

from __future__ import annotations

from array import array
from collections import deque
from pathlib import Path

import torch

from recast_mcore.rollout.trie_processor import ItemTrieLogitProcessor, build_trie_tables, save_trie_tables


class ItemCatalog:
    """Fixed-length items ``item_tokens [N, L]`` plus EOS, over a vocabulary of size V.

    ``T = L + 1`` response tokens per item (the item's tokens, then EOS).
    """

    def __init__(self, item_tokens: torch.Tensor, vocab_size: int, eos_id: int):
        self.item_tokens = torch.as_tensor(item_tokens, dtype=torch.long)
        self.vocab_size = int(vocab_size)
        self.eos_id = int(eos_id)
        self.tables = build_trie_tables(self.item_tokens, self.vocab_size, self.eos_id)
        self._prepared = None  # the processor's derived tables, built on first use

    @classmethod
    def from_vocab(cls, vocab) -> "ItemCatalog":
        """From a ``recast_mcore.data.tokens.ItemVocab`` (uses item_tokens, vocab_size, eos_id)."""
        return cls(vocab.item_tokens, vocab.vocab_size, vocab.eos_id)

    @property
    def num_items(self) -> int:
        return self.item_tokens.shape[0]

    @property
    def item_len(self) -> int:
        return self.item_tokens.shape[1]

    @property
    def response_len(self) -> int:
        """T = item_len + 1 (EOS)."""
        return self.item_len + 1

    def allowed_mask(self, prefixes: list[list[int]] | torch.Tensor) -> torch.Tensor:
        """[R, V] bool: tokens allowed after each generated prefix (only EOS after a full item or off-trie)."""
        if torch.is_tensor(prefixes):
            prefixes = prefixes.tolist()
        if len(prefixes) == 0:
            return torch.zeros(0, self.vocab_size, dtype=torch.bool)
        if self._prepared is None:
            self._prepared = ItemTrieLogitProcessor._prepare(self.tables)
        lengths, flat = array("q", map(len, prefixes)), array("q")
        deque(map(flat.extend, prefixes), maxlen=0)
        staged = ItemTrieLogitProcessor._stage(lengths, flat, torch.device("cpu"))
        logits = torch.zeros(len(prefixes), self.vocab_size)
        return torch.isfinite(ItemTrieLogitProcessor._mask_logits(self._prepared, logits, staged, lengths))

    def item_ids(self, responses: torch.Tensor) -> torch.Tensor:
        """[...] int64 catalog row of ``responses[..., :L]`` (-1 when it is not a catalog item)."""
        flat = responses.reshape(-1, responses.shape[-1])[:, : self.item_len].long()
        v = self.vocab_size
        key_table, child = self.tables["edge_key"], self.tables["edge_child"]
        node = torch.zeros(flat.shape[0], dtype=torch.long)
        ok = torch.ones(flat.shape[0], dtype=torch.bool)
        for s in range(flat.shape[1]):
            key = node * v + flat[:, s]
            idx = torch.searchsorted(key_table, key).clamp_(max=key_table.numel() - 1)
            ok &= key_table[idx] == key
            node = torch.where(ok, child[idx], node)
        ids = torch.where(ok, self.tables["node_item"][node], torch.full_like(node, -1))
        return ids.reshape(responses.shape[:-1])

    def responses_of(self, item_ids: torch.Tensor) -> torch.Tensor:
        """[..., T] int64: item tokens followed by EOS for catalog rows ``item_ids``."""
        tokens = self.item_tokens[item_ids.reshape(-1)]
        eos = torch.full((tokens.shape[0], 1), self.eos_id, dtype=torch.long)
        return torch.cat([tokens, eos], 1).reshape(*item_ids.shape, self.response_len)

    def save(self, directory: str | Path) -> Path:
        """Write the trie tables for the SGLang processor (``trie-<catalog hash>.pt``, written once) and return the path."""
        return save_trie_tables(self.tables, directory)


def check_prompts(prompt_ids: list[list[int]], vocab_size: int) -> None:
    """Raise a ValueError naming the first bad prompt (empty, non-int, or a token outside [0, V))."""
    if not isinstance(prompt_ids, (list, tuple)) or not prompt_ids:
        raise ValueError("prompt_ids must be a non-empty list of token-id lists")
    for i, prompt in enumerate(prompt_ids):
        if not isinstance(prompt, (list, tuple)) or len(prompt) == 0:
            raise ValueError(f"prompt {i} is empty or not a list of token ids: {prompt!r:.80}")
        bad = [t for t in prompt if not isinstance(t, int) or isinstance(t, bool) or not 0 <= t < vocab_size]
        if bad:
            raise ValueError(f"prompt {i} has token ids outside [0, {vocab_size}) or not int: {bad[:5]}")
