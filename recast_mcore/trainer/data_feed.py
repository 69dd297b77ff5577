"""Deterministic batches for both stages, addressed by step (so a resumed run draws the same batches).

SFT: every prefix of every training sequence is one example ``(history, next item)``; the examples are
shuffled per epoch with ``generator(seed, "sft_epoch", e)`` and step s takes the global slice
``[s * batch, (s + 1) * batch)`` of the concatenated epochs.

RL: the training prompts (``dataset.examples("train")``) are shuffled per epoch with
``generator(seed, "rl_epoch", e)``; step s takes prompts ``[s * B, (s + 1) * B)`` of the concatenated
epochs (an epoch's tail joins the next epoch's head). Every rank computes the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from recast_mcore.utils.rng import generator


@dataclass(frozen=True)
class Prompt:
    """One RL prompt or SFT example: history item ids (oldest first) and the target item ids."""

    user: int
    history: tuple[int, ...]
    targets: tuple[int, ...]


def sft_examples(train_examples, max_history: int) -> list[Prompt]:
    """Every prefix of each user's training sequence (history + last training item) predicts its next item.

    ``train_examples``: ``PreparedDataset.examples("train")`` (history, targets[0] = last training item).
    The history of each example keeps at most ``max_history`` most recent items; prefixes with an empty
    history are skipped (nothing to condition on).
    """
    out: list[Prompt] = []
    for ex in train_examples:
        sequence = list(ex.history) + [ex.targets[0]]
        for i in range(1, len(sequence)):
            history = sequence[max(0, i - max_history) : i]
            out.append(Prompt(user=int(ex.user), history=tuple(history), targets=(sequence[i],)))
    return out


def rl_prompts(train_examples) -> list[Prompt]:
    """The RL prompts: one per user, the training sequence minus its last item -> the last training item(s)."""
    return [Prompt(user=int(ex.user), history=tuple(ex.history), targets=tuple(ex.targets)) for ex in train_examples]


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

    def steps_for_epochs(self, epochs: float) -> int:
        """Steps that cover ``epochs`` passes (at least 1)."""
        return max(1, int(round(epochs * len(self.items) / self.batch_size)))
