"""Megatron GPT <-> Hugging Face (Llama / Qwen3) weight mapping, pure torch (no megatron import).

Input is the FULL Megatron state dict (TP- and PP-gathered, global layer numbers, ``_extra_state`` entries
ignored), as returned by ``MegatronActor.full_state_dict()``. Output is the HF layout SGLang and
transformers load: ``LlamaForCausalLM`` when ``qk_layernorm`` is off, ``Qwen3ForCausalLM`` when on.

Per layer ``i`` (``h`` = head_dim, ``nq`` query heads, ``ng`` query groups = KV heads, ``r = nq // ng``):

=========================================================  ==========================================
Megatron                                                   Hugging Face
=========================================================  ==========================================
embedding.word_embeddings.weight            [Vp, d]        model.embed_tokens.weight        [V, d]
decoder.layers.i.input_layernorm.weight  (local spec) or   model.layers.i.input_layernorm.weight
  decoder.layers.i.self_attention.linear_qkv.layer_norm_weight (TE spec)
decoder.layers.i.self_attention.linear_qkv.weight          q_proj [nq*h, d], k_proj [ng*h, d],
  [ng*(r+2)*h, d], rows grouped per query group g:         v_proj [ng*h, d]
  [q heads g*r..g*r+r-1 | k head g | v head g]
decoder.layers.i.self_attention.linear_proj.weight         model.layers.i.self_attn.o_proj.weight
decoder.layers.i.self_attention.{q,k}_layernorm.weight     model.layers.i.self_attn.{q,k}_norm.weight (Qwen3)
decoder.layers.i.pre_mlp_layernorm.weight (local) or       model.layers.i.post_attention_layernorm.weight
  decoder.layers.i.mlp.linear_fc1.layer_norm_weight (TE)
decoder.layers.i.mlp.linear_fc1.weight [2f, d] = [gate;up] mlp.gate_proj [f, d], mlp.up_proj [f, d]
decoder.layers.i.mlp.linear_fc2.weight                     mlp.down_proj.weight
decoder.final_layernorm.weight                             model.norm.weight
output_layer.weight (untied only)           [Vp, d]        lm_head.weight [V, d] (absent when tied)
=========================================================  ==========================================

Megatron's embedding rows are padded to ``Vp >= V`` (see actor/model.py); the export keeps the first
``V`` rows and the import pads with zeros back to ``padded_vocab`` rows.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Literal

import torch

from recast_mcore.config.actor import ModelConfig
from recast_mcore.utils.fs import replace_dir

LayerNormSpec = Literal["local", "te"]

_LN_NAMES = {
    "local": ("input_layernorm.weight", "pre_mlp_layernorm.weight"),
    "te": ("self_attention.linear_qkv.layer_norm_weight", "mlp.linear_fc1.layer_norm_weight"),
}


def hf_architecture(model_cfg: ModelConfig) -> str:
    """``Qwen3ForCausalLM`` with q/k norms, ``LlamaForCausalLM`` without."""
    return "Qwen3ForCausalLM" if model_cfg.qk_layernorm else "LlamaForCausalLM"


def _split_qkv(qkv: torch.Tensor, model_cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """[ng*(r+2)*h, d] grouped -> q [nq*h, d], k [ng*h, d], v [ng*h, d]."""
    h, ng = model_cfg.head_dim, model_cfg.num_query_groups
    r = model_cfg.num_attention_heads // ng
    expected = ng * (r + 2) * h
    if qkv.shape[0] != expected:
        raise ValueError(f"linear_qkv has {qkv.shape[0]} rows, expected {expected} for {ng} groups x ({r}+2) x {h}")
    grouped = qkv.reshape(ng, r + 2, h, -1)
    q = grouped[:, :r].reshape(ng * r * h, -1)
    k = grouped[:, r].reshape(ng * h, -1)
    v = grouped[:, r + 1].reshape(ng * h, -1)
    return q, k, v


def _merge_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, model_cfg: ModelConfig) -> torch.Tensor:
    """Inverse of ``_split_qkv``."""
    h, ng = model_cfg.head_dim, model_cfg.num_query_groups
    r = model_cfg.num_attention_heads // ng
    d = q.shape[-1]
    grouped = torch.cat([q.reshape(ng, r, h, d), k.reshape(ng, 1, h, d), v.reshape(ng, 1, h, d)], dim=1)
    return grouped.reshape(ng * (r + 2) * h, d)


def _take(sd: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in sd:
        raise KeyError(f"Megatron state dict has no '{key}' (is it the full TP/PP-gathered model of this config?)")
    return sd[key]


def detect_layernorm_spec(mcore_sd: dict[str, torch.Tensor]) -> LayerNormSpec:
    """'te' when the norms are fused into linear_qkv / linear_fc1 (TE spec), else 'local'."""
    return "te" if any(k.endswith("linear_qkv.layer_norm_weight") for k in mcore_sd) else "local"


_LAYER_KEY = re.compile(r"^decoder\.layers\.(\d+)\.(.+)$")


def mcore_tensor_to_hf(name: str, tensor: torch.Tensor, model_cfg: ModelConfig, vocab_size: int) -> list[tuple[str, torch.Tensor]]:
    """ONE full (TP-gathered) Megatron tensor -> its HF tensor(s), as views (``linear_qkv`` -> q/k/v,
    ``linear_fc1`` -> gate/up, embeddings cut to ``vocab_size`` rows). ``name`` uses the GLOBAL layer number.

    This is the unit of the streaming weight sync (actor/weight_export.py): no other tensor is needed to
    convert one, so a pipeline stage converts exactly the layers it holds.
    """
    if name == "embedding.word_embeddings.weight" or name == "output_layer.weight":
        if tensor.shape[0] < vocab_size:
            raise ValueError(f"{name} has {tensor.shape[0]} rows < vocab_size {vocab_size}")
        return [("model.embed_tokens.weight" if name.startswith("embedding") else "lm_head.weight", tensor[:vocab_size])]
    if name == "decoder.final_layernorm.weight":
        return [("model.norm.weight", tensor)]
    m = _LAYER_KEY.match(name)
    if m is None:
        raise KeyError(f"no Hugging Face name for Megatron tensor '{name}'")
    dst, rest = f"model.layers.{m.group(1)}.", m.group(2)
    if rest == "self_attention.linear_qkv.weight":
        q, k, v = _split_qkv(tensor, model_cfg)
        return [(dst + "self_attn.q_proj.weight", q), (dst + "self_attn.k_proj.weight", k), (dst + "self_attn.v_proj.weight", v)]
    if rest == "mlp.linear_fc1.weight":
        f = model_cfg.ffn_hidden_size
        if tensor.shape[0] != 2 * f:
            raise ValueError(f"{name} has {tensor.shape[0]} rows, expected 2*ffn_hidden_size={2 * f}")
        return [(dst + "mlp.gate_proj.weight", tensor[:f]), (dst + "mlp.up_proj.weight", tensor[f:])]
    if rest not in _LAYER_RENAMES:
        raise KeyError(f"no Hugging Face name for Megatron tensor '{name}'")
    return [(dst + _LAYER_RENAMES[rest], tensor)]


_LAYER_RENAMES = {
    "input_layernorm.weight": "input_layernorm.weight",
    "self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
    "self_attention.linear_proj.weight": "self_attn.o_proj.weight",
    "self_attention.q_layernorm.weight": "self_attn.q_norm.weight",
    "self_attention.k_layernorm.weight": "self_attn.k_norm.weight",
    "pre_mlp_layernorm.weight": "post_attention_layernorm.weight",
    "mlp.linear_fc1.layer_norm_weight": "post_attention_layernorm.weight",
    "mlp.linear_fc2.weight": "mlp.down_proj.weight",
}
"""Per-layer Megatron suffix -> HF suffix for the tensors that are renamed only (local and TE norm names)."""


def mcore_keys(model_cfg: ModelConfig, layernorm_spec: LayerNormSpec = "local") -> list[str]:
    """Every key of the full Megatron state dict of ``model_cfg`` (global layer numbers), in HF export order."""
    attn_ln, mlp_ln = _LN_NAMES[layernorm_spec]
    keys = ["embedding.word_embeddings.weight"]
    for i in range(model_cfg.num_layers):
        src = f"decoder.layers.{i}."
        keys += [src + attn_ln, src + "self_attention.linear_qkv.weight", src + "self_attention.linear_proj.weight"]
        if model_cfg.qk_layernorm:
            keys += [src + "self_attention.q_layernorm.weight", src + "self_attention.k_layernorm.weight"]
        keys += [src + mlp_ln, src + "mlp.linear_fc1.weight", src + "mlp.linear_fc2.weight"]
    keys.append("decoder.final_layernorm.weight")
    if not model_cfg.tie_embeddings:
        keys.append("output_layer.weight")
    return keys


def mcore_to_hf(mcore_sd: dict[str, torch.Tensor], model_cfg: ModelConfig, vocab_size: int) -> dict[str, torch.Tensor]:
    """Full Megatron state dict -> HF Llama/Qwen3 state dict (cloned tensors, same dtype)."""
    sd = {k: v for k, v in mcore_sd.items() if "_extra_state" not in k}
    out: dict[str, torch.Tensor] = {}
    for key in mcore_keys(model_cfg, detect_layernorm_spec(sd)):
        out.update((n, t.clone()) for n, t in mcore_tensor_to_hf(key, _take(sd, key), model_cfg, vocab_size))
    return out


def hf_shapes(model_cfg: ModelConfig, vocab_size: int) -> dict[str, tuple[int, ...]]:
    """``{hf_name: shape}`` of the exported model (what a served model must receive at every sync)."""
    d, f, h = model_cfg.hidden_size, model_cfg.ffn_hidden_size, model_cfg.head_dim
    nq, ng = model_cfg.num_attention_heads, model_cfg.num_query_groups
    out = {"model.embed_tokens.weight": (vocab_size, d)}
    for i in range(model_cfg.num_layers):
        p = f"model.layers.{i}."
        out.update({p + "input_layernorm.weight": (d,), p + "self_attn.q_proj.weight": (nq * h, d),
                    p + "self_attn.k_proj.weight": (ng * h, d), p + "self_attn.v_proj.weight": (ng * h, d),
                    p + "self_attn.o_proj.weight": (d, nq * h), p + "post_attention_layernorm.weight": (d,),
                    p + "mlp.gate_proj.weight": (f, d), p + "mlp.up_proj.weight": (f, d), p + "mlp.down_proj.weight": (d, f)})
        if model_cfg.qk_layernorm:
            out.update({p + "self_attn.q_norm.weight": (h,), p + "self_attn.k_norm.weight": (h,)})
    out["model.norm.weight"] = (d,)
    if not model_cfg.tie_embeddings:
        out["lm_head.weight"] = (vocab_size, d)
    return out


def _pad_rows(t: torch.Tensor, rows: int) -> torch.Tensor:
    if t.shape[0] > rows:
        raise ValueError(f"tensor has {t.shape[0]} rows > padded vocab {rows}")
    return torch.cat([t, t.new_zeros(rows - t.shape[0], *t.shape[1:])]) if t.shape[0] < rows else t.clone()


def hf_to_mcore(
    hf_sd: dict[str, torch.Tensor], model_cfg: ModelConfig, padded_vocab: int, layernorm_spec: LayerNormSpec = "local"
) -> dict[str, torch.Tensor]:
    """HF Llama/Qwen3 state dict -> full Megatron state dict (embedding rows zero-padded to ``padded_vocab``)."""
    attn_ln, mlp_ln = _LN_NAMES[layernorm_spec]
    out: dict[str, torch.Tensor] = {}

    def take(key: str) -> torch.Tensor:
        if key not in hf_sd:
            raise KeyError(f"HF state dict has no '{key}' (architecture {hf_architecture(model_cfg)} expected)")
        return hf_sd[key]

    out["embedding.word_embeddings.weight"] = _pad_rows(take("model.embed_tokens.weight"), padded_vocab)
    for i in range(model_cfg.num_layers):
        src, dst = f"model.layers.{i}.", f"decoder.layers.{i}."
        out[dst + attn_ln] = take(src + "input_layernorm.weight").clone()
        out[dst + "self_attention.linear_qkv.weight"] = _merge_qkv(
            take(src + "self_attn.q_proj.weight"), take(src + "self_attn.k_proj.weight"), take(src + "self_attn.v_proj.weight"), model_cfg
        )
        out[dst + "self_attention.linear_proj.weight"] = take(src + "self_attn.o_proj.weight").clone()
        if model_cfg.qk_layernorm:
            out[dst + "self_attention.q_layernorm.weight"] = take(src + "self_attn.q_norm.weight").clone()
            out[dst + "self_attention.k_layernorm.weight"] = take(src + "self_attn.k_norm.weight").clone()
        out[dst + mlp_ln] = take(src + "post_attention_layernorm.weight").clone()
        out[dst + "mlp.linear_fc1.weight"] = torch.cat([take(src + "mlp.gate_proj.weight"), take(src + "mlp.up_proj.weight")])
        out[dst + "mlp.linear_fc2.weight"] = take(src + "mlp.down_proj.weight").clone()
    out["decoder.final_layernorm.weight"] = take("model.norm.weight").clone()
    if not model_cfg.tie_embeddings:
        out["output_layer.weight"] = _pad_rows(take("lm_head.weight"), padded_vocab)
    return out


def hf_config_dict(
    model_cfg: ModelConfig, vocab_size: int, *, pad_id: int, bos_id: int, eos_id: int, torch_dtype: str = "float32"
) -> dict:
    """config.json content for the exported model (Llama or Qwen3 layout)."""
    arch = hf_architecture(model_cfg)
    cfg = {
        "architectures": [arch],
        "model_type": "qwen3" if model_cfg.qk_layernorm else "llama",
        "vocab_size": vocab_size,
        "hidden_size": model_cfg.hidden_size,
        "intermediate_size": model_cfg.ffn_hidden_size,
        "num_hidden_layers": model_cfg.num_layers,
        "num_attention_heads": model_cfg.num_attention_heads,
        "num_key_value_heads": model_cfg.num_query_groups,
        "head_dim": model_cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": model_cfg.max_seq_len,
        "rms_norm_eps": model_cfg.norm_epsilon,
        "rope_theta": float(model_cfg.rotary_base),
        "rope_parameters": {"rope_type": "default", "rope_theta": float(model_cfg.rotary_base)},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": model_cfg.tie_embeddings,
        "initializer_range": model_cfg.init_method_std,
        "use_cache": True,
        "pad_token_id": pad_id,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "torch_dtype": torch_dtype,
        "dtype": torch_dtype,
    }
    if model_cfg.rope_scaling_factor > 0:  # Llama 3.x (the low/high factors and context Megatron implements)
        scaling = {"rope_type": "llama3", "factor": model_cfg.rope_scaling_factor, "low_freq_factor": 1.0,
                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
        cfg["rope_scaling"] = scaling
        cfg["rope_parameters"] = {**scaling, "rope_theta": float(model_cfg.rotary_base)}
    if arch == "LlamaForCausalLM":
        cfg["mlp_bias"] = False
    else:
        cfg.update(use_sliding_window=False, sliding_window=None, max_window_layers=model_cfg.num_layers)
    return cfg


def tokenizer_files(token_strings: list[str], *, pad_id: int, bos_id: int, eos_id: int) -> dict[str, dict]:
    """tokenizer.json (tokenizers WordLevel over exactly ``token_strings``) and tokenizer_config.json.

    Pre-tokenization splits before every ``<`` so ``"<a_1><b_2>"`` encodes to two ids; every token string
    is also registered as a special added token, so decoding returns the exact strings.
    """
    if len(set(token_strings)) != len(token_strings):
        raise ValueError("token_strings contains duplicates")
    vocab = {s: i for i, s in enumerate(token_strings)}
    special = {pad_id, bos_id, eos_id}
    tokenizer_json = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": s, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": i in special}
            for i, s in enumerate(token_strings)
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "Split", "pattern": {"String": "<"}, "behavior": "MergedWithNext", "invert": False},
        "post_processor": None,
        "decoder": {"type": "Fuse"},
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": token_strings[pad_id]},
    }
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 1 << 20,
        "pad_token": token_strings[pad_id],
        "bos_token": token_strings[bos_id],
        "eos_token": token_strings[eos_id],
        "unk_token": token_strings[pad_id],
        "clean_up_tokenization_spaces": False,
    }
    return {"tokenizer.json": tokenizer_json, "tokenizer_config.json": tokenizer_config}


def hf_metadata_files(model_cfg: ModelConfig, token_strings: list[str] | None, *, pad_id: int, bos_id: int, eos_id: int,
                      torch_dtype: str, tokenizer_dir: str | Path | None = None) -> tuple[int, dict[str, str], list[Path]]:
    """The non-weight files of an exported model directory: ``(vocab_size, {file name: JSON text}, files to copy)``.

    The vocabulary is exactly ``token_strings`` (a WordLevel tokenizer is written); or, with ``tokenizer_dir``
    (a pretrained LLM's expanded tokenizer, checkpoint/hf_vocab.py), config.json starts from the base model's and
    that tokenizer's files are to be copied (``token_strings`` and the ids are then unused).
    """
    copies: list[Path] = []
    if tokenizer_dir is not None:
        from recast_mcore.checkpoint.hf_vocab import expanded_export_files

        vocab_size, files, copies = expanded_export_files(tokenizer_dir, model_cfg, torch_dtype)
    else:
        if token_strings is None:
            raise ValueError("hf_metadata_files needs token_strings or tokenizer_dir")
        vocab_size = len(token_strings)
        ids = dict(pad_id=pad_id, bos_id=bos_id, eos_id=eos_id)
        files = {
            "config.json": hf_config_dict(model_cfg, vocab_size, torch_dtype=torch_dtype, **ids),
            "generation_config.json": {"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id, "do_sample": True},
            **tokenizer_files(token_strings, **ids),
        }
    return vocab_size, {name: json.dumps(content, indent=2) for name, content in files.items()}, copies


def write_metadata(directory: Path, files: dict[str, str], copies: list[Path]) -> None:
    """Write ``hf_metadata_files``' output into ``directory``."""
    for src in copies:
        shutil.copyfile(src, Path(directory) / Path(src).name)
    for name, content in files.items():
        (Path(directory) / name).write_text(content)


def export_hf_dir(
    out_dir: str | Path,
    hf_state_dict: dict[str, torch.Tensor],
    model_cfg: ModelConfig,
    token_strings: list[str] | None,
    *,
    pad_id: int,
    bos_id: int,
    eos_id: int,
    tokenizer_dir: str | Path | None = None,
) -> Path:
    """Write a loadable HF model dir: config.json, model.safetensors, generation_config.json, tokenizer files.

    The vocabulary is exactly ``token_strings`` (``vocab_size = len(token_strings)``, a WordLevel tokenizer);
    or, with ``tokenizer_dir`` (a pretrained LLM's expanded tokenizer, checkpoint/hf_vocab.py), that tokenizer
    is copied and config.json starts from the base model's (``token_strings`` and the ids are then unused).
    Files are written to a temporary sibling and renamed into place, so a reader never sees a half-written
    directory.
    """
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    emb = hf_state_dict.get("model.embed_tokens.weight")
    if emb is None:
        raise ValueError("hf_state_dict has no model.embed_tokens.weight")
    dtype = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}[emb.dtype]
    vocab_size, files, copies = hf_metadata_files(model_cfg, token_strings, pad_id=pad_id, bos_id=bos_id, eos_id=eos_id,
                                                  torch_dtype=dtype, tokenizer_dir=tokenizer_dir)
    if emb.shape[0] != vocab_size:
        raise ValueError(f"model.embed_tokens.weight has {emb.shape[0]} rows, the vocabulary has {vocab_size} tokens")
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in hf_state_dict.items()}
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    write_metadata(tmp, files, copies)
    return replace_dir(tmp, out_dir)
