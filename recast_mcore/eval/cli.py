"""``recast-eval``: constrained beam search over the full catalog for validation or test users.

    recast-eval --config examples/quickstart.yaml                        # the run's newest checkpoint
    recast-eval --config run.yaml --checkpoint runs/x/checkpoints/sft_step_000081 --split test

Loads the checkpoint into the actor, hands its weights to the configured rollout engine (in-process
torch or SGLang), runs beam search with width ``eval.beam_width`` and prints Pass@K, Recall@K, NDCG@K
(definitions: eval/metrics.py, docs/training.md) as JSON; ``--out`` also writes them to a file.
The checkpoint is verified first (its manifest: sha256 of every file, model config, dataset fingerprint);
a damaged checkpoint, another dataset or an unwritable ``--out`` stop before evaluating (exit code 2).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from recast_mcore.checkpoint.manifest import CheckpointError
from recast_mcore.config.base import ConfigError, load_config
from recast_mcore.config.run import RunConfig
from recast_mcore.trainer.checks import SetupError
from recast_mcore.utils.paths import unwritable_reason


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="recast-eval", description="beam-search ranking metrics of a checkpoint")
    parser.add_argument("--config", required=True, help="run config YAML (model, data, rollout, eval sections)")
    parser.add_argument("--checkpoint", default="", help="checkpoint dir, or a run dir / checkpoints root (its newest "
                        "complete checkpoint; default: run_dir's)")
    parser.add_argument("--split", choices=["valid", "test"], help="overrides eval.split")
    parser.add_argument("--out", default="", help="also write the metrics JSON here")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return parser.parse_args(argv)


def run_eval(cfg: RunConfig, checkpoint: str, data_keys: set[str] | None = None) -> dict[str, float]:
    """Collective: every rank builds the actor and loads (verifies) the checkpoint; rank 0 evaluates (others get {})."""
    from recast_mcore.eval.evaluate import eval_examples, evaluate, seen_items
    from recast_mcore.trainer.checks import check_checkpoint_matches
    from recast_mcore.trainer.job import build_actor, preflight_data
    from recast_mcore.trainer.restore import resolve_checkpoint
    from recast_mcore.trainer.weights import build_engine

    dataset, cfg = preflight_data(cfg, data_keys)
    path = resolve_checkpoint(checkpoint or Path(cfg.run_dir) / "checkpoints", "--checkpoint")
    check_checkpoint_matches(path, cfg.model, dataset.vocab.vocab_size, dataset.fingerprint)
    actor = build_actor(cfg, dataset)
    state = actor.load(path, load_optimizer=False)
    engine = build_engine(cfg.rollout, cfg.model, dataset.vocab, actor, int(state.get("policy_version", 0)),
                          Path(cfg.run_dir) / "rollout_eval",
                          tokenizer_dir=cfg.data.prompt.hf_tokenizer_dir)
    if engine is None:
        return {}
    try:
        examples = eval_examples(dataset, cfg.eval)
        metrics = evaluate(engine, dataset.vocab, examples, cfg.eval, seen_items(dataset, examples, cfg.eval.split))
    finally:
        engine.close()
    return {"checkpoint": str(path), "split": cfg.eval.split, **metrics}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        overrides = list(args.overrides) + ([f"eval.split={args.split}"] if args.split else [])
        cfg = load_config(RunConfig, args.config, overrides)
        if args.out and unwritable_reason(args.out):
            raise SetupError(f"--out {args.out}: {unwritable_reason(args.out)}; choose a writable file path")
        from recast_mcore.trainer.cli import data_keys_given

        result = run_eval(cfg, args.checkpoint, data_keys_given(args.config, overrides))
    except (ConfigError, SetupError, CheckpointError) as exc:
        print(f"recast-eval: error: {exc}", file=sys.stderr)
        return 2
    finally:
        from recast_mcore.trainer.cli import destroy_process_groups

        destroy_process_groups()
    return report(result, args.out)


def report(result: dict, out: str) -> int:
    """Print the metrics (rank 0) and write ``out``; a write that fails anyway is exit code 2 (metrics are printed)."""
    if not result:
        return 0
    text = json.dumps(result, indent=1)
    print(text)
    if out:
        try:
            Path(out).write_text(text + "\n")
        except OSError as exc:
            print(f"recast-eval: error: cannot write --out {out}: {exc} (the metrics are printed above)", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
