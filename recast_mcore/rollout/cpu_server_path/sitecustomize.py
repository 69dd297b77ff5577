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
