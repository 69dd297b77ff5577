"""Trie-constrained decoding inside SGLang: a vectorized ``CustomLogitProcessor`` over fixed-length items.

SGLang ships the processor *class* to its scheduler process with dill and calls ``cls()(logits,
custom_param_list)`` (the contract of ``sglang.srt.sampling.custom_logit_processor.CustomLogitProcessor``;
duck-typed here so the trainer process never imports sglang). The class must be self-contained: ``torch`` is imported inside the methods and no module global is referenced.
``trie_processor_string()`` serializes it by value (the server does not need recast_mcore installed).

Per request, ``custom_params = {"trie_path": <file written by save_trie_tables>}``. The tables are
loaded once per server process and cached on the class object (SGLang caches the deserialized class).

Trie tables (built by ``build_trie_tables`` from ``item_tokens [N, L]``, ``V`` = vocab size):
  - nodes: root = 0; one node per distinct item prefix of length 1..L;
  - edges sorted by ``key = parent * V + token`` (``edge_key [E]``, ``edge_token [E]``, ``edge_child [E]``);
    a full-item node (depth L) has exactly one edge, EOS;
  - ``node_start [num_nodes + 1]``: the edges of node ``u`` are ``edge_*[node_start[u]:node_start[u+1]]``;
  - ``node_item [num_nodes]``: the catalog row of a full-item node, -1 elsewhere.

Per decoding step, for a batch of R rows with generated prefixes ``y_<t`` (lengths differ per row):
  1. walk the prefix: ``u <- edge_child[searchsorted(edge_key, u * V + y_s)]`` for s < t, vectorized over rows;
  2. allowed tokens of row r = ``edge_token[node_start[u_r] : node_start[u_r + 1]]`` (scatter into a
     ``[R, V]`` bool mask via ``repeat_interleave``, no Python loop over rows or items);
  3. ``logits[r, v] = -inf`` where not allowed.
A row whose prefix left the trie (cannot happen with this processor, but e.g. a resumed request) gets only
EOS allowed: an exception here would kill the whole server, so the client validates items instead.
Cost per step: O(R * t * log E + R * V); a 100k-item catalog is a few hundred thousand edges.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import types
from pathlib import Path

import dill
import torch


def build_trie_tables(item_tokens: torch.Tensor, vocab_size: int, eos_id: int) -> dict[str, torch.Tensor]:
    """CSR trie tables (see module docstring) from ``item_tokens [N, L]`` int64 (unique rows)."""
    items = torch.as_tensor(item_tokens, dtype=torch.long)
    if items.dim() != 2 or items.shape[0] == 0:
        raise ValueError(f"item_tokens must be a non-empty [N, L] tensor, got {tuple(items.shape)}")
    if int(items.min()) < 0 or int(items.max()) >= vocab_size:
        raise ValueError(f"item tokens must lie in [0, {vocab_size}), got [{int(items.min())}, {int(items.max())}]")
    if not 0 <= eos_id < vocab_size:
        raise ValueError(f"eos_id {eos_id} outside [0, {vocab_size})")
    if bool((items == eos_id).any()):
        raise ValueError(f"eos_id {eos_id} appears inside item tokens")
    n, length = items.shape
    if vocab_size > (2**62) // (n * (length + 1) + 2):
        raise ValueError(f"vocab_size {vocab_size} too large for int64 edge keys with {n} items")
    # Node id of each item's prefix of length d (d = 0..L), global over depths.
    node_of = [torch.zeros(n, dtype=torch.long)]
    next_id = 1
    for d in range(1, length + 1):
        uniq, inverse = torch.unique(items[:, :d], dim=0, return_inverse=True)
        node_of.append(inverse + next_id)
        next_id += uniq.shape[0]
    if node_of[-1].unique().numel() != n:
        raise ValueError("item_tokens contain duplicate rows: two items share one token sequence")
    num_nodes = next_id + 1  # + one terminal node reached by EOS
    parents = [node_of[d] for d in range(length)] + [node_of[length]]
    tokens = [items[:, d] for d in range(length)] + [torch.full((n,), eos_id, dtype=torch.long)]
    children = [node_of[d + 1] for d in range(length)] + [torch.full((n,), num_nodes - 1, dtype=torch.long)]
    key = torch.cat([p * vocab_size + t for p, t in zip(parents, tokens)])
    child = torch.cat(children)
    key, first = _unique_first(key)
    child = child[first]
    parent = key // vocab_size
    node_start = torch.searchsorted(parent, torch.arange(num_nodes + 1, dtype=torch.long))
    node_item = torch.full((num_nodes,), -1, dtype=torch.long)
    node_item[node_of[length]] = torch.arange(n)
    return {
        "node_item": node_item,
        "edge_key": key,
        "edge_token": key % vocab_size,
        "edge_child": child,
        "node_start": node_start,
        "vocab_size": torch.tensor(vocab_size),
        "eos_id": torch.tensor(eos_id),
        "item_len": torch.tensor(length),
    }


def _unique_first(key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted unique values of ``key`` and, for each, the index of one occurrence."""
    order = torch.argsort(key, stable=True)
    sorted_key = key[order]
    keep = torch.ones_like(sorted_key, dtype=torch.bool)
    keep[1:] = sorted_key[1:] != sorted_key[:-1]
    return sorted_key[keep], order[keep]


