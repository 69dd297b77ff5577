"""The signal stage's output: the sequences the actor trains on and how (pure torch).

Shapes: ``N`` rows (sequences) sent to the actor, ``T`` response tokens per row (item tokens + EOS),
``P`` contrastive pairs. Rows of one group (one prompt) are contiguous and share ``group_index``;
micro-batches must never split a group, so every pair lies inside one micro-batch
(``group_partition`` gives such splits, ``select`` checks it).

The policy loss named by ``loss_name`` (see ``recast_mcore.signal.losses``) reads the fields it needs:
``ppo_clip`` uses ``old_logprobs``, ``advantages``, ``weights``, ``token_mask``, ``roles`` (GT_NLL rows);
``pairwise_contrast`` uses ``pairs``, ``pair_weights``, ``token_mask``, ``weights``, ``roles``
(+ ``old_logprobs`` for its optional ratio clipping). Both add the KL term when ``kl`` is set
(it needs ``ref_logprobs``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import torch

from recast_mcore.signal.stats import SignalStats


class Role(IntEnum):
    """What a row is to the loss (stored as int64 codes in ``UpdateBatch.roles``)."""

    SAMPLED = 0
    """A sampled candidate trained with its advantage (GRPO: every candidate)."""
    POSITIVE = 1
    """The strongest sampled positive of a group (contrastive)."""
    NEGATIVE = 2
    """A hard negative (contrastive), or the lowest-reward member of an all-positive group."""
    ANCHOR = 3
    """A repaired positive: the ground-truth target item, teacher-forced, not sampled."""
    PAD = 4
    """Padding row added by ``pad_to``: zero weight, no tokens count, in no pair."""
    GT_NLL = 5
    """A ground-truth target, teacher-forced, trained by NLL instead of the PPO surrogate (``grpo_gt`` control)."""


@dataclass
class UpdateBatch:
    """N sequences for one actor update plus everything the policy loss needs."""

    prompt_ids: list[list[int]]
    """N token-id lists (``<bos>`` + history item tokens); lengths vary."""
    responses: torch.Tensor
    """[N, T] int64: response tokens (item tokens, then EOS)."""
    old_logprobs: torch.Tensor
    """[N, T] float32: log-probs of the behaviour policy (rollout engine; for an ANCHOR row, the actor's
    forward-only constrained log-probs from ``score_fn``)."""
    advantages: torch.Tensor
    """[N] float32: per-sequence advantage, broadcast to every token by ``ppo_clip`` (0 for contrastive rows)."""
    weights: torch.Tensor
    """[N] float32: per-row weight (1 normally, ``anchor_weight`` for ANCHOR rows, 0 for PAD rows)."""
    roles: torch.Tensor
    """[N] int64: ``Role`` codes."""
    group_index: torch.Tensor
    """[N] int64: which prompt (group) of the step a row belongs to; non-decreasing; -1 for PAD rows."""
    token_mask: torch.Tensor
    """[N, T] bool: tokens that count in the loss (all True for real rows, all False for PAD rows)."""
    pairs: torch.Tensor
    """[P, 2] int64: (positive row, negative row) indices into this batch; empty [0, 2] for GRPO."""
    pair_weights: torch.Tensor
    """[P] float32: weight of each pair (``anchor_weight`` when the positive is a repaired ANCHOR)."""
    loss_name: str
    """Registered policy loss the actor applies (``recast_mcore.signal.losses.LOSSES``)."""
    loss_params: Any
    """The loss's typed params (``PpoLossConfig`` or ``ContrastLossConfig`` from ``config/signal.py``)."""
    kl: Any = None
    """``KlConfig`` of the KL-to-reference term (set by ``build_update_batch`` when ``signal.kl.use_kl``), or None."""
    stats: SignalStats = field(default_factory=SignalStats)
    """Statistics of the step's signal (computed on the whole batch before any ``select``)."""
    ref_logprobs: torch.Tensor | None = None
    """[N, T] float32 or None: reference-policy log-probs, needed only when the loss uses a KL term."""
    rewards: torch.Tensor | None = None
    """[N] float32 or None: reward of each row (for logging; ANCHOR rows carry 1.0)."""

    @property
    def num_sequences(self) -> int:
        """N, the number of rows."""
        return self.responses.shape[0]

    @property
    def num_pairs(self) -> int:
        """P, the number of contrastive pairs."""
        return self.pairs.shape[0]

    @property
    def response_len(self) -> int:
        """T, the response length."""
        return self.responses.shape[1]

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field whose shape, dtype or content is inconsistent."""
        if self.responses.dim() != 2:
            raise ValueError(f"UpdateBatch.responses must be [N, T], got shape {tuple(self.responses.shape)}")
        n, t = self.responses.shape
        if len(self.prompt_ids) != n:
            raise ValueError(f"UpdateBatch.prompt_ids has {len(self.prompt_ids)} entries, expected N={n}")
        _check(self.responses, "responses", (n, t), torch.int64)
        _check(self.old_logprobs, "old_logprobs", (n, t), None, floating=True)
        _check(self.token_mask, "token_mask", (n, t), torch.bool)
        for name in ("advantages", "weights"):
            _check(getattr(self, name), name, (n,), None, floating=True)
        _check(self.roles, "roles", (n,), torch.int64)
        _check(self.group_index, "group_index", (n,), torch.int64)
        _check(self.pairs, "pairs", (self.pairs.shape[0], 2), torch.int64)
        _check(self.pair_weights, "pair_weights", (self.pairs.shape[0],), None, floating=True)
        if self.ref_logprobs is not None:
            _check(self.ref_logprobs, "ref_logprobs", (n, t), None, floating=True)
        if self.rewards is not None:
            _check(self.rewards, "rewards", (n,), None, floating=True)
        if n and not bool(torch.isfinite(self.old_logprobs).all()):
            raise ValueError("UpdateBatch.old_logprobs contains non-finite values")
        valid_roles = {int(r) for r in Role}
        bad_roles = set(self.roles.tolist()) - valid_roles
        if bad_roles:
            raise ValueError(f"UpdateBatch.roles has unknown codes {sorted(bad_roles)}; valid: {sorted(valid_roles)}")
        self._validate_groups()
        self._validate_pairs()

    def _validate_groups(self) -> None:
        real = self.group_index[self.group_index >= 0]
        if real.numel() > 1 and bool((real[1:] < real[:-1]).any()):
            raise ValueError("UpdateBatch.group_index must be non-decreasing (rows of a group contiguous)")
        is_pad = self.roles == Role.PAD
        if not torch.equal(is_pad, self.group_index < 0):
            raise ValueError("UpdateBatch: PAD rows (and only they) must have group_index -1")
        if bool(self.token_mask[is_pad].any()) or bool((self.weights[is_pad] != 0).any()):
            raise ValueError("UpdateBatch: PAD rows must have no counted tokens and zero weight")

    def _validate_pairs(self) -> None:
        if self.num_pairs == 0:
            return
        n = self.num_sequences
        if int(self.pairs.min()) < 0 or int(self.pairs.max()) >= n:
            raise ValueError(f"UpdateBatch.pairs index out of range [0, {n})")
        pos, neg = self.pairs[:, 0], self.pairs[:, 1]
        if not torch.equal(self.group_index[pos], self.group_index[neg]):
            raise ValueError("UpdateBatch.pairs: a pair's rows belong to different groups")
        if bool((pos == neg).any()):
            raise ValueError("UpdateBatch.pairs: a pair contrasts a row with itself")
        if bool((self.roles[pos] == Role.PAD).any()) or bool((self.roles[neg] == Role.PAD).any()):
            raise ValueError("UpdateBatch.pairs: a pair references a PAD row")

    def select(self, indices: torch.Tensor | list[int]) -> UpdateBatch:
        """Sub-batch of rows ``indices`` (kept in the given order); pairs re-indexed.

        Pairs with both rows selected are kept; a pair with only one row selected raises
        (that selection splits a group). ``stats`` is shared (it describes the whole step).
        """
        idx = torch.as_tensor(indices, dtype=torch.int64).reshape(-1)
        n = self.num_sequences
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise IndexError(f"UpdateBatch.select: indices out of range [0, {n})")
        new_pos = torch.full((n,), -1, dtype=torch.int64)
        new_pos[idx] = torch.arange(idx.numel())
        mapped = new_pos[self.pairs] if self.num_pairs else self.pairs.clone()
        inside = (mapped >= 0).all(dim=1)
        if bool(((mapped >= 0).any(dim=1) & ~inside).any()):
            raise ValueError("UpdateBatch.select: indices split a contrastive pair (a group is split)")
        return dataclasses.replace(
            self,
            prompt_ids=[self.prompt_ids[i] for i in idx.tolist()],
            responses=self.responses[idx],
            old_logprobs=self.old_logprobs[idx],
            advantages=self.advantages[idx],
            weights=self.weights[idx],
            roles=self.roles[idx],
            group_index=self.group_index[idx],
            token_mask=self.token_mask[idx],
            pairs=mapped[inside],
            pair_weights=self.pair_weights[inside],
            ref_logprobs=None if self.ref_logprobs is None else self.ref_logprobs[idx],
            rewards=None if self.rewards is None else self.rewards[idx],
        )

    def to(self, device: torch.device | str) -> UpdateBatch:
        """The same batch with every tensor moved to ``device`` (``loss_params`` and ``stats`` shared)."""

        def move(x: torch.Tensor | None) -> torch.Tensor | None:
            return None if x is None else x.to(device)

        return dataclasses.replace(
            self,
            **{f.name: move(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name in _TENSOR_FIELDS},
        )

    def group_partition(self, num_parts: int) -> list[torch.Tensor]:
        """Split the rows into ``num_parts`` index tensors without splitting a group.

        Groups are assigned in order, each to the part its middle row falls in (part
        ``floor(mid * num_parts / N)``), so parts are contiguous and hold ~N / num_parts rows
        (parts can be empty when there are fewer groups than parts).
        Use it for data-parallel shards and micro-batches; ``pad_to`` equalizes row counts.
        """
        if num_parts < 1:
            raise ValueError(f"group_partition: num_parts must be >= 1, got {num_parts}")
        parts: list[list[int]] = [[] for _ in range(num_parts)]
        n = self.num_sequences
        for start, end in group_bounds(self.group_index):
            # the group goes to the part its middle row falls in, so parts stay contiguous and balanced
            part = min(num_parts - 1, int((start + end) * num_parts // (2 * n)))
            parts[part].extend(range(start, end))
        return [torch.tensor(p, dtype=torch.int64) for p in parts]

    def pad_to(self, num_rows: int) -> UpdateBatch:
        """Append PAD rows (zero weight, no counted tokens, in no pair) up to ``num_rows`` rows.

        For engines that need equal micro-batch sizes; losses give PAD rows exactly zero loss/denom.
        """
        n, t = self.responses.shape
        extra = num_rows - n
        if extra < 0:
            raise ValueError(f"pad_to: batch has {n} rows, more than {num_rows}")
        if extra == 0:
            return self
        pad_prompt = self.prompt_ids[0][:1] if n else [1]

        def cat(x: torch.Tensor, fill: float | int | bool) -> torch.Tensor:
            return torch.cat([x, torch.full((extra, *x.shape[1:]), fill, dtype=x.dtype)])

        return dataclasses.replace(
            self,
            prompt_ids=self.prompt_ids + [list(pad_prompt) for _ in range(extra)],
            responses=cat(self.responses, int(self.responses[0, -1]) if n else 0),
            old_logprobs=cat(self.old_logprobs, 0.0),
            advantages=cat(self.advantages, 0.0),
            weights=cat(self.weights, 0.0),
            roles=cat(self.roles, int(Role.PAD)),
            group_index=cat(self.group_index, -1),
            token_mask=cat(self.token_mask, False),
            ref_logprobs=None if self.ref_logprobs is None else cat(self.ref_logprobs, 0.0),
            rewards=None if self.rewards is None else cat(self.rewards, 0.0),
        )


_TENSOR_FIELDS = (
    "responses", "old_logprobs", "advantages", "weights", "roles", "group_index",
    "token_mask", "pairs", "pair_weights", "ref_logprobs", "rewards",
)


def _check(x: Any, name: str, shape: tuple[int, ...], dtype: torch.dtype | None, floating: bool = False) -> None:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"UpdateBatch.{name} must be a torch.Tensor, got {type(x).__name__}")
    if tuple(x.shape) != shape:
        raise ValueError(f"UpdateBatch.{name} has shape {tuple(x.shape)}, expected {shape}")
    if dtype is not None and x.dtype != dtype:
        raise ValueError(f"UpdateBatch.{name} has dtype {x.dtype}, expected {dtype}")
    if floating and not x.is_floating_point():
        raise ValueError(f"UpdateBatch.{name} must be floating point, got {x.dtype}")


def group_bounds(group_index: torch.Tensor) -> list[tuple[int, int]]:
    """[(start, end)) row ranges of consecutive equal ``group_index`` values (PAD rows: one range each)."""
    gi = group_index.tolist()
    bounds, start = [], 0
    for i in range(1, len(gi) + 1):
        if i == len(gi) or gi[i] != gi[start] or gi[start] < 0:
            bounds.append((start, i))
            start = i
    return bounds


def update_width_summary(group_index: torch.Tensor) -> dict[str, float]:
    """Rows sent to the actor per group: mean/min/max over the groups present in ``group_index`` [N].

    PAD rows (index -1) are ignored. Groups that send no row do not appear in ``group_index``,
    so divide ``N`` by the step's prompt count yourself (``SignalStats.update_width``) for the
    per-prompt width including skipped groups.
    """
    real = group_index[group_index >= 0]
    if real.numel() == 0:
        return {"width_mean": 0.0, "width_min": 0.0, "width_max": 0.0, "groups": 0.0}
    _, counts = torch.unique_consecutive(real, return_counts=True)
    counts = counts.float()
    return {
        "width_mean": float(counts.mean()),
        "width_min": float(counts.min()),
        "width_max": float(counts.max()),
        "groups": float(counts.numel()),
    }
