"""Exact constrained beam search over fixed-length items, given a top-K candidate oracle (pure torch, vectorized).

Both engines run this loop and differ only in the oracle::

    top_candidates(owner [Q] int64, prefixes [Q, t] int64, k) -> (logprobs [Q, k] float32, tokens [Q, k] int64)

the k most likely allowed next tokens of each query (prompt ``owner[q]`` followed by ``prefixes[q]``) under
the constrained policy ``log pi_c(v | x, y_<t) = z_v - logsumexp_{u in allowed(y_<t)} z_u``; entries past the
allowed count have log-prob -inf (or NaN) and are ignored. Only the top ``width`` continuations of one beam
can survive a level, so ``k = width`` loses nothing: the search equals one that scores every allowed token.

State per level t: ``prefixes [B, w, t]``, ``token_logprobs [B, w, t]``, ``scores [B, w]`` (-inf = no beam).
For every live beam (b, j) the oracle returns k candidates; candidate score = ``scores[b, j] + logprob``;
the ``width`` best of the ``w * k`` candidates of prompt b are kept. Ties are broken by lower beam index, then
lower token id (candidates of a beam are ordered by token id before a stable sort): deterministic. After L
levels every beam is a full item; EOS is the only allowed token, its log-prob is 0, so the final scores are
the sequence log-probs s(y) of the contract. With ``width`` >= the number of distinct prefixes at every level
the search is exhaustive: it returns the exact top-K items.

Cost: L oracle calls with at most ``B * width`` queries each, ``[B, width * k]`` scores per level; no dense
``[Q, V]`` tensor and no Python loop over prompts, beams or tokens.
"""

from __future__ import annotations

from typing import Callable

import torch

TopCandidates = Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]


def constrained_beam_search(
    num_prompts: int, item_len: int, eos_id: int, beam_width: int, top_candidates: TopCandidates, vocab_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns ``responses [B, K, T]``, ``token_logprobs [B, K, T]``, ``scores [B, K]`` (descending along K).

    K = min(beam_width, live beams of the poorest prompt): the same for every prompt.
    """
    if beam_width < 1:
        raise ValueError(f"beam_width must be >= 1, got {beam_width}")
    b = num_prompts
    k = min(beam_width, vocab_size)
    prefixes = torch.zeros(b, 1, 0, dtype=torch.long)
    token_lp = torch.zeros(b, 1, 0)
    scores = torch.zeros(b, 1)
    for t in range(item_len):
        qb, qj = torch.isfinite(scores).nonzero(as_tuple=True)  # live beams, prompt-major
        lp, tok = top_candidates(qb, prefixes[qb, qj], k)
        if lp.shape != (qb.numel(), k) or tok.shape != lp.shape:
            raise RuntimeError(f"top_candidates returned {tuple(lp.shape)}/{tuple(tok.shape)}, expected {(qb.numel(), k)}")
        lp, tok = _order_by_token(lp.float(), tok.long(), vocab_size)
        w = scores.shape[1]
        cand = torch.full((b, w, k), float("-inf"))
        cand[qb, qj] = scores[qb, qj, None] + lp
        cand_tok = torch.zeros(b, w, k, dtype=torch.long)
        cand_tok[qb, qj] = tok
        cand_lp = torch.zeros(b, w, k)
        cand_lp[qb, qj] = lp
        flat = cand.reshape(b, w * k)
        pick = torch.argsort(flat, dim=1, descending=True, stable=True)[:, : min(beam_width, w * k)]
        src = (pick // k)[..., None]
        prefixes = torch.cat([prefixes.gather(1, src.expand(-1, -1, t)), cand_tok.reshape(b, -1).gather(1, pick)[..., None]], 2)
        token_lp = torch.cat([token_lp.gather(1, src.expand(-1, -1, t)), cand_lp.reshape(b, -1).gather(1, pick)[..., None]], 2)
        scores = flat.gather(1, pick)
    keep = int(torch.isfinite(scores).sum(1).min())
    if keep == 0:
        raise RuntimeError("beam search found no complete item for some prompt (is the trie constraint applied?)")
    eos = torch.full((b, keep, 1), eos_id, dtype=torch.long)
    responses = torch.cat([prefixes[:, :keep], eos], 2)
    return responses, torch.cat([token_lp[:, :keep], torch.zeros(b, keep, 1)], 2), scores[:, :keep]


def _order_by_token(lp: torch.Tensor, tok: torch.Tensor, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Invalid candidates (non-finite log-prob) -> -inf; each row's candidates sorted by token id (the tie-break)."""
    valid = torch.isfinite(lp) & (lp > -1e30)
    lp = torch.where(valid, lp, float("-inf"))
    order = torch.argsort(torch.where(valid, tok, vocab_size), dim=1, stable=True)
    return lp.gather(1, order), tok.gather(1, order)


def masked_top_candidates(logits: torch.Tensor, allowed: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[c, V]`` logits and allowed mask -> the top-k constrained log-probs and tokens (for in-process oracles)."""
    lp = torch.log_softmax(logits.float().masked_fill(~allowed, float("-inf")), dim=-1)
    top = lp.topk(min(k, lp.shape[-1]), dim=-1)
    return top.values, top.indices
