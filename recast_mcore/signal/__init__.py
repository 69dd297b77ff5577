"""Signal stage: rewarded rollouts -> the actor's UpdateBatch (GRPO baseline, ReCast repair-then-contrast).

Importing the package registers the builders (``grpo``, ``recast``) and the losses
(``ppo_clip``, ``pairwise_contrast``).
"""

from recast_mcore.signal import grpo as _grpo  # noqa: F401  (registers "grpo")
from recast_mcore.signal import recast as _recast  # noqa: F401  (registers "recast")
from recast_mcore.signal.batch import Role, UpdateBatch, update_width_summary
from recast_mcore.signal.dynamic_sampling import SamplingInfo, fill_with_varied_groups
from recast_mcore.signal.inputs import ScoreFn, SignalInputs
from recast_mcore.signal.losses import LOSSES, compute_policy_loss, get_loss, register_loss
from recast_mcore.signal.registry import BUILDERS, build_update_batch, get_builder, register_builder
from recast_mcore.signal.stats import SignalStats

__all__ = [
    "BUILDERS",
    "LOSSES",
    "Role",
    "SamplingInfo",
    "ScoreFn",
    "SignalInputs",
    "SignalStats",
    "UpdateBatch",
    "build_update_batch",
    "compute_policy_loss",
    "fill_with_varied_groups",
    "get_builder",
    "get_loss",
    "register_builder",
    "register_loss",
    "update_width_summary",
]
