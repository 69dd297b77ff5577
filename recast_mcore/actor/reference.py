"""The frozen reference policy of the KL term: the weights the RL stage starts from, in the actor's layout.

``ReferencePolicy(actor)`` builds the same model chunks as the actor (same TP/PP/VPP layout, same spec), with
no DDP wrapper, no optimizer and ``requires_grad=False``, and copies each rank's LOCAL parameter shards from
the actor (no gather: no rank ever holds the whole model). ``logprobs`` is a forward-only collective through
the actor's own micro-batching and ``get_forward_backward_func`` path (``MegatronActor.forward_logprobs``),
so reference and actor log-probs are computed identically (they are bitwise equal right after the copy).

Memory: one more copy of the model weights per model-parallel rank, params_dtype bytes per parameter
(bf16: 2 B/param / (TP*PP); Qwen3-8B at TP4/PP2 ~2 GB per GPU), no gradients or optimizer state.
``offload=True`` (GPU only) keeps the weights in pinned host memory between uses and copies them to the
GPU just for ``logprobs`` (one host->device transfer of that size per RL step); on CPU the weights already
live in host memory and the flag changes nothing.

Resume: the reference weights are saved inside every checkpoint written while the reference exists
(``actor/checkpointing.py``, key prefix ``reference.``) and loaded back with ``load_reference``, so a run
resumed mid-RL uses exactly the reference it started with, even when the RL start checkpoint was pruned.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from megatron.core import parallel_state

from recast_mcore.actor.model import build_model_chunks

if TYPE_CHECKING:
    from recast_mcore.actor.actor import MegatronActor

PREFIX = "reference."
"""Key prefix of the reference weights inside a checkpoint (the actor's own keys have none)."""


class ReferencePolicy:
    """Frozen copy of an actor's weights (see module doc)."""

    def __init__(self, actor: MegatronActor, offload: bool = False) -> None:
        self.actor = actor
        self.chunks, self.config = build_model_chunks(actor.model_cfg, actor.parallel_cfg, actor.vocab_size, initialize=False)
        for chunk in self.chunks:
            chunk.requires_grad_(False)
            chunk.eval()
        self.copy_from(actor.chunks)
        self.offload = offload and torch.cuda.is_available()
        self._host: list[torch.Tensor] = []
        if self.offload:
            self._host = [torch.empty(p.shape, dtype=p.dtype, device="cpu").pin_memory() for p in self.parameters()]
            self.release()

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for chunk in self.chunks for p in chunk.parameters()]

    @torch.no_grad()
    def copy_from(self, source_chunks: list[torch.nn.Module]) -> None:
        """Copy every local parameter shard of ``source_chunks`` (same layout) into the reference."""
        for dst_chunk, src_chunk in zip(self.chunks, source_chunks, strict=True):
            src = dict(src_chunk.named_parameters())
            for name, p in dst_chunk.named_parameters():
                if name not in src or src[name].shape != p.shape:
                    raise ValueError(f"reference and actor layouts differ at parameter '{name}'")
                p.copy_(src[name])

    def logprobs(self, prompt_ids: list[list[int]], responses: torch.Tensor) -> torch.Tensor:
        """[N, T] constrained token log-probs under the reference (collective, like ``actor.logprobs``)."""
        self.onload()
        try:
            return self.actor.forward_logprobs(self.chunks, prompt_ids, responses)
        finally:
            self.release()

    def sharded_state_dict(self) -> dict[str, Any]:
        """dist_checkpointing view of the reference weights under the key prefix ``reference.`` (call ``onload``
        first when offloaded, ``release`` after the save)."""
        out = {}
        for i, chunk in enumerate(self.chunks):
            if len(self.chunks) > 1:
                parallel_state.set_virtual_pipeline_model_parallel_rank(i)
            out[f"chunk{i}"] = chunk.sharded_state_dict(prefix=PREFIX)
        parallel_state.set_virtual_pipeline_model_parallel_rank(0)
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load what ``dist_checkpointing.load`` returned for ``sharded_state_dict()``."""
        for i, chunk in enumerate(self.chunks):
            chunk.load_state_dict({k.removeprefix(PREFIX): v for k, v in state[f"chunk{i}"].items()})

    @torch.no_grad()
    def release(self) -> None:
        """Offloaded: copy the weights into the pinned host buffers and free their GPU memory (else no-op)."""
        if not self.offload:
            return
        for p, host in zip(self.parameters(), self._host):
            if p.device.type != "cpu":
                host.copy_(p.data, non_blocking=True)
        torch.cuda.synchronize()
        for p, host in zip(self.parameters(), self._host):
            p.data = host

    @torch.no_grad()
    def onload(self) -> None:
        """Offloaded: bring the weights back to the GPU (else no-op)."""
        if not self.offload:
            return
        device = torch.device("cuda", torch.cuda.current_device())
        for p in self.parameters():
            if p.device.type == "cpu":
                p.data = p.data.to(device, non_blocking=True)
