"""Actor configuration: model shape, parallel layout, optimizer, checkpoints (owned by the actor part).

The model is a Llama/Qwen-style decoder (RMSNorm, SwiGLU, RoPE, grouped-query attention). The
Qwen3 base shapes OpenOneRec uses ship as ``examples/models/qwen3-{0.6b,1.7b,8b}.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(kw_only=True)
class ModelConfig:
    """Shape and numerics of the decoder-only policy."""

    num_layers: int = 2
    """Number of transformer layers."""
    hidden_size: int = 64
    """Model width d."""
    ffn_hidden_size: int = 128
    """SwiGLU inner width (the gate and up projections each have this many outputs)."""
    num_attention_heads: int = 4
    """Number of query heads."""
    num_query_groups: int = 2
    """Number of key/value heads (grouped-query attention); must divide num_attention_heads."""
    kv_channels: int = 0
    """Per-head dimension; 0 means hidden_size // num_attention_heads (Qwen3 sets it explicitly)."""
    qk_layernorm: bool = False
    """RMSNorm on queries and keys per head (Qwen3 style); off gives the Llama layout."""
    tie_embeddings: bool = True
    """Share the input embedding and the output projection."""
    rotary_base: int = 10000
    """RoPE base theta."""
    norm_epsilon: float = 1e-6
    """RMSNorm epsilon."""
    max_seq_len: int = 256
    """Longest prompt + response the model is built for (RoPE cache, padding checks)."""
    init_method_std: float = 0.02
    """Std of the normal weight initialization."""
    params_dtype: Literal["fp32", "bf16"] = "fp32"
    """Numerics of the forward/backward: fp32, or bf16 mixed precision (fp32 main params in the optimizer)."""
    fp8: Literal["none", "e4m3", "hybrid"] = "none"
    """FP8 GEMMs through Transformer Engine (GPU only; on CPU anything but none is an error)."""
    fp8_recipe: Literal["delayed", "tensorwise", "blockwise", "mxfp8"] = "delayed"
    """FP8 scaling recipe (as the installed Transformer Engine supports)."""
    transformer_impl: Literal["auto", "local", "transformer_engine"] = "auto"
    """Layer spec: auto picks Transformer Engine when importable, else the Megatron-local spec."""

    @property
    def head_dim(self) -> int:
        return self.kv_channels or self.hidden_size // self.num_attention_heads

    def validate(self) -> None:
        if self.num_attention_heads % self.num_query_groups:
            raise ValueError(
                f"num_attention_heads={self.num_attention_heads} is not a multiple of num_query_groups={self.num_query_groups}"
            )
        if not self.kv_channels and self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} is not divisible by num_attention_heads={self.num_attention_heads}; set kv_channels"
            )
        for name in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "max_seq_len"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.fp8 != "none" and self.params_dtype != "bf16":
            raise ValueError(f"fp8={self.fp8} needs params_dtype=bf16 (got {self.params_dtype})")


@dataclass(kw_only=True)
class ParallelConfig:
    """Process layout; world size = tensor * pipeline * data (data parallel size is derived)."""

    tensor_parallel: int = 1
    """Tensor-parallel size (attention heads and FFN split across ranks)."""
    pipeline_parallel: int = 1
    """Pipeline-parallel size (layers split into stages)."""
    virtual_pipeline_parallel: int = 1
    """Model chunks per pipeline rank (interleaved 1F1B when > 1; needs pipeline_parallel > 1)."""
    sequence_parallel: bool = False
    """Megatron sequence parallelism (GPU / Transformer Engine spec only; error on CPU)."""
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """torch.distributed backend: auto = nccl with CUDA, gloo without."""
    micro_batch_size: int = 0
    """Row budget of a micro-batch (whole groups; never below the largest group); 0 = derive it from
    max_tokens_per_micro_batch (see actor/microbatch.py)."""
    max_tokens_per_micro_batch: int = 4096
    """When micro_batch_size is 0: the row budget is this // the step's padded sequence length."""
    seed: int = 1234
    """Seed for parameter init and the tensor-parallel RNG tracker."""

    def validate(self) -> None:
        for name in ("tensor_parallel", "pipeline_parallel", "virtual_pipeline_parallel"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.virtual_pipeline_parallel > 1 and self.pipeline_parallel == 1:
            raise ValueError("virtual_pipeline_parallel > 1 needs pipeline_parallel > 1")
        if self.micro_batch_size < 0:
            raise ValueError(f"micro_batch_size must be >= 0, got {self.micro_batch_size}")


@dataclass(kw_only=True)
class OptimConfig:
    """Megatron optimizer and learning-rate schedule."""

    lr: float = 1e-4
    """Peak learning rate."""
    min_lr: float = 0.0
    """Final learning rate of the decay."""
    weight_decay: float = 0.0
    """Decoupled weight decay (Adam W)."""
    adam_beta1: float = 0.9
    """Adam beta1."""
    adam_beta2: float = 0.999
    """Adam beta2."""
    adam_eps: float = 1e-8
    """Adam epsilon."""
    clip_grad: float = 1.0
    """Global gradient-norm clip (0 disables clipping; the norm is still reported)."""
    warmup_steps: int = 0
    """Linear warmup steps of the learning rate."""
    decay_steps: int = 1000
    """Steps over which the learning rate decays (after warmup)."""
    decay_style: Literal["constant", "linear", "cosine"] = "constant"
    """Learning-rate decay after warmup."""
    distributed_optimizer: bool = False
    """Shard optimizer state across data-parallel ranks (Megatron DistributedOptimizer)."""


@dataclass(kw_only=True)
class CheckpointConfig:
    """Where and how often the trainer saves actor checkpoints."""

    save_interval: int = 0
    """Save every N RL steps (0: only at the end)."""
    keep_last: int = 2
    """Checkpoints kept on disk (older ones deleted after a successful save)."""
    load_dir: str = ""
    """Resume from this directory's `latest` checkpoint when set."""
