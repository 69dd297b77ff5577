"""Actor configuration: model shape, parallel layout, optimizer, checkpoints (owned by the actor part).

The model is a Llama/Qwen-style decoder (RMSNorm, SwiGLU, RoPE, grouped-query attention). The
Qwen3 base shapes OpenOneRec uses ship as ``examples/models/qwen3-{0.6b,1.7b,8b}.yaml``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

RECOMPUTE_MODULES = ("core_attn", "layernorm", "mlp")
"""Submodules a selective activation recompute may name (Megatron-Core's dense-model choices)."""


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
    rope_scaling_factor: float = 0.0
    """Llama-3.x RoPE scaling factor (low/high frequency factors 1 and 4, original context 8192, as in
    Llama 3.1/3.2 and Megatron); 0 = plain RoPE."""
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
    recompute_granularity: Literal["none", "selective", "full"] = "none"
    """Activation recompute: none; selective (only ``recompute_modules`` of every layer); full (whole layers,
    chosen by ``recompute_method``/``recompute_num_layers``). Trades ~1 extra forward of what is recomputed
    for activation memory."""
    recompute_method: Literal["uniform", "block"] = "uniform"
    """Full recompute only: uniform = checkpoint every chunk of ``recompute_num_layers`` layers; block = only
    the first ``recompute_num_layers`` layers of each pipeline stage."""
    recompute_num_layers: int = 1
    """Full recompute only: layers per recompute chunk (uniform) or layers recomputed per stage (block)."""
    recompute_modules: list[str] = field(default_factory=lambda: ["core_attn"])
    """Selective recompute only: submodules to recompute, from core_attn, layernorm, mlp. With Transformer
    Engine's fused attention core_attn saves nothing (flash attention keeps no S x S scores); use
    layernorm/mlp there."""

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
        if self.rope_scaling_factor < 0:
            raise ValueError(f"rope_scaling_factor must be >= 0 (0 = none), got {self.rope_scaling_factor}")
        if self.fp8 != "none" and self.params_dtype != "bf16":
            raise ValueError(f"fp8={self.fp8} needs params_dtype=bf16 (got {self.params_dtype})")
        self._validate_recompute()

    def _validate_recompute(self) -> None:
        if self.recompute_granularity == "full" and not 1 <= self.recompute_num_layers <= self.num_layers:
            raise ValueError(
                f"recompute_num_layers={self.recompute_num_layers} must be in [1, num_layers={self.num_layers}] "
                "with recompute_granularity=full"
            )
        if self.recompute_granularity == "selective":
            bad = sorted(set(self.recompute_modules) - set(RECOMPUTE_MODULES))
            if bad or not self.recompute_modules:
                raise ValueError(
                    f"recompute_modules={self.recompute_modules} must be a non-empty subset of {list(RECOMPUTE_MODULES)}"
                )
            if self.fp8 != "none" and self.fp8_recipe == "delayed" and "layernorm" in self.recompute_modules:
                raise ValueError("recompute_modules 'layernorm' does not work with fp8_recipe=delayed (Megatron-Core rule)")


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
    """Megatron sequence parallelism: norms, dropout and residuals split along the sequence over the TP ranks
    (activation memory / TP). Needs tensor_parallel >= 2 and the Transformer Engine spec on GPU (error on CPU)."""
    sequence_packing: Literal["auto", "off", "rows", "thd"] = "auto"
    """How a micro-batch's sequences are laid out (see actor/packing.py): off = one right-padded row per
    sequence; rows = several sequences per row with a block-diagonal causal mask (Megatron-local spec, CPU);
    thd = one packed row with cu_seqlens (Transformer Engine on GPU). auto = thd with Transformer Engine,
    else off."""
    backend: Literal["auto", "gloo", "nccl"] = "auto"
    """torch.distributed backend: auto = nccl with CUDA, gloo without."""
    micro_batch_size: int = 0
    """Row budget of a micro-batch (whole groups; never below the largest group); 0 = derive it from
    max_tokens_per_micro_batch (see actor/microbatch.py)."""
    max_tokens_per_micro_batch: int = 4096
    """When micro_batch_size is 0: the row budget is this // the step's padded sequence length."""
    seed: int = 1234
    """Seed for parameter init and the tensor-parallel RNG tracker."""
    control_timeout_s: float = 14400.0
    """Timeout of the gloo control group that carries rank 0's messages to the other ranks (score requests,
    update batches, resyncs, aborts) and every wait on rank 0's rollout/evaluation; sized for the longest
    rollout or evaluation, far above the default group's (NCCL) 10 minutes. See utils/dist.py."""
    timeout_s: float = 600.0
    """Timeout of the default process group (NCCL on GPU): bounds every Megatron collective."""

    def validate(self) -> None:
        if self.control_timeout_s <= 0 or self.timeout_s <= 0:
            raise ValueError(f"control_timeout_s and timeout_s must be > 0, got {self.control_timeout_s}, {self.timeout_s}")
        for name in ("tensor_parallel", "pipeline_parallel", "virtual_pipeline_parallel"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.virtual_pipeline_parallel > 1 and self.pipeline_parallel == 1:
            raise ValueError("virtual_pipeline_parallel > 1 needs pipeline_parallel > 1")
        if self.micro_batch_size < 0:
            raise ValueError(f"micro_batch_size must be >= 0, got {self.micro_batch_size}")
        if self.sequence_parallel and self.tensor_parallel < 2:
            raise ValueError("sequence_parallel needs tensor_parallel >= 2 (it splits activations over the TP ranks)")


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
    overlap_grad_reduce: bool = False
    """Start each gradient bucket's data-parallel all-reduce / reduce-scatter during the backward pass of
    the last micro-batch, as soon as the bucket's gradients are final (Megatron DDP)."""
    overlap_param_gather: bool = False
    """Distributed optimizer: all-gather the updated parameters bucket by bucket during the next forward
    instead of right after the optimizer step. Needs distributed_optimizer and overlap_grad_reduce."""
    nonfinite_policy: Literal["skip", "stop"] = "skip"
    """A step whose loss or global gradient norm is NaN/Inf: skip = zero the gradients, leave weights,
    optimizer state and LR schedule untouched, count and log it; stop = raise NonFiniteStepError."""
    max_consecutive_skips: int = 3
    """With nonfinite_policy=skip: this many non-finite steps in a row stop the run (0 = never stop)."""

    def validate(self) -> None:
        if self.overlap_param_gather and not (self.distributed_optimizer and self.overlap_grad_reduce):
            raise ValueError(
                "overlap_param_gather needs distributed_optimizer=true and overlap_grad_reduce=true "
                "(only the distributed optimizer all-gathers parameters)"
            )
        if self.max_consecutive_skips < 0:
            raise ValueError(f"max_consecutive_skips must be >= 0, got {self.max_consecutive_skips}")
        for name in ("lr", "min_lr", "weight_decay", "adam_beta1", "adam_beta2", "adam_eps", "clip_grad"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value}")
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr ({self.min_lr}) must not exceed lr ({self.lr})")
        for name in ("adam_beta1", "adam_beta2"):
            if getattr(self, name) >= 1:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.warmup_steps < 0 or self.decay_steps < 0:
            raise ValueError(f"warmup_steps and decay_steps must be >= 0, got {self.warmup_steps}, {self.decay_steps}")


@dataclass(kw_only=True)
class CheckpointConfig:
    """Where and how often the trainer saves actor checkpoints."""

    save_interval: int = 0
    """Save every N RL steps (0: only at the end)."""
    keep_last: int = 2
    """Checkpoints kept on disk (older ones deleted after a successful save)."""
    load_dir: str = ""
    """Continue from this directory's newest complete checkpoint when set (a checkpoint dir, a run dir or its checkpoints/)."""
    on_corrupt: Literal["fallback", "stop"] = "fallback"
    """Resume when the newest checkpoint fails verification (missing, truncated or changed file): fall back to
    the previous complete one (the bad one is renamed <name>.corrupt and named in the log) or stop (exit code 2)."""
