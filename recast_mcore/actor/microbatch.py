"""How a step's sequences become micro-batches (pure torch; documented ONCE here).

How a micro-batch's sequences are laid out (right padding, dense packing or THD) is documented once in
actor/packing.py. ``S`` is the step's longest ``p_i + T`` (every micro-batch of a step has the same S:
pipeline-parallel p2p buffers have a fixed shape), rounded up to ``seq_multiple`` (TP size with sequence
parallelism, 16 with FP8); it is the row length of the padded and the dense-packed layouts.

Update plan (``plan_update``), for an UpdateBatch of N rows in groups (rows of one prompt):

1. Data parallel: ``batch.group_partition(dp)`` gives each DP rank whole groups (~N/dp rows each).
2. Row budget per micro-batch: ``micro_batch_size`` if set, else ``min(max_tokens_per_micro_batch // S,
   largest DP share)``; never below the largest group (a group is never split).
3. K = the number of micro-batches a greedy in-order packing of whole groups under that budget needs
   (max over DP ranks; rounded up to a multiple of PP with the interleaved schedule). Each rank's groups
   are then re-split into exactly K near-equal parts (a group goes to the part its middle row falls in;
   a part can exceed the budget by less than one group). Balancing matters: padding every micro-batch
   to a greedy budget wasted up to 45% of the compute in the G=64 benchmark.
4. Padding: with pipeline parallelism and the padded layout (p2p buffers have a fixed shape) every
   micro-batch is padded to the same M rows (the largest part over all ranks); without it micro-batches keep their own size and
   only an empty part becomes a single PAD row. PAD rows carry zero weight, no counted tokens and no
   pairs, so the policy loss gives them exactly zero ``loss_sum`` and ``denom``; their tokens are a copy
   of a real row so the trie mask is defined.
5. Loss normalization (Megatron ``calculate_per_token_loss=True``): each micro-batch returns
   ``(loss_sum, denom)``; the schedule sums them over micro-batches, ``finalize_model_grads`` all-reduces
   ``sum(denom)`` over DP and scales every gradient by ``1 / sum(denom)``. So the step's gradient is the
   gradient of ``sum(loss_sum) / sum(denom)`` over the whole step, independent of how rows were split.

Every rank receives the same full UpdateBatch and computes the same plan (no communication).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from recast_mcore.actor.packing import PackedRows, pack_rows  # noqa: F401  (re-exported: the padded layout)
from recast_mcore.signal.batch import Role, UpdateBatch, group_bounds


def step_seq_len(prompt_ids: list[list[int]], response_len: int, seq_multiple: int = 1) -> int:
    """S = max_i (p_i + T), rounded up to ``seq_multiple``."""
    if not prompt_ids:
        raise ValueError("step_seq_len: no rows")
    if min(len(p) for p in prompt_ids) < 1:
        raise ValueError("every prompt needs at least one token (<bos>)")
    s = max(len(p) for p in prompt_ids) + response_len
    return -(-s // seq_multiple) * seq_multiple


def micro_batch_rows(max_group: int, seq_len: int, micro_batch_size: int, max_tokens: int) -> int:
    """M: configured size, or the token budget divided by S; never below the largest group."""
    m = micro_batch_size if micro_batch_size > 0 else max(1, max_tokens // seq_len)
    return max(m, max_group, 1)


def pack_groups(rows: list[int], group_index: torch.Tensor, m: int) -> list[list[int]]:
    """Greedy in-order packing of whole groups (given as the row list ``rows``) into lists of <= m rows."""
    sub = group_index[torch.as_tensor(rows, dtype=torch.long)] if rows else group_index[:0]
    chunks: list[list[int]] = []
    current: list[int] = []
    for start, end in group_bounds(sub):
        group = rows[start:end]
        if len(group) > m:
            raise ValueError(f"a group of {len(group)} rows does not fit a micro-batch of {m} rows")
        if len(current) + len(group) > m:
            chunks.append(current)
            current = []
        current = current + group
    if current:
        chunks.append(current)
    return chunks


@dataclass
class UpdatePlan:
    """This DP rank's micro-batches: K UpdateBatches of exactly M rows each (PAD rows included)."""

    micro_batches: list[UpdateBatch]
    rows: int
    """M."""
    seq_len: int
    """S."""
    real_rows_per_dp_rank: list[int]
    """Number of non-PAD rows each DP rank trains on (for logging the balance)."""


