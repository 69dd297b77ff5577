"""GPU placement of launched SGLang servers: a pure function of the cluster layout and the placement config.

``ClusterLayout`` describes the job: ``nodes`` nodes of ``gpus_per_node`` GPUs, ``trainer_gpus_per_node``
of them running trainer ranks (torchrun's ``--nproc-per-node``, i.e. ``LOCAL_WORLD_SIZE``).
``plan_servers`` returns one ``ServerSlot`` per server: the node that hosts (and launches) it, its first GPU
(SGLang ``--base-gpu-id``, a CUDA device index on that node), its tensor-parallel size (``--tp-size``) and
its data-parallel size (``--dp-size``). A server spans ``gpus_per_server * dp_per_server`` consecutive GPUs.

- colocated: servers share the trainer's GPUs: GPUs ``0 .. gpus_per_node-1`` of every node host servers
  (between rollouts the servers release their memory, see docs/rollout.md);
- disaggregated: servers use the GPUs the trainer leaves free on each node:
  ``trainer_gpus_per_node .. gpus_per_node-1``.

Nodes fill in order (node 0 first). ``num_servers = 0`` asks for as many servers as fit; more than fit is
an error naming the numbers. CPU runs have no GPUs: ``plan_servers`` is not used there (one process per
server, no GPU flags).
"""

from __future__ import annotations

from dataclasses import dataclass

from recast_mcore.config.rollout import PlacementConfig


@dataclass(frozen=True)
class ClusterLayout:
    """The job's nodes and GPUs."""

    nodes: int
    """Number of nodes."""
    gpus_per_node: int
    """GPUs of each node."""
    trainer_gpus_per_node: int
    """GPUs of each node that run trainer ranks (one rank per GPU)."""


@dataclass(frozen=True)
class ServerSlot:
    """Where one server runs."""

    index: int
    """Server number (0..n-1), the order of ``rollout.sglang`` endpoints."""
    node: int
    """Node that hosts and launches it."""
    base_gpu_id: int
    """First GPU on that node (SGLang --base-gpu-id)."""
    tp_size: int
    """SGLang --tp-size."""
    dp_size: int
    """SGLang --dp-size."""

    @property
    def gpus(self) -> list[int]:
        return list(range(self.base_gpu_id, self.base_gpu_id + self.tp_size * self.dp_size))


def server_gpu_range(layout: ClusterLayout, mode: str) -> range:
    """GPU ids of one node available to servers."""
    if mode == "colocated":
        return range(0, layout.gpus_per_node)
    return range(layout.trainer_gpus_per_node, layout.gpus_per_node)


def plan_servers(layout: ClusterLayout, cfg: PlacementConfig, num_servers: int) -> list[ServerSlot]:
    """One slot per server (see module docstring). Raises ValueError when the servers do not fit."""
    if layout.nodes < 1 or layout.gpus_per_node < 1 or not 0 <= layout.trainer_gpus_per_node <= layout.gpus_per_node:
        raise ValueError(f"invalid cluster layout {layout}")
    width = cfg.gpus_per_server * cfg.dp_per_server
    gpus = server_gpu_range(layout, cfg.mode)
    per_node = len(gpus) // width
    capacity = per_node * layout.nodes
    if capacity == 0:
        raise ValueError(
            f"placement {cfg.mode}: no node has {width} free GPUs for one server (gpus_per_server="
            f"{cfg.gpus_per_server} x dp_per_server={cfg.dp_per_server}); node GPUs {layout.gpus_per_node}, "
            f"trainer GPUs per node {layout.trainer_gpus_per_node}"
        )
    wanted = capacity if num_servers == 0 else num_servers
    if wanted > capacity:
        raise ValueError(
            f"placement {cfg.mode}: {wanted} servers of {width} GPUs do not fit; {per_node} per node x "
            f"{layout.nodes} nodes = {capacity} (node GPUs {gpus.start}..{gpus.stop - 1})"
        )
    return [
        ServerSlot(index=i, node=i // per_node, base_gpu_id=gpus.start + (i % per_node) * width,
                   tp_size=cfg.gpus_per_server, dp_size=cfg.dp_per_server)
        for i in range(wanted)
    ]


def slot_flags(slot: ServerSlot, colocated_memory_saver: bool) -> list[str]:
    """SGLang command-line flags of a slot (``--enable-memory-saver`` when colocated servers release memory)."""
    flags = ["--base-gpu-id", str(slot.base_gpu_id), "--tp-size", str(slot.tp_size), "--dp-size", str(slot.dp_size)]
    return flags + (["--enable-memory-saver"] if colocated_memory_saver else [])
