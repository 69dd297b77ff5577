"""How a micro-batch's sequences are laid out for the model (the ONE place; pure torch + PackedSeqParams).

A sequence i is ``prompt_i (p_i tokens) + response_i (T tokens)``, real length ``n_i = p_i + T``. Its
response token t is predicted by the logits at the sequence's own position ``p_i + t - 1``. Three layouts
(``ParallelConfig.sequence_packing``):

``off`` (right padding): one row per sequence, every row padded to the step's S = max_i n_i (rounded up
    to ``seq_multiple``); attention is an explicit causal mask ``[1, 1, S, S]``. Padding slots per
    micro-batch: ``b*S - sum_i n_i``.
``rows`` (dense packing, Megatron-local spec): sequences are bin-packed first-fit-decreasing into rows of
    S slots; a row holds several sequences back to back, and the mask ``[b, 1, S, S]`` is block-diagonal
    causal (a token sees only earlier tokens of its own sequence; the trailing pad of a row is its own
    block, so no softmax row is empty). The attention cost per row stays S^2 (as in ``off``); fewer rows.
``thd`` (Transformer Engine): all sequences of the micro-batch concatenated into ONE row of
    ``T_pack = sum_i n_i`` slots, rounded up to ``thd_multiple`` by one trailing pad segment; Megatron's
    ``PackedSeqParams(qkv_format="thd", cu_seqlens=[0, n_0, n_0+n_1, ...])`` makes TE's fused attention
    and fused RoPE work per sequence. No sequence is padded on its own: without context parallelism only
    the GEMM height matters, i.e. the total (per TP rank with sequence parallelism), so
    ``thd_multiple = (TP if sequence_parallel else 1) * (16 if FP8 else 1)`` (TE's FP8 GEMMs want the
    token dimension divisible by 8/16; mxfp8 32, blockwise 128). Without TE (CPU tests) the same layout
    runs with the equivalent dense block-diagonal mask ``[1, 1, T_pack, T_pack]``.

Positions: ``position_ids`` restart at 0 for every sequence. Megatron's GPTModel does not read them for
RoPE (megatron/core/models/gpt/gpt_model.py computes rotary angles for slots 0..L-1 of the row, or per
sequence from cu_seqlens in ``thd``); in ``rows`` a sequence at slot offset o gets rotary positions
o..o+n-1, and since RoPE attention scores depend only on the position difference inside a sequence the
result equals the padded layout up to float rounding (tests/test_actor_packing.py measures it).

With pipeline parallelism every micro-batch must have the same shape (fixed p2p buffers):
``pack_micro_batches(..., equal_shapes=True)`` pads ``rows`` with all-pad rows and ``thd`` with a longer
trailing pad segment.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import Literal

import torch
from megatron.core.packed_seq_params import PackedSeqParams

PackingMode = Literal["off", "rows", "thd"]


@dataclass
class PackedRows:
    """A micro-batch's model inputs in one of the three layouts (module doc)."""

    tokens: torch.Tensor
    """[b, L] int64 token slots (pad_id in padding)."""
    position_ids: torch.Tensor
    """[b, L] int64 position of each slot inside its own sequence."""
    response_rows: torch.Tensor
    """[n] int64 row that holds sequence i."""
    response_positions: torch.Tensor
    """[n, T] int64 slot (column of that row) of the logits that predict response token t."""
    responses: torch.Tensor
    """[n, T] int64 the response tokens."""
    segments: torch.Tensor | None = None
    """[b, L] int64 sequence id of each slot (-1 = padding); None = one sequence per row (causal mask)."""
    cu_seqlens: torch.Tensor | None = None
    """``thd`` only: [k+1] int32 segment boundaries of the single row (the trailing pad is a segment)."""
    max_seqlen: int = 0
    """``thd`` only: the longest segment."""
    use_cu_seqlens: bool = False
    """Feed ``cu_seqlens`` to Transformer Engine (True) or emulate them with a dense block mask (False)."""

    lengths: torch.Tensor | None = None
    """[n] int64 real length n_i = p_i + T of every sequence."""

    @property
    def real_tokens(self) -> int:
        """sum_i n_i: slots that hold a real token."""
        return int(self.lengths.sum())


