"""Full (TP/PP-gathered) <-> local (this rank's shards) Megatron state dicts.

The full layout is the TP=1, PP=1 local-spec ``GPTModel.state_dict()`` (global layer numbers, no
``_extra_state``, no ``output_layer.weight`` when embeddings are tied; a TE-spec model's fused norm names
are translated, so full dicts are interchangeable between specs). It is what ``checkpoint/hf_mapping.py`` consumes.

Tensor-parallel params carry Megatron's ``tensor_model_parallel`` / ``partition_dim`` attributes and are
split in contiguous chunks along ``partition_dim`` (this keeps ``linear_qkv``'s per-query-group layout,
since whole groups land on each rank), except ``mlp.linear_fc1.weight``: with SwiGLU each TP rank holds
``[gate_r; up_r]``, so the full ``[gate; up]`` is rebuilt as ``[gate_0..gate_{tp-1}; up_0..up_{tp-1}]``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

import torch
import torch.distributed as dist
from megatron.core import parallel_state

_LAYER = re.compile(r"^decoder\.layers\.(\d+)\.")
_TE_TO_LOCAL = {  # the TE spec fuses the pre-norms into the following linear layer
    "self_attention.linear_qkv.layer_norm_weight": "input_layernorm.weight",
    "mlp.linear_fc1.layer_norm_weight": "pre_mlp_layernorm.weight",
}


def _global_name(chunk: torch.nn.Module, local_name: str) -> str:
    """Global, spec-independent name: global layer number, local-spec norm names (TE names translated)."""
    m = _LAYER.match(local_name)
    if not m:
        return local_name
    layer = chunk.decoder.layers[int(m.group(1))]
    rest = local_name[m.end() :]
    return f"decoder.layers.{layer.layer_number - 1}." + _TE_TO_LOCAL.get(rest, rest)


def local_params(chunks: list[torch.nn.Module], tie_embeddings: bool) -> Iterator[tuple[str, torch.nn.Parameter]]:
    """(global name, param) of this rank's model chunks (inner GPTModels), tied output weight skipped."""
    for chunk in chunks:
        for name, p in chunk.named_parameters():
            if tie_embeddings and name == "output_layer.weight":
                continue
            yield _global_name(chunk, name), p


def _is_swiglu_fc1(name: str) -> bool:
    return name.endswith("mlp.linear_fc1.weight")


def _tp_gather(name: str, p: torch.nn.Parameter, value: torch.Tensor) -> torch.Tensor:
    tp = parallel_state.get_tensor_model_parallel_world_size()
    if tp == 1 or not getattr(p, "tensor_model_parallel", False):
        return value
    shards = [torch.empty_like(value) for _ in range(tp)]
    dist.all_gather(shards, value.contiguous(), group=parallel_state.get_tensor_model_parallel_group())
    if _is_swiglu_fc1(name):
        halves = [s.chunk(2, dim=0) for s in shards]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves], dim=0)
    return torch.cat(shards, dim=p.partition_dim)


def _tp_slice(name: str, p: torch.nn.Parameter, full: torch.Tensor) -> torch.Tensor:
    tp = parallel_state.get_tensor_model_parallel_world_size()
    if tp == 1 or not getattr(p, "tensor_model_parallel", False):
        return full
    rank = parallel_state.get_tensor_model_parallel_rank()
    if _is_swiglu_fc1(name):
        gate, up = full.chunk(2, dim=0)
        return torch.cat([gate.chunk(tp, dim=0)[rank], up.chunk(tp, dim=0)[rank]], dim=0)
    return full.chunk(tp, dim=p.partition_dim)[rank]


def gather_full(
    chunks: list[torch.nn.Module], tie_embeddings: bool, value_of: Callable[[torch.nn.Parameter], torch.Tensor] | None = None
) -> dict[str, torch.Tensor] | None:
    """Full state dict on global rank 0 (None elsewhere). Collective over all ranks.

    ``value_of(param)`` picks what to gather (default the weights; e.g. ``lambda p: p.main_grad`` for grads).
    """
    value_of = value_of or (lambda p: p.detach())
    stage = {}
    for name, p in local_params(chunks, tie_embeddings):
        stage[name] = _tp_gather(name, p, value_of(p)).detach().float().cpu()
    send = stage if parallel_state.get_data_parallel_rank() == 0 and parallel_state.get_tensor_model_parallel_rank() == 0 else {}
    received = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(send, received, dst=0)
    if dist.get_rank() != 0:
        return None
    full: dict[str, torch.Tensor] = {}
    for part in received:
        full.update(part)
    return full


@torch.no_grad()
def load_full(chunks: list[torch.nn.Module], tie_embeddings: bool, full: dict[str, torch.Tensor]) -> None:
    """Copy this rank's shards out of a full state dict (every rank passes the same ``full``)."""
    for chunk in chunks:
        for name, p in chunk.named_parameters():
            key = _global_name(chunk, name)
            if tie_embeddings and name == "output_layer.weight":
                key = "embedding.word_embeddings.weight"
            if key not in full:
                raise KeyError(f"full state dict has no '{key}' (needed for this rank's '{name}')")
            shard = _tp_slice(key, p, full[key])
            if tuple(shard.shape) != tuple(p.shape):
                raise ValueError(f"'{key}': shard shape {tuple(shard.shape)} != parameter shape {tuple(p.shape)}")
            p.copy_(shard.to(p.dtype))