def _pad_micro_batch(mb: UpdateBatch, m: int, donor_prompt: list[int], donor_response: torch.Tensor) -> UpdateBatch:
    """Pad to m rows; PAD rows get a real row's prompt/response (the donor) so the trie mask is defined."""
    n = mb.num_sequences
    padded = mb.pad_to(m)
    if n == m:
        return padded
    responses = padded.responses.clone()
    responses[n:] = donor_response
    prompts = padded.prompt_ids[:n] + [list(donor_prompt) for _ in range(m - n)]
    padded.responses, padded.prompt_ids = responses, prompts
    return padded


def plan_update(
    batch: UpdateBatch,
    dp_size: int,
    dp_rank: int,
    *,
    micro_batch_size: int,
    max_tokens_per_micro_batch: int,
    seq_multiple: int = 1,
    num_micro_batches_multiple: int = 1,
    equal_rows: bool = True,
) -> UpdatePlan:
    """Split ``batch`` for this DP rank into micro-batches of whole groups (see module doc)."""
    n = batch.num_sequences
    real = batch.roles != Role.PAD
    if n == 0 or not bool(real.any()):
        raise ValueError("plan_update: the UpdateBatch has no real rows")
    seq_len = step_seq_len(batch.prompt_ids, batch.response_len, seq_multiple)
    groups = group_bounds(batch.group_index)
    parts = batch.group_partition(dp_size)
    budget = micro_batch_rows(1, seq_len, micro_batch_size, max_tokens_per_micro_batch)
    if micro_batch_size <= 0:  # no fixed size: never pad beyond the largest DP share
        budget = min(budget, max(len(p) for p in parts))
    budget = max(budget, max(e - s for s, e in groups))
    greedy = [pack_groups(p.tolist(), batch.group_index, budget) for p in parts]
    k = max(1, max(len(c) for c in greedy))
    k = -(-k // num_micro_batches_multiple) * num_micro_batches_multiple
    per_rank = [balance_groups(p.tolist(), batch.group_index, k) for p in parts]
    first = int(torch.nonzero(real)[0])
    donor = (batch.prompt_ids[first], batch.responses[first])
    mine = per_rank[dp_rank]
    if equal_rows:
        m = max(1, max(len(rows) for chunks in per_rank for rows in chunks))
        micro = [_pad_micro_batch(batch.select(rows), m, *donor) for rows in mine]
    else:  # no pipeline: micro-batches may differ in size; only empty ones get a single PAD row
        m = max(1, max((len(rows) for rows in mine), default=1))
        micro = [_pad_micro_batch(batch.select(rows), max(len(rows), 1), *donor) for rows in mine]
    return UpdatePlan(micro, m, seq_len, [int(real[p].sum()) for p in parts])


def balance_groups(rows: list[int], group_index: torch.Tensor, k: int) -> list[list[int]]:
    """Whole groups (in order) into exactly k parts of near-equal row counts: a group goes to the part its
    middle row falls in (as UpdateBatch.group_partition). A part can exceed n/k by less than one group."""
    parts: list[list[int]] = [[] for _ in range(k)]
    if not rows:
        return parts
    sub = group_index[torch.as_tensor(rows, dtype=torch.long)]
    n = len(rows)
    for start, end in group_bounds(sub):
        parts[min(k - 1, (start + end) * k // (2 * n))].extend(rows[start:end])
    return parts


def plan_rows(n: int, dp_size: int, dp_rank: int, m: int) -> list[list[int]]:
    """Forward-only split of N independent rows: contiguous DP shards, then chunks of m (last may be short)."""
    per = -(-n // dp_size)
    mine = list(range(min(n, dp_rank * per), min(n, (dp_rank + 1) * per)))
    return [mine[i : i + m] for i in range(0, len(mine), m)]