def sequence_lengths(prompt_ids: list[list[int]], response_len: int) -> torch.Tensor:
    """[n] int64 real lengths n_i = p_i + T."""
    return torch.tensor([len(p) for p in prompt_ids], dtype=torch.long) + response_len


def _scatter_sequences(prompt_ids: list[list[int]], responses: torch.Tensor, starts: torch.Tensor, flat: torch.Tensor) -> None:
    """Write sequence i (prompt then response) into ``flat`` from slot ``starts[i]`` (vectorized)."""
    p_len = torch.tensor([len(p) for p in prompt_ids], dtype=torch.long)
    prompt_flat = torch.tensor(list(itertools.chain.from_iterable(prompt_ids)), dtype=torch.long)
    first = torch.cumsum(p_len, 0) - p_len
    within = torch.arange(prompt_flat.numel()) - torch.repeat_interleave(first, p_len)
    flat[torch.repeat_interleave(starts, p_len) + within] = prompt_flat
    t = responses.shape[1]
    flat[((starts + p_len)[:, None] + torch.arange(t)[None, :]).reshape(-1)] = responses.reshape(-1).long()


def _check(prompt_ids: list[list[int]], responses: torch.Tensor) -> None:
    if len(prompt_ids) != responses.shape[0]:
        raise ValueError(f"packing: {len(prompt_ids)} prompts for {responses.shape[0]} responses")
    if any(len(p) < 1 for p in prompt_ids):
        raise ValueError("every prompt needs at least one token (<bos>)")


def pack_rows(prompt_ids: list[list[int]], responses: torch.Tensor, seq_len: int, pad_id: int) -> PackedRows:
    """``off``: right-padded [b, S] rows, one per sequence."""
    _check(prompt_ids, responses)
    b, t = responses.shape
    lengths = sequence_lengths(prompt_ids, t)
    for i in torch.nonzero(lengths > seq_len).flatten().tolist():
        raise ValueError(f"row {i}: prompt {len(prompt_ids[i])} + response {t} tokens > sequence length {seq_len}")
    flat = torch.full((b * seq_len,), pad_id, dtype=torch.long)
    _scatter_sequences(prompt_ids, responses, torch.arange(b) * seq_len, flat)
    p_len = lengths - t
    return PackedRows(
        tokens=flat.view(b, seq_len),
        position_ids=torch.arange(seq_len).expand(b, seq_len).contiguous(),
        response_rows=torch.arange(b),
        response_positions=p_len[:, None] - 1 + torch.arange(t)[None, :],
        responses=responses.long(),
        lengths=lengths,
    )


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Bins (lists of item indices) of total length <= capacity; longest items placed first."""
    bins: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
        if lengths[i] > capacity:
            raise ValueError(f"sequence {i} of {lengths[i]} tokens does not fit a row of {capacity}")
        k = next((k for k, f in enumerate(free) if f >= lengths[i]), len(bins))
        if k == len(bins):
            bins.append([])
            free.append(capacity)
        bins[k].append(i)
        free[k] -= lengths[i]
    return bins


def _layout_starts(order: list[int], lengths: torch.Tensor, row_of: torch.Tensor, row_len: int) -> torch.Tensor:
    """Flat start slot of every sequence: rows of ``row_len`` filled in ``order``."""
    starts = torch.empty(len(order), dtype=torch.long)
    fill: dict[int, int] = {}
    for i in order:
        r = int(row_of[i])
        starts[i] = r * row_len + fill.get(r, 0)
        fill[r] = fill.get(r, 0) + int(lengths[i])
    return starts


def _segment_tensors(starts: torch.Tensor, lengths: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(segments, positions) over ``total`` flat slots: sequence id / position within it; pads -1 / 0."""
    seg = torch.full((total,), -1, dtype=torch.long)
    pos = torch.zeros(total, dtype=torch.long)
    idx = torch.repeat_interleave(starts, lengths) + (
        torch.arange(int(lengths.sum())) - torch.repeat_interleave(torch.cumsum(lengths, 0) - lengths, lengths)
    )
    seg[idx] = torch.repeat_interleave(torch.arange(len(lengths)), lengths)
    pos[idx] = idx - torch.repeat_interleave(starts, lengths)
    return seg, pos


