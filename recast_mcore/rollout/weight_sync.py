"""Streaming weight sync, the sending side: what a sync targets and one sender per transport.

A sync moves the actor's weights to every server in HF layout, bucket by bucket (actor/weight_export.py
produces the buckets on the source rank of each pipeline stage). Rank 0 (the engine, rollout/sync_coordinator.py)
opens a sync and describes it in a ``SyncTarget`` (plain data, sent to the other ranks over the control plane);
every stage source opens a sender with ``open_sender(target, stage)``, pushes its buckets and closes it;
rank 0 then checks that every expected tensor arrived exactly once and commits the new version.

Transports (one module each):
- ``disk`` (sync_disk.py): each bucket is one safetensors shard (serving dtype) of a snapshot directory on a
  shared filesystem; rank 0 writes the index and calls ``/update_weights_from_disk``;
- ``tensor`` (sync_tensor.py): ``/update_weights_from_tensor`` per bucket with one serialized payload per
  server TP rank (shared-memory / CUDA IPC handles: same host only);
- ``distributed`` (sync_distributed.py): SGLang's weight-update process group, one broadcast per bucket
  (``flattened_bucket`` format; NCCL on GPU, gloo on CPU).

Every bucket is checked against the served model's ``{name: shape}`` before it is pushed (SGLang dies on a
tensor of the wrong shape instead of rejecting it).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import torch

from recast_mcore.rollout.client import SGLangClient

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

NamedTensors = list[tuple[str, torch.Tensor]]


@dataclass
class ServerEndpoint:
    """One server as a sender sees it."""

    url: str
    """Base URL ``http://host:port``."""
    tp_size: int
    """Tensor-parallel ranks of the server (the tensor transport sends one payload per rank)."""


@dataclass
class SyncTarget:
    """One sync, as rank 0 opened it (plain data; sent to every stage source)."""

    method: str
    """disk | tensor | distributed."""
    version: int
    """Weight version the servers serve once the sync commits."""
    endpoints: list[ServerEndpoint]
    """Every server (same order on every rank)."""
    bucket_bytes: int
    """Bucket size of the export."""
    dtype: str
    """Serving dtype name (float32 | bfloat16 | float16)."""
    shapes: dict[str, tuple[int, ...]]
    """``{hf_name: shape}`` every sync must deliver exactly once."""
    request_timeout_s: float
    """HTTP timeout of one push."""
    snapshot_dir: str = ""
    """disk: the (temporary) snapshot directory the shards go to."""
    group_epoch: int = 0
    """distributed: generation of the weight-update groups (bumped when a server restarted)."""
    group_backend: str = "gloo"
    """distributed: nccl on GPU, gloo on CPU."""
    master_addr: str = ""
    """distributed: address servers reach the senders at ('' = decided by each sender, see sync_distributed)."""
    api_key: str = field(default="", repr=False)
    """The servers' API key (in memory only; never printed)."""

    @property
    def serial_stages(self) -> bool:
        """Stages push one after another (servers take one weight update at a time); disk shards are independent."""
        return self.method != "disk"

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def clients(self) -> list[SGLangClient]:
        return [SGLangClient(e.url, self.request_timeout_s, self.api_key) for e in self.endpoints]


class LayoutMismatch(ValueError):
    """The weights do not fit the served model (names, shapes, completeness): retrying cannot help."""


def is_retryable(exc: BaseException) -> bool:
    """False when ``exc`` (or what caused it) is a layout mismatch or a 4xx rejection (``RequestRejected``: a bad
    key, a malformed request): trying again, or restarting servers, cannot fix those (the pool's rule too)."""
    from recast_mcore.rollout.client import RequestRejected

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (LayoutMismatch, RequestRejected)):
            return False
        seen = seen.__cause__
    return True


class SyncFailed(RuntimeError):
    """A streamed sync failed on some rank (raised on every rank); ``retryable``: see ``is_retryable``."""

    def __init__(self, message: str, *, retryable: bool):
        super().__init__(message)
        self.retryable = retryable


class StageSender(Protocol):
    """Pushes the buckets of one pipeline stage (on that stage's source rank)."""

    def push(self, index: int, tensors: NamedTensors) -> None:
        """Deliver one bucket (``index`` counts the stage's buckets from 0)."""

    def close(self) -> dict[str, str]:
        """``{hf_name: shard file}`` of everything pushed (the file is '' except for disk)."""


