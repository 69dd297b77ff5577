"""The whole run's configuration: one sub-config per component, each owned by its package."""

from __future__ import annotations

from dataclasses import dataclass, field

from recast_mcore.config.data import DataConfig


@dataclass(kw_only=True)
class RunConfig:
    """Top-level config of a `recast-train` run (sub-configs are added by their components)."""

    run_dir: str = "runs/default"
    """Directory holding the resolved config, logs, plots and checkpoints."""
    seed: int = 1234
    """Global seed."""
    data: DataConfig = field(default_factory=DataConfig)
    """Dataset and semantic IDs."""
