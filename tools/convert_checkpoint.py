"""Convert between actor dist checkpoints and Hugging Face model dirs (Llama / Qwen3 layout).

    # actor checkpoint -> HF dir loadable by transformers / SGLang (vocabulary from a prepared dataset)
    python tools/convert_checkpoint.py to-hf --checkpoint runs/x/checkpoints --dataset data/prepared --out hf_model
    # HF dir -> actor checkpoint (model weights only; fresh optimizer), at any TP/PP under torchrun
    python tools/convert_checkpoint.py from-hf --hf hf_model --model examples/models/tiny-cpu.yaml --out ckpt/init

``--checkpoint`` may be a checkpoint dir or a root with a ``latest`` pointer. The model shape comes
from the checkpoint's actor_meta.json (to-hf) or from --model (from-hf, checked against config.json).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from recast_mcore.checkpoint.hf_mapping import export_hf_dir, hf_config_dict, hf_to_mcore, mcore_to_hf
from recast_mcore.config.actor import ModelConfig, OptimConfig, ParallelConfig
from recast_mcore.config.base import from_dict, load_config


def _dataset_vocab(dataset_dir: str):
    from recast_mcore.data.dataset import PreparedDataset

    ds = PreparedDataset.load(dataset_dir)
    return ds.vocab, ds.trie


def to_hf(args: argparse.Namespace) -> None:
    from recast_mcore.actor import MegatronActor, destroy_distributed, initialize_distributed
    from recast_mcore.actor.checkpointing import META, resolve

    ckpt = resolve(Path(args.checkpoint))
    meta = json.loads((ckpt / META).read_text())
    model_cfg = from_dict(ModelConfig, meta["model"], source=str(ckpt / META))
    vocab, trie = _dataset_vocab(args.dataset)
    if vocab.vocab_size != meta["vocab_size"]:
        raise ValueError(f"dataset vocab_size {vocab.vocab_size} != checkpoint vocab_size {meta['vocab_size']}")
    parallel_cfg = ParallelConfig(tensor_parallel=args.tp, pipeline_parallel=args.pp)
    initialize_distributed(parallel_cfg)
    actor = MegatronActor(model_cfg, parallel_cfg, OptimConfig(), vocab.vocab_size, trie)
    actor.load(ckpt, load_optimizer=False)
    full = actor.full_state_dict()
    if full is not None:
        dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
        hf = {k: v.to(dtype) for k, v in mcore_to_hf(full, model_cfg, vocab.vocab_size).items()}
        ids = dict(pad_id=vocab.pad_id, bos_id=vocab.bos_id, eos_id=vocab.eos_id)
        out = export_hf_dir(args.out, hf, model_cfg, vocab.token_strings, **ids)
        print(f"wrote {out} ({len(hf)} tensors, {args.dtype})")
    destroy_distributed()


def _check_hf_config(hf_dir: Path, model_cfg: ModelConfig, vocab_size: int) -> None:
    got = json.loads((hf_dir / "config.json").read_text())
    want = hf_config_dict(model_cfg, vocab_size, pad_id=0, bos_id=1, eos_id=2)
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "head_dim", "tie_word_embeddings", "vocab_size"):
        if key in got and got[key] != want[key]:
            raise ValueError(f"{hf_dir}/config.json has {key}={got[key]}, --model gives {want[key]}")


def from_hf(args: argparse.Namespace) -> None:
    from safetensors.torch import load_file

    from recast_mcore.actor import MegatronActor, destroy_distributed, initialize_distributed
    from recast_mcore.actor.model import padded_vocab_size

    hf_dir = Path(args.hf)
    model_cfg = load_config(ModelConfig, args.model)
    vocab, trie = _dataset_vocab(args.dataset)
    _check_hf_config(hf_dir, model_cfg, vocab.vocab_size)
    hf = {}
    for f in sorted(hf_dir.glob("*.safetensors")):
        hf.update(load_file(str(f)))
    full = hf_to_mcore({k: v.float() for k, v in hf.items()}, model_cfg, padded_vocab_size(vocab.vocab_size))
    parallel_cfg = ParallelConfig(tensor_parallel=args.tp, pipeline_parallel=args.pp)
    initialize_distributed(parallel_cfg)
    actor = MegatronActor(model_cfg, parallel_cfg, OptimConfig(), vocab.vocab_size, trie)
    actor.load_full_state_dict(full)
    actor.save(Path(args.out), {"source": str(hf_dir)})
    print(f"wrote actor checkpoint {args.out}")
    destroy_distributed()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("to-hf", help="actor checkpoint -> HF dir")
    a.add_argument("--checkpoint", required=True)
    a.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    b = sub.add_parser("from-hf", help="HF dir -> actor checkpoint")
    b.add_argument("--hf", required=True)
    b.add_argument("--model", required=True, help="ModelConfig YAML of the HF model's shape")
    for s in (a, b):
        s.add_argument("--dataset", required=True, help="prepared dataset dir (its vocabulary and trie)")
        s.add_argument("--out", required=True)
        s.add_argument("--tp", type=int, default=1)
        s.add_argument("--pp", type=int, default=1)
    args = p.parse_args()
    to_hf(args) if args.cmd == "to-hf" else from_hf(args)


if __name__ == "__main__":
    main()