def pack_dense(prompt_ids: list[list[int]], responses: torch.Tensor, row_len: int, pad_id: int, num_rows: int = 0) -> PackedRows:
    """``rows``: first-fit-decreasing into rows of ``row_len`` slots (at least ``num_rows`` rows)."""
    _check(prompt_ids, responses)
    n, t = responses.shape
    lengths = sequence_lengths(prompt_ids, t)
    bins = first_fit_decreasing(lengths.tolist(), row_len)
    b = max(len(bins), num_rows, 1)
    row_of = torch.empty(n, dtype=torch.long)
    for r, items in enumerate(bins):
        row_of[items] = r
    starts = _layout_starts([i for items in bins for i in items], lengths, row_of, row_len)
    return _packed(prompt_ids, responses, starts, lengths, b, row_len, pad_id)


def _packed(prompt_ids, responses, starts, lengths, b: int, row_len: int, pad_id: int) -> PackedRows:
    t = responses.shape[1]
    flat = torch.full((b * row_len,), pad_id, dtype=torch.long)
    _scatter_sequences(prompt_ids, responses, starts, flat)
    seg, pos = _segment_tensors(starts, lengths, b * row_len)
    p_len = lengths - t
    first_resp = starts + p_len - 1  # flat slot of the logits predicting response token 0
    return PackedRows(
        tokens=flat.view(b, row_len),
        position_ids=pos.view(b, row_len),
        response_rows=starts // row_len,
        response_positions=(first_resp % row_len)[:, None] + torch.arange(t)[None, :],
        responses=responses.long(),
        segments=seg.view(b, row_len),
        lengths=lengths,
    )


def thd_multiple(tensor_parallel: int, sequence_parallel: bool, fp8: str, fp8_recipe: str) -> int:
    """Multiple of the packed row length T_pack (module doc)."""
    fp8_rows = 1 if fp8 == "none" else {"mxfp8": 32, "blockwise": 128}.get(fp8_recipe, 16)
    return (tensor_parallel if sequence_parallel else 1) * fp8_rows


