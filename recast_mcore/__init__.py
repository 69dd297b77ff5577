"""recast_mcore: RL for generative recommenders (GRPO baseline and ReCast) on Megatron-Core actors and SGLang rollouts.

Package map (the import fence is tested in tests/test_import_fence.py): ``actor`` (the only package that
imports Megatron / Transformer Engine), ``rollout`` (the only one that imports SGLang), ``signal``,
``rewards``, ``data``, ``eval``, ``config``, ``checkpoint``, ``trainer``, ``utils``.
"""

__version__ = "0.1.0"
