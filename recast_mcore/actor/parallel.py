"""Process-group setup for the actor: torch.distributed (gloo on CPU, NCCL on GPU) + Megatron model parallel.

Launch under ``torchrun`` (single node: ``torchrun --nproc-per-node N``; multi-node: the standard
rendezvous flags ``--nnodes --node-rank --rdzv-backend c10d --rdzv-endpoint host:port``). Without
torchrun env vars, a world of size 1 is created on a free local port (handy for tests and tools).

World size = tensor_parallel * pipeline_parallel * data_parallel; the data-parallel size is derived.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta

import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel

from recast_mcore.actor.cpu_patches import apply_cpu_patches
from recast_mcore.config.actor import ParallelConfig


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resolve_backend(parallel_cfg: ParallelConfig) -> str:
    """gloo without CUDA, nccl with it (unless the config names one)."""
    if parallel_cfg.backend == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    if parallel_cfg.backend == "nccl" and not torch.cuda.is_available():
        raise RuntimeError("parallel.backend=nccl needs CUDA; use gloo (or auto) on CPU")
    return parallel_cfg.backend


def initialize_distributed(parallel_cfg: ParallelConfig) -> None:
    """Create the default process group (if needed) and Megatron's TP/PP/DP groups, then seed RNGs."""
    if not torch.cuda.is_available():
        apply_cpu_patches()
        if parallel_cfg.sequence_parallel:
            raise RuntimeError(
                "parallel.sequence_parallel needs the Transformer Engine spec on GPU; the local spec's torch "
                "norm does not support it (megatron WrappedTorchNorm)"
            )
    backend = resolve_backend(parallel_cfg)
    if not dist.is_initialized():
        if "RANK" not in os.environ:
            os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(_free_port()))
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=10))
    world = dist.get_world_size()
    model_parallel = parallel_cfg.tensor_parallel * parallel_cfg.pipeline_parallel
    if world % model_parallel:
        raise RuntimeError(
            f"world size {world} is not a multiple of tensor_parallel*pipeline_parallel = "
            f"{parallel_cfg.tensor_parallel}*{parallel_cfg.pipeline_parallel}"
        )
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    vpp = parallel_cfg.virtual_pipeline_parallel if parallel_cfg.virtual_pipeline_parallel > 1 else None
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=parallel_cfg.tensor_parallel,
        pipeline_model_parallel_size=parallel_cfg.pipeline_parallel,
        virtual_pipeline_model_parallel_size=vpp,
        create_gloo_process_groups=True,
    )
    seed_everything(parallel_cfg.seed)


def seed_everything(seed: int) -> None:
    """Seed torch and Megatron's tensor-parallel RNG tracker (CPU generator on CPU, see cpu_patches)."""
    torch.manual_seed(seed)
    tensor_parallel.model_parallel_cuda_manual_seed(seed)


def destroy_distributed() -> None:
    """Tear down Megatron's groups and the default process group."""
    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()


def data_parallel_size() -> int:
    return parallel_state.get_data_parallel_world_size()
