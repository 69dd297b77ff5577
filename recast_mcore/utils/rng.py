"""Deterministic seeds derived from (seed, stage, step, ...) so a resumed run replays the same randomness.

Nothing in the trainer keeps RNG state across steps: every step reseeds torch, numpy and python's
`random` from ``derive_seed(seed, stage, step)``, and hands the rollout engine a sampling seed derived
the same way. A run resumed at step s therefore draws exactly what the uninterrupted run drew at s.
"""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed from the global seed and any keys (e.g. ``"rl", step, "rollout"``); stable across runs."""
    text = "/".join([str(int(seed))] + [str(k) for k in keys])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and python's random from one integer."""
    torch.manual_seed(seed)
    np.random.seed(seed % (1 << 32))
    random.seed(seed)


def generator(seed: int, *keys: object) -> torch.Generator:
    """A CPU torch.Generator seeded with ``derive_seed(seed, *keys)``."""
    gen = torch.Generator()
    gen.manual_seed(derive_seed(seed, *keys))
    return gen
