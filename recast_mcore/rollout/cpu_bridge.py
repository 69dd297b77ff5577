"""The two CPU bridges SGLang 0.5.23 needs on a CPU-only torch build (no-ops where CUDA is available).

1. ``sgl_kernel``: SGLang's CPU path imports ``assign_req_to_token_pool_cpu`` from the compiled
   ``sgl_kernel`` package, which PyPI ships for CUDA only. ``cpu_server_path/sgl_kernel`` is a pure-torch
   stand-in.
2. torchvision op schemas: PyPI torchvision 0.28.0 next to the CPU torch wheel fails at import with
   ``operator torchvision::nms does not exist``; ``cpu_server_path/sitecustomize.py`` declares the
   ``nms``/``qnms`` schemas before torchvision loads.

SGLang spawns its scheduler/detokenizer processes, so both must be *found on the path* of the server
process, not injected into this process's ``sys.modules``: ``server_env()`` prepends
``cpu_server_path`` to the server's PYTHONPATH (CPU only). The trainer process never sees ``sgl_kernel``.
Loading ``transformers`` models in-process also imports torchvision, so tests and tools on CPU call
``declare_torchvision_ops_in_process()`` first.
"""

from __future__ import annotations

import os
import runpy
from pathlib import Path

import torch

CPU_SERVER_PATH = Path(__file__).resolve().parent / "cpu_server_path"
"""Directory with ``sgl_kernel/`` and ``sitecustomize.py``; prepended to a CPU server's PYTHONPATH."""
SERVER_PATH = Path(__file__).resolve().parent / "server_path"
"""Directory with the ``custom_params`` shim (``recast_sglang_shim.py`` + its ``sitecustomize.py``); on every
launched server's PYTHONPATH, CPU and GPU (after ``CPU_SERVER_PATH`` on CPU, whose sitecustomize installs it)."""


def needs_cpu_bridges() -> bool:
    """True on a torch build/machine without CUDA (the bridges are never applied on GPU)."""
    return not torch.cuda.is_available()


def server_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for an SGLang server process: the ``custom_params`` shim on its PYTHONPATH, and the CPU
    bridges before it when on CPU."""
    env = dict(os.environ if base is None else base)
    first = [str(CPU_SERVER_PATH), str(SERVER_PATH)] if needs_cpu_bridges() else [str(SERVER_PATH)]
    rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p not in first]
    env["PYTHONPATH"] = os.pathsep.join(first + rest)
    if needs_cpu_bridges():
        env["SGLANG_USE_CPU_ENGINE"] = "1"
    return env


_bridge_globals: dict | None = None
"""Globals of the executed sitecustomize; holds the torch.library.Library (the schemas die with it)."""


def declare_torchvision_ops_in_process() -> None:
    """Run the sitecustomize bridge in this process (CPU only, idempotent) so ``transformers`` imports."""
    global _bridge_globals
    if _bridge_globals is not None or not needs_cpu_bridges():
        return
    if torch._C._dispatch_has_kernel("torchvision::nms") if hasattr(torch._C, "_dispatch_has_kernel") else False:
        return
    _bridge_globals = runpy.run_path(str(CPU_SERVER_PATH / "sitecustomize.py"))
