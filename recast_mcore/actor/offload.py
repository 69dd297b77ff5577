"""Move the optimizer's state to CPU memory while colocated rollout servers use the GPU, and back.

What moves: every tensor in the inner torch optimizers' ``state`` (Adam's ``exp_avg``/``exp_avg_sq``) and
their parameters when those are not the model's own (the fp32 main copies of bf16 training and of the
distributed optimizer). With fp32 training Megatron's FP32Optimizer steps the model parameters themselves:
those stay on the GPU (Megatron's own ``offload_to_cpu`` would move the model too). Without CUDA nothing
moves (everything already lives in CPU memory).
"""

from __future__ import annotations

import torch


def _inner(optimizer) -> list[torch.optim.Optimizer]:
    chained = getattr(optimizer, "chained_optimizers", [optimizer])
    return [getattr(o, "optimizer", None) for o in chained if getattr(o, "optimizer", None) is not None]


def move_optimizer_state(optimizer, model_params: list[torch.nn.Parameter], device: torch.device | str) -> int:
    """Move the optimizer's own tensors (see module doc) to ``device``; returns the bytes moved."""
    if not torch.cuda.is_available():
        return 0
    device = torch.device(device)
    model_ids = {id(p) for p in model_params}
    moved = 0
    for inner in _inner(optimizer):
        for group in inner.param_groups:
            for p in group["params"]:
                if id(p) not in model_ids and p.device != device:
                    moved += p.numel() * p.element_size()
                    p.data = p.data.to(device, non_blocking=True)
        for state in inner.state.values():
            for key, value in state.items():
                if torch.is_tensor(value) and value.dim() > 0 and value.device != device:
                    moved += value.numel() * value.element_size()
                    state[key] = value.to(device, non_blocking=True)
    torch.cuda.synchronize()
    if device.type == "cpu":
        torch.cuda.empty_cache()
    return moved