def pack_thd(
    prompt_ids: list[list[int]], responses: torch.Tensor, multiple: int, pad_id: int, total_len: int = 0, use_cu_seqlens: bool = True
) -> PackedRows:
    """``thd``: one row, sequences back to back, a trailing pad segment up to a multiple of ``multiple``
    (and at least ``total_len`` slots)."""
    _check(prompt_ids, responses)
    lengths = sequence_lengths(prompt_ids, responses.shape[1])
    real = int(lengths.sum())
    total = max(-(-real // multiple) * multiple, -(-total_len // multiple) * multiple)
    starts = torch.cumsum(lengths, 0) - lengths
    packed = _packed(prompt_ids, responses, starts, lengths, 1, total, pad_id)
    seg_lens = torch.cat([lengths, torch.tensor([total - real])]) if total > real else lengths
    cu = torch.zeros(len(seg_lens) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(seg_lens, 0)
    pos = packed.position_ids.view(-1)
    pos[real:] = torch.arange(total - real)
    return replace(packed, cu_seqlens=cu, max_seqlen=int(seg_lens.max()), use_cu_seqlens=use_cu_seqlens)


@dataclass(frozen=True)
class Layout:
    """How every micro-batch of this actor is packed (resolved once from the configs)."""

    mode: PackingMode
    """off / rows / thd (module doc)."""
    pad_id: int
    """Token id of padding slots."""
    thd_multiple: int = 1
    """``thd``: T_pack is a multiple of this."""
    use_cu_seqlens: bool = False
    """``thd``: hand cu_seqlens to Transformer Engine (else a dense block mask on the local spec)."""


def pack_micro_batches(
    seqs: list[tuple[list[list[int]], torch.Tensor]], layout: Layout, seq_len: int, equal_shapes: bool
) -> list[PackedRows]:
    """Pack each micro-batch ``(prompt_ids, responses)``; with ``equal_shapes`` all get the same [b, L]."""
    if layout.mode == "off":
        return [pack_rows(p, r, seq_len, layout.pad_id) for p, r in seqs]
    if layout.mode == "rows":
        packed = [pack_dense(p, r, seq_len, layout.pad_id) for p, r in seqs]
        if equal_shapes:
            b = max(pk.tokens.shape[0] for pk in packed)
            packed = [pack_dense(p, r, seq_len, layout.pad_id, num_rows=b) if pk.tokens.shape[0] < b else pk for (p, r), pk in zip(seqs, packed)]
        return packed
    packed = [pack_thd(p, r, layout.thd_multiple, layout.pad_id, use_cu_seqlens=layout.use_cu_seqlens) for p, r in seqs]
    if equal_shapes:
        longest = max(pk.tokens.shape[1] for pk in packed)
        packed = [
            pack_thd(p, r, layout.thd_multiple, layout.pad_id, total_len=longest, use_cu_seqlens=layout.use_cu_seqlens)
            if pk.tokens.shape[1] < longest else pk
            for (p, r), pk in zip(seqs, packed)
        ]
    return packed


def padding_fraction(packed: list[PackedRows]) -> float:
    """1 - real tokens / token slots over micro-batches (0 = no padding)."""
    slots = sum(pk.tokens.numel() for pk in packed)
    return 1.0 - sum(pk.real_tokens for pk in packed) / max(slots, 1)


def attention_mask(rows: PackedRows, device: torch.device | str) -> torch.Tensor:
    """Bool mask (True = masked) for the dense layouts: causal [1, 1, L, L], or block-diagonal causal
    [b, 1, L, L] from ``segments`` (padding slots of a row form one block)."""
    length = rows.tokens.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    if rows.segments is None:
        return ~causal[None, None]
    seg = rows.segments.to(device)
    same = seg[:, :, None] == seg[:, None, :]
    return ~(same & causal)[:, None]


def packed_seq_params(rows: PackedRows, device: torch.device | str) -> PackedSeqParams:
    """Megatron's THD parameters for a ``thd`` micro-batch (cu_seqlens int32 on the device)."""
    cu = rows.cu_seqlens.to(device=device, dtype=torch.int32)
    return PackedSeqParams(
        qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=rows.max_seqlen, max_seqlen_kv=rows.max_seqlen
    )


def resolve_layout(mode: str, te_spec: bool, pad_id: int, multiple: int) -> Layout:
    """``ParallelConfig.sequence_packing`` + spec -> Layout; impossible combinations raise."""
    if mode == "auto":
        mode = "thd" if te_spec else "off"
    if mode == "rows" and te_spec:
        raise ValueError(
            "parallel.sequence_packing=rows needs the Megatron-local spec: Transformer Engine's attention runs with "
            "its causal mask type and ignores an explicit block mask; use sequence_packing=thd (or auto) with TE"
        )
    if mode == "thd" and not te_spec:
        # CPU / local spec: the THD layout with the equivalent dense mask (correct, O(T_pack^2) attention)
        return Layout("thd", pad_id, multiple, use_cu_seqlens=False)
    return Layout(mode, pad_id, multiple, use_cu_seqlens=mode == "thd")
