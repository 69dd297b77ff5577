"""Exact constrained beam search over fixed-length items, given a next-token log-prob oracle (pure torch).

SGLang has no beam search, so both engines run this loop and differ only in the oracle:
``next_logprobs(prompt_index [Q], prefixes: Q lists) -> [Q, V]`` float log-probs of the next token
(entries outside the allowed set may be -inf; only allowed entries are read).

Level t = 0..L-1, for every prompt b and beam k with prefix y_<t and score s_bk:
    log pi_c(v | x_b, y_<t) = lp[v] - logsumexp_{u in allowed(y_<t)} lp[u]      for v in allowed(y_<t)
    candidate score = s_bk + log pi_c(v | ...)
keep the ``beam_width`` best candidates per prompt (ties broken by lower beam index, then lower token id:
deterministic). After L levels every beam is a full item; EOS is the only allowed token, its log-prob is 0,
so the final scores are the sequence log-probs s(y) of the contract. With ``beam_width`` >= the number of
distinct prefixes at every level this is exhaustive: it returns the exact top-K items.
"""

from __future__ import annotations

from typing import Callable

import torch

from recast_mcore.rollout.catalog import ItemCatalog

NextLogprobs = Callable[[list[int], list[list[int]]], torch.Tensor]


def constrained_beam_search(
    num_prompts: int, catalog: ItemCatalog, beam_width: int, next_logprobs: NextLogprobs
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns ``responses [B, K, T]``, ``token_logprobs [B, K, T]``, ``scores [B, K]`` (descending).

    K = min(beam_width, number of catalog items); the same for every prompt.
    """
    if beam_width < 1:
        raise ValueError(f"beam_width must be >= 1, got {beam_width}")
    # beams[b] = (prefixes [k, t], per-token logprobs [k, t], scores [k])
    beams = [(torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, 0), torch.zeros(1)) for _ in range(num_prompts)]
    for _ in range(catalog.item_len):
        owner = [b for b in range(num_prompts) for _ in range(beams[b][0].shape[0])]
        prefixes = [p.tolist() for b in range(num_prompts) for p in beams[b][0]]
        lp = next_logprobs(owner, prefixes).float()
        allowed = catalog.allowed_mask(prefixes)
        masked = lp.masked_fill(~allowed, float("-inf"))
        constrained = masked - torch.logsumexp(masked, dim=-1, keepdim=True)
        row = 0
        for b in range(num_prompts):
            k = beams[b][0].shape[0]
            beams[b] = _expand(beams[b], constrained[row : row + k], beam_width)
            row += k
    return _finish(beams, catalog.eos_id)


def _expand(beam, constrained: torch.Tensor, width: int):
    """Best ``width`` (beam, token) continuations; ``constrained [k, V]`` is -inf outside the allowed set."""
    prefixes, token_lp, scores = beam
    k, v = constrained.shape
    total = (scores[:, None] + constrained).reshape(-1)
    finite = torch.isfinite(total)
    cand = finite.nonzero().squeeze(1)  # ascending flat index = (beam, token) order: the tie-break
    order = torch.argsort(total[cand], descending=True, stable=True)[:width]
    pick = cand[order]
    src, tok = pick // v, pick % v
    new_prefixes = torch.cat([prefixes[src], tok[:, None]], 1)
    new_lp = torch.cat([token_lp[src], constrained[src, tok][:, None]], 1)
    return new_prefixes, new_lp, total[pick]


def _finish(beams, eos_id: int):
    k = min(b[0].shape[0] for b in beams)
    responses = torch.stack([torch.cat([p[:k], torch.full((k, 1), eos_id)], 1) for p, _, _ in beams])
    token_lp = torch.stack([torch.cat([lp[:k], torch.zeros(k, 1)], 1) for _, lp, _ in beams])
    scores = torch.stack([s[:k] for _, _, s in beams])
    return responses, token_lp, scores
