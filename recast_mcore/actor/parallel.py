"""Process-group setup for the actor: torch.distributed (gloo on CPU, NCCL on GPU) + Megatron model parallel.

Launch under ``torchrun`` (single node: ``torchrun --nproc-per-node N``; multi-node: the standard
rendezvous flags ``--nnodes --node-rank --rdzv-backend c10d --rdzv-endpoint host:port``). Without
torchrun env vars, a world of size 1 is created over an in-process store (handy for tests and tools).
Besides Megatron's groups, every rank joins the gloo control group (utils/dist.py, ``control_timeout_s``).

World size = tensor_parallel * pipeline_parallel * data_parallel; the data-parallel size is derived.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from megatron.core import parallel_state, tensor_parallel

from recast_mcore.actor.cpu_patches import apply_cpu_patches
from recast_mcore.config.actor import ParallelConfig
from recast_mcore.utils.dist import destroy_control_group, init_control_group
from recast_mcore.utils.net import bound_listen_socket


def resolve_backend(parallel_cfg: ParallelConfig) -> str:
    """gloo without CUDA, nccl with it (unless the config names one)."""
    if parallel_cfg.backend == "auto":
        return "nccl" if torch.cuda.is_available() else "gloo"
    if parallel_cfg.backend == "nccl" and not torch.cuda.is_available():
        raise RuntimeError("parallel.backend=nccl needs CUDA; use gloo (or auto) on CPU")
    return parallel_cfg.backend


def init_default_group(backend: str, timeout: timedelta) -> None:
    """The default process group; its rendezvous store never listens on every interface.

    - no torchrun variables (or world size 1 without ``MASTER_ADDR``, or a process that already ran single): world
      size 1 over an in-process ``HashStore`` (no socket at all);
    - under torchrun (``TORCHELASTIC_USE_AGENT_STORE=True``): the ranks are clients of the torchrun agent's
      store (torchrun owns that socket, see docs/actor.md);
    - ranks started by another launcher (``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` set): rank 0
      hosts the store on a socket bound to ``MASTER_ADDR`` only (torch's own ``env://`` binds all interfaces).
    """
    single = (_KEEP.get("single_process") or "RANK" not in os.environ
              or (os.environ.get("WORLD_SIZE") == "1" and "MASTER_ADDR" not in os.environ))
    if single:  # also a later group in the same process (tools and tests that init, destroy, init again)
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        _KEEP["single_process"] = True
        store, rank, world = dist.HashStore(), 0, 1
    elif os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true":
        store, rank, world = None, None, None
    else:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
        if rank == 0:
            listener = bound_listen_socket(addr, port)
            store = dist.TCPStore(addr, port, world, True, timeout, wait_for_workers=False, master_listen_fd=listener.fileno())
            _KEEP["listener"] = listener
        else:
            store = dist.TCPStore(addr, port, world, False, timeout)
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    if store is None:
        dist.init_process_group(backend=backend, timeout=timeout)
    else:
        dist.init_process_group(backend=backend, store=store, rank=rank, world_size=world, timeout=timeout)


_KEEP: dict = {}
"""The bound listening socket of rank 0's store (kept alive with the process group)."""


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
        init_default_group(backend, timedelta(seconds=parallel_cfg.timeout_s))
        init_control_group(parallel_cfg.control_timeout_s)
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
    destroy_control_group()
    if dist.is_initialized():
        dist.destroy_process_group()
    listener = _KEEP.pop("listener", None)
    if listener is not None:
        listener.close()


def data_parallel_size() -> int:
    return parallel_state.get_data_parallel_world_size()
