"""Hugging Face Llama / Qwen3 checkpoint -> one rank's Megatron shards, streamed (pure torch + safetensors).

Every rank reads only the tensors and slices it owns (``safe_open(...).get_slice``), in the checkpoint's
dtype; nothing ever holds the full model. ``hf_shard(name, tp_rank, tp_size)`` returns the local shard of
the Megatron parameter with global name ``name`` (the full-layout names of actor/state_dict.py) under
Megatron's tensor-parallel partitioning (the HF<->Megatron name and layout table is in hf_mapping.py):

=========================================  ==================================================================
Megatron parameter (TP rank r of t)        rows / columns read from the HF checkpoint
=========================================  ==================================================================
embedding.word_embeddings.weight [Vp/t,d]  vocab rows [r*Vp/t, (r+1)*Vp/t) of the expanded vocabulary (below)
output_layer.weight (untied)               the same rows of lm_head.weight
self_attention.linear_qkv.weight           query groups g in [r*ng/t, (r+1)*ng/t): q rows [g0*q*h, g1*q*h),
                                           k and v rows [g0*h, g1*h), interleaved per group (q = nq/ng)
self_attention.linear_proj.weight          o_proj columns [r*nq*h/t, (r+1)*nq*h/t)
mlp.linear_fc1.weight                      [gate rows r-th f/t; up rows r-th f/t]
mlp.linear_fc2.weight                      down_proj columns [r*f/t, (r+1)*f/t)
norms, q/k norms                           whole (small)
=========================================  ==================================================================

Vocabulary expansion (``VocabRows``): row v of the embedding (and of an untied lm_head) is
    v < source_rows          the checkpoint's row v                      (the base model's tokens)
    source_rows <= v < V     new row: mu + noise * sigma (.) z           (appended specials and item tokens)
    v >= V                   zero                                        (padding to Vp, never a valid token)
with mu, sigma the per-dimension mean and standard deviation over the checkpoint's rows [0, source_rows)
(fp64, streamed over blocks of rows: peak one block), z ~ N(0, I) drawn per block of ``NOISE_BLOCK`` rows
from a generator seeded with (seed, matrix, block): the same rows on any TP layout. ``noise = 0`` gives
every new row the mean embedding, so all new tokens start with the average token's logit. ``init =
"normal"`` draws N(0, std^2) instead (Megatron's init). Rows of the checkpoint beyond ``source_rows`` (Qwen3
pads its 151,669 tokens to 151,936 rows) belong to no token and are replaced.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import torch

from recast_mcore.checkpoint.hf_mapping import _merge_qkv
from recast_mcore.config.actor import ModelConfig

NOISE_BLOCK = 1024
STATS_ELEMENTS = 1 << 22
"""Elements per block of the new-row statistics (fp64: 32 MiB, plus as much for the squares)."""
_SUPPORTED = {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}


class HfCheckpoint:
    """Lazy, sliced access to the safetensors files of an HF model directory (nothing is read up front)."""

    def __init__(self, hf_dir: str | Path):
        from safetensors import safe_open

        self.dir = Path(hf_dir)
        files = sorted(self.dir.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"{self.dir} has no *.safetensors files")
        self._open = {f.name: safe_open(str(f), framework="pt") for f in files}
        self.file_of: dict[str, str] = {}
        for name, handle in self._open.items():
            for key in handle.keys():
                self.file_of[key] = name

    def __contains__(self, name: str) -> bool:
        return name in self.file_of

    def _slice(self, name: str):
        if name not in self.file_of:
            raise KeyError(f"{self.dir}: the checkpoint has no tensor '{name}'")
        return self._open[self.file_of[name]].get_slice(name)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._slice(name).get_shape())

    def read(self, name: str, rows: tuple[int, int] | None = None, cols: tuple[int, int] | None = None) -> torch.Tensor:
        """``tensor[rows[0]:rows[1], cols[0]:cols[1]]`` in the stored dtype (only those bytes are read)."""
        sl = self._slice(name)
        if rows is None and cols is None:
            return sl[:]
        r = slice(*rows) if rows else slice(None)
        return sl[r, slice(*cols)] if cols else sl[r]


def read_hf_config(hf_dir: str | Path) -> dict:
    path = Path(hf_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: --hf must be a Hugging Face model directory")
    return json.loads(path.read_text())


LLAMA3_ROPE = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
"""The Llama-3.x RoPE scaling Megatron implements (only ``factor`` varies)."""


def _rope(cfg: dict) -> tuple[float, float]:
    """(rope theta, Llama-3 scaling factor or 0) of a config.json (transformers 4 or 5 layout)."""
    params = dict(cfg.get("rope_parameters") or {})
    params.update(cfg.get("rope_scaling") or {})
    theta = float(cfg.get("rope_theta") or params.get("rope_theta") or 10000.0)
    kind = params.get("rope_type", params.get("type", "default"))
    if kind in (None, "default"):
        return theta, 0.0
    if kind != "llama3":
        raise ValueError(f"config.json rope scaling type {kind!r} is not supported (default RoPE or Llama-3 'llama3')")
    for key, want in LLAMA3_ROPE.items():
        if float(params.get(key, -1)) != want:
            raise ValueError(f"config.json llama3 rope scaling needs {key}={want} (Megatron's), got {params.get(key)}")
    return theta, float(params["factor"])


def model_config_from_hf(cfg: dict, *, max_seq_len: int, params_dtype: str) -> ModelConfig:
    """The ModelConfig of an HF Llama/Qwen3 config.json; unsupported features raise naming the field."""
    kind = cfg.get("model_type")
    if kind not in _SUPPORTED:
        raise ValueError(f"config.json model_type={kind!r}: only {sorted(_SUPPORTED)} (Llama / Qwen3 layouts) import")
    checks = {"hidden_act": ("silu", cfg.get("hidden_act", "silu")), "attention_bias": (False, cfg.get("attention_bias", False)),
              "mlp_bias": (False, cfg.get("mlp_bias", False)), "use_sliding_window": (False, cfg.get("use_sliding_window", False))}
    for key, (want, got) in checks.items():
        if got != want:
            raise ValueError(f"config.json {key}={got!r} is not supported (needs {want!r})")
    heads = int(cfg["num_attention_heads"])
    theta, rope_factor = _rope(cfg)
    if theta != int(theta):
        raise ValueError(f"config.json rope_theta={theta} is not an integer (model.rotary_base is one)")
    model_cfg = ModelConfig(
        num_layers=int(cfg["num_hidden_layers"]),
        hidden_size=int(cfg["hidden_size"]),
        ffn_hidden_size=int(cfg["intermediate_size"]),
        num_attention_heads=heads,
        num_query_groups=int(cfg.get("num_key_value_heads") or heads),
        kv_channels=int(cfg.get("head_dim") or cfg["hidden_size"] // heads),
        qk_layernorm=kind == "qwen3",
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        rotary_base=int(theta),
        rope_scaling_factor=rope_factor,
        norm_epsilon=float(cfg.get("rms_norm_eps", 1e-6)),
        max_seq_len=min(max_seq_len, int(cfg.get("max_position_embeddings", max_seq_len))),
        init_method_std=float(cfg.get("initializer_range", 0.02)),
        params_dtype=params_dtype,
    )
    model_cfg.validate()
    return model_cfg


@dataclass(frozen=True)
class VocabRows:
    """How the expanded [Vp, d] embedding / lm_head is filled (module doc)."""

    source_rows: int
    """Rows taken from the checkpoint (the base tokenizer's tokens, or all V of an already expanded model)."""
    vocab_size: int
    """V: real tokens (base + appended specials + item tokens)."""
    padded: int
    """Vp >= V: rows Megatron allocates (multiple of 128); rows >= V are zero."""
    init: Literal["mean_noise", "normal"] = "mean_noise"
    """New-row rule (module doc)."""
    noise: float = 0.1
    """mean_noise: scale of the per-dimension std added as noise; normal: the std."""
    seed: int = 1234
    """Seed of the new rows' noise."""

    def validate(self) -> None:
        if not 0 < self.source_rows <= self.vocab_size <= self.padded:
            raise ValueError(f"need 0 < source_rows ({self.source_rows}) <= vocab_size ({self.vocab_size}) <= padded ({self.padded})")
        if self.noise < 0:
            raise ValueError(f"new-row noise must be >= 0, got {self.noise}")


def _row_stats(ckpt: HfCheckpoint, name: str, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension mean and std over rows [0, rows) of ``name``, streamed in blocks (fp64)."""
    total = sq = None
    step = max(1, STATS_ELEMENTS // ckpt.shape(name)[1])
    for lo in range(0, rows, step):
        block = ckpt.read(name, rows=(lo, min(rows, lo + step))).double()
        total = block.sum(0) if total is None else total + block.sum(0)
        sq = (block * block).sum(0) if sq is None else sq + (block * block).sum(0)
    mean = total / rows
    return mean, (sq / rows - mean * mean).clamp_min(0).sqrt()


def _noise(seed: int, matrix: int, lo: int, hi: int, dim: int) -> torch.Tensor:
    """z [hi-lo, dim] ~ N(0, 1): block b of NOISE_BLOCK rows always comes from generator (seed, matrix, b)."""
    out = []
    for block in range(lo // NOISE_BLOCK, -(-hi // NOISE_BLOCK)):
        g = torch.Generator().manual_seed(seed * 1_000_003 + matrix * 7919 + block)
        z = torch.randn(NOISE_BLOCK, dim, generator=g, dtype=torch.float64)
        start = block * NOISE_BLOCK
        out.append(z[max(lo, start) - start : min(hi, start + NOISE_BLOCK) - start])
    return torch.cat(out)


def vocab_rows_shard(ckpt: HfCheckpoint, name: str, rows: VocabRows, lo: int, hi: int) -> torch.Tensor:
    """Rows [lo, hi) of the expanded matrix ``name`` (embed_tokens / lm_head), checkpoint dtype."""
    dim = ckpt.shape(name)[1]
    src_hi = min(hi, rows.source_rows)
    parts = [ckpt.read(name, rows=(lo, src_hi))] if lo < src_hi else []
    dtype = parts[0].dtype if parts else ckpt.read(name, rows=(0, 1)).dtype
    new_lo, new_hi = max(lo, rows.source_rows), min(hi, rows.vocab_size)
    if new_lo < new_hi:
        z = _noise(rows.seed, int(name == "lm_head.weight"), new_lo, new_hi, dim)
        if rows.init == "normal":
            new = rows.noise * z
        else:
            mean, std = _row_stats(ckpt, name, rows.source_rows)
            new = mean + rows.noise * std * z
        parts.append(new.to(dtype))
    pad_lo = max(lo, rows.vocab_size)
    if pad_lo < hi:
        parts.append(torch.zeros(hi - pad_lo, dim, dtype=dtype))
    return torch.cat(parts)


def _chunk(total: int, tp_rank: int, tp_size: int) -> tuple[int, int]:
    if total % tp_size:
        raise ValueError(f"{total} is not divisible by tensor_parallel={tp_size}")
    per = total // tp_size
    return tp_rank * per, (tp_rank + 1) * per


_LAYER_NORMS = {
    "input_layernorm.weight": "input_layernorm.weight",
    "pre_mlp_layernorm.weight": "post_attention_layernorm.weight",
    "self_attention.q_layernorm.weight": "self_attn.q_norm.weight",
    "self_attention.k_layernorm.weight": "self_attn.k_norm.weight",
}


class HfShardSource:
    """Local Megatron shards read from an HF checkpoint (module doc). One instance per rank."""

    def __init__(self, ckpt: HfCheckpoint, model_cfg: ModelConfig, rows: VocabRows):
        rows.validate()
        self.ckpt, self.cfg, self.rows = ckpt, model_cfg, rows
        emb = ckpt.shape("model.embed_tokens.weight")
        if emb[0] < rows.source_rows or emb[1] != model_cfg.hidden_size:
            raise ValueError(f"model.embed_tokens.weight is {emb}; need >= {rows.source_rows} rows of {model_cfg.hidden_size}")
        if not model_cfg.tie_embeddings and "lm_head.weight" not in ckpt:
            raise ValueError("config.json says untied embeddings but the checkpoint has no lm_head.weight")

    def __call__(self, name: str, tp_rank: int, tp_size: int) -> torch.Tensor:
        """The local shard of global Megatron parameter ``name`` on TP rank ``tp_rank`` of ``tp_size``."""
        if name in ("embedding.word_embeddings.weight", "output_layer.weight"):
            src = "lm_head.weight" if name == "output_layer.weight" and not self.cfg.tie_embeddings else "model.embed_tokens.weight"
            return vocab_rows_shard(self.ckpt, src, self.rows, *_chunk(self.rows.padded, tp_rank, tp_size))
        if name == "decoder.final_layernorm.weight":
            return self.ckpt.read("model.norm.weight")
        prefix, _, rest = name.partition(".layers.")
        layer, _, param = rest.partition(".")
        if prefix != "decoder" or not layer.isdigit():
            raise KeyError(f"no HF source for Megatron parameter '{name}'")
        hf = f"model.layers.{layer}."
        if param in _LAYER_NORMS:
            return self.ckpt.read(hf + _LAYER_NORMS[param])
        if param == "self_attention.linear_qkv.weight":
            return self._qkv(hf, tp_rank, tp_size)
        if param == "self_attention.linear_proj.weight":
            return self.ckpt.read(hf + "self_attn.o_proj.weight", cols=_chunk(self.cfg.num_attention_heads * self.cfg.head_dim, tp_rank, tp_size))
        f = _chunk(self.cfg.ffn_hidden_size, tp_rank, tp_size)
        if param == "mlp.linear_fc1.weight":
            return torch.cat([self.ckpt.read(hf + "mlp.gate_proj.weight", rows=f), self.ckpt.read(hf + "mlp.up_proj.weight", rows=f)])
        if param == "mlp.linear_fc2.weight":
            return self.ckpt.read(hf + "mlp.down_proj.weight", cols=f)
        raise KeyError(f"no HF source for Megatron parameter '{name}'")

    def _qkv(self, hf: str, tp_rank: int, tp_size: int) -> torch.Tensor:
        """[q heads of group g | k_g | v_g] for this rank's query groups (hf_mapping._merge_qkv layout)."""
        h, ng = self.cfg.head_dim, self.cfg.num_query_groups
        r = self.cfg.num_attention_heads // ng
        g0, g1 = _chunk(ng, tp_rank, tp_size)
        q = self.ckpt.read(hf + "self_attn.q_proj.weight", rows=(g0 * r * h, g1 * r * h))
        k = self.ckpt.read(hf + "self_attn.k_proj.weight", rows=(g0 * h, g1 * h))
        v = self.ckpt.read(hf + "self_attn.v_proj.weight", rows=(g0 * h, g1 * h))
        return _merge_qkv(q, k, v, replace(self.cfg, num_query_groups=g1 - g0, num_attention_heads=(g1 - g0) * r, kv_channels=h))
