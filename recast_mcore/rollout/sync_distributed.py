"""Distributed transport: SGLang's weight-update process group, one broadcast per bucket.

Each pipeline stage's source rank owns one group ``recast-w<epoch>-s<stage>`` with every server: rank 0 is
the source, server i's TP ranks are ``1 + sum(tp of servers before i) + tp_rank`` (world size
``1 + sum of TP sizes``). The group is created at the stage's first push (``/init_weights_update_group``
on every server, in threads, while the source builds its side, rollout/update_group.py) and reused by later
syncs; ``group_epoch`` changes when a server restarted (its side of the group died with it).

A bucket goes out as ONE broadcast of its bytes (``load_format: flattened_bucket``): the source posts
``/update_weights_from_distributed`` with the names, dtypes and shapes to every server (threads: the call
returns only once the server received the bucket), then broadcasts the flattened bucket. If a server
rejects the request, the broadcast would wait for it forever: the broadcast is asynchronous and the source
gives up (and drops the group) as soon as a request fails.

NCCL on GPU (the bucket stays on the source's GPU), gloo on CPU.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from recast_mcore.rollout.client import SGLangClient
from recast_mcore.rollout.update_group import bound_listen_socket, close_update_group, master_store, open_update_group
from recast_mcore.rollout.weight_sync import NamedTensors, SyncTarget, check_bucket, expect_success
from recast_mcore.utils.net import is_loopback


@dataclass
class _Group:
    pg: dist.ProcessGroup
    store: dist.TCPStore
    sock: socket.socket


_GROUPS: dict[str, _Group] = {}
"""This process's open weight-update groups by name."""


def group_name(epoch: int, stage: int) -> str:
    return f"recast-w{epoch}-s{stage}"


def sender_address(target: SyncTarget) -> str:
    """Where servers reach this sender: the configured address, loopback when every server is local, else
    this node's address."""
    if target.master_addr:
        return target.master_addr
    from urllib.parse import urlparse

    if all(is_loopback(urlparse(e.url).hostname or "") for e in target.endpoints):
        return "127.0.0.1"
    return socket.gethostbyname(socket.gethostname())


def rank_offsets(target: SyncTarget) -> list[int]:
    """Group rank of each server's TP rank 0."""
    offsets, nxt = [], 1
    for e in target.endpoints:
        offsets.append(nxt)
        nxt += e.tp_size
    return offsets


def _in_threads(calls) -> tuple[list[BaseException | None], list[threading.Thread]]:
    """Start ``calls`` (no-argument callables) in threads; ``errors[i]`` is set if call i raised."""
    errors: list[BaseException | None] = [None] * len(calls)

    def run(i):
        try:
            calls[i]()
        except BaseException as exc:  # reported to the caller
            errors[i] = exc

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(calls))]
    for t in threads:
        t.start()
    return errors, threads


def connect(target: SyncTarget, stage: int, clients: list[SGLangClient]) -> dist.ProcessGroup:
    """This stage's group with every server (created once per epoch)."""
    name = group_name(target.group_epoch, stage)
    if name in _GROUPS:
        return _GROUPS[name].pg
    stale = [n for n in _GROUPS if n.endswith(f"-s{stage}")]
    for old in stale:
        drop_group(old)
    for old in stale + [name]:  # best effort: a server may still hold a group whose sender is gone
        for c in clients:
            try:
                c.post("/destroy_weights_update_group", {"group_name": old})
            except Exception:  # noqa: BLE001  (a restarted server never had it)
                pass
    addr = sender_address(target)
    world = 1 + sum(e.tp_size for e in target.endpoints)
    timeout = timedelta(seconds=target.request_timeout_s)
    sock = bound_listen_socket(addr)
    port = sock.getsockname()[1]
    store = master_store(addr, sock, world, timeout)
    body = {"master_address": addr, "master_port": port, "world_size": world, "group_name": name,
            "backend": target.group_backend}
    calls = [lambda c=c, off=off: expect_success(c.post("/init_weights_update_group", {**body, "rank_offset": off}), c, "init")
             for c, off in zip(clients, rank_offsets(target))]
    errors, threads = _in_threads(calls)
    pg = None
    try:
        pg = open_update_group(store, world, name, target.group_backend, timeout)
    finally:
        for t in threads:
            t.join()
        failed = [e for e in errors if e is not None]
        if failed or pg is None:
            if pg is not None:
                close_update_group(pg)
            sock.close()
    if failed:
        raise RuntimeError(f"weight-update group {name}: a server did not join: {failed[0]}") from failed[0]
    _GROUPS[name] = _Group(pg, store, sock)
    return pg


def drop_group(name: str) -> None:
    group = _GROUPS.pop(name, None)
    if group is not None:
        close_update_group(group.pg)
        group.sock.close()


def flatten(tensors: NamedTensors) -> torch.Tensor:
    """The bucket's bytes in one uint8 tensor (the layout of SGLang's FlattenedTensorBucket)."""
    flat = [t.reshape(-1).view(torch.uint8) for _, t in tensors]
    return flat[0] if len(flat) == 1 else torch.cat(flat)  # a one-tensor bucket (e.g. the embedding) is not copied


class DistributedSender:
    """Broadcasts one stage's buckets to every server over the stage's weight-update group."""

    def __init__(self, target: SyncTarget, stage: int):
        self.target, self.stage, self.clients = target, stage, target.clients()
        self.pg = connect(target, stage, self.clients)
        self.names: dict[str, str] = {}

    def push(self, index: int, tensors: NamedTensors) -> None:
        check_bucket(tensors, self.target.shapes)
        body = {
            "names": [n for n, _ in tensors],
            "dtypes": [str(t.dtype).removeprefix("torch.") for _, t in tensors],
            "shapes": [list(t.shape) for _, t in tensors],
            "group_name": group_name(self.target.group_epoch, self.stage),
            "load_format": "flattened_bucket",
            "flush_cache": False,
        }
        flat = flatten(tensors)
        calls = [lambda c=c: expect_success(c.post("/update_weights_from_distributed", body), c, f"bucket {index}") for c in self.clients]
        errors, threads = _in_threads(calls)
        work = dist.broadcast(flat, group=self.pg, async_op=True, group_src=0)  # group rank 0 = this sender
        while not work.is_completed():
            failed = [e for e in errors if e is not None]
            if failed:
                drop_group(group_name(self.target.group_epoch, self.stage))
                raise RuntimeError(f"weight sync bucket {index} of stage {self.stage}: {failed[0]}") from failed[0]
            time.sleep(0.002)
        work.wait()
        for t in threads:
            t.join()
        failed = [e for e in errors if e is not None]
        if failed:
            raise RuntimeError(f"weight sync bucket {index} of stage {self.stage}: {failed[0]}") from failed[0]
        self.names.update((n, "") for n, _ in tensors)

    def close(self) -> dict[str, str]:
        return dict(self.names)
