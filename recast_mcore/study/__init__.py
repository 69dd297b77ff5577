"""GRPO vs ReCast studies: one SFT stage, arms x seeds at a matched rollout budget, a report (docs/results.md)."""
