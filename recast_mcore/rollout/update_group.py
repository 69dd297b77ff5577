"""The trainer's side of an SGLang weight-update process group (``/init_weights_update_group``).

SGLang's servers build their side with ``sglang.srt.utils.common.init_custom_process_group``: a ``tcp://``
rendezvous (a TCPStore client), ``PrefixStore(group_name, store)`` and torch's ``_new_process_group_helper``
with ranks ``rank_offset + tp_rank``. Rank 0 of the group is the trainer's sender; it hosts the TCPStore.

``open_update_group`` builds the same group on the sender, with two differences that matter here:
- the store's listening socket is bound to ``master_addr`` only (a plain ``TCPStore(is_master=True)`` listens
  on every interface), through ``master_listen_fd``;
- it never goes through the ``tcp://`` handler, which under torchrun (``TORCHELASTIC_USE_AGENT_STORE``)
  would make even the master a client of the torchrun agent's store.

NCCL on GPU, gloo on CPU (SGLang's CPU server receives into CPU tensors). The helpers used are torch
internals (the same ones SGLang, slime and verl use for this); ``tests/test_weight_sync_sglang.py`` checks
them against a real server.
"""

from __future__ import annotations

import socket
from datetime import timedelta

import torch.distributed as dist

from recast_mcore.utils.net import bound_listen_socket  # noqa: F401  (re-exported for the senders)


def master_store(addr: str, sock: socket.socket, world_size: int, timeout: timedelta) -> dist.TCPStore:
    """A TCPStore server that listens on ``sock`` (bound to ``addr``), not on every interface."""
    port = sock.getsockname()[1]
    return dist.TCPStore(addr, port, world_size, True, timeout, wait_for_workers=False, master_listen_fd=sock.fileno())


def open_update_group(store: dist.Store, world_size: int, group_name: str, backend: str,
                      timeout: timedelta) -> dist.ProcessGroup:
    """Rank 0's side of the group (blocks until every server rank has joined). Same key layout as SGLang."""
    from torch.distributed.distributed_c10d import Backend, PrefixStore, _new_process_group_helper, _world

    prefixed = PrefixStore(group_name, store)
    pg, _ = _new_process_group_helper(world_size, 0, [], Backend(backend), prefixed, group_name=group_name,
                                      backend_options=None, timeout=timeout)
    _world.pg_group_ranks[pg] = {i: i for i in range(world_size)}
    return pg


def close_update_group(pg: dist.ProcessGroup) -> None:
    try:
        dist.destroy_process_group(pg)
    except (RuntimeError, ValueError):
        pass  # already gone (a peer died)
