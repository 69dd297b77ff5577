"""Prefix trie over the catalog's fixed-length item token tuples, vectorized with torch.

Structure (N trie nodes, root = node 0, V = vocab size, L = item_len)::

    nodes are numbered level by level; inside a level, sorted by (parent, token)
    node_token[N]   token on the edge parent -> node (root: -1)
    node_depth[N]   0 for the root, L for leaves (complete items)
    child_ptr[N+1]  CSR: the children of node p are the nodes child_ptr[p] .. child_ptr[p+1]-1
    edge_keys[N-1]  parent * V + token of nodes 1..N-1; ascending, so a transition is one searchsorted
    leaf_item[N]    catalog item id of a leaf, -1 elsewhere

A transition ``(node, token) -> child`` is ``searchsorted(edge_keys, node * V + token) + 1`` when
the key matches. Walking a batch of prefixes takes one vectorized step per position (at most L + 1
steps), never a Python loop over rows. Allowed sets are the children's tokens (a CSR gather), and
only ``<eos>`` at a leaf.
"""

from __future__ import annotations

from typing import Any

import torch

_STATE_ARRAYS = ("node_token", "node_depth", "child_ptr", "edge_keys", "leaf_item")


class ItemTrie:
    """Constrained-decoding trie.

    Args:
        item_tokens: LongTensor [num_items, item_len], unique rows, tokens in ``[0, vocab_size)``.
        vocab_size: V.
        eos_id: the end-of-sequence token, the only token allowed after a complete item.
    """

    def __init__(self, item_tokens: torch.Tensor, vocab_size: int, eos_id: int):
        item_tokens = torch.as_tensor(item_tokens, dtype=torch.long).cpu()
        _check_item_tokens(item_tokens, vocab_size, eos_id)
        self.vocab_size = int(vocab_size)
        self.eos_id = int(eos_id)
        self.item_len = int(item_tokens.shape[1])
        self.num_items = int(item_tokens.shape[0])
        arrays = _build_csr(item_tokens, self.vocab_size)
        for name in _STATE_ARRAYS:
            setattr(self, name, arrays[name])

    # ------------------------------------------------------------------ state
    def to_state(self) -> dict[str, Any]:
        """Plain ints and int lists (JSON/dill friendly) from which ``from_state`` rebuilds the trie."""
        state: dict[str, Any] = {
            "vocab_size": self.vocab_size,
            "eos_id": self.eos_id,
            "item_len": self.item_len,
            "num_items": self.num_items,
        }
        for name in _STATE_ARRAYS:
            state[name] = getattr(self, name).tolist()
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "ItemTrie":
        """Rebuild from ``to_state()`` output (lists or tensors); inconsistent arrays raise."""
        required = {"vocab_size", "eos_id", "item_len", "num_items", *_STATE_ARRAYS}
        missing = required - set(state)
        if missing:
            raise ValueError(f"ItemTrie state is missing {sorted(missing)}")
        trie = cls.__new__(cls)
        for key in ("vocab_size", "eos_id", "item_len", "num_items"):
            setattr(trie, key, int(state[key]))
        for name in _STATE_ARRAYS:
            setattr(trie, name, torch.as_tensor(state[name], dtype=torch.long))
        trie._check_state()
        return trie

    def to(self, device: torch.device | str) -> "ItemTrie":
        """A copy whose arrays live on ``device`` (masks are then built there)."""
        trie = self.__class__.__new__(self.__class__)
        trie.__dict__.update(self.__dict__)
        for name in _STATE_ARRAYS:
            setattr(trie, name, getattr(self, name).to(device))
        return trie

    @property
    def num_nodes(self) -> int:
        return int(self.node_token.shape[0])

    @property
    def device(self) -> torch.device:
        return self.node_token.device

    # ------------------------------------------------------------- walking
    def step(self, nodes: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Child of each ``nodes[i]`` along ``tokens[i]`` (same shape); -1 where there is none."""
        v = self.vocab_size
        ok = (nodes >= 0) & (tokens >= 0) & (tokens < v)
        keys = torch.where(ok, nodes * v + tokens, torch.zeros_like(nodes))
        pos = torch.searchsorted(self.edge_keys, keys).clamp_(max=self.edge_keys.shape[0] - 1)
        found = ok & (self.edge_keys[pos] == keys)
        return torch.where(found, pos + 1, torch.full_like(pos, -1))

    def walk(self, tokens: torch.Tensor) -> torch.Tensor:
        """Node after each prefix: ``tokens [B, t]`` -> ``nodes [B, t+1]`` (column 0 = root), -1 = off the trie."""
        tokens = self._as_batch(tokens, "tokens")
        b, t = tokens.shape
        nodes = torch.empty(b, t + 1, dtype=torch.long, device=self.device)
        nodes[:, 0] = 0
        for pos in range(t):  # at most item_len + 1 vectorized steps
            nodes[:, pos + 1] = self.step(nodes[:, pos], tokens[:, pos])
        return nodes

    def allowed_mask(self, nodes: torch.Tensor) -> torch.Tensor:
        """``nodes [M]`` (valid trie nodes) -> ``bool [M, V]``: children's tokens; only EOS at a leaf."""
        m = nodes.shape[0]
        mask = torch.zeros(m, self.vocab_size, dtype=torch.bool, device=self.device)
        start = self.child_ptr[nodes]
        count = self.child_ptr[nodes + 1] - start
        rows = torch.repeat_interleave(torch.arange(m, device=self.device), count)
        first = torch.repeat_interleave(torch.cumsum(count, 0) - count, count)
        child = torch.repeat_interleave(start, count) + torch.arange(rows.shape[0], device=self.device) - first
        mask[rows, self.node_token[child]] = True
        mask[self.node_depth[nodes] == self.item_len, self.eos_id] = True
        return mask

    # ------------------------------------------------------------ contract
    def next_token_mask(self, prefixes: torch.Tensor) -> torch.Tensor:
        """``prefixes [B, t]`` with ``0 <= t <= item_len`` -> ``bool [B, V]`` allowed next tokens.

        At ``t == item_len`` only EOS is allowed. A prefix that is not on the trie raises.
        """
        prefixes = self._as_batch(prefixes, "prefixes")
        if prefixes.shape[1] > self.item_len:
            raise ValueError(f"prefix length {prefixes.shape[1]} > item_len {self.item_len}")
        nodes = self.walk(prefixes)
        self._raise_if_off_trie(nodes, prefixes, "prefix")
        return self.allowed_mask(nodes[:, -1])

    def response_mask(self, responses: torch.Tensor) -> torch.Tensor:
        """``responses [B, T]`` (``T <= item_len + 1``) -> ``bool [B, T, V]``.

        ``mask[b, t]`` is the allowed set after the teacher-forced prefix ``responses[b, :t]``. Every
        response token must itself be allowed (a catalog item, then EOS), else this raises.
        """
        responses = self._as_batch(responses, "responses")
        b, t = responses.shape
        if t > self.item_len + 1:
            raise ValueError(f"response length {t} > item_len + 1 = {self.item_len + 1}")
        item_part = responses[:, : self.item_len]
        nodes = self.walk(item_part)  # [B, min(T, L) + 1]
        self._raise_if_off_trie(nodes, item_part, "response")
        if t == self.item_len + 1 and bool((responses[:, -1] != self.eos_id).any()):
            row = int((responses[:, -1] != self.eos_id).nonzero()[0])
            raise ValueError(f"response row {row} ends with token {int(responses[row, -1])}, expected eos {self.eos_id}")
        return self.allowed_mask(nodes[:, :t].reshape(-1)).view(b, t, self.vocab_size)

    def item_ids(self, responses: torch.Tensor) -> torch.Tensor:
        """``responses [B, >=item_len]`` -> ``LongTensor [B]`` item id of the first item_len tokens, -1 if none."""
        responses = self._as_batch(responses, "responses")
        if responses.shape[1] < self.item_len:
            raise ValueError(f"responses have {responses.shape[1]} tokens, need at least item_len={self.item_len}")
        leaf = self.walk(responses[:, : self.item_len])[:, -1]
        return torch.where(leaf >= 0, self.leaf_item[leaf.clamp(min=0)], torch.full_like(leaf, -1))

    # ------------------------------------------------------------- helpers
    def _as_batch(self, tokens: torch.Tensor, name: str) -> torch.Tensor:
        tokens = torch.as_tensor(tokens)
        if tokens.dim() != 2 or tokens.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"{name} must be an integer [B, t] tensor, got {tokens.dtype} {tuple(tokens.shape)}")
        return tokens.to(device=self.device, dtype=torch.long)

    def _raise_if_off_trie(self, nodes: torch.Tensor, tokens: torch.Tensor, what: str) -> None:
        off = nodes[:, 1:] < 0
        if off.any():
            row, pos = (int(x) for x in off.nonzero()[0])
            raise ValueError(
                f"{what} row {row} is not a valid catalog prefix: token {int(tokens[row, pos])} at position {pos} "
                f"(tokens {tokens[row, : pos + 1].tolist()}); {int(off.any(1).sum())} of {off.shape[0]} rows invalid"
            )

    def _check_state(self) -> None:
        n = self.node_token.shape[0]
        sizes = {"node_depth": n, "child_ptr": n + 1, "edge_keys": n - 1, "leaf_item": n}
        for name, size in sizes.items():
            if getattr(self, name).shape != (size,):
                raise ValueError(f"ItemTrie state: {name} has shape {tuple(getattr(self, name).shape)}, expected ({size},)")
        if int(self.child_ptr[-1]) != n or bool((self.edge_keys[1:] <= self.edge_keys[:-1]).any()):
            raise ValueError("ItemTrie state: child_ptr/edge_keys are not a consistent CSR")
        if int((self.leaf_item >= 0).sum()) != self.num_items:
            raise ValueError(f"ItemTrie state: {int((self.leaf_item >= 0).sum())} leaves but num_items={self.num_items}")