def save_trie_tables(tables: dict[str, torch.Tensor], directory: str | Path) -> Path:
    """Write the tables to ``directory/trie-<hash>.pt`` (content-addressed) and return the path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    for name in sorted(tables):
        digest.update(name.encode())
        digest.update(tables[name].numpy().tobytes())
    path = directory / f"trie-{digest.hexdigest()[:16]}.pt"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        torch.save(tables, tmp)
        tmp.replace(path)
    return path


class ItemTrieLogitProcessor:
    """Masks every token that does not continue a catalog item (then EOS) to -inf. Self-contained."""

    def __call__(self, logits, custom_param_list=None):
        import torch  # noqa: F811  (runs in the SGLang scheduler; no module globals)

        # Rows without params (a request sent without custom_params) stay unconstrained: raising here
        # would kill the server; the client validates every returned item instead.
        rows = [i for i, p in enumerate(custom_param_list or []) if p and "trie_path" in p]
        if not rows:
            return logits
        for path in {custom_param_list[i]["trie_path"] for i in rows}:
            sel = [i for i in rows if custom_param_list[i]["trie_path"] == path]
            tables = type(self)._tables_for(path)
            prefixes = [list(custom_param_list[i]["__req__"].output_ids) for i in sel]
            allowed = type(self)._allowed_mask(tables, prefixes, logits.shape[-1], logits.device)
            idx = torch.tensor(sel, dtype=torch.long, device=logits.device)
            logits[idx] = logits[idx].masked_fill(~allowed, float("-inf"))
        return logits

    @classmethod
    def _tables_for(cls, path):
        import torch

        cache = cls.__dict__.get("_table_cache")
        if cache is None:
            cache = {}
            setattr(cls, "_table_cache", cache)
        if path not in cache:
            cache[path] = torch.load(path, weights_only=True)
        return cache[path]

    @staticmethod
    def _allowed_mask(tables, prefixes, vocab, device):
        import torch

        rows = len(prefixes)
        v = int(tables["vocab_size"])
        max_t = max((len(p) for p in prefixes), default=0)
        lengths = torch.tensor([len(p) for p in prefixes], dtype=torch.long)
        width = max(max_t, 1)
        tokens = torch.tensor([list(p) + [0] * (width - len(p)) for p in prefixes], dtype=torch.long).reshape(rows, width)
        edge_key, edge_child = tables["edge_key"], tables["edge_child"]
        node = torch.zeros(rows, dtype=torch.long)
        on_trie = torch.ones(rows, dtype=torch.bool)
        for s in range(max_t):
            active = (lengths > s) & on_trie
            key = node * v + tokens[:, s]
            idx = torch.searchsorted(edge_key, key).clamp_(max=edge_key.numel() - 1)
            found = edge_key[idx] == key
            on_trie &= found | ~active
            node = torch.where(active & found, edge_child[idx], node)
        start = tables["node_start"][node]
        counts = tables["node_start"][node + 1] - start
        counts = torch.where(on_trie, counts, torch.zeros_like(counts))
        row_of = torch.repeat_interleave(torch.arange(rows), counts)
        offsets = torch.arange(row_of.numel()) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        allowed = torch.zeros(rows, vocab, dtype=torch.bool)
        allowed[row_of, tables["edge_token"][start[row_of] + offsets]] = True
        allowed[:, int(tables["eos_id"])] |= counts == 0  # off-trie (or terminal) rows may only stop
        return allowed.to(device)


def trie_processor_string() -> str:
    """The processor serialized *by value* (dill), as SGLang's ``custom_logit_processor`` field expects.

    dill pickles functions of an importable module by reference; the methods are re-created as
    ``__main__`` functions with empty globals so their code travels with the class.
    """

    def by_value(fn):
        clone = types.FunctionType(fn.__code__, {"__builtins__": builtins}, fn.__name__, fn.__defaults__)
        clone.__module__ = "__main__"
        clone.__qualname__ = fn.__name__
        return clone

    attrs = {
        "__module__": "__main__",
        "__call__": by_value(ItemTrieLogitProcessor.__call__),
        "_tables_for": classmethod(by_value(ItemTrieLogitProcessor.__dict__["_tables_for"].__func__)),
        "_allowed_mask": staticmethod(by_value(ItemTrieLogitProcessor.__dict__["_allowed_mask"].__func__)),
    }
    cls = type(ItemTrieLogitProcessor.__name__, (), attrs)
    return json.dumps({"callable": dill.dumps(cls, recurse=True).hex()})
