"""Load this rank's parameters shard by shard from a source (e.g. an HF checkpoint read slice by slice).

``shard_of(global_name, tp_rank, tp_size) -> Tensor`` returns exactly the local shard of the parameter
(global names and partitioning as in actor/state_dict.py; checkpoint/hf_import.py implements it for Hugging
Face safetensors). No rank ever materializes the full model: peak extra host memory is one shard.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from megatron.core import parallel_state

from recast_mcore.actor.state_dict import _global_name

ShardFn = Callable[[str, int, int], torch.Tensor]


@torch.no_grad()
def load_shards(chunks: list[torch.nn.Module], shard_of: ShardFn) -> int:
    """Copy ``shard_of(name, tp_rank, tp_size)`` into every parameter of this rank's chunks; returns the count.

    A tied output layer (the last stage's copy of the embedding) is asked for as ``output_layer.weight``.
    """
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    tp_size = parallel_state.get_tensor_model_parallel_world_size()
    count = 0
    for chunk in chunks:
        for name, p in chunk.named_parameters():
            key = _global_name(chunk, name)
            shard = shard_of(key, tp_rank, tp_size)
            if tuple(shard.shape) != tuple(p.shape):
                raise ValueError(f"'{key}': source shard {tuple(shard.shape)} != parameter shard {tuple(p.shape)} "
                                 f"(tensor-parallel rank {tp_rank} of {tp_size})")
            p.copy_(shard)
            del shard
            count += 1
    return count
