"""Stand-ins for pretrained LLMs (no hub downloads): a byte-level BPE tokenizer trained here with the
``tokenizers`` library and tiny random Qwen3 / Llama models created with transformers.

- ``qwen``: Qwen-style specials (``<|endoftext|>`` pad, ``<|im_start|>``, ``<|im_end|>`` eos, no bos), a ChatML
  template that honours ``enable_thinking=False``, tied embeddings, and an embedding padded beyond the
  tokenizer (like Qwen3's 151,669 tokens in 151,936 rows).
- ``llama``: Llama-3-style specials (``<|begin_of_text|>`` bos, ``<|eot_id|>`` eos, no pad), a header-style chat
  template that writes the bos, untied embeddings, as many rows as tokens, Llama-3.1 RoPE scaling (factor 8).
"""

from __future__ import annotations

from pathlib import Path

import torch

CORPUS = [
    "The user interacted with these items, oldest first: which item will the user interact with next?",
    "You are a recommender. Answer with one item. The next item is",
    "system user assistant: a short conversation about movies, books and music that people like.",
] * 40

_CHAT = {
    "qwen": ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
             "{% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking is defined and "
             "enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"),
    "llama": ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
              "{{ m['content'] }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}"
              "<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"),
}
_SPECIALS = {
    "qwen": (["<|endoftext|>", "<|im_start|>", "<|im_end|>"], dict(pad_token="<|endoftext|>", eos_token="<|im_end|>")),
    "llama": (["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>"],
              dict(bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")),
}


def make_tokenizer(kind: str, vocab_size: int = 320):
    """A byte-level BPE tokenizer trained on CORPUS, with ``kind``'s specials and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials, roles = _SPECIALS[kind]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **roles)
    fast.chat_template = _CHAT[kind]
    return fast


def make_hf_model(out_dir: str | Path, kind: str, *, layers: int = 2, seed: int = 0, extra_rows: int | None = None):
    """Save a random tiny ``kind`` model (fp32) with its tokenizer to ``out_dir``; returns (model, tokenizer)."""
    from recast_mcore.rollout.cpu_bridge import declare_torchvision_ops_in_process

    declare_torchvision_ops_in_process()
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    tok = make_tokenizer(kind)
    rows = len(tok) + (24 if extra_rows is None and kind == "qwen" else extra_rows or 0)
    common = dict(vocab_size=rows, hidden_size=64, intermediate_size=96, num_hidden_layers=layers, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6,
                  initializer_range=0.1, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                  bos_token_id=tok.bos_token_id, torch_dtype="float32")
    torch.manual_seed(seed)
    if kind == "qwen":
        model = Qwen3ForCausalLM(Qwen3Config(rope_theta=1000000.0, tie_word_embeddings=True, max_position_embeddings=512, **common))
    else:
        rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192, "rope_theta": 500000.0}
        model = LlamaForCausalLM(LlamaConfig(rope_parameters=rope, tie_word_embeddings=False, max_position_embeddings=131072, **common))
    with torch.no_grad():  # non-trivial norms, so a swapped norm mapping would show
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    model = model.float().eval()
    model.save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))
    return model, tok
