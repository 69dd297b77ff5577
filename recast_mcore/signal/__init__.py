"""Signal stage: rewarded rollouts -> the actor's UpdateBatch (GRPO baseline, ReCast repair-then-contrast)."""

from recast_mcore.signal.batch import Role, UpdateBatch, update_width_summary
from recast_mcore.signal.losses import LOSSES, compute_policy_loss, get_loss, register_loss
from recast_mcore.signal.stats import SignalStats

__all__ = [
    "LOSSES",
    "Role",
    "SignalStats",
    "UpdateBatch",
    "compute_policy_loss",
    "get_loss",
    "register_loss",
    "update_width_summary",
]
