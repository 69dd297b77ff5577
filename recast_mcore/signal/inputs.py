"""What every signal builder receives (one dataclass, so the builder registry has ONE signature)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from recast_mcore.rollout.types import RolloutGroups
from recast_mcore.signal.dynamic_sampling import SamplingInfo

ScoreFn = Callable[[list[list[int]], torch.Tensor], torch.Tensor]
"""``score_fn(prompt_ids: N lists, responses: LongTensor[N, T]) -> FloatTensor[N, T]``: the current
policy's forward-only constrained per-token log-probs (the trainer passes the actor's ``logprobs``)."""


@dataclass
class SignalInputs:
    """Rewarded rollouts of one step plus what builders need to add sequences that were not sampled."""

    groups: RolloutGroups
    """B prompts x G candidates with rollout log-probs (responses [B, G, T])."""
    rewards: torch.Tensor
    """[B, G] float: reward of each candidate."""
    item_tokens: torch.Tensor
    """[num_items, item_len] int64: semantic-ID tokens of every catalog item (``ItemVocab.item_tokens``)."""
    eos_id: int
    """EOS token id appended after an item's tokens (T = item_len + 1)."""
    score_fn: ScoreFn | None = None
    """Forward-only policy scorer; required when a builder adds unsampled sequences (ReCast repair)."""
    sampling: SamplingInfo | None = None
    """Dynamic-sampling bookkeeping when the batch was filled by ``fill_with_varied_groups``."""

    def validate(self) -> None:
        """Raise ``ValueError`` naming the inconsistent input."""
        self.groups.validate()
        b, g, t = self.groups.responses.shape
        if tuple(self.rewards.shape) != (b, g):
            raise ValueError(f"rewards shape {tuple(self.rewards.shape)} != groups [B, G] = {(b, g)}")
        if not self.rewards.is_floating_point() or not bool(torch.isfinite(self.rewards).all()):
            raise ValueError("rewards must be a finite floating-point tensor")
        if self.item_tokens.dim() != 2 or self.item_tokens.shape[1] + 1 != t:
            raise ValueError(
                f"item_tokens shape {tuple(self.item_tokens.shape)} does not fit responses of length T={t} (item_len + 1)"
            )
        if not bool(torch.isfinite(self.groups.token_logprobs).all()):
            raise ValueError("groups.token_logprobs contains non-finite values")

    def score(self, prompt_ids: list[list[int]], responses: torch.Tensor) -> torch.Tensor:
        """Call ``score_fn`` and check its output is FloatTensor[N, T]."""
        if self.score_fn is None:
            raise ValueError("this builder needs score_fn (the actor's forward-only log-probs) to score unsampled sequences")
        out = self.score_fn(prompt_ids, responses)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(responses.shape) or not out.is_floating_point():
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"score_fn returned {shape}, expected a float tensor of shape {tuple(responses.shape)}")
        return out.detach().to(torch.float32).cpu()