def _check_item_tokens(item_tokens: torch.Tensor, vocab_size: int, eos_id: int) -> None:
    if item_tokens.dim() != 2 or item_tokens.shape[0] == 0 or item_tokens.shape[1] == 0:
        raise ValueError(f"item_tokens must be a non-empty [num_items, item_len] tensor, got {tuple(item_tokens.shape)}")
    if not 0 <= eos_id < vocab_size:
        raise ValueError(f"eos_id {eos_id} outside [0, {vocab_size})")
    if int(item_tokens.min()) < 0 or int(item_tokens.max()) >= vocab_size:
        raise ValueError(f"item tokens must lie in [0, {vocab_size}), got [{int(item_tokens.min())}, {int(item_tokens.max())}]")
    if bool((item_tokens == eos_id).any()):
        raise ValueError(f"item tokens must not contain eos_id {eos_id}")


def _build_csr(item_tokens: torch.Tensor, vocab_size: int) -> dict[str, torch.Tensor]:
    """Level-by-level ``torch.unique`` over ``parent * V + token`` keys (see module docstring)."""
    num_items, item_len = item_tokens.shape
    parent_of_item = torch.zeros(num_items, dtype=torch.long)  # current node of every item: root
    keys, depths = [], []
    next_id = 1
    for level in range(item_len):
        level_keys, inverse = torch.unique(parent_of_item * vocab_size + item_tokens[:, level], return_inverse=True)
        keys.append(level_keys)
        depths.append(torch.full((level_keys.shape[0],), level + 1, dtype=torch.long))
        parent_of_item = next_id + inverse
        next_id += level_keys.shape[0]
    if keys[-1].shape[0] != num_items:
        raise ValueError(f"item_tokens contain duplicate rows ({num_items - keys[-1].shape[0]} duplicates)")
    edge_keys = torch.cat(keys)
    num_nodes = next_id
    parents = edge_keys // vocab_size
    counts = torch.bincount(parents, minlength=num_nodes)
    child_ptr = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)]) + 1
    leaf_item = torch.full((num_nodes,), -1, dtype=torch.long)
    leaf_item[parent_of_item] = torch.arange(num_items)
    return {
        "node_token": torch.cat([torch.tensor([-1]), edge_keys % vocab_size]),
        "node_depth": torch.cat([torch.zeros(1, dtype=torch.long), *depths]),
        "child_ptr": child_ptr,
        "edge_keys": edge_keys,
        "leaf_item": leaf_item,
    }
