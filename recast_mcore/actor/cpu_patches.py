"""Every patch for Megatron-Core 0.16.1's CUDA assumptions, in ONE place, applied only without CUDA.

Megatron-Core assumes a CUDA device in many places (see ../shared/notes/cpu-stack.md). On a CPU torch
build those calls raise ``AssertionError: Torch not compiled with CUDA enabled``. ``apply_cpu_patches()``
installs the smallest set of rewrites that lets the real Megatron code run on CPU with gloo:

1. ``CudaToCpuMode`` (a ``TorchFunctionMode``) rewrites a ``device="cuda"`` / ``device=<int>`` keyword of
   torch factory functions and ``.to()``/``.cuda()`` calls to the CPU. It answers hard-coded devices in
   megatron/core/optimizer/optimizer.py, optimizer/clip_grads.py, pipeline_parallel/schedules.py
   (token-count zeros), transformer/utils.py (get_default_causal_mask) and every
   ``device=torch.cuda.current_device()`` (utils.py GlobalMemoryBuffer, tensor_parallel/layers.py,
   tensor_parallel/mappings.py, pipeline_parallel/p2p_communication.py, distributed/param_and_grad_buffer.py).
   It also makes ``Tensor.type()`` (no argument) report ``torch.cuda.<X>Tensor``, because
   megatron/core/optimizer/distrib_optimizer.py and optimizer.py (Float16OptimizerWithFloat16Params)
   reject any other parameter type name.
2. ``torch.cuda.current_device`` returns 0 (the mode above maps device 0 to cpu) - megatron/core/utils.py,
   tensor_parallel/*.py, distributed/*.py call it unconditionally.
3. The tensor-parallel RNG tracker (megatron/core/tensor_parallel/random.py) reads/writes the CUDA
   generator; it is mapped onto the CPU default generator (``torch.cuda.get_rng_state``,
   ``torch.cuda.manual_seed`` and random.py's ``_get_cuda_rng_state`` / ``_set_cuda_rng_state``).
4. ``torch.cuda.synchronize`` is a no-op (pipeline_parallel/p2p_communication.py calls it after batched p2p).
5. megatron/core/optimizer/clip_grads.py asserts ``param.grad.type() == 'torch.cuda.FloatTensor'`` and
   calls apex's multi_tensor_l2norm via a CUDA overflow buffer: ``get_grad_norm_fp32`` and
   ``clip_grad_by_total_norm_fp32`` are replaced by plain-torch equivalents (same math: global L2 norm
   all-reduced over the model-parallel group, grads scaled by ``max_norm / (norm + 1e-6)`` when above).

On a machine with CUDA, ``apply_cpu_patches()`` does nothing: none of this may run on GPU.
"""

from __future__ import annotations

import math

import torch
from torch.overrides import TorchFunctionMode

_APPLIED = False
_MODE: "CudaToCpuMode | None" = None


def _is_cuda_device(device) -> bool:
    if isinstance(device, int) and not isinstance(device, bool):
        return True
    if isinstance(device, str):
        return device.startswith("cuda")
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return False


