"""The policy network: a Megatron-Core GPTModel in the Llama/Qwen style, and the ONE place layer specs are chosen.

Architecture (all from ModelConfig): RMSNorm, SwiGLU MLP (``linear_fc1`` = [gate; up]), RoPE, grouped-query
attention (``linear_qkv`` grouped per query group: q heads, then k, then v), optional per-head q/k RMSNorm
(Qwen3), no biases, tied or untied embeddings.

Spec choice (``layer_spec``): the Transformer Engine spec when TE is importable (or requested), else the
Megatron-local spec. FP8 needs TE on a GPU; asking for it on CPU raises. bf16 mixed precision sets
``bf16=True`` (params in bf16, fp32 main params in the Megatron optimizer). Apex fused kernels are used by
megatron itself when apex is installed (gradient accumulation fusion is enabled only then).

Vocabulary: the embedding is padded to ``padded_vocab_size`` (a multiple of 128, independent of TP, so
checkpoints reshard across TP sizes); rows >= vocab_size are never valid tokens (the trie mask excludes
them and the SFT loss ignores them).

Output layer at selected positions (``PolicyModel``): the losses need logits only where a response token is
predicted (T positions per sequence, not every slot), so ``model(..., logit_rows=[n], logit_positions=[n, T])``
returns this TP rank's vocabulary shard of those logits, ``[n, T, Vp/tp]``, never the ``[b, L, Vp]`` tensor
(actor/forward_backward.py).
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.tensor_parallel import gather_from_sequence_parallel_region
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.spec_utils import ModuleSpec

from recast_mcore.config.actor import ModelConfig, ParallelConfig

VOCAB_PAD_MULTIPLE = 128


def padded_vocab_size(vocab_size: int) -> int:
    """Round the vocabulary up to a multiple of 128 (TP sizes up to 128 divide it)."""
    return -(-vocab_size // VOCAB_PAD_MULTIPLE) * VOCAB_PAD_MULTIPLE


def transformer_engine_available() -> bool:
    return importlib.util.find_spec("transformer_engine") is not None


def apex_available() -> bool:
    return importlib.util.find_spec("apex") is not None and importlib.util.find_spec("fused_weight_gradient_mlp_cuda") is not None


def use_transformer_engine(model_cfg: ModelConfig) -> bool:
    """Resolve ``transformer_impl``; raise on impossible requests (no silent fallback)."""
    if model_cfg.transformer_impl == "local":
        if model_cfg.fp8 != "none":
            raise ValueError("model.fp8 needs transformer_impl transformer_engine (or auto with TE installed)")
        return False
    have_te = transformer_engine_available() and torch.cuda.is_available()
    if model_cfg.fp8 != "none" and not have_te:
        raise RuntimeError(
            f"model.fp8={model_cfg.fp8} needs Transformer Engine on a CUDA GPU; this machine has "
            f"cuda={torch.cuda.is_available()}, transformer_engine={transformer_engine_available()}. "
            "Set model.fp8: none on CPU."
        )
    if model_cfg.transformer_impl == "transformer_engine" and not have_te:
        raise RuntimeError("model.transformer_impl=transformer_engine but Transformer Engine/CUDA is not available")
    return have_te


def layer_spec(model_cfg: ModelConfig) -> ModuleSpec:
    """The transformer-layer spec: TE when available/requested, else Megatron-local (RMSNorm, SwiGLU)."""
    if use_transformer_engine(model_cfg):
        from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=model_cfg.qk_layernorm)
    return get_gpt_layer_local_spec(qk_layernorm=model_cfg.qk_layernorm, normalization="RMSNorm")


def transformer_config(model_cfg: ModelConfig, parallel_cfg: ParallelConfig) -> TransformerConfig:
    """Megatron TransformerConfig for our Llama/Qwen-style decoder."""
    if model_cfg.num_layers % (parallel_cfg.pipeline_parallel * parallel_cfg.virtual_pipeline_parallel):
        raise ValueError(
            f"num_layers={model_cfg.num_layers} is not divisible by pipeline_parallel*virtual_pipeline_parallel="
            f"{parallel_cfg.pipeline_parallel}*{parallel_cfg.virtual_pipeline_parallel}"
        )
    if model_cfg.num_query_groups % parallel_cfg.tensor_parallel:
        raise ValueError(
            f"num_query_groups={model_cfg.num_query_groups} is not divisible by tensor_parallel={parallel_cfg.tensor_parallel}"
        )
    te = use_transformer_engine(model_cfg)
    bf16 = model_cfg.params_dtype == "bf16"
    dtype = torch.bfloat16 if bf16 else torch.float32
    vpp = parallel_cfg.virtual_pipeline_parallel if parallel_cfg.virtual_pipeline_parallel > 1 else None
    fp8_kwargs = {}
    if model_cfg.fp8 != "none":
        fp8_kwargs = dict(fp8=model_cfg.fp8, fp8_recipe=model_cfg.fp8_recipe)
    if not te and model_cfg.recompute_granularity == "selective" and set(model_cfg.recompute_modules) - {"core_attn"}:
        raise ValueError(
            f"model.recompute_modules={model_cfg.recompute_modules}: layernorm/mlp recompute needs Transformer Engine "
            "(megatron/core/tensor_parallel/random.py CheckpointWithoutOutput reads TE's FP8 state); "
            "the local spec supports core_attn only"
        )
    if parallel_cfg.sequence_parallel and not te:
        raise ValueError("parallel.sequence_parallel needs the Transformer Engine spec (the local spec's torch norm rejects it)")
    return TransformerConfig(
        num_layers=model_cfg.num_layers,
        hidden_size=model_cfg.hidden_size,
        ffn_hidden_size=model_cfg.ffn_hidden_size,
        num_attention_heads=model_cfg.num_attention_heads,
        num_query_groups=model_cfg.num_query_groups,
        kv_channels=model_cfg.head_dim,
        qk_layernorm=model_cfg.qk_layernorm,
        normalization="RMSNorm",
        layernorm_epsilon=model_cfg.norm_epsilon,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=0.0,
        attention_dropout=0.0,
        init_method_std=model_cfg.init_method_std,
        tensor_model_parallel_size=parallel_cfg.tensor_parallel,
        pipeline_model_parallel_size=parallel_cfg.pipeline_parallel,
        virtual_pipeline_model_parallel_size=vpp,
        sequence_parallel=parallel_cfg.sequence_parallel,
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=bf16,
        calculate_per_token_loss=True,
        use_cpu_initialization=not torch.cuda.is_available(),
        gradient_accumulation_fusion=te and apex_available(),
        masked_softmax_fusion=te,
        bias_activation_fusion=False,
        bias_dropout_fusion=te,
        # TE's fused RoPE; without it the THD path applies RoPE per sequence in a Python loop with host syncs
        # (megatron/core/models/common/embeddings/rope_utils.py::_apply_rotary_pos_emb_thd)
        apply_rope_fusion=te,
        persist_layer_norm=te,
        deallocate_pipeline_outputs=True,
        batch_p2p_sync=torch.cuda.is_available(),
        # With virtual stages and PP=2 the previous and the next stage are the same peer: batched
        # isend/irecv (megatron p2p_communication._batched_p2p_ops, untagged) then matches the activation
        # send with the gradient receive. The unbatched path orders ops by even/odd rank and is correct.
        batch_p2p_comm=parallel_cfg.virtual_pipeline_parallel == 1,
        **fp8_kwargs,
        **recompute_kwargs(model_cfg),
    )


def recompute_kwargs(model_cfg: ModelConfig) -> dict:
    """TransformerConfig activation-recompute fields for ``model_cfg.recompute_*`` (none -> no fields)."""
    if model_cfg.recompute_granularity == "none":
        return {}
    if model_cfg.recompute_granularity == "selective":
        return dict(recompute_granularity="selective", recompute_modules=list(model_cfg.recompute_modules))
    return dict(
        recompute_granularity="full",
        recompute_method=model_cfg.recompute_method,
        recompute_num_layers=model_cfg.recompute_num_layers,
    )


class PolicyModel(GPTModel):
    """GPTModel whose output layer can run at selected positions only (module doc); same parameters and
    state dict as GPTModel, and without ``logit_positions`` the same forward."""

    _logit_index: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, input_ids, position_ids, attention_mask, *args, logit_rows: torch.Tensor | None = None,
                logit_positions: torch.Tensor | None = None, **kwargs):
        """``logit_rows`` [n], ``logit_positions`` [n, T] int64 (last pipeline stage): return the [n, T, Vp/tp]
        vocab-parallel logits at slot ``logit_positions[i, t]`` of row ``logit_rows[i]``."""
        self._logit_index = None if logit_positions is None else (logit_rows, logit_positions)
        try:
            return super().forward(input_ids, position_ids, attention_mask, *args, **kwargs)
        finally:
            self._logit_index = None

    def _postprocess(self, hidden_states, **kwargs):
        if self._logit_index is None or not self.post_process or self.mtp_process:
            return super()._postprocess(hidden_states, **kwargs)
        return self._logits_at(hidden_states, *self._logit_index)

    def _logits_at(self, hidden: torch.Tensor, rows: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """hidden [L(/tp with sequence parallelism), b, d] -> logits [n, T, Vp/tp] at slots ``positions`` [n, T]
        of rows ``rows`` [n].

        With sequence parallelism the hidden states are first all-gathered along the sequence (backward:
        each rank keeps its slice); the output layer then runs on replicated [T, n, d] inputs with its
        sequence parallelism off, so its column-parallel backward all-reduces the input gradient over TP.
        """
        layer = self.output_layer
        sequence_parallel = layer.sequence_parallel
        if sequence_parallel:
            hidden = gather_from_sequence_parallel_region(hidden, tensor_parallel_output_grad=False)
        picked = hidden[positions.to(hidden.device).t(), rows.to(hidden.device)[None, :]]  # [T, n, d]
        weight = self.shared_embedding_or_output_weight() if self.share_embeddings_and_output_weights else None
        layer.sequence_parallel = False
        try:
            logits, _ = layer(picked, weight=weight, runtime_gather_output=False)
        finally:
            layer.sequence_parallel = sequence_parallel
        return logits.transpose(0, 1)  # [n, T, Vp/tp]


def build_model_chunks(
    model_cfg: ModelConfig, parallel_cfg: ParallelConfig, vocab_size: int, *, initialize: bool = True
) -> tuple[list[PolicyModel], TransformerConfig]:
    """This rank's model chunks (one per virtual pipeline stage), on the current device, in params_dtype.
    ``initialize=False`` skips the random init (the caller copies weights in; no RNG is consumed)."""
    config = transformer_config(model_cfg, parallel_cfg)
    config.perform_initialization = initialize
    spec = layer_spec(model_cfg)
    vpp = parallel_cfg.virtual_pipeline_parallel
    chunks = []
    for vp_stage in range(vpp):
        vp = vp_stage if vpp > 1 else None
        chunk = PolicyModel(
            config=config,
            transformer_layer_spec=spec,
            vocab_size=padded_vocab_size(vocab_size),
            max_sequence_length=model_cfg.max_seq_len,
            pre_process=parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp),
            post_process=parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp),
            parallel_output=False,  # full-sequence logits (logits_fn) are gathered over TP; the losses use logit_positions
            share_embeddings_and_output_weights=model_cfg.tie_embeddings,
            position_embedding_type="rope",
            rotary_base=model_cfg.rotary_base,
            rope_scaling=model_cfg.rope_scaling_factor > 0,
            rope_scaling_factor=model_cfg.rope_scaling_factor or 8.0,
            vp_stage=vp,
        )
        if torch.cuda.is_available():
            chunk.cuda(torch.cuda.current_device())
        chunks.append(chunk)
    return chunks, config
