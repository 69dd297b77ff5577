"""Convert between actor dist checkpoints and Hugging Face model dirs (Llama / Qwen3 layout).

    # a pretrained HF Qwen3 / Llama dir -> actor checkpoint with the dataset's item tokens appended to its
    # vocabulary (run under torchrun for TP/PP; every rank streams only its own slices)
    python tools/convert_checkpoint.py from-hf --hf Qwen3-0.6B --dataset data/prepared --out runs/import/qwen3-0.6b
    #   -> OUT/weights (actor checkpoint, weights only: sft.init_checkpoint), OUT/hf_tokenizer (the expanded
    #      tokenizer: data.prompt.tokenizer_dir), OUT/model.yaml (the model: section), OUT/import.json (figures)
    # actor checkpoint -> HF dir loadable by transformers / SGLang
    python tools/convert_checkpoint.py to-hf --checkpoint runs/x/checkpoints --dataset data/prepared \\
        --tokenizer runs/import/qwen3-0.6b/hf_tokenizer --out hf_model
    # add a manifest to a checkpoint written before checkpoints carried one (after checking it loads)
    python tools/convert_checkpoint.py seal --checkpoint runs/x/checkpoints/rl_step_000040 --dataset data/prepared

``--checkpoint`` may be a checkpoint dir, a run dir or its ``checkpoints/`` (the newest complete checkpoint).
The model shape comes from the checkpoint's actor_meta.json (to-hf) or from the HF config.json (from-hf;
``--model`` must agree with it: every differing key is named). Vocabulary rules (appended tokens, new-row
initialization): checkpoint/hf_vocab.py, checkpoint/hf_import.py, docs/checkpoints.md. An item-only model
(a to-hf export of a from-scratch run) imports without expansion.

Safety (recast_mcore/checkpoint/safety.py, docs/reliability.md): the input checkpoint is verified against its
manifest and the dataset's fingerprint; ``--out`` is never inside a run's ``checkpoints/`` and never replaces
existing files without ``--force`` (both checked before any work); from-hf records the dataset fingerprint
and the source in the new checkpoint's manifest and moves no ``latest`` pointer. Every refusal is exit code 2
with a message.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from recast_mcore.checkpoint import manifest
from recast_mcore.checkpoint.safety import OutputError, check_output_dir
from recast_mcore.config.actor import ModelConfig, OptimConfig, ParallelConfig
from recast_mcore.config.base import ConfigError, from_dict, load_config


def _dataset(dataset_dir: str):
    from recast_mcore.data.dataset import PreparedDataset

    try:
        return PreparedDataset.load(dataset_dir)
    except (FileNotFoundError, ValueError) as exc:
        raise ValueError(f"--dataset {dataset_dir}: {exc}") from None


def _model_vocab(dataset, tokenizer_dir: str):
    """The dataset's items in the checkpoint's vocabulary (expanded when a tokenizer dir is given)."""
    from recast_mcore.config.data import PromptConfig
    from recast_mcore.data.prompts import model_vocab

    return model_vocab(dataset.vocab, PromptConfig(format="text", tokenizer_dir=tokenizer_dir)) if tokenizer_dir else dataset.vocab


def to_hf(args: argparse.Namespace) -> None:
    from recast_mcore.actor import MegatronActor, initialize_distributed
    from recast_mcore.actor.checkpointing import META
    from recast_mcore.checkpoint.convert import export_hf
    from recast_mcore.data.trie import ItemTrie
    from recast_mcore.trainer import checkpoints
    from recast_mcore.trainer.checks import check_checkpoint_matches

    out = check_output_dir(args.out, force=args.force)
    dataset = _dataset(args.dataset)
    ckpt = checkpoints.resolve(args.checkpoint, "--checkpoint")
    meta = json.loads((ckpt / META).read_text())
    model_cfg = from_dict(ModelConfig, meta["model"], source=str(ckpt / META))
    tokenizer = args.tokenizer or (str(ckpt.parent / "hf_tokenizer") if (ckpt.parent / "hf_tokenizer").is_dir() else "")
    vocab = _model_vocab(dataset, tokenizer)
    if vocab.vocab_size != meta["vocab_size"]:
        hint = "" if tokenizer else " (an imported LLM: pass --tokenizer <from-hf out>/hf_tokenizer)"
        raise ValueError(f"vocabulary has {vocab.vocab_size} tokens != checkpoint vocab_size {meta['vocab_size']}{hint}")
    check_checkpoint_matches(ckpt, model_cfg, vocab.vocab_size, dataset.fingerprint)
    parallel_cfg = ParallelConfig(tensor_parallel=args.tp, pipeline_parallel=args.pp)
    initialize_distributed(parallel_cfg)
    actor = MegatronActor(model_cfg, parallel_cfg, OptimConfig(), vocab.vocab_size,
                          ItemTrie(vocab.item_tokens, vocab.vocab_size, vocab.eos_id))
    actor.load(ckpt, load_optimizer=False)  # verifies every file's sha256 first
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    written = export_hf(actor, vocab, out, tokenizer_dir=tokenizer or None, dtype=dtype)
    if written is not None:
        print(f"wrote {written} ({args.dtype}, vocab {vocab.vocab_size}{', tokenizer ' + tokenizer if tokenizer else ''}) from {ckpt}")


def from_hf(args: argparse.Namespace) -> None:
    from recast_mcore.actor import initialize_distributed
    from recast_mcore.checkpoint.convert import ImportOptions, import_hf, import_model_config
    from recast_mcore.checkpoint.hf_import import read_hf_config

    out = check_output_dir(args.out, force=args.force)
    given = load_config(ModelConfig, args.model) if args.model else None
    model_cfg = import_model_config(read_hf_config(args.hf), given, max_seq_len=args.max_seq_len,
                                    params_dtype=args.params_dtype, given_source="--model")
    options = ImportOptions(new_rows=args.new_rows, new_row_noise=args.new_row_noise, seed=args.seed,
                            special_tokens=tuple(s for s in args.special_tokens.split(",") if s), item_eos=args.item_eos)
    parallel_cfg = ParallelConfig(tensor_parallel=args.tp, pipeline_parallel=args.pp)
    dataset = _dataset(args.dataset)
    initialize_distributed(parallel_cfg)
    summary, _ = import_hf(args.hf, dataset.vocab, out, model_cfg, parallel_cfg, options, dataset_fingerprint=dataset.fingerprint)
    mib = max(m["load_anon_added"] for m in summary["memory_per_rank"]) / 2**20
    touched = max(m["load_added"] for m in summary["memory_per_rank"]) / 2**20
    if summary["memory_per_rank"] and torch.distributed.get_rank() == 0:
        print(f"imported {args.hf} ({summary['kind']}: {summary['source_rows']} checkpoint rows + "
              f"{summary['vocab_size'] - summary['source_rows']} new, vocab {summary['vocab_size']} padded to "
              f"{summary['padded_vocab']}) -> {out}; loading added at most {mib:.1f} MiB of allocated host memory per "
              f"rank ({touched:.1f} MiB RSS with the memory-mapped checkpoint pages it read)")


def seal(args: argparse.Namespace) -> None:
    """Write manifest.json for a checkpoint written before checkpoints carried one."""
    ckpt = Path(args.checkpoint)
    meta_path = ckpt / "actor_meta.json"
    if not meta_path.is_file():
        raise ValueError(f"--checkpoint {ckpt} is not a complete actor checkpoint (no actor_meta.json)")
    if (ckpt / manifest.MANIFEST).is_file() and not args.force:
        raise ValueError(f"{ckpt} already has a {manifest.MANIFEST}; pass --force to recompute it")
    dataset = _dataset(args.dataset)
    meta = json.loads(meta_path.read_text())
    vocab = _model_vocab(dataset, args.tokenizer)
    if int(meta["vocab_size"]) != vocab.vocab_size:
        raise ValueError(f"--dataset {args.dataset} gives vocab_size {vocab.vocab_size}, the checkpoint {meta['vocab_size']}"
                         f"{'' if args.tokenizer else ' (an imported LLM: pass --tokenizer <from-hf out>/hf_tokenizer)'}")
    files = manifest.hash_files(ckpt, manifest.list_files(ckpt))
    manifest.write_manifest(ckpt, files, {**meta, "dataset": dataset.fingerprint, "sealed_by": "convert_checkpoint.py seal"})
    print(f"sealed {ckpt}: {len(files)} files, {sum(e['size'] for e in files.values())} bytes hashed")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("to-hf", help="actor checkpoint -> HF dir")
    a.add_argument("--checkpoint", required=True)
    a.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    b = sub.add_parser("from-hf", help="HF dir -> actor checkpoint (vocabulary expanded with the dataset's items)")
    b.add_argument("--hf", required=True, help="Hugging Face model dir: config.json, *.safetensors, tokenizer files")
    b.add_argument("--model", default="", help="ModelConfig YAML (optional; its shape must match config.json)")
    b.add_argument("--max-seq-len", type=int, default=4096, help="model.max_seq_len when --model is not given")
    b.add_argument("--params-dtype", choices=["", "fp32", "bf16"], default="",
                   help="model.params_dtype without --model ('' = the checkpoint's: fp32 for float32, else bf16)")
    b.add_argument("--new-rows", choices=["mean_noise", "normal"], default="mean_noise",
                   help="init of appended rows: mean of the base rows + noise x per-dim std, or N(0, noise^2)")
    b.add_argument("--new-row-noise", type=float, default=0.1, help="noise scale of --new-rows (0: exactly the mean)")
    b.add_argument("--seed", type=int, default=1234, help="seed of the new rows' noise")
    b.add_argument("--special-tokens", default="<|sid_begin|>,<|sid_end|>", help="comma-separated specials to append if missing")
    b.add_argument("--item-eos", default="<|sid_end|>", help="token that ends every response (appended if missing)")
    for s in (a, b):
        s.add_argument("--out", required=True)
        s.add_argument("--tp", type=int, default=1)
        s.add_argument("--pp", type=int, default=1)
    c = sub.add_parser("seal", help="add a manifest to a checkpoint written before manifests existed")
    c.add_argument("--checkpoint", required=True, help="one checkpoint directory")
    for s in (a, c):
        s.add_argument("--tokenizer", default="", help="expanded tokenizer of an imported LLM (<from-hf out>/hf_tokenizer; "
                       "to-hf default: hf_tokenizer next to the checkpoint when present)")
    for s in (a, b, c):
        s.add_argument("--dataset", required=True, help="prepared dataset dir (its item codes and fingerprint)")
        s.add_argument("--force", action="store_true", help="replace existing output")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        {"to-hf": to_hf, "from-hf": from_hf, "seal": seal}[args.cmd](args)
    except (ConfigError, OutputError, ValueError, KeyError, OSError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"convert_checkpoint {args.cmd}: error: {message}", file=sys.stderr)
        return 2
    finally:
        from recast_mcore.trainer.cli import destroy_process_groups

        destroy_process_groups()
    return 0


if __name__ == "__main__":
    sys.exit(main())
