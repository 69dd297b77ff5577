"""THE forward-step / loss contract of the actor: every forward and backward goes through here.

Megatron's ``get_forward_backward_func()`` runs the pipeline schedule (no pipelining, 1F1B, or
interleaved 1F1B with virtual stages). It calls ``forward_step(data_iterator, model)`` once per
micro-batch on every stage; the function returns ``(output_tensor, loss_func)``. On the last stage the
schedule calls ``loss_func(output_tensor) -> (loss_sum, denom, metrics)`` (the 3-tuple form: with
``calculate_per_token_loss=True`` the schedule neither averages over micro-batches nor divides by
``denom``; ``finalize_model_grads`` scales gradients by ``1 / sum(denom)`` summed over micro-batches and
data-parallel ranks). ``denom`` must be an integer count (tokens or pairs).

Logits: the output layer runs only at the slots that predict a response token
(``model(..., logit_rows, logit_positions)``, actor/model.py) and returns this TP rank's vocabulary shard
``z [n, T, Vp/tp]`` (ids ``[r*Vp/tp, (r+1)*Vp/tp)`` on TP rank r). The log-softmax is vocab-parallel
(Megatron's ``vocab_parallel_cross_entropy``: max, sum of exp and the target logit are all-reduced over
TP), so no rank ever holds ``[b, L, V]`` logits: memory O(n*T*Vp/tp) instead of O(b*L*Vp). Ids >= V
(padding rows) and, for the constrained losses, ids outside the trie's allowed set are masked to -inf.

Three losses (``kind``):

(a) ``"sft"`` - next-item cross-entropy on the response tokens, over the real vocabulary ``[0, V)``:
    ``loss_sum = sum_{i,t} -log softmax(z_{i,t})[y_{i,t}]``, ``denom = number of response tokens`` (real rows;
    ``<pad>`` response tokens excluded from both).
(b) ``"logprobs"`` - forward only: the CONSTRAINED token log-probs (renormalized over the item-trie's
    allowed set ``A_t = ItemTrie.response_mask(responses)[:, t]``, exactly what the rollout samples from):
    ``log pi_c(y_t) = z_{y_t} - logsumexp_{v in A_t} z_v``, returned as ``[b, T]`` (sequence log-prob
    = row sum). Loss is a zero placeholder.
(c) ``"policy"`` - the signal stage's registered loss (``recast_mcore.signal.losses``) applied to the
    constrained log-probs of (b) with gradient: ``(loss_sum, denom, metrics) = loss_fn(lp [b, T], mb)``.

Layouts and logit positions: a micro-batch is right-padded rows, densely packed rows (block-diagonal
causal mask) or one THD row (``PackedSeqParams`` with cu_seqlens, Transformer Engine); sequence i sits in
row ``response_rows[i]`` and the logits predicting its response token t at column
``response_positions[i, t]`` (see actor/packing.py). The losses below see only ``[n, T]`` per-sequence
tensors, so they are the same in every layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import torch
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.tensor_parallel import vocab_parallel_cross_entropy

from recast_mcore.actor.packing import PackedRows, attention_mask, packed_seq_params
from recast_mcore.data.tokens import PAD_ID
from recast_mcore.data.trie import ItemTrie
from recast_mcore.signal.batch import Role, UpdateBatch
from recast_mcore.signal.losses import compute_policy_loss

LossKind = Literal["sft", "logprobs", "policy"]


@dataclass
class MicroBatch:
    """One micro-batch: model inputs plus what its loss needs."""

    rows: PackedRows
    """Tokens/positions [b, S] and response positions/tokens [b, T]."""
    policy_batch: UpdateBatch | None = None
    """The UpdateBatch rows of this micro-batch (kind "policy" only)."""
    num_real: int = -1
    """Rows that are not padding (kinds "sft"/"logprobs": the first num_real rows; -1 = all)."""


def causal_mask(seq_len: int, device: torch.device | str) -> torch.Tensor:
    """[1, 1, S, S] bool, True = masked (future positions). Passed explicitly to every forward."""
    return torch.triu(torch.ones(1, 1, seq_len, seq_len, dtype=torch.bool, device=device), diagonal=1)


def local_vocab_start(local_vocab: int) -> int:
    """First vocabulary id of this TP rank's logits shard of width ``local_vocab``."""
    return parallel_state.get_tensor_model_parallel_rank() * local_vocab


