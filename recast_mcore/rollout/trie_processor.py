"""Trie-constrained decoding inside SGLang: a device-side, vectorized ``CustomLogitProcessor`` over fixed-length items.

SGLang ships the processor *class* to its scheduler process with dill and calls ``cls()(logits,
custom_param_list)`` (the contract of ``sglang.srt.sampling.custom_logit_processor.CustomLogitProcessor``;
duck-typed here so the trainer process never imports sglang). The class must be self-contained: ``torch`` and
the stdlib are imported inside the methods and no module global is referenced. ``trie_processor_string()``
serializes it by value (the server does not need recast_mcore installed). SGLang deserializes a processor
string once (``functools.lru_cache``), so state stored on the class lives as long as the server process.

Per request, three values: the catalog hash, the table file and ``prefix_len = t``. They travel IN the processor
string (``trie_processor_string(path, t)``: class attributes ``_baked = (hash, file, t)``; one string per catalog
and t, at most L + 1, each deserialized once by SGLang's unbounded ``lru_cache``), so a request needs nothing in
``sampling_params.custom_params``, which sglang-router 0.3.2 drops; it only needs SGLang to hand the processor
the request object (``custom_params["__req__"]``: SGLang adds it to a dict ``custom_params``; the engine sends
``{}``, and ``server_path/recast_sglang_shim.py`` makes a server treat a missing one as ``{}``). The classes of
one processor code share one owner (``_owner``: the first deserialized in the process) that holds the table
cache, so the L + 1 strings of a catalog load its tables once. The unbaked string (``trie_processor_string()``)
reads the same three values from ``custom_params = {"trie": <hash>, "trie_path": <file>, "prefix_len": t}``
(tools, tests); the masking is the same code either way. The tables are loaded once per server process and
catalog (the hash is the cache key; the file is read on the first request that names it), moved once to the
logits' device, and kept there. ``prefix_len = t`` says that the last ``t`` input tokens already belong to the
item (beam-search queries send ``prompt + beam prefix``); sampling sends 0. A row without ``__req__`` (a server
without the shim behind the router) cannot be read: it may only emit EOS, so the client rejects it.

Trie tables (``build_trie_tables`` from ``item_tokens [N, L]``, ``V`` = vocab size):
  - nodes: root = 0, then the distinct item prefixes of length 1..L numbered depth by depth
    (``depth_start [L + 2]``: the nodes of depth d are ``depth_start[d] : depth_start[d + 1]``), then one
    terminal node reached by EOS;
  - edges sorted by ``key = parent * V + token`` (``edge_key [E]``, ``edge_token [E]``, ``edge_child [E]``);
    a full-item node (depth L) has exactly one edge, EOS;
  - ``node_start [num_nodes + 1]``: the edges of node ``u`` are ``edge_*[node_start[u]:node_start[u+1]]``;
  - ``node_item [num_nodes]``: the catalog row of a full-item node, -1 elsewhere;
  - ``depth_max_children [L + 1]``: the largest child count of a node of depth d.
Derived on the server at load time (``_prepare``): ``wide_id [num_nodes]`` (1..D for the D nodes with more
than ``narrow`` children, 0 elsewhere), ``wide_bias [D + 1, V]`` float (0 where a wide node's children are, -inf
elsewhere; row 0 is all -inf), ``root_bias [V]`` and ``root_child [V]`` (the root's child node per token, -1
elsewhere); per depth d: ``window[d] = [lo_d, hi_d)``, the token range of its nodes' children (a level's code
range in a semantic-ID catalog), and ``window_full[d]`` (one node there, whose children fill the range: the root
when every level-0 code is used). A depth is *dense* when one of its nodes may have more than ``narrow``
children. ``narrow`` starts at 256 and doubles until ``wide_bias`` fits in 64 MiB (at most ``E / narrow`` wide
nodes exist).

One decoding step over a batch of R rows (row r's generated prefix ``y_r`` = its last ``prefix_len`` input
tokens + its output tokens, length ``t_r``; depth ``d_r = min(t_r, L + 1)``, L + 1 = off-trie, EOS only):
  1. host: one flat int64 buffer ``[t_1..t_R, y_1 .., y_R ..]`` read from SGLang's request objects with
     C-level iterators (``map``/``itemgetter``/``array.extend``; no Python bytecode per row), copied through
     a pinned staging buffer (CUDA) to the device in one non-blocking copy. Everything the host decides below
     (widths, dense rows, blocks) comes from these host lengths: no device sync.
  2. device walk: ``u <- root_child[y_0]``, then ``u <- edge_child[searchsorted(edge_key, u * V + y_s)]`` for
     1 <= s < max_r t_r, vectorized over rows (a row whose prefix leaves the trie, or is longer than L, may only
     emit EOS);
  3. slots: row r owns ``w_r`` positions: its children's tokens (padded by repeating the last one; EOS when it
     has none) as flat indices ``r * V' + token`` into the logits; ``w_r = depth_max_children[d_r]``, at a
     dense depth the largest child count of a *narrow* node there (wide nodes use their bias row instead).
     Ragged (``S = sum_r w_r``) when that is at most half of ``R * max_r w_r``, else padded to the max.
  4. mask, over row blocks (CPU: blocks of ``block_bytes`` = 12 MiB of logits, so a block stays in the
     last-level cache between its gather, fill and scatter; accelerators: one block):
       kept = logits.flat[slots]
       block without dense rows:  block.fill_(-inf)
       block with dense rows (a column window [lo, hi) covers the dense depths present):
           block[:, :lo] = -inf; block[:, hi:] = -inf
           block[:, lo:hi] += 0 / -inf per row (root rows only, their window full: a broadcast [B, 1] column)
                           or wide_bias[b_r, lo:hi] with b_r = wide_id[u_r] for a dense row, 0 (all -inf) else
       logits.flat[slots] = kept
     All rows at the root (a prefill batch): ``logits[:, :lo] = logits[:, hi:] = -inf`` when the root's window
     is full, else ``logits += root_bias`` (broadcast [V]).
     Allowed logits stay bit-identical (x + 0 == x); every other entry (padded vocabulary columns included)
     becomes -inf (a +inf or NaN logit inside a dense block's window becomes NaN: the model is broken then).
Cost per step: O(R * L * log E) walk + one pass over the [R, V'] logits + O(S) slots + O(B * (hi - lo)) bias
reads per block with dense rows. Python loops run over the L steps and the R / block row blocks only: none over
rows, items or edges; no pageable host-to-device copy.
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
        baked = type(self).__dict__.get("_baked")
        if baked is not None:  # a per-(catalog, prefix_len) string: every row of this call is ours
            key, path, prefix_len = baked
            return type(self)._owner()._apply(logits, params, key, path, [prefix_len] * len(params))
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
        return type(self)._owner()._apply(logits, params, next(iter(keys)), params[0]["trie_path"],
                                          list(map(itemgetter("prefix_len"), params)))

    @classmethod
    def _apply(cls, logits, params, key, path, pre_lens):
        """Mask ``logits`` of rows of one catalog (``pre_lens``: each row's ``prefix_len``)."""
        tables = cls._tables_for(key, path, logits.device)
        lengths, flat = cls._read_prefixes(params, pre_lens)
        staged = cls._stage(lengths, flat, logits.device)
        return cls._mask_logits(tables, logits, staged, lengths)

    @classmethod
    def _owner(cls):
        """The class that holds this process's caches for this processor code: the first one deserialized.

        Every string of one processor code (``_code``; one per catalog and prefix length) is its own class in
        the server; they all delegate to one owner, so a catalog's tables are loaded and kept once."""
        import sys
        import types

        shared = sys.modules.get("_recast_trie_processor_owners")
        if shared is None:
            shared = types.ModuleType("_recast_trie_processor_owners")
            shared.owners = {}
            sys.modules["_recast_trie_processor_owners"] = shared
        return shared.owners.setdefault(cls.__dict__.get("_code") or id(cls), cls)

    @classmethod
    def _apply_rows(cls, logits, params, rows):
        import torch

        if rows:
            idx = torch.tensor(rows, device=logits.device)
            logits[idx] = cls()(logits[idx], [params[i] for i in rows])
        return logits

    @staticmethod
    def _read_prefixes(params, pre_lens):
        """Row lengths and the flat prefix tokens (last ``pre_lens[r]`` inputs + outputs), C-level iteration only.

        A row without ``__req__`` (SGLang hands the request only to a dict ``custom_params``: a server without
        the shim behind sglang-router) gets an off-trie prefix, so it may only emit EOS and the client rejects
        the item (a misuse path: per-row Python is fine there).

        Overlap guard: SGLang allocates a request's KV slot for the token being decoded before it samples, so at
        sampling time ``kv.kv_allocated_len == len(origin_input_ids) + len(output_ids)``; one more means the
        output ids lag the sampler by a token (overlap scheduler without delayed sampling). Such a row gets an
        off-trie prefix, so it may only emit EOS and the client rejects the item: never a silently wrong mask.
        """
        from array import array
        from collections import deque
        from itertools import chain, repeat
        from operator import add, attrgetter, getitem, itemgetter, sub

        try:
            reqs = list(map(itemgetter("__req__"), params))
        except (KeyError, TypeError):
            from types import SimpleNamespace

            def unreadable(t):  # no such token: off-trie (or longer than an item), EOS only
                return SimpleNamespace(origin_input_ids=array("q", [1 << 40] * t), output_ids=array("q", [1 << 40]),
                                       kv=SimpleNamespace(kv_allocated_len=t + 1))

            reqs = [p["__req__"] if isinstance(p, dict) and "__req__" in p else unreadable(t)
                    for p, t in zip(params, pre_lens)]
        outs = list(map(attrgetter("output_ids"), reqs))
        out_lens = array("q", map(len, outs))
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
            cache[(key, str(device))] = tables
        return cache[(key, str(device))]

    @staticmethod
    def _prepare(tables, budget_bytes=64 * 2**20, narrow=256, block_bytes=12 * 2**20, ragged=0.5):
        """Host-side numbers, the root's child map and the bias rows of wide nodes (see module docstring)."""
        import torch

        v = int(tables["vocab_size"])
        node_start, tokens, depth_start = tables["node_start"], tables["edge_token"], tables["depth_start"]
        counts = node_start[1:] - node_start[:-1]
        while int((counts > narrow).sum() + 1) * v * 4 > budget_bytes:
            narrow *= 2
        wide_nodes = (counts > narrow).nonzero().squeeze(1)
        wide_id = torch.zeros(counts.numel(), dtype=torch.long)
        wide_id[wide_nodes] = torch.arange(1, wide_nodes.numel() + 1)
        bias = torch.full((wide_nodes.numel() + 1, v), float("-inf"))
        if wide_nodes.numel():
            start, cnt = node_start[wide_nodes], counts[wide_nodes]
            row = torch.repeat_interleave(torch.arange(1, wide_nodes.numel() + 1), cnt)
            first = torch.repeat_interleave(torch.cumsum(cnt, 0) - cnt, cnt)
            edge = torch.repeat_interleave(start, cnt) + torch.arange(row.numel()) - first
            bias[row, tokens[edge]] = 0.0
        root_edges = slice(0, int(node_start[1]))
        root_bias = torch.full((v,), float("-inf"))
        root_bias[tokens[root_edges]] = 0.0
        root_child = torch.full((v,), -1, dtype=torch.long)
        root_child[tokens[root_edges]] = tables["edge_child"][root_edges]
        depth_max = [int(x) for x in tables["depth_max_children"]] + [1]  # + "longer than an item": EOS only
        dense_depth = [m > narrow for m in depth_max]
        # slots per row: a depth's widest child set; at a dense depth, the widest *narrow* node's (wide ones use
        # their bias row), at least 1 (EOS for a row that left the trie)
        slot_width = list(depth_max)
        for d, dense in enumerate(dense_depth[:-1]):
            if dense:
                c = counts[int(depth_start[d]) : int(depth_start[d + 1])]
                slot_width[d] = max(1, int(c[c <= narrow].max()) if bool((c <= narrow).any()) else 1)
        window, window_full = [], []  # per depth: the token range of its nodes' children; filled by one node?
        for d in range(len(depth_max) - 1):
            kids = tokens[int(node_start[depth_start[d]]) : int(node_start[depth_start[d + 1]])]
            window.append((int(kids.min()), int(kids.max()) + 1))
            window_full.append(int(depth_start[d + 1] - depth_start[d]) == 1 and kids.numel() == window[d][1] - window[d][0])
        out = {k: tables[k] for k in ("edge_key", "edge_token", "edge_child", "node_start")}
        out.update(wide_id=wide_id, wide_bias=bias, root_bias=root_bias, root_child=root_child, narrow=narrow, vocab=v,
                   eos=int(tables["eos_id"]), item_len=int(tables["item_len"]), depth_max=depth_max,
                   dense_depth=dense_depth, dense_depth_t=torch.tensor(dense_depth), slot_width=slot_width,
                   slot_width_t=torch.tensor(slot_width), window=window, window_full=window_full,
                   block_bytes=int(block_bytes), ragged=float(ragged))
        return out

    @classmethod
    def _mask_logits(cls, tables, logits, staged, lengths):
        """The walk + gather + masked fill of one step (in place on ``logits [R, V']``, V' >= V)."""
        import torch

        rows, length, v = len(lengths), tables["item_len"], tables["vocab"]
        dev, ninf = logits.device, float("-inf")
        if max(lengths) == 0:  # every row at the root (a prefill batch)
            if tables["window_full"][0]:  # the root's children are one token range: -inf outside it, nothing inside
                lo, hi = tables["window"][0]
                logits[:, :lo] = ninf
                logits[:, hi:] = ninf  # padded vocabulary columns included
                return logits
            if logits.shape[1] > v:  # padded vocabulary columns are never allowed
                logits[:, v:] = ninf
            logits[:, :v] += tables["root_bias"]  # one broadcast add
            return logits
        work = logits if logits.is_contiguous() else logits.contiguous()
        lens, flat = staged[:rows], staged[rows:]
        depth = lens.clamp(max=length + 1)  # L + 1 stands for "longer than an item" (off-trie: EOS only)
        # Host plan from the host lengths (no device sync): dense rows, slots per row, row blocks.
        host_depth = torch.frombuffer(lengths, dtype=torch.long).clamp(max=length + 1)
        dense_host = torch.tensor(tables["dense_depth"])[host_depth]
        num_dense = int(dense_host.sum())
        node, on_trie = cls._walk(tables, lens, flat, min(max(lengths), length))
        start = tables["node_start"][node]
        count = torch.where(on_trie, tables["node_start"][node + 1] - start, 0)
        # a wide node's children come from its bias row: its slots all repeat its first child (one cache line)
        count = torch.where(tables["wide_id"][node] > 0, count.clamp(max=1), count)
        # Slots: row r owns slot_width[depth_r] positions (its children, padded by repeating the last one; EOS
        # when it has none). Ragged over the batch when that needs at most ``ragged`` (1/2) of the padded R x max width.
        row_width = torch.tensor(tables["slot_width"])[host_depth]
        wmax, last_edge = int(row_width.max()), tables["edge_key"].numel() - 1
        if int(row_width.sum()) <= tables["ragged"] * rows * wmax:  # e.g. a mixed-depth batch
            slot_ends = torch.cumsum(row_width, 0).tolist()
            width = tables["slot_width_t"][depth]
            slot_row = torch.repeat_interleave(torch.arange(rows, device=dev), width, output_size=slot_ends[-1])
            slot_j = torch.arange(slot_ends[-1], device=dev) - (torch.cumsum(width, 0) - width).index_select(0, slot_row)
            n = count.index_select(0, slot_row)
            pick = (start.index_select(0, slot_row) + torch.minimum(slot_j, (n - 1).clamp(min=0))).clamp_(max=last_edge)
            pos = slot_row * work.shape[1] + torch.where(n > 0, tables["edge_token"].index_select(0, pick), tables["eos"])
        else:  # [R, wmax] padded, built by broadcasting
            slot_ends = list(range(wmax, (rows + 1) * wmax, wmax))
            n = count[:, None]
            pick = (start[:, None] + torch.minimum(torch.arange(wmax, device=dev), (n - 1).clamp(min=0))).clamp_(max=last_edge)
            kid = tables["edge_token"].index_select(0, pick.view(-1)).view(rows, wmax)
            pos = (torch.arange(rows, device=dev)[:, None] * work.shape[1] + torch.where(n > 0, kid, tables["eos"])).view(-1)
        if num_dense:  # dense rows: -inf outside the window [lo, hi), + a bias row inside it
            dense_t = tables["dense_depth_t"][depth]
            kinds = [d for d in range(length + 1) if tables["dense_depth"][d] and bool((host_depth == d).any())]
            lo, hi = min(tables["window"][d][0] for d in kinds), max(tables["window"][d][1] for d in kinds)
            dense_ends = torch.cumsum(dense_host, 0).tolist()
            if all(tables["window_full"][d] for d in kinds):  # root rows only: a 0 / -inf column, broadcast
                keep = torch.where(dense_t, 0.0, ninf).to(work.dtype)[:, None]
            else:  # row of wide_bias per row: a wide node's (0 at its children), else row 0 (all -inf)
                keep = None
                bias_row = torch.where(dense_t & on_trie, tables["wide_id"][node], 0)
        # Row blocks sized to stay in the last-level cache on CPU (each block comes from memory once for the
        # gather, the fill and the scatter); one block on an accelerator. R / block iterations, no per-row Python.
        block = rows if dev.type != "cpu" else max(1, tables["block_bytes"] // (4 * work.shape[1]))
        flat_view = work.view(-1)
        for s in range(0, rows, block):
            e = min(rows, s + block)
            part, slots = work[s:e], pos[(slot_ends[s - 1] if s else 0) : slot_ends[e - 1]]
            kept = flat_view.index_select(0, slots)
            if num_dense and dense_ends[e - 1] > (dense_ends[s - 1] if s else 0):  # the block has dense rows
                part[:, :lo].fill_(ninf)
                part[:, hi:].fill_(ninf)  # padded vocabulary columns included
                if keep is not None:
                    part[:, lo:hi] += keep[s:e]
                else:  # into a grow-only scratch per device (a fresh 4 MB tensor per block costs page faults); the
                    # dict travels by reference when _tables_for copies CPU tables to another device
                    scratch = tables.setdefault("scratch", {})
                    if dev not in scratch or scratch[dev].numel() < block * (hi - lo):
                        scratch[dev] = torch.empty(block * (hi - lo), device=dev)
                    bias = scratch[dev][: (e - s) * (hi - lo)].view(e - s, hi - lo)
                    part[:, lo:hi] += torch.index_select(tables["wide_bias"][:, lo:hi], 0, bias_row[s:e], out=bias)
            else:
                part.fill_(ninf)
            flat_view.index_copy_(0, slots, kept)  # children of narrow nodes (and EOS) back in every row
        if work is not logits:
            logits.copy_(work)
        return logits

    @staticmethod
    def _walk(tables, lens, flat, steps):
        """``(node [R], on_trie [R])`` of each row's prefix: step 0 through the root's child map, then a
        ``searchsorted`` over the edge keys per step (``steps`` = the longest prefix, at most L)."""
        import torch

        rows, length, v = lens.numel(), tables["item_len"], tables["vocab"]
        dev = lens.device
        # [R, L + 1] prefix tokens; column L collects tokens past the item length (those rows are off-trie).
        tokens = torch.zeros(rows, length + 1, dtype=torch.long, device=dev)
        if flat.numel():
            row = torch.repeat_interleave(torch.arange(rows, device=dev), lens, output_size=flat.numel())
            pos = torch.arange(flat.numel(), device=dev) - (torch.cumsum(lens, 0) - lens)[row]
            tokens.index_put_((row, pos.clamp(max=length)), flat)
        edge_key, edge_child = tables["edge_key"], tables["edge_child"]
        on_trie = lens <= length
        first = tables["root_child"][tokens[:, 0].clamp(max=v - 1)]
        found = (first >= 0) & (tokens[:, 0] < v)
        on_trie &= found | (lens == 0)
        node = torch.where((lens > 0) & found, first, 0)
        for s in range(1, steps):
            active = lens > s
            key = node * v + tokens[:, s]
            idx = torch.searchsorted(edge_key, key).clamp_(max=edge_key.numel() - 1)
            found = edge_key[idx] == key
            on_trie &= found | ~active
            node = torch.where(active & found, edge_child[idx], node)
        return node, on_trie


def trie_processor_string(path: str | Path | None = None, prefix_len: int = 0) -> str:
    """The processor serialized *by value* (dill), as SGLang's ``custom_logit_processor`` field expects.

    With ``path`` (a ``save_trie_tables`` file): the string of that catalog and ``prefix_len``, which carries
    the request's values itself (``_baked``; see module docstring), so the request needs no ``custom_params``
    content. Without: the values come from each row's ``custom_params`` (``trie_params``).
    dill pickles functions of an importable module by reference; the methods are re-created as
    ``__main__`` functions with empty globals so their code travels with the class.
    """
    attrs = dict(_by_value_attrs())
    if path is not None:
        params = trie_params(path, prefix_len)
        attrs.update(_baked=(params["trie"], params["trie_path"], params["prefix_len"]), _code=_code_hash())
    cls = type(ItemTrieLogitProcessor.__name__, (), attrs)
    return json.dumps({"callable": dill.dumps(cls, recurse=True).hex()})


def _by_value_attrs() -> dict:
    """The processor's methods as ``__main__`` functions with empty globals (their code travels by value)."""

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
    return attrs


def _code_hash() -> str:
    """Identity of the processor's code (its source): the classes of one code share one owner on a server."""
    import inspect

    return hashlib.sha256(inspect.getsource(ItemTrieLogitProcessor).encode()).hexdigest()[:16]
