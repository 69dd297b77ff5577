"""Streaming export of the actor's weights in Hugging Face layout, bucket by bucket (the weight-sync source).

No rank ever holds the whole model: every pipeline stage exports only its own layers, tensor by tensor.

Per tensor of this rank's model chunks (global layer numbers, actor/state_dict.py):
1. gather the TP shards to TP rank 0 within the TP group, on the tensor's device (NCCL on GPU, gloo on CPU);
2. convert the full tensor to HF name(s) (checkpoint/hf_mapping.mcore_tensor_to_hf) and the serving dtype;
3. append to the current bucket. A bucket is emitted BEFORE the gather of a tensor that would make it exceed
   ``bucket_bytes`` (the size is known from the shard's shape), so a full bucket and the next gathered
   tensor never coexist; a single tensor larger than ``bucket_bytes`` forms a bucket of its own.

Who does what: only data-parallel replica 0 takes part (after the optimizer step every replica holds the
same weights); inside it every TP rank sends its shards and the TP-rank-0 rank of each pipeline stage
(the stage's *source*) receives them and the buckets. Peak extra memory on a source rank:
``max(bucket_bytes, largest tensor)`` plus one transient copy of the tensor being gathered (dimension-0
shards land straight in the full tensor; dimension-1 shards are concatenated, the SwiGLU halves regrouped,
or the dtype converted: one more copy of that tensor), i.e. at most ~2 x max(bucket, largest tensor),
independent of the model's size. The other ranks allocate nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from megatron.core import parallel_state

from recast_mcore.actor.state_dict import _tp_gather, local_params
from recast_mcore.checkpoint.hf_mapping import mcore_tensor_to_hf
from recast_mcore.config.actor import ModelConfig


@dataclass
class Bucket:
    """A group of HF-layout tensors ready to push (on the source rank of one pipeline stage)."""

    stage: int
    """Pipeline rank that produced it."""
    index: int
    """Bucket number within the stage (0, 1, ...)."""
    tensors: list[tuple[str, torch.Tensor]] = field(default_factory=list)
    """``(hf_name, tensor)`` in the serving dtype, contiguous, on the actor's device."""

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for _, t in self.tensors)


def is_stage_source() -> bool:
    """True on the rank that receives its pipeline stage's buckets (DP rank 0, TP rank 0)."""
    return parallel_state.get_data_parallel_rank() == 0 and parallel_state.get_tensor_model_parallel_rank() == 0


def pipeline_stage() -> int:
    return parallel_state.get_pipeline_model_parallel_rank()


def hf_nbytes(name: str, param: torch.nn.Parameter, tp: int, vocab_size: int, dtype: torch.dtype | None) -> int:
    """Bytes the HF tensor(s) of one Megatron parameter take in the serving dtype (known before the gather:
    TP shards x tp; embedding / output layer cut to ``vocab_size`` rows)."""
    shape = list(param.shape)
    if getattr(param, "tensor_model_parallel", False):
        shape[param.partition_dim] *= tp
    if name in ("embedding.word_embeddings.weight", "output_layer.weight"):
        shape[0] = min(shape[0], vocab_size)
    return math.prod(shape) * (dtype or param.dtype).itemsize


def export_buckets(
    chunks: list[torch.nn.Module], model_cfg: ModelConfig, vocab_size: int, *, bucket_bytes: int,
    dtype: torch.dtype | None,
) -> Iterator[Bucket]:
    """Collective within the TP group of DP replica 0 (other replicas return at once); yields buckets
    only on the stage source (``is_stage_source()``). Every caller must run the iterator to its end.

    ``dtype``: the serving dtype (None keeps the parameter dtype).
    """
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be > 0, got {bucket_bytes}")
    if parallel_state.get_data_parallel_rank() != 0:
        return
    source, stage = is_stage_source(), pipeline_stage()
    tp = parallel_state.get_tensor_model_parallel_world_size()
    bucket = Bucket(stage=stage, index=0)
    with torch.no_grad():
        for name, param in local_params(chunks, model_cfg.tie_embeddings):
            # a full bucket goes out BEFORE the next tensor is gathered: the two never coexist
            if source and bucket.tensors and bucket.nbytes + hf_nbytes(name, param, tp, vocab_size, dtype) > bucket_bytes:
                yield bucket
                bucket = Bucket(stage=stage, index=bucket.index + 1)
            full = _tp_gather(name, param, param.detach(), to_first=True)
            if not source:
                continue
            for hf_name, tensor in mcore_tensor_to_hf(name, full, model_cfg, vocab_size):
                tensor = tensor.to(dtype or tensor.dtype).contiguous()
                if tensor.untyped_storage().data_ptr() == param.untyped_storage().data_ptr():
                    tensor = tensor.clone()  # never hand out (a view of) the live parameter
                if bucket.tensors and bucket.nbytes + tensor.numel() * tensor.element_size() > bucket_bytes:
                    yield bucket  # one parameter larger than a bucket (e.g. q/k/v or gate/up): a tensor per bucket
                    bucket = Bucket(stage=stage, index=bucket.index + 1)
                bucket.tensors.append((hf_name, tensor))
            del full
    if source and bucket.tensors:
        yield bucket
