"""Deterministic batches for both stages, addressed by step (so a resumed run draws the same batches).

SFT: ``dataset.sft_examples()`` (every prefix of every training sequence -> its next item), shuffled
per epoch with ``generator(seed, "sft_epoch", e)``; 0-based step s takes the global slice
``[s * batch, (s + 1) * batch)`` of the concatenated epochs.

RL: the training prompts ``dataset.examples("train")`` shuffled per epoch with
``generator(seed, "rl_epoch", e)``; step s takes prompts ``[s * B, (s + 1) * B)`` of the concatenated
epochs (an epoch's tail joins the next epoch's head). Dynamic sampling's extra rounds draw
``generator(seed, "rl_extra", step, round)``-permuted prompts. Every rank computes the same batches.
"""

from __future__ import annotations

import torch

from recast_mcore.utils.rng import generator


class EpochSampler:
    """Step-addressed batches over a fixed list, reshuffled every epoch from (seed, name, epoch)."""

    def __init__(self, items: list, batch_size: int, seed: int, name: str) -> None:
        if not items:
            raise ValueError(f"{name}: no examples to sample from (is the training split empty?)")
        if batch_size < 1:
            raise ValueError(f"{name}: batch size must be >= 1, got {batch_size}")
        self.items = items
        self.batch_size = batch_size
        self.seed = seed
        self.name = name
        self._perm_cache: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perm_cache:
            gen = generator(self.seed, self.name, epoch)
            if len(self._perm_cache) >= 2:  # a batch spans at most two epochs
                self._perm_cache.pop(min(self._perm_cache))
            self._perm_cache[epoch] = torch.randperm(len(self.items), generator=gen).tolist()
        return self._perm_cache[epoch]

    def batch(self, step: int) -> list:
        """Items of 0-based step ``step`` (always ``batch_size`` items; may span an epoch boundary)."""
        n = len(self.items)
        out = []
        for pos in range(step * self.batch_size, (step + 1) * self.batch_size):
            epoch, idx = divmod(pos, n)
            out.append(self.items[self._perm(epoch)[idx]])
        return out

    def extra(self, step: int, round_index: int, count: int) -> list:
        """``count`` extra items for dynamic sampling's round ``round_index`` of 1-based step ``step``."""
        gen = generator(self.seed, self.name + "_extra", step, round_index)
        perm = torch.randperm(len(self.items), generator=gen).tolist()
        return [self.items[perm[i % len(perm)]] for i in range(count)]

    def steps_for_epochs(self, epochs: float) -> int:
        """Steps that cover ``epochs`` passes (at least 1)."""
        return max(1, int(round(epochs * len(self.items) / self.batch_size)))
