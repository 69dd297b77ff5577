"""Trie-constrained decoding inside SGLang: a device-side, vectorized ``CustomLogitProcessor`` over fixed-length items.

SGLang ships the processor *class* to its scheduler process with dill and calls ``cls()(logits,
custom_param_list)`` (the contract of ``sglang.srt.sampling.custom_logit_processor.CustomLogitProcessor``;
duck-typed here so the trainer process never imports sglang). The class must be self-contained: ``torch`` and
the stdlib are imported inside the methods and no module global is referenced. ``trie_processor_string()``
serializes it by value (the server does not need recast_mcore installed). SGLang deserializes a processor
string once (``functools.lru_cache``), so state stored on the class lives as long as the server process.

Per request, ``custom_params = {"trie": <catalog hash>, "trie_path": <file>, "prefix_len": t}``. The tables are
loaded once per server process and catalog (the hash is the cache key; the file is read on the first request
that names it), moved once to the logits' device, and kept there. ``prefix_len = t`` says that the last ``t``
input tokens already belong to the item (beam-search queries send ``prompt + beam prefix``); sampling sends 0.

Trie tables (``build_trie_tables`` from ``item_tokens [N, L]``, ``V`` = vocab size):
  - nodes: root = 0, then the distinct item prefixes of length 1..L numbered depth by depth
    (``depth_start [L + 2]``: the nodes of depth d are ``depth_start[d] : depth_start[d + 1]``), then one
    terminal node reached by EOS;
  - edges sorted by ``key = parent * V + token`` (``edge_key [E]``, ``edge_token [E]``, ``edge_child [E]``);
    a full-item node (depth L) has exactly one edge, EOS;
  - ``node_start [num_nodes + 1]``: the edges of node ``u`` are ``edge_*[node_start[u]:node_start[u+1]]``;
  - ``node_item [num_nodes]``: the catalog row of a full-item node, -1 elsewhere;
  - ``depth_max_children [L + 1]``: the largest child count of a node of depth d.
Derived on the server at load time: ``wide_id [num_nodes]`` (1..D for the D nodes with more than ``narrow``
children, 0 elsewhere) and ``wide_bias [D + 1, V]`` float (0 where a wide node's children are, -inf
elsewhere; row 0 is all -inf), ``root_bias [V]`` (the same row for the root). ``narrow`` starts at 256 and
doubles until ``wide_bias`` fits in 64 MiB (at most ``E / narrow`` wide nodes exist).

One decoding step over a batch of R rows (row r's generated prefix ``y_r`` = its last ``prefix_len`` input
tokens + its output tokens, length ``t_r <= L``):
  1. host: one flat int64 buffer ``[t_1..t_R, y_1 .., y_R ..]`` read from SGLang's request objects with
     C-level iterators (``map``/``itemgetter``/``array.extend``; no Python bytecode per row), copied through
     a pinned staging buffer (CUDA) to the device in one non-blocking copy;
  2. device walk: ``u <- edge_child[searchsorted(edge_key, u * V + y_s)]`` for s < L, vectorized over rows
     (a row whose prefix leaves the trie, or is longer than L, may only emit EOS);
  3. mask: with W = the largest child count any row of the batch can have (known on the host from the
     rows' depths and ``depth_max_children``, so no device sync):
       W <= narrow:  idx [R, W] = each row's children (padded by repeating one), v = logits.gather(idx),
                     logits.fill_(-inf), logits.scatter_(idx, v)
       otherwise:    bias = wide_bias[wide_id[u]] ([R, V]); bias.scatter_(idx[:, :narrow], 0); logits += bias
       all rows at the root (a prefill batch, the common depth-0 case): logits += root_bias (broadcast [V])
     All leave allowed logits bit-identical (x + 0 == x) and set every other entry to -inf.
Cost per step: O(R * L * log E) walk + O(R * V) for the one pass over the logits + O(R * min(W, narrow)).
No Python loop over rows, items or edges; no pageable host-to-device copy.
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
    # Node id of each item's prefix of length d (d = 0..L), depth by depth.
    node_of = [torch.zeros(n, dtype=torch.long)]
    depth_start = [0, 1]
    for d in range(1, length + 1):
        key = node_of[d - 1] * vocab_size + items[:, d - 1]  # parent ids are unique per depth: (parent, token)
        uniq, inverse = torch.unique(key, return_inverse=True)
        node_of.append(inverse + depth_start[-1])
        depth_start.append(depth_start[-1] + uniq.shape[0])
    if depth_start[-1] - depth_start[-2] != n:
        raise ValueError("item_tokens contain duplicate rows: two items share one token sequence")
    num_nodes = depth_start[-1] + 1  # + one terminal node reached by EOS
    parents = node_of[: length + 1]
    tokens = [items[:, d] for d in range(length)] + [torch.full((n,), eos_id, dtype=torch.long)]
    children = node_of[1:] + [torch.full((n,), num_nodes - 1, dtype=torch.long)]
    key = torch.cat([p * vocab_size + t for p, t in zip(parents, tokens)])
    child = torch.cat(children)
    key, first = _unique_first(key)
    child = child[first]
    parent = key // vocab_size
    node_start = torch.searchsorted(parent, torch.arange(num_nodes + 1, dtype=torch.long))
    node_item = torch.full((num_nodes,), -1, dtype=torch.long)
    node_item[node_of[length]] = torch.arange(n)
    counts = node_start[1:] - node_start[:-1]
    depth_max = [int(counts[depth_start[d] : depth_start[d + 1]].max()) for d in range(length + 1)]
    return {
        "node_item": node_item,
        "edge_key": key,
        "edge_token": key % vocab_size,
        "edge_child": child,
        "node_start": node_start,
        "depth_start": torch.tensor(depth_start + [num_nodes], dtype=torch.long),
        "depth_max_children": torch.tensor(depth_max, dtype=torch.long),
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


def trie_hash(tables: dict[str, torch.Tensor]) -> str:
    """16 hex digits of the sha256 of every table (the catalog's identity for the server-side cache)."""
    digest = hashlib.sha256()
    for name in sorted(tables):
        digest.update(name.encode())
        digest.update(tables[name].contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def save_trie_tables(tables: dict[str, torch.Tensor], directory: str | Path) -> Path:
    """Write the tables to ``directory/trie-<hash>.pt`` (content-addressed, written once) and return the path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"trie-{trie_hash(tables)}.pt"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        torch.save(tables, tmp)
        tmp.replace(path)
    return path


def trie_params(path: str | Path, prefix_len: int = 0) -> dict:
    """The ``custom_params`` of one request: catalog hash (cache key), table file, beam-prefix length."""
    name = Path(path).name
    if not (name.startswith("trie-") and name.endswith(".pt")):
        raise ValueError(f"{path} is not a file written by save_trie_tables (trie-<hash>.pt)")
    return {"trie": name[5:-3], "trie_path": str(path), "prefix_len": int(prefix_len)}


class ItemTrieLogitProcessor:
    """Masks every token that does not continue a catalog item (then EOS) to -inf. Self-contained."""

    def __call__(self, logits, custom_param_list=None):
        from operator import itemgetter

        params = custom_param_list or []
        if not params:
            return logits
        try:  # normally every row carries our params: C-level scan
            keys = set(map(itemgetter("trie"), params))
        except (KeyError, TypeError):
            # Rows sent without our params stay unconstrained (raising here would kill the server; the
            # client validates every returned item). A misuse path: per-row selection is fine here.
            rows = [i for i, p in enumerate(params) if isinstance(p, dict) and "trie" in p]
            return type(self)._apply_rows(logits, params, rows)
        if len(keys) > 1:  # several catalogs in one batch: one pass per catalog
            for key in keys:
                type(self)._apply_rows(logits, params, [i for i, p in enumerate(params) if p["trie"] == key])
            return logits
        tables = type(self)._tables_for(next(iter(keys)), params[0]["trie_path"], logits.device)
        lengths, flat = type(self)._read_prefixes(params)
        staged = type(self)._stage(lengths, flat, logits.device)
        return type(self)._mask_logits(tables, logits, staged, lengths)

    @classmethod
    def _apply_rows(cls, logits, params, rows):
        import torch

        if rows:
            idx = torch.tensor(rows, device=logits.device)
            logits[idx] = cls()(logits[idx], [params[i] for i in rows])
        return logits

    @staticmethod
    def _read_prefixes(params):
        """Row lengths and the flat prefix tokens (last ``prefix_len`` inputs + outputs), C-level iteration only.

        Overlap guard: SGLang allocates a request's KV slot for the token being decoded before it samples, so at
        sampling time ``kv.kv_allocated_len == len(origin_input_ids) + len(output_ids)``; one more means the
        output ids lag the sampler by a token (overlap scheduler without delayed sampling). Such a row gets an
        off-trie prefix, so it may only emit EOS and the client rejects the item: never a silently wrong mask.
        """
        from array import array
        from collections import deque
        from itertools import chain, repeat
        from operator import add, attrgetter, getitem, itemgetter, sub

        reqs = list(map(itemgetter("__req__"), params))
        outs = list(map(attrgetter("output_ids"), reqs))
        out_lens = array("q", map(len, outs))
        pre_lens = list(map(itemgetter("prefix_len"), params))
        if any(pre_lens):
            origins = list(map(attrgetter("origin_input_ids"), reqs))
            cuts = map(slice, map(sub, map(len, origins), pre_lens), repeat(None))
            pres = list(map(getitem, origins, cuts))
            lengths = array("q", map(add, out_lens, pre_lens))
        else:
            pres = list(repeat((), len(params)))
            lengths = array("q", out_lens)
        if hasattr(reqs[0], "kv"):  # SGLang's Req (0.5.23); tests may pass plain objects
            allocated = array("q", map(attrgetter("kv.kv_allocated_len"), reqs))
            known = array("q", map(add, map(len, map(attrgetter("origin_input_ids"), reqs)), out_lens))
            if any(map(int.__gt__, allocated, known)):  # rare (misconfigured server): per-row fix-up is fine
                for r in [i for i, (a, k) in enumerate(zip(allocated, known)) if a > k]:
                    outs[r] = array("q", [1 << 40])  # no such token: off-trie, EOS only
                    lengths[r] = len(pres[r]) + 1
        flat = array("q")
        deque(map(flat.extend, chain.from_iterable(zip(pres, outs))), maxlen=0)  # C-level consumption
        return lengths, flat

    @classmethod
    def _stage(cls, lengths, flat, device):
        """``[lengths | flat]`` as one int64 tensor on ``device`` (pinned staging buffer + non-blocking copy on CUDA)."""
        import torch

        host = torch.empty(len(lengths) + len(flat), dtype=torch.long)
        host[: len(lengths)] = torch.frombuffer(lengths, dtype=torch.long)
        if len(flat):
            host[len(lengths) :] = torch.frombuffer(flat, dtype=torch.long)
        if device.type != "cuda":
            return host.to(device)
        stages = cls.__dict__.get("_stages")
        if stages is None:
            stages = {}
            setattr(cls, "_stages", stages)
        buf, event = stages.get(device, (None, None))
        if event is not None:
            event.synchronize()  # the previous step's copy has left the buffer
        if buf is None or buf.numel() < host.numel():
            buf = torch.empty(max(2 * host.numel(), 4096), dtype=torch.long, pin_memory=True)
        buf[: host.numel()].copy_(host)
        out = buf[: host.numel()].to(device, non_blocking=True)
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(device))
        stages[device] = (buf, event)
        return out

    @classmethod
    def _tables_for(cls, key, path, device):
        """Tables of catalog ``key`` on ``device``: read once from ``path``, derived tables built once."""
        import torch

        cache = cls.__dict__.get("_table_cache")
        if cache is None:
            cache = {}
            setattr(cls, "_table_cache", cache)
        if (key, str(device)) not in cache:  # first request naming this catalog on this device
            host = cache.get((key, "cpu")) or cls._prepare(torch.load(path, weights_only=True))
            tables = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in host.items()}
            tables["bias_buffer"] = cls._buffer_fn(tables["vocab"], device)
            cache[(key, str(device))] = tables
        return cache[(key, str(device))]

    @staticmethod
    def _buffer_fn(vocab, device):
        """``rows -> [rows, vocab]`` float view of one grow-only scratch buffer on ``device``."""
        import torch

        store = {}

        def view(rows):
            if store.get("buf") is None or store["buf"].numel() < rows * vocab:
                store["buf"] = torch.empty(rows * vocab, device=device)
            return store["buf"][: rows * vocab].view(rows, vocab)

        return view

    @staticmethod
    def _prepare(tables, budget_bytes=64 * 2**20, narrow=256):
        """Host-side numbers and the dense rows of wide nodes (see module docstring)."""
        import torch

        v = int(tables["vocab_size"])
        counts = tables["node_start"][1:] - tables["node_start"][:-1]
        while int((counts > narrow).sum() + 1) * v * 4 > budget_bytes:
            narrow *= 2
        wide = counts > narrow
        wide_nodes = wide.nonzero().squeeze(1)
        wide_id = torch.zeros(counts.numel(), dtype=torch.long)
        wide_id[wide_nodes] = torch.arange(1, wide_nodes.numel() + 1)
        bias = torch.full((wide_nodes.numel() + 1, v), float("-inf"))
        if wide_nodes.numel():
            start, cnt = tables["node_start"][wide_nodes], counts[wide_nodes]
            row = torch.repeat_interleave(torch.arange(1, wide_nodes.numel() + 1), cnt)
            first = torch.repeat_interleave(torch.cumsum(cnt, 0) - cnt, cnt)
            edge = torch.repeat_interleave(start, cnt) + torch.arange(row.numel()) - first
            bias[row, tables["edge_token"][edge]] = 0.0
        root_bias = torch.full((v,), float("-inf"))
        root_bias[tables["edge_token"][: int(tables["node_start"][1])]] = 0.0
        out = {k: tables[k] for k in ("edge_key", "edge_token", "edge_child", "node_start")}
        out.update(wide_id=wide_id, wide_bias=bias, root_bias=root_bias, narrow=narrow, vocab=v, eos=int(tables["eos_id"]),
                   item_len=int(tables["item_len"]), depth_max=[int(x) for x in tables["depth_max_children"]])
        return out

    @staticmethod
    def _mask_logits(tables, logits, staged, lengths):
        """The walk + gather + masked fill of one step (in place on ``logits [R, V']``, V' >= V)."""
        import torch

        rows, length, v = len(lengths), tables["item_len"], tables["vocab"]
        dev = logits.device
        if logits.shape[1] > v:  # padded vocabulary columns are never allowed
            logits[:, v:] = float("-inf")
        lo, hi = min(lengths), max(lengths)
        if hi == 0:  # every row at the root (a prefill batch): one broadcast add
            logits[:, :v] += tables["root_bias"]
            return logits
        lens, flat = staged[:rows], staged[rows:]
        # [R, L + 1] prefix tokens; column L collects tokens past the item length (those rows are off-trie).
        tokens = torch.zeros(rows, length + 1, dtype=torch.long, device=dev)
        if flat.numel():
            row = torch.repeat_interleave(torch.arange(rows, device=dev), lens, output_size=flat.numel())
            pos = torch.arange(flat.numel(), device=dev) - (torch.cumsum(lens, 0) - lens)[row]
            tokens.index_put_((row, pos.clamp(max=length)), flat)
        edge_key, edge_child = tables["edge_key"], tables["edge_child"]
        node = torch.zeros(rows, dtype=torch.long, device=dev)
        on_trie = lens <= length
        for s in range(length):
            active = lens > s
            key = node * v + tokens[:, s]
            idx = torch.searchsorted(edge_key, key).clamp_(max=edge_key.numel() - 1)
            found = edge_key[idx] == key
            on_trie &= found | ~active
            node = torch.where(active & found, edge_child[idx], node)
        start = tables["node_start"][node]
        count = torch.where(on_trie, tables["node_start"][node + 1] - start, 0)
        # Widest child set any row can have, from the rows' depths (host values: no device sync).
        width = max(tables["depth_max"][d] if d <= length else 1 for d in range(lo, hi + 1))
        narrow = min(width, tables["narrow"])
        j = torch.arange(narrow, device=dev)
        pick = (start[:, None] + torch.minimum(j, (count - 1).clamp(min=0)[:, None])).clamp_(max=edge_key.numel() - 1)
        idx = torch.where(count[:, None] > 0, tables["edge_token"][pick], tables["eos"])  # no child: EOS only
        if width <= tables["narrow"]:
            kept = logits.gather(1, idx)
            logits.fill_(float("-inf"))
            logits.scatter_(1, idx, kept)
            return logits
        wide = torch.where(on_trie, tables["wide_id"][node], 0)
        # reused scratch (server tables): no [R, V] allocation per step (on CPU that is fresh zeroed pages each time)
        bias = tables["bias_buffer"](rows) if "bias_buffer" in tables else torch.empty(rows, v, device=dev)
        torch.index_select(tables["wide_bias"], 0, wide, out=bias)
        bias.scatter_(1, idx, 0.0)
        logits[:, :v] += bias
        return logits


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

    attrs = {"__module__": "__main__"}
    for name, member in ItemTrieLogitProcessor.__dict__.items():
        if isinstance(member, (staticmethod, classmethod)):
            attrs[name] = type(member)(by_value(member.__func__))
        elif isinstance(member, types.FunctionType):
            attrs[name] = by_value(member)
    cls = type(ItemTrieLogitProcessor.__name__, (), attrs)
    return json.dumps({"callable": dill.dumps(cls, recurse=True).hex()})