def open_sender(target: SyncTarget, stage: int) -> StageSender:
    """The sender of ``target.method`` for pipeline stage ``stage``."""
    if target.method == "disk":
        from recast_mcore.rollout.sync_disk import DiskSender

        return DiskSender(target, stage)
    if target.method == "tensor":
        from recast_mcore.rollout.sync_tensor import TensorSender

        return TensorSender(target)
    if target.method == "distributed":
        from recast_mcore.rollout.sync_distributed import DistributedSender

        return DistributedSender(target, stage)
    raise ValueError(f"unknown weight_sync.method {target.method!r}; valid: disk, tensor, distributed")


def expect_success(out, client: SGLangClient, what: str) -> None:
    """Raise a RuntimeError unless an SGLang control answer says ``success: true``."""
    if not (isinstance(out, dict) and out.get("success", False)):
        raise RuntimeError(f"{client.url}: {what} failed: {out}")


def _layout_errors(tensors: NamedTensors, shapes: dict[str, tuple[int, ...]]) -> tuple[list[str], list[str]]:
    unexpected = [n for n, _ in tensors if n not in shapes]
    wrong = [f"{n}: {tuple(t.shape)} != {tuple(shapes[n])}" for n, t in tensors
             if n in shapes and tuple(t.shape) != tuple(shapes[n])]
    return unexpected, wrong


def check_bucket(tensors: NamedTensors, shapes: dict[str, tuple[int, ...]]) -> None:
    """Raise a ValueError naming unknown tensors and wrong shapes (SGLang would crash on them)."""
    unexpected, wrong = _layout_errors(tensors, shapes)
    if unexpected or wrong:
        raise LayoutMismatch(f"new weights do not match the served model's layout: unexpected {unexpected[:5]}, "
                         f"wrong shapes {wrong[:5]}")


def check_complete(pushed: list[dict[str, str]], shapes: dict[str, tuple[int, ...]]) -> dict[str, str]:
    """Merge the stages' ``{name: file}``; raise a ValueError on missing or duplicated tensors."""
    merged: dict[str, str] = {}
    dup = []
    for part in pushed:
        for name, file in part.items():
            if name in merged:
                dup.append(name)
            merged[name] = file
    missing = sorted(set(shapes) - set(merged))
    if missing or dup:
        raise LayoutMismatch(f"weight sync incomplete: missing {missing[:5]} ({len(missing)} in all), sent twice {dup[:5]}")
    return merged


def dict_buckets(hf_state_dict: dict[str, torch.Tensor], bucket_bytes: int, dtype: torch.dtype) -> Iterator[NamedTensors]:
    """Buckets of a full HF state dict held by the caller (single-process use: tests, tools)."""
    bucket: NamedTensors = []
    size = 0
    for name, tensor in hf_state_dict.items():
        t = tensor.detach().to(dtype).contiguous()
        nbytes = t.numel() * t.element_size()
        if bucket and size + nbytes > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, t))
        size += nbytes
    if bucket:
        yield bucket


def check_state_dict(hf_state_dict: dict[str, torch.Tensor]) -> None:
    if not isinstance(hf_state_dict, dict) or not hf_state_dict:
        raise ValueError("hf_state_dict must be a non-empty {name: tensor} dict")
    bad = [k for k, v in hf_state_dict.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"hf_state_dict values must be tensors; not tensors: {bad[:5]}")


def template_shapes(template_dir: str | Path) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of every tensor in the ``*.safetensors`` files of an exported HF directory."""
    from safetensors import safe_open

    files = sorted(Path(template_dir).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{template_dir} has no *.safetensors weights to check the new weights against")
    shapes = {}
    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            for name in handle.keys():
                shapes[name] = tuple(handle.get_slice(name).get_shape())
    return shapes


def check_matches_template(hf_state_dict: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]]) -> None:
    """Raise a ValueError listing missing/unexpected names and shape mismatches (SGLang would crash on them)."""
    check_state_dict(hf_state_dict)
    unexpected, wrong = _layout_errors(list(hf_state_dict.items()), shapes)
    missing = sorted(set(shapes) - set(hf_state_dict))
    if missing or unexpected or wrong:
        raise LayoutMismatch(
            "new weights do not match the served model's layout: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}"
        )
