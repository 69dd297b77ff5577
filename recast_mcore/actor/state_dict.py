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


def _tp_gather(name: str, p: torch.nn.Parameter, value: torch.Tensor, *, to_first: bool = False) -> torch.Tensor | None:
    """The full tensor of a TP-sharded ``value`` on every TP rank (all-gather), or with ``to_first`` only on TP
    rank 0 (a gather: the other ranks allocate nothing and get None). Non-TP tensors come back as they are."""
    tp = parallel_state.get_tensor_model_parallel_world_size()
    if tp == 1 or not getattr(p, "tensor_model_parallel", False):
        return value
    group = parallel_state.get_tensor_model_parallel_group()
    receives = not to_first or parallel_state.get_tensor_model_parallel_rank() == 0
    dst = dist.get_global_rank(group, 0)
    if p.partition_dim == 0:  # gathered straight into the full tensor: no second copy
        full = value.new_empty((tp * value.shape[0], *value.shape[1:])) if receives else None
        if to_first:
            _gather_to_first(value.contiguous(), list(full.chunk(tp)) if receives else None, dst, group)
        else:
            dist.all_gather_into_tensor(full, value.contiguous(), group=group)
        if full is None or not _is_swiglu_fc1(name):
            return full
        # rank r holds [gate_r; up_r]: regroup to [gate_0..gate_{tp-1}; up_0..up_{tp-1}]
        return full.view(tp, 2, value.shape[0] // 2, *value.shape[1:]).transpose(0, 1).reshape(full.shape)
    shards = [torch.empty_like(value) for _ in range(tp)] if receives else None
    if to_first:
        dist.gather(value.contiguous(), shards, dst=dst, group=group)
    else:
        dist.all_gather(shards, value.contiguous(), group=group)
    return None if shards is None else torch.cat(shards, dim=p.partition_dim)


def _gather_to_first(value: torch.Tensor, outputs: list[torch.Tensor] | None, dst: int, group) -> None:
    """``dist.gather`` of ``value`` into ``outputs`` (contiguous views of the full tensor) on group rank 0.

    gloo's gather stages every input in one flat buffer of the full size before copying it out (one more copy of
    the tensor on the receiver); point-to-point receives land in the views directly. NCCL's gather writes into
    ``outputs`` itself and is kept."""
    if dist.get_backend(group) != "gloo":
        dist.gather(value, outputs, dst=dst, group=group)
        return
    if outputs is None:
        dist.send(value, dst=dst, group=group)
        return
    works = [dist.irecv(out, src=dist.get_global_rank(group, r), group=group) for r, out in enumerate(outputs) if r > 0]
    outputs[0].copy_(value)
    for work in works:
        work.wait()


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
