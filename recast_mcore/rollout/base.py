"""The rollout-engine interface and its registry (one signature; errors list the valid names)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch

from recast_mcore.config.rollout import RolloutConfig, SamplingConfig
from recast_mcore.rollout.catalog import ItemCatalog
from recast_mcore.rollout.types import BeamResults, RolloutGroups
from recast_mcore.utils.registry import Registry

LogitsFn = Callable[[torch.Tensor], torch.Tensor]
"""``logits_fn(input_ids [B, S] int64) -> logits [B, S, V]`` (causal LM; right padding is safe)."""


class RolloutEngine(Protocol):
    """What the trainer and evaluation use; every engine returns the same dataclasses."""

    policy_version: int
    """Version of the weights the engine serves now; every result carries it."""

    def generate(self, prompt_ids: list[list[int]], targets: list[list[int]], sampling: SamplingConfig) -> RolloutGroups:
        """Sample ``sampling.group_size`` valid items per prompt, with constrained per-token log-probs."""

    def beam_search(self, prompt_ids: list[list[int]], beam_width: int) -> BeamResults:
        """Exact constrained beam search: the ``beam_width`` best items per prompt."""

    def update_weights(self, hf_state_dict: dict[str, torch.Tensor] | None, version: int) -> None:
        """Serve the policy of ``version`` (HF-layout weights; None when the engine shares the actor's model)."""

    def close(self) -> None:
        """Release servers/processes."""


@dataclass
class EngineResources:
    """What an engine may need besides its config (each engine uses a subset)."""

    catalog: ItemCatalog
    """The item catalog (trie)."""
    model_dir: str = ""
    """Exported Hugging Face directory of the initial policy (SGLang engine)."""
    logits_fn: LogitsFn | None = None
    """The actor's forward (in-process engine)."""
    initial_version: int = 0
    """Weight version of the initial policy."""
    api_key: str | None = None
    """SGLang servers' API key (None: the engine resolves it from its config, see sglang_engine.resolve_api_key)."""
    server_slots: list | None = None
    """GPU placement of the servers this process launches (rollout/placement.py ServerSlot; None on CPU)."""
    remote_urls: list[str] = field(default_factory=list)
    """Servers launched by other nodes of the job."""
    memory_saver: bool = False
    """Launch servers with --enable-memory-saver (colocated on GPU: release/resume their memory)."""


EngineBuilder = Callable[[RolloutConfig, EngineResources], RolloutEngine]
_ENGINES: Registry[EngineBuilder] = Registry("rollout engine", unknown_error=ValueError)
register_engine = _ENGINES.register
registered_engines = _ENGINES.names


def build_rollout_engine(cfg: RolloutConfig, resources: EngineResources) -> RolloutEngine:
    """Build the engine named ``cfg.engine``."""
    import recast_mcore.rollout.engines  # noqa: F401  (registers the built-in engines)

    return _ENGINES.get(cfg.engine)(cfg, resources)
