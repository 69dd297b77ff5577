"""Tensor transport: ``/update_weights_from_tensor`` once per bucket and server (same host only).

The request carries handles, not bytes: SGLang's ``MultiprocessingSerializer`` pickles each tensor as a
shared-memory handle (CPU, torch sharing strategy ``file_system``) or a CUDA IPC handle (GPU). A server
with tensor-parallel size T reads element ``tp_rank`` of ``serialized_named_tensors``
(sglang/srt/managers/tp_worker.py ``deserialize_own_rank``), so the list holds T payloads, one serialized
per rank (a CUDA IPC handle must not be opened twice from one serialization). The sender keeps the
bucket alive until every server answered (the server copies the weights into its own parameters).
"""

from __future__ import annotations

from recast_mcore.rollout.client import WeightUpdateFailed
from recast_mcore.rollout.cpu_bridge import declare_torchvision_ops_in_process
from recast_mcore.rollout.weight_sync import NamedTensors, SyncTarget, check_bucket


def serialize_for_ranks(tensors: NamedTensors, tp_size: int) -> list[str]:
    """``tp_size`` base64 payloads of ``[(name, tensor), ...]`` (imports sglang)."""
    declare_torchvision_ops_in_process()
    import torch.multiprocessing as mp
    from sglang.srt.utils.common import MultiprocessingSerializer

    if not any(t.is_cuda for _, t in tensors):
        mp.set_sharing_strategy("file_system")
    return [MultiprocessingSerializer.serialize(list(tensors), output_str=True) for _ in range(tp_size)]


class TensorSender:
    """Pushes buckets to every server through ``/update_weights_from_tensor`` (inside rank 0's update session)."""

    def __init__(self, target: SyncTarget):
        self.target, self.clients = target, target.clients()
        self.names: dict[str, str] = {}

    def push(self, index: int, tensors: NamedTensors) -> None:
        check_bucket(tensors, self.target.shapes)
        for client, endpoint in zip(self.clients, self.target.endpoints):
            out = client.post("/update_weights_from_tensor", {
                "serialized_named_tensors": serialize_for_ranks(tensors, endpoint.tp_size), "flush_cache": False,
            })
            if not out.get("success", False):
                raise WeightUpdateFailed(f"{client.url}: update_weights_from_tensor (bucket {index}) failed: {out.get('message')}")
        self.names.update((n, "") for n, _ in tensors)

    def close(self) -> dict[str, str]:
        return dict(self.names)
