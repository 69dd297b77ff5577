"""Policy losses the actor applies to an ``UpdateBatch`` (registry; pure torch).

Contract (every registered loss)::

    loss_fn(token_logprobs: FloatTensor[n, T], batch: UpdateBatch) -> (loss_sum, denom, metrics)

``token_logprobs`` are the CURRENT policy's constrained log-probs of ``batch.responses`` (with grad),
``batch`` is the micro-batch (``UpdateBatch.select`` of whole groups). The step loss is
``sum(loss_sum) / sum(denom)`` over micro-batches and data-parallel ranks (Megatron's
``calculate_per_token_loss=True`` path). ``metrics`` values are detached scalar SUMS over the
micro-batch; sum them over micro-batches and ranks and divide by the summed ``denom`` to log means.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from recast_mcore.config.signal import ContrastLossConfig, PpoLossConfig
from recast_mcore.signal.batch import Role, UpdateBatch
from recast_mcore.utils.registry import Registry

LossOutput = tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]
LossFn = Callable[[torch.Tensor, UpdateBatch], LossOutput]

LOSSES: Registry[LossFn] = Registry("policy loss")
register_loss = LOSSES.register
get_loss = LOSSES.get


def compute_policy_loss(token_logprobs: torch.Tensor, batch: UpdateBatch) -> LossOutput:
    """Check shapes and apply the loss named by ``batch.loss_name``."""
    if tuple(token_logprobs.shape) != tuple(batch.responses.shape):
        raise ValueError(
            f"token_logprobs shape {tuple(token_logprobs.shape)} != batch.responses {tuple(batch.responses.shape)}"
        )
    return get_loss(batch.loss_name)(token_logprobs, batch)


def _params(batch: UpdateBatch, cls: type) -> object:
    if not isinstance(batch.loss_params, cls):
        raise TypeError(f"loss '{batch.loss_name}' needs loss_params of type {cls.__name__}, got {type(batch.loss_params).__name__}")
    return batch.loss_params


def k3_kl(token_logprobs: torch.Tensor, ref_logprobs: torch.Tensor | None, clamp: float) -> torch.Tensor:
    """[n, T] low-variance k3 estimate of KL(pi || pi_ref) per token (verl ``low_var_kl``):
    ``d = clamp(ref - lp, -20, 20)``, ``k3 = clamp(exp(d) - d - 1, -clamp, clamp)`` (>= 0; 0 iff lp == ref)."""
    if ref_logprobs is None:
        raise ValueError("the KL term (signal.kl.use_kl) needs batch.ref_logprobs (reference-policy log-probs)")
    d = torch.clamp(ref_logprobs.to(token_logprobs.dtype) - token_logprobs, -20.0, 20.0)
    return torch.clamp(torch.exp(d) - d - 1.0, -clamp, clamp)


def _add_kl(per_token: torch.Tensor, token_logprobs: torch.Tensor, batch: UpdateBatch,
            mask: torch.Tensor, metrics: dict[str, torch.Tensor]) -> torch.Tensor:
    """per_token + coef * k3 when ``batch.kl`` is set (metric ``kl_ref_sum`` = sum of masked k3)."""
    if batch.kl is None or not batch.kl.use_kl:
        return per_token
    k3 = k3_kl(token_logprobs, batch.ref_logprobs, batch.kl.clamp)
    metrics["kl_ref_sum"] = (k3 * mask).sum().detach()
    return per_token + batch.kl.coef * k3


@register_loss("ppo_clip")
def ppo_clip_loss(token_logprobs: torch.Tensor, batch: UpdateBatch) -> LossOutput:
    """PPO clipped surrogate with token-mean aggregation (verl ``compute_policy_loss`` vanilla) + k3 KL.

    Shapes: lp, old, ref, mask [n, T]; A, w [n] broadcast over T.
        rho_t   = exp(clamp(lp_t - old_t, -20, 20))
        l1_t    = -A rho_t;   l2_t = -A clip(rho_t, 1 - clip_low, 1 + clip_high)
        pg_t    = max(l1_t, l2_t);  if A < 0 and dual_clip_c: pg_t = min(pg_t, -A dual_clip_c)
        GT_NLL rows (grpo_gt): pg_t = -lp_t  (teacher-forced NLL of the ground truth)
        loss_sum = sum_{n,t} mask w (pg_t + kl.coef k3_t)   (k3: ``k3_kl``, only when ``batch.kl``);
        denom = sum_{n,t} mask
    Metrics (sums over counted tokens of PPO rows): clip fraction (upper / dual), ratio, approx KL to old
    ``-(lp - old)``; ``gt_nll_sum`` over GT_NLL rows.
    """
    p: PpoLossConfig = _params(batch, PpoLossConfig)  # type: ignore[assignment]
    mask = batch.token_mask.to(token_logprobs.dtype)
    nll_row = (batch.roles == Role.GT_NLL)[:, None]
    ppo_mask = mask * (~nll_row).to(mask.dtype)
    adv = batch.advantages.to(token_logprobs.dtype)[:, None]
    log_ratio = torch.clamp(token_logprobs - batch.old_logprobs.to(token_logprobs.dtype), -20.0, 20.0)
    ratio = torch.exp(log_ratio)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - p.clip_low, 1.0 + p.clip_high)
    pg = torch.maximum(unclipped, clipped)
    lower_clipped = torch.zeros_like(mask)
    if p.dual_clip_c is not None:
        lower_clipped = ((adv < 0) & (pg > -adv * p.dual_clip_c)).to(mask.dtype)
        pg = torch.where(adv < 0, torch.minimum(pg, -adv * p.dual_clip_c), pg)
    per_token = torch.where(nll_row, -token_logprobs, pg)
    weight = mask * batch.weights.to(token_logprobs.dtype)[:, None]
    metrics = {
        "pg_loss_sum": (pg * weight * ppo_mask).sum().detach(),
        "clipfrac_sum": ((clipped > unclipped).to(mask.dtype) * ppo_mask).sum().detach(),
        "clipfrac_lower_sum": (lower_clipped * ppo_mask).sum().detach(),
        "ratio_sum": (ratio * ppo_mask).sum().detach(),
        "approx_kl_old_sum": (-log_ratio * ppo_mask).sum().detach(),
    }
    # always present (0 without GT rows): every micro-batch and DP rank must report the same metric keys
    metrics["gt_nll_sum"] = (-token_logprobs * weight * (mask - ppo_mask)).sum().detach()
    per_token = _add_kl(per_token, token_logprobs, batch, mask, metrics)
    loss_sum = (per_token * weight).sum()
    return loss_sum, mask.sum(), metrics


def sequence_scores(token_logprobs: torch.Tensor, token_mask: torch.Tensor, score: str) -> torch.Tensor:
    """[n] sequence score from [n, T] log-probs: ``sum_t mask lp`` or that divided by ``sum_t mask``."""
    mask = token_mask.to(token_logprobs.dtype)
    total = (token_logprobs * mask).sum(dim=1)
    if score == "sum":
        return total
    if score == "mean":
        return total / mask.sum(dim=1).clamp_min(1.0)
    raise ValueError(f"unknown sequence score '{score}'; valid: mean, sum")


@register_loss("pairwise_contrast")
def pairwise_contrast_loss(token_logprobs: torch.Tensor, batch: UpdateBatch) -> LossOutput:
    """Margin-focused contrast of each pair's positive vs negative sequence score.

    Shapes: lp, old, mask [n, T]; pairs [P, 2] = (i+, i-); pair weights v [P]; row weights w [n].
        s_i     = sum_t mask lp_{i,t}   (score="mean": divided by sum_t mask)
        ratio_clip: s_{i+} <- min(s_{i+}, sg(s_old_{i+}) + log(1 + clip_high)),
                    s_{i-} <- max(s_{i-}, sg(s_old_{i-}) + log(1 - clip_low))   (no gradient past the bound)
        d_p     = beta (s_{i+} - s_{i-})
        l_p     = softplus(margin - d_p) = -log sigmoid(d_p - margin)      (form="logsigmoid")
                  max(0, margin - d_p)                                      (form="hinge")
        loss_sum = sum_p v_p l_p + anchor_nll_coef sum_{i: role=ANCHOR} w_i (-s_i)
                   + kl.coef sum_{i,t} mask w_i k3_{i,t}      (only when ``batch.kl``; k3: ``k3_kl``)
        denom   = P                              (normalize="pairs")
                  sum_{i,t} mask                 (normalize="tokens": token-mean, as ppo_clip)
    """
    p: ContrastLossConfig = _params(batch, ContrastLossConfig)  # type: ignore[assignment]
    s = sequence_scores(token_logprobs, batch.token_mask, p.score)
    pos, neg = batch.pairs[:, 0], batch.pairs[:, 1]
    s_pos, s_neg = s[pos], s[neg]
    if p.ratio_clip:
        s_old = sequence_scores(batch.old_logprobs.to(s.dtype), batch.token_mask, p.score)
        cap = s_old[pos] + math.log1p(p.clip_high)
        floor = s_old[neg] + math.log1p(-p.clip_low)
        s_pos = torch.where(s_pos > cap, cap, s_pos)
        s_neg = torch.where(s_neg < floor, floor, s_neg)
    diff = s_pos - s_neg
    scaled = p.beta * diff
    if p.form == "logsigmoid":
        pair_loss = F.softplus(p.margin - scaled)
    else:
        pair_loss = F.relu(p.margin - scaled)
    pair_w = batch.pair_weights.to(s.dtype)
    # 0 * sum(lp) keeps the loss attached to the graph when a micro-batch has no pair
    loss_sum = (pair_w * pair_loss).sum() + 0.0 * token_logprobs.sum()
    metrics = {
        "pair_loss_sum": (pair_w * pair_loss).sum().detach(),
        "pair_margin_sum": diff.sum().detach(),
        "pair_acc_sum": (diff > 0).to(s.dtype).sum().detach(),
    }
    if p.anchor_nll_coef > 0:
        anchor = batch.roles == Role.ANCHOR
        nll = (batch.weights.to(s.dtype)[anchor] * -s[anchor]).sum()
        loss_sum = loss_sum + p.anchor_nll_coef * nll
        metrics["anchor_nll_sum"] = nll.detach()
    mask = batch.token_mask.to(token_logprobs.dtype)
    kl_part = _add_kl(torch.zeros_like(token_logprobs), token_logprobs, batch, mask, metrics)
    loss_sum = loss_sum + (kl_part * mask * batch.weights.to(s.dtype)[:, None]).sum()
    if p.normalize == "tokens":
        denom = mask.sum()
    else:
        denom = torch.tensor(float(batch.num_pairs), dtype=s.dtype, device=s.device)
    return loss_sum, denom, metrics
