"""CPU stand-in for the ``sgl_kernel`` package (SGLang's compiled kernels; PyPI has CUDA builds only).

Put on the PYTHONPATH of a CPU SGLang server process ONLY (see ``recast_mcore/rollout/server.py``); it is
never imported by the trainer. SGLang 0.5.23's CPU path imports names from here at module import time;
during plain generation the only op it calls is ``assign_req_to_token_pool_cpu``. Every other name is
resolved lazily and raises ``NotImplementedError`` naming itself when called, so a code path we did not
bridge fails loudly instead of computing something wrong.
"""

from __future__ import annotations

import torch


def assign_req_to_token_pool_cpu(
    req_pool_indices: torch.Tensor,
    req_to_token: torch.Tensor,
    start_offset: torch.Tensor,
    end_offset: torch.Tensor,
    out_cache_loc: torch.Tensor,
    pool_len: int,
) -> None:
    """For request r: ``req_to_token[req_pool_indices[r], start[r]:end[r]] = next (end[r]-start[r]) of out_cache_loc``.

    Same semantics as the Triton kernel ``assign_req_to_token_pool`` in
    sglang/srt/mem_cache/allocation.py (the out_cache_loc slices are consumed in request order).
    """
    del pool_len  # the row stride; implicit in req_to_token's shape
    starts = start_offset.tolist()
    ends = end_offset.tolist()
    rows = req_pool_indices.tolist()
    offset = 0
    for row, start, end in zip(rows, starts, ends):
        n = end - start
        if n > 0:
            req_to_token[row, start:end] = out_cache_loc[offset : offset + n].to(req_to_token.dtype)
        offset += n


def _missing(name: str):
    def op(*args, **kwargs):
        raise NotImplementedError(
            f"sgl_kernel.{name} is not available in recast_mcore's CPU stand-in (only "
            "assign_req_to_token_pool_cpu is); this SGLang code path is not supported on CPU here"
        )

    op.__name__ = name
    return op


def __getattr__(name: str):
    if name.startswith("__"):
        raise AttributeError(name)
    return _missing(name)
