"""What a rollout engine returns: groups of G candidate items per prompt (pure torch, no SGLang).

Items are fixed-length semantic-ID token tuples, so responses are dense tensors:
``T = item_len + 1`` response tokens (the item's tokens, then EOS).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class RolloutGroups:
    """B prompts x G sampled candidates, with log-probs under the trie-constrained policy."""

    prompt_ids: list[list[int]]
    """B token-id lists (``<bos>`` + history item tokens); lengths vary."""
    responses: torch.Tensor
    """[B, G, T] int64: candidate item tokens followed by EOS."""
    token_logprobs: torch.Tensor
    """[B, G, T] float32: log pi(token | prefix) under the constrained (renormalized) policy."""
    item_ids: torch.Tensor
    """[B, G] int64: catalog index of each candidate (-1 would mean invalid; engines never emit it)."""
    targets: list[list[int]]
    """B lists of ground-truth target item ids (the next item, or the next-k target set)."""
    policy_version: int
    """Weight version of the policy that produced these samples."""
    num_sampled: int
    """Candidates generated for this batch (rollout budget spent), B * G unless stated otherwise."""

    @property
    def num_prompts(self) -> int:
        return self.responses.shape[0]

    @property
    def group_size(self) -> int:
        return self.responses.shape[1]

    @property
    def seq_logprobs(self) -> torch.Tensor:
        """[B, G]: sequence log-probability, the sum of the per-token log-probs."""
        return self.token_logprobs.sum(-1)

    def validate(self) -> None:
        b, g, t = self.responses.shape
        if self.token_logprobs.shape != (b, g, t):
            raise ValueError(f"token_logprobs shape {tuple(self.token_logprobs.shape)} != responses {(b, g, t)}")
        if self.item_ids.shape != (b, g):
            raise ValueError(f"item_ids shape {tuple(self.item_ids.shape)} != {(b, g)}")
        if len(self.prompt_ids) != b or len(self.targets) != b:
            raise ValueError("prompt_ids and targets must have one entry per prompt")


@dataclass
class BeamResults:
    """Top-K items per prompt from constrained beam search (used by evaluation and beam-based rollouts)."""

    prompt_ids: list[list[int]]
    """B token-id lists."""
    responses: torch.Tensor
    """[B, K, T] int64: item tokens then EOS, best first."""
    token_logprobs: torch.Tensor
    """[B, K, T] float32: constrained log-probs of every response token (EOS term 0)."""
    scores: torch.Tensor
    """[B, K] float32: sequence log-probs ``token_logprobs.sum(-1)``, descending along K."""
    item_ids: torch.Tensor
    """[B, K] int64: catalog index of each beam."""
    policy_version: int
    """Weight version of the policy that scored the beams."""

    def validate(self) -> None:
        b, k, t = self.responses.shape
        if self.token_logprobs.shape != (b, k, t) or self.scores.shape != (b, k) or self.item_ids.shape != (b, k):
            raise ValueError("BeamResults tensors disagree in shape")
        if len(self.prompt_ids) != b:
            raise ValueError("prompt_ids must have one entry per prompt")
