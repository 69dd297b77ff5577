"""Rank 0 drives the step; the other ranks follow its requests (Megatron calls are collective).

Rollout and the signal builder run on rank 0 only, but the builder may need the actor's forward-only
log-probs (ReCast's repaired anchors), and ``actor.logprobs`` is a collective over all ranks. So:

- rank 0 calls ``Step0.score(prompt_ids, responses)``: it broadcasts ``("score", payload)`` and joins
  the collective ``actor.logprobs`` call; then ``Step0.finish(batch)`` broadcasts ``("batch", batch)``;
- every other rank calls ``follow(actor)``: it joins each ``score`` request until the batch arrives,
  and returns it.

So the UpdateBatch built on rank 0 ends up on every rank, and every rank then calls ``actor.update``.
The same loop serves rank 0's evaluation (``finish(None)`` ends it) and a ``resync`` (a rollout server
restarted: every rank joins ``trainer.weights.sync_weights`` to re-send the current weights).
All messages go over the gloo control group (utils/dist.py): followers may wait for hours.
At world size 1 this is a direct call.
"""

from __future__ import annotations

from typing import Any

import torch

from recast_mcore.utils.dist import broadcast_object


class Step0:
    """Rank 0's side: score requests joined by the followers, then the final batch broadcast."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def score(self, prompt_ids: list[list[int]], responses: torch.Tensor) -> torch.Tensor:
        """[N, T] constrained token log-probs of the current actor (collective over all ranks)."""
        broadcast_object(("score", (prompt_ids, responses)))
        return self.actor.logprobs(prompt_ids, responses)

    def finish(self, payload: Any) -> Any:
        """Broadcast the step's result (the UpdateBatch, or None to skip the update)."""
        broadcast_object(("batch", payload))
        return payload

    def abort(self, message: str) -> None:
        """Tell the followers rank 0 failed so they raise too instead of hanging."""
        broadcast_object(("abort", message))


def follow(actor: Any) -> Any:
    """Other ranks' side: serve score and resync requests until rank 0 sends the batch; return it."""
    while True:
        kind, payload = broadcast_object(None)
        if kind == "score":
            actor.logprobs(*payload)
        elif kind == "resync":
            from recast_mcore.trainer.weights import sync_weights

            sync_weights(None, actor, 0, resync=True)
        elif kind == "batch":
            return payload
        elif kind == "abort":
            raise RuntimeError(f"rank 0 failed during the rollout/signal stage: {payload}")
        else:
            raise RuntimeError(f"unexpected message from rank 0: {kind!r}")
