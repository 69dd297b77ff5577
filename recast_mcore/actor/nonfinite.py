"""The non-finite step guard: a NaN/Inf loss or gradient never reaches the weights.

Megatron-Core reports a failed step only through an fp16 grad scaler (``optimizer.step()`` returns
``update_successful=False`` when ``prepare_grads`` finds inf/NaN); in bf16 and fp32 it steps on NaN
gradients. So before every optimizer step the actor computes Megatron's own global gradient norm
(``optimizer.prepare_grads()`` then ``optimizer.get_grad_norm()``: all-reduced over the model-parallel
group, or the whole world with the distributed optimizer, so every rank gets the same value) and checks it
and the step's loss (all-reduced over DP, broadcast over PP: identical on all ranks). Every rank therefore
takes the same decision without another collective:

- ``skip``: gradients are dropped, the optimizer, its state and the LR schedule are not stepped; the step is
  counted (``nonfinite_skipped`` / ``skipped_steps_total`` in the metrics) and logged. ``max_consecutive_skips``
  skipped steps in a row raise ``NonFiniteStepError`` (a diverged run should not spin).
- ``stop``: raise ``NonFiniteStepError`` naming the step, the loss and the grad norm. In this mode the DDP
  config's ``check_for_nan_in_grad`` is on too, so the rank whose LOCAL gradients first turn NaN/Inf raises
  before the data-parallel collective, naming the bucket (megatron/core/distributed/param_and_grad_buffer.py
  ``check_grads``); it is off under ``skip`` because it raises on that rank only and would leave the others
  waiting in the collective.

Cost: one extra global grad-norm computation per step (memory-bound read of the local gradient shard; Megatron
computes it again for clipping) and no extra collective beyond the norm's scalar all-reduce.
"""

from __future__ import annotations

import logging
import math

from recast_mcore.config.actor import OptimConfig

log = logging.getLogger(__name__)


class NonFiniteStepError(RuntimeError):
    """A step produced a NaN/Inf loss or gradient and the policy says stop."""


class StepGuard:
    """Decides skip / step / stop for one optimizer step (same decision on every rank)."""

    def __init__(self, optim_cfg: OptimConfig) -> None:
        self.policy = optim_cfg.nonfinite_policy
        self.max_consecutive = optim_cfg.max_consecutive_skips
        self.skipped_total = 0
        self.consecutive = 0

    def should_skip(self, step: int, loss: float, grad_norm: float) -> bool:
        """True: skip this step. Raises NonFiniteStepError under ``stop`` or after too many skips."""
        if math.isfinite(loss) and math.isfinite(grad_norm):
            self.consecutive = 0
            return False
        what = f"optimizer step {step + 1}: loss={loss}, global grad norm={grad_norm}"
        if self.policy == "stop":
            raise NonFiniteStepError(f"{what} is not finite (optim.nonfinite_policy=stop); weights left as before the step")
        self.skipped_total += 1
        self.consecutive += 1
        if self.max_consecutive and self.consecutive >= self.max_consecutive:
            raise NonFiniteStepError(
                f"{what} is not finite, {self.consecutive} steps in a row (optim.max_consecutive_skips="
                f"{self.max_consecutive}); the run looks diverged - lower the LR or resume from an earlier checkpoint"
            )
        log.warning("skipping %s (non-finite; %d skipped so far); weights and optimizer state unchanged", what, self.skipped_total)
        return True

    def metrics(self, skipped: bool) -> dict[str, float]:
        return {"nonfinite_skipped": float(skipped), "skipped_steps_total": float(self.skipped_total)}
