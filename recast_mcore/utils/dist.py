"""Small torch.distributed helpers usable with or without an initialized process group (world size 1).

The control plane: rank 0 drives every step and the other ranks wait for its messages (score requests,
the update batch, resync requests, aborts) while it rolls out or evaluates, which can take far longer than
NCCL's watchdog timeout. So every rank-0 -> follower message and every wait on rank 0 goes through ONE
dedicated gloo group over all ranks with its own, long timeout (``init_control_group``), never through the
default (NCCL on GPU) group. ``broadcast_object``, ``barrier``, ``all_gather_object`` and ``all_ok`` use it
once it exists (before that, or without a process group, they use the default group / are identities).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

_CONTROL: dict[str, Any] = {"group": None, "timeout_s": None}


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_rank0() -> bool:
    return rank() == 0


def init_control_group(timeout_s: float) -> None:
    """Collective (every rank): create the gloo control group with a ``timeout_s`` timeout."""
    if timeout_s <= 0:
        raise ValueError(f"control-plane timeout must be > 0 s, got {timeout_s}")
    _CONTROL["group"] = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
    _CONTROL["timeout_s"] = float(timeout_s)


def destroy_control_group() -> None:
    _CONTROL["group"] = None
    _CONTROL["timeout_s"] = None


def control_group() -> dist.ProcessGroup | None:
    """The gloo control group (None before ``init_control_group``)."""
    return _CONTROL["group"]


def control_timeout_s() -> float | None:
    return _CONTROL["timeout_s"]


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (pickled in memory, over the control group). Identity at world size 1."""
    if world_size() == 1:
        return obj
    box = [obj if rank() == src else None]
    dist.broadcast_object_list(box, src=src, group=control_group())
    return box[0]


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (control group)."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj, group=control_group())
    return out


def all_ok(ok: bool) -> bool:
    """True on every rank iff ``ok`` is True on every rank (control group)."""
    if world_size() == 1:
        return ok
    flag = torch.tensor([1 if ok else 0], dtype=torch.int32)
    dist.all_reduce(flag, op=dist.ReduceOp.MIN, group=control_group())
    return bool(flag.item())


def barrier() -> None:
    if world_size() > 1:
        dist.barrier(group=control_group())
