"""Loaded automatically by a CPU SGLang server process (this directory is on its PYTHONPATH only).

PyPI torchvision 0.28.0 next to the CPU torch wheel cannot load its compiled ops, and its
``_meta_registrations`` then fails with ``operator torchvision::nms does not exist`` when SGLang
imports torchvision. Declaring the two op schemas it registers fake kernels for (nms, qnms) before
torchvision loads lets the import succeed; SGLang never calls these ops for text models.
"""

try:
    import torch

    if not torch.cuda.is_available():
        _lib = torch.library.Library("torchvision", "DEF")
        _lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        _lib.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
except Exception as exc:  # a broken bridge must not hide the real error
    import sys

    print(f"[recast_mcore cpu_bridge] could not declare torchvision op schemas: {exc!r}", file=sys.stderr)

# The custom_params shim (rollout/server_path/recast_sglang_shim.py): a server's PYTHONPATH holds server_path
# right after this directory, whose own sitecustomize is shadowed by this one. Absent (this file run in the
# trainer process by cpu_bridge.declare_torchvision_ops_in_process): nothing to install there.
import importlib.util as _util

if _util.find_spec("recast_sglang_shim") is not None:
    try:
        import recast_sglang_shim

        recast_sglang_shim.install()
    except Exception as exc:  # the engine's router check still refuses a worker without it
        import sys

        print(f"[recast_mcore sglang shim] not installed: {exc!r}", file=sys.stderr)
