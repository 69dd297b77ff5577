"""Benchmark: peak host memory per rank of ``convert_checkpoint.py from-hf`` (CPU, gloo).

    python tools/bench_import_memory.py make --out runs/bench_import          # random bf16 Qwen3-shaped models
    torchrun --nproc-per-node 2 tools/bench_import_memory.py run --tool tools/convert_checkpoint.py \\
        --json runs/bench_import/tp2.json -- from-hf --hf runs/bench_import/items --dataset runs/bench_import/data \\
        --out runs/bench_import/out_tp2 --tp 2 --params-dtype fp32

``make`` writes a prepared synthetic dataset (``data/``) and two random Qwen3-shaped models in bf16 with the
same layers: ``base/`` with a 32,000-token WordLevel tokenizer (an LLM to expand) and ``items/`` whose
vocabulary is exactly the dataset's item-only vocabulary (importable by older versions of the tool too).
``run`` executes the given converter script in this process (``runpy``) while a thread samples the RSS every
5 ms, and writes every rank's peak RSS (the whole process: interpreter, Megatron, model, transient buffers)
to ``--json``. On CPU the model's parameters are host memory too; the figures to compare are the peaks of
two converters on the same model and layout.
"""

from __future__ import annotations

import argparse
import json
import runpy
import sys
from pathlib import Path

import torch

SHAPE = dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=8, num_attention_heads=16,
             num_key_value_heads=8, head_dim=64, rms_norm_eps=1e-6, max_position_embeddings=4096)


def _word_tokenizer(words: list[str], out: Path, **roles) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token=words[0]))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=tok, **roles).save_pretrained(str(out))


def make(out: Path) -> None:
    from recast_mcore.checkpoint.hf_mapping import tokenizer_files
    from recast_mcore.config.data import DataConfig
    from recast_mcore.data.dataset import PreparedDataset
    from recast_mcore.data.prepare import prepare_dataset
    from recast_mcore.rollout.cpu_bridge import declare_torchvision_ops_in_process

    declare_torchvision_ops_in_process()
    from transformers import Qwen3Config, Qwen3ForCausalLM

    prepare_dataset(DataConfig(dataset="synthetic"), out / "data")
    vocab = PreparedDataset.load(out / "data").vocab
    torch.manual_seed(0)
    for name, rows in (("base", 32_000), ("items", vocab.vocab_size)):
        cfg = Qwen3Config(vocab_size=rows, tie_word_embeddings=True, rope_theta=1000000.0, torch_dtype="bfloat16",
                          pad_token_id=0, eos_token_id=1, bos_token_id=None, **SHAPE)
        Qwen3ForCausalLM(cfg).to(torch.bfloat16).save_pretrained(str(out / name))
    _word_tokenizer(["<pad>", "<eos>"] + [f"w{i}" for i in range(31_998)], out / "base", pad_token="<pad>", eos_token="<eos>")
    ids = dict(pad_id=vocab.pad_id, bos_id=vocab.bos_id, eos_id=vocab.eos_id)
    for fname, content in tokenizer_files(vocab.token_strings, **ids).items():
        (out / "items" / fname).write_text(json.dumps(content))
    print(f"wrote {out}/base, {out}/items ({sum(p.numel() for p in Qwen3ForCausalLM(cfg).parameters()) / 1e6:.1f}M params), {out}/data")


def run(tool: str, json_path: str, tool_args: list[str]) -> None:
    import os

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recast_mcore" / "utils"))
    import memory  # this checkout's utils/memory.py (the converter measured may be an older checkout)

    rank = int(os.environ.get("RANK", "0"))
    sys.argv = [tool, *tool_args]
    with memory.PeakRss(interval_s=0.02, keep_trace=True) as peak:
        runpy.run_path(tool, run_name="__main__")
    path = Path(json_path)
    record = {"rank": rank, "peak_rss_mib": peak.peak / 2**20, "peak_anon_mib": peak.anon_peak / 2**20, "tool": tool,
              "args": tool_args, "trace_s_rss_anon_mib": [(round(t, 2), r >> 20, a >> 20) for t, r, a in peak.trace[::5]]}
    path.with_name(f"{path.stem}.rank{rank}{path.suffix}").write_text(json.dumps(record))
    print(f"rank {rank}: peak RSS {record['peak_rss_mib']:.0f} MiB, anonymous {record['peak_anon_mib']:.0f} MiB")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--out", required=True)
    r = sub.add_parser("run")
    r.add_argument("--tool", required=True, help="path of the convert_checkpoint.py to measure")
    r.add_argument("--json", required=True, help="per-rank results go to <stem>.rank<r>.json")
    r.add_argument("tool_args", nargs=argparse.REMAINDER)
    args = p.parse_args()
    if args.cmd == "make":
        make(Path(args.out))
    else:
        run(args.tool, args.json, [a for a in args.tool_args if a != "--"])


if __name__ == "__main__":
    main()
