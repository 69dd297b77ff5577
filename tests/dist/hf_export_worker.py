"""World-size-1 worker: build the real Megatron model, export it to HF, save its logits for comparison.

Usage: python tests/dist/hf_export_worker.py OUT_DIR QK_LAYERNORM(0|1) TIE(0|1)
Writes OUT_DIR/hf (the exported model) and OUT_DIR/megatron.pt {tokens, logits, mcore_sd}.
"""

import sys
from pathlib import Path

import torch


def main() -> None:
    out, qk, tie = Path(sys.argv[1]), sys.argv[2] == "1", sys.argv[3] == "1"
    from recast_mcore.actor.model import build_model_chunks
    from recast_mcore.actor.parallel import destroy_distributed, initialize_distributed
    from recast_mcore.checkpoint.hf_mapping import export_hf_dir, mcore_to_hf
    from recast_mcore.config.actor import ModelConfig, ParallelConfig

    vocab = 4 + 3 * 8
    strings = ["<pad>", "<bos>", "<eos>", "<sep>"] + [f"<{l}_{c}>" for l in "abc" for c in range(8)]
    model_cfg = ModelConfig(num_layers=2, hidden_size=64, ffn_hidden_size=96, num_attention_heads=4,
                            num_query_groups=2, kv_channels=24, qk_layernorm=qk, tie_embeddings=tie, rotary_base=500)
    parallel_cfg = ParallelConfig()
    initialize_distributed(parallel_cfg)
    (model,), _ = build_model_chunks(model_cfg, parallel_cfg, vocab)
    with torch.no_grad():  # non-trivial norm weights so a swapped norm mapping would show
        for name, p in model.named_parameters():
            if "layernorm" in name:
                p.add_(0.1 * torch.randn_like(p))
    model.eval()
    s = 12
    tokens = torch.randint(0, vocab, (3, s), generator=torch.Generator().manual_seed(0))
    pos = torch.arange(s).expand(3, s)
    mask = torch.triu(torch.ones(1, 1, s, s, dtype=torch.bool), 1)
    with torch.no_grad():
        logits = model(tokens, pos, mask)[..., :vocab]
    mcore_sd = {k: v for k, v in model.state_dict().items() if "_extra_state" not in k}
    export_hf_dir(out / "hf", mcore_to_hf(mcore_sd, model_cfg, vocab), model_cfg, strings, pad_id=0, bos_id=1, eos_id=2)
    torch.save({"tokens": tokens, "logits": logits, "mcore_sd": mcore_sd, "model_cfg": vars(model_cfg)}, out / "megatron.pt")
    destroy_distributed()


if __name__ == "__main__":
    main()
