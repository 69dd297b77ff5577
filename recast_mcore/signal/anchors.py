"""Teacher-forced ground-truth rows: ReCast's repaired anchors and GRPO+GT's NLL rows (pure torch, vectorized).

A ground-truth row of group b is ``item_tokens[t] + [eos]`` for a target item t of the group. ``choice``:
``first`` = the first target; ``policy_best`` = the target with the highest current-policy score
``s(t) = sum_t score_fn(x_b, t)_t`` (ties: the earlier target). All options are scored in ONE ``score_fn``
call (a collective actor forward on the trainer's side); the chosen option's token log-probs become the
row's ``old_logprobs``.
"""

from __future__ import annotations

import torch

from recast_mcore.rewards.registry import padded_targets
from recast_mcore.signal.inputs import SignalInputs


def ground_truth_rows(inputs: SignalInputs, groups: torch.Tensor, choice: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(responses [A, T] int64, old_logprobs [A, T] float32) of the ground truth of each group in ``groups`` [A]."""
    t = inputs.groups.responses.shape[2]
    if groups.numel() == 0:
        return torch.zeros(0, t, dtype=torch.int64), torch.zeros(0, t)
    if choice not in ("first", "policy_best"):
        raise ValueError(f"unknown ground-truth choice '{choice}'; valid: first, policy_best")
    ids, valid = padded_targets([inputs.groups.targets[b] for b in groups.tolist()])  # [A, K]
    if choice == "first":
        ids, valid = ids[:, :1], valid[:, :1]
    a, k = ids.shape
    scored = valid.reshape(-1)
    items = ids.reshape(-1)[scored]
    owners = groups.repeat_interleave(k)[scored]
    eos = torch.full((items.numel(), 1), inputs.eos_id, dtype=torch.int64)
    responses = torch.cat([inputs.item_tokens[items].to(torch.int64), eos], dim=1)
    logprobs = inputs.score([inputs.groups.prompt_ids[b] for b in owners.tolist()], responses)
    scores = torch.full((a * k,), float("-inf"))
    scores[scored] = logprobs.sum(dim=1)
    best = scores.view(a, k).argmax(dim=1)  # first maximum: ties go to the earlier target
    row = (torch.cumsum(scored.long(), 0) - 1).view(a, k).gather(1, best[:, None]).squeeze(1)
    return responses[row], logprobs[row]


def first_occurrence(item_ids: torch.Tensor) -> torch.Tensor:
    """[B, G] bool: no earlier column of the same row holds the same item (duplicates count once)."""
    g = item_ids.shape[1]
    same = item_ids[:, :, None] == item_ids[:, None, :]  # [B, G, G]
    earlier = torch.ones(g, g, dtype=torch.bool).tril(diagonal=-1)  # [g, g'] = g' < g
    return ~(same & earlier).any(dim=2)