def mask_logits(z: torch.Tensor, start: int, vocab_size: int, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """z [b, T, Vl] (ids [start, start+Vl)) -> fp32 copy with -inf at ids >= vocab_size and, when ``allowed``
    [b, T, V] bool is given, at ids it does not allow."""
    ids = torch.arange(start, start + z.shape[-1], device=z.device)
    keep = (ids < vocab_size).expand(z.shape)
    if allowed is not None:
        hi = min(start + z.shape[-1], vocab_size)
        local = torch.zeros(z.shape, dtype=torch.bool, device=z.device)
        if hi > start:
            local[..., : hi - start] = allowed[..., start:hi].to(z.device)
        keep = keep & local
    return z.float().masked_fill(~keep, float("-inf"))


def check_allowed(responses: torch.Tensor, allowed: torch.Tensor) -> None:
    """Raise if a response token lies outside its allowed set (the policy would give it probability 0)."""
    if not bool(torch.gather(allowed, 2, responses.to(allowed.device)[..., None]).all()):
        raise ValueError("a response token is not allowed by the item trie at its position")


def token_logprobs(z: torch.Tensor, responses: torch.Tensor, vocab_size: int, allowed: torch.Tensor | None = None) -> torch.Tensor:
    """``log softmax(z over the allowed ids)[y]`` [b, T] from this rank's vocab shard z [b, T, Vl] (vocab-parallel).

    Constrained (``allowed`` [b, T, V]): ``z_y - logsumexp_{v in allowed} z_v`` (log pi_c of the contract);
    unconstrained: over the real vocabulary [0, V).
    """
    masked = mask_logits(z, local_vocab_start(z.shape[-1]), vocab_size, allowed)
    return -vocab_parallel_cross_entropy(masked, responses.to(z.device))


def sft_token_mask(responses: torch.Tensor, n_real: int) -> torch.Tensor:
    """[b, T] bool: the response tokens SFT scores - rows < n_real (the rest pad the micro-batch) and not
    ``<pad>`` (id 0; SFT windows of different lengths are right-padded with it, see trainer/sft.py)."""
    rows = torch.arange(responses.shape[0], device=responses.device) < n_real
    return rows[:, None] & (responses != PAD_ID)


def _loss_func(mb: MicroBatch, kind: LossKind, trie: ItemTrie, vocab_size: int, output: torch.Tensor):
    """The last stage's loss for one micro-batch (see module doc): -> (loss_sum, denom int, metrics).
    ``output`` is this TP rank's logits shard at the response-predicting slots, [n, T, Vp/tp]."""
    rows = mb.rows
    n_real = rows.responses.shape[0] if mb.num_real < 0 else mb.num_real
    if kind == "sft":
        lp = token_logprobs(output, rows.responses, vocab_size)
        real = sft_token_mask(rows.responses.to(lp.device), n_real)
        loss_sum = -(lp * real).sum()  # padded rows stay in the graph with zero gradient
        denom = real.sum().to(torch.int).cpu()
        out = {"loss_sum": loss_sum.detach().clone(), "denom": denom.clone(), **_slot_metrics(rows, rows.lengths[:n_real])}
        return loss_sum, denom, out
    allowed = trie.response_mask(rows.responses).to(output.device)
    check_allowed(rows.responses, allowed)
    lp = token_logprobs(output, rows.responses, vocab_size, allowed)
    if kind == "logprobs":
        zero = lp.sum() * 0.0
        return zero, torch.tensor(1, dtype=torch.int), {"logprobs": lp.detach()[:n_real].cpu()}
    loss_sum, denom, metrics = compute_policy_loss(lp, mb.policy_batch.to(lp.device))
    denom_f = float(denom)
    if denom_f != round(denom_f) or denom_f < 0:
        raise ValueError(f"policy loss '{mb.policy_batch.loss_name}' returned a non-integer denom {denom_f}")
    denom_i = torch.tensor(int(round(denom_f)), dtype=torch.int)
    out = {k: v.detach().float().cpu() for k, v in metrics.items()}
    out.update(loss_sum=loss_sum.detach().float().cpu(), denom=denom_i.clone(), logprobs=lp.detach().cpu())
    out.update(_slot_metrics(rows, rows.lengths[mb.policy_batch.roles.cpu() != Role.PAD]))
    return loss_sum, denom_i, out


def _slot_metrics(rows: PackedRows, real_lengths: torch.Tensor) -> dict[str, torch.Tensor]:
    """Token slots of the micro-batch and those holding real (non-PAD-row) tokens: the padding fraction."""
    return {"token_slots": torch.tensor(float(rows.tokens.numel())), "real_slots": real_lengths.sum().double()}


def _forward_step(kind: LossKind, trie: ItemTrie, vocab_size: int, data_iterator, model):
    """Megatron forward_step_func: run the chunk on the next micro-batch; return (output, loss_func)."""
    mb: MicroBatch = next(data_iterator)
    device = next(model.parameters()).device
    rows = mb.rows
    tokens, positions = rows.tokens.to(device), rows.position_ids.to(device)
    index = dict(logit_rows=rows.response_rows, logit_positions=rows.response_positions)
    if rows.use_cu_seqlens:
        output = model(tokens, positions, None, packed_seq_params=packed_seq_params(rows, device), **index)
    else:
        output = model(tokens, positions, attention_mask(rows, device), **index)
    return output, partial(_loss_func, mb, kind, trie, vocab_size)


def run_micro_batches(
    model_chunks: list[torch.nn.Module],
    micro_batches: list[MicroBatch],
    *,
    kind: LossKind,
    trie: ItemTrie,
    vocab_size: int,
    forward_only: bool,
) -> list[dict[str, Any]]:
    """Run all micro-batches through the pipeline schedule; returns the per-micro-batch metric dicts
    (non-empty on the last pipeline stage only). With pipeline parallelism all micro-batches must have
    the same [b, L] (fixed p2p buffer shapes); without it each may have its own."""
    b, s = micro_batches[0].rows.tokens.shape
    pipelined = len(model_chunks) > 1 or not (
        parallel_state.is_pipeline_first_stage(ignore_virtual=True) and parallel_state.is_pipeline_last_stage(ignore_virtual=True)
    )
    for mb in micro_batches:
        if pipelined and tuple(mb.rows.tokens.shape) != (b, s):
            raise ValueError(f"micro-batch shape {tuple(mb.rows.tokens.shape)} != {(b, s)} (pipeline schedules need equal shapes)")
    step = partial(_forward_step, kind, trie, vocab_size)
    iters = [iter(micro_batches) for _ in model_chunks]
    return get_forward_backward_func()(
        forward_step_func=step,
        data_iterator=iters if len(model_chunks) > 1 else iters[0],
        model=model_chunks if len(model_chunks) > 1 else model_chunks[0],
        num_microbatches=len(micro_batches),
        seq_length=s,
        micro_batch_size=b,
        forward_only=forward_only,
    )