class CudaToCpuMode(TorchFunctionMode):
    """Rewrites CUDA device arguments to CPU (answers hard-coded ``device="cuda"`` in Megatron, see module doc)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if "device" in kwargs and _is_cuda_device(kwargs["device"]):
            kwargs = {**kwargs, "device": "cpu"}
        name = getattr(func, "__name__", "")
        if name == "cuda":  # Tensor.cuda() / Module tensors moved with .cuda()
            return args[0]
        if name == "type" and len(args) == 1 and not kwargs:
            # Tensor.type() with no target: megatron/core/optimizer/distrib_optimizer.py and optimizer.py
            # (Float16OptimizerWithFloat16Params) accept only 'torch.cuda.*Tensor' names.
            return func(*args).replace("torch.", "torch.cuda.", 1)
        if name == "to" and args:
            args = tuple("cpu" if i > 0 and _is_cuda_device(a) else a for i, a in enumerate(args))
        return func(*args, **kwargs)


def _cpu_get_rng_state(device="cuda", clone=False, graph_safe=False):
    # answers megatron/core/tensor_parallel/random.py::_get_cuda_rng_state
    return torch.get_rng_state()


def _cpu_set_rng_state(new_state, device=-1, graph_safe=False):
    # answers megatron/core/tensor_parallel/random.py::_set_cuda_rng_state
    torch.set_rng_state(new_state)


def _cpu_get_grad_norm_fp32(grads_for_norm, norm_type=2, grad_stats_parallel_group=None):
    """Plain-torch ``megatron/core/optimizer/clip_grads.py::get_grad_norm_fp32`` (no apex, no CUDA buffer)."""
    if isinstance(grads_for_norm, torch.Tensor):
        grads_for_norm = [grads_for_norm]
    norm_type = float(norm_type)
    if norm_type == math.inf:
        local = max((g.abs().max().item() for g in grads_for_norm), default=0.0)
        total = torch.tensor([local], dtype=torch.float)
        torch.distributed.all_reduce(total, op=torch.distributed.ReduceOp.MAX, group=grad_stats_parallel_group)
        return total[0].item()
    local = torch.zeros(1, dtype=torch.float)
    for g in grads_for_norm:
        local += torch.norm(g.float(), norm_type) ** norm_type
    torch.distributed.all_reduce(local, op=torch.distributed.ReduceOp.SUM, group=grad_stats_parallel_group)
    return local.item() ** (1.0 / norm_type)


def _cpu_clip_grad_by_total_norm_fp32(parameters, max_norm, total_norm, use_decoupled_grad=False):
    """Plain-torch ``megatron/core/optimizer/clip_grads.py::clip_grad_by_total_norm_fp32``."""
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    clip_coeff = max_norm / (total_norm + 1.0e-6)
    if clip_coeff < 1.0:
        for p in parameters:
            grad = p.decoupled_grad if use_decoupled_grad else p.grad
            if grad is not None:
                grad.detach().mul_(clip_coeff)


def apply_cpu_patches() -> bool:
    """Install the CPU patches once (idempotent). Returns True when they are active, False on CUDA machines."""
    global _APPLIED, _MODE
    if torch.cuda.is_available():
        return False
    if _APPLIED:
        return True
    import megatron.core.optimizer as mcore_optimizer
    import megatron.core.optimizer.clip_grads as clip_grads
    import megatron.core.optimizer.optimizer as optimizer_mod
    import megatron.core.pipeline_parallel.p2p_communication as p2p
    import megatron.core.tensor_parallel.random as tp_random

    # (2) megatron/core/utils.py, tensor_parallel/*, distributed/*: torch.cuda.current_device()
    torch.cuda.current_device = lambda: 0
    # (3) megatron/core/tensor_parallel/random.py: CUDA generator -> CPU generator
    torch.cuda.get_rng_state = lambda device="cuda": torch.get_rng_state()
    torch.cuda.set_rng_state = lambda new_state, device="cuda": torch.set_rng_state(new_state)
    torch.cuda.manual_seed = lambda seed: torch.manual_seed(seed)
    tp_random._get_cuda_rng_state = _cpu_get_rng_state
    tp_random._set_cuda_rng_state = _cpu_set_rng_state
    # (4) megatron/core/pipeline_parallel/p2p_communication.py: torch.cuda.synchronize()
    torch.cuda.synchronize = lambda device=None: None
    p2p.torch.cuda.synchronize = torch.cuda.synchronize
    # (5) megatron/core/optimizer/clip_grads.py (and the names optimizer.py imported from it)
    for mod in (clip_grads, optimizer_mod, mcore_optimizer):
        if hasattr(mod, "get_grad_norm_fp32"):
            mod.get_grad_norm_fp32 = _cpu_get_grad_norm_fp32
        if hasattr(mod, "clip_grad_by_total_norm_fp32"):
            mod.clip_grad_by_total_norm_fp32 = _cpu_clip_grad_by_total_norm_fp32
    # (1) hard-coded device="cuda" everywhere else
    _MODE = CudaToCpuMode()
    _MODE.__enter__()
    _APPLIED = True
    return True
