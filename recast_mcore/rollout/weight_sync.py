"""Weight-sync transports from HF-layout tensors to SGLang (one function per transport).

The actor gathers its Megatron weights (TP/PP) and maps them to the Hugging Face Llama/Qwen names with
``recast_mcore/checkpoint/hf_mapping.py``; the rollout engine receives that ``{hf_name: tensor}`` dict:
- disk: ``write_snapshot`` writes ``<dir>/model.safetensors`` next to the exported config/tokenizer files
  and the server loads it with ``/update_weights_from_disk`` (shared filesystem);
- tensor: ``serialize_named_tensors`` packs the tensors for ``/update_weights_from_tensor`` (same host:
  the payload carries shared-memory handles, not the bytes).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from recast_mcore.rollout.cpu_bridge import declare_torchvision_ops_in_process

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


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
    missing = sorted(set(shapes) - set(hf_state_dict))
    unexpected = sorted(set(hf_state_dict) - set(shapes))
    wrong = [f"{k}: {tuple(v.shape)} != {shapes[k]}" for k, v in hf_state_dict.items()
             if k in shapes and tuple(v.shape) != shapes[k]]
    if missing or unexpected or wrong:
        raise ValueError(
            "new weights do not match the served model's layout: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}, wrong shapes {wrong[:5]}"
        )


def write_snapshot(hf_state_dict: dict[str, torch.Tensor], template_dir: str | Path, out_dir: str | Path) -> Path:
    """Write a loadable HF directory: template's non-weight files + ``model.safetensors``; atomic rename."""
    check_state_dict(hf_state_dict)
    template_dir, out_dir = Path(template_dir), Path(out_dir)
    if not (template_dir / "config.json").is_file():
        raise FileNotFoundError(f"{template_dir} has no config.json (expected an exported HF model directory)")
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in template_dir.iterdir():
        if f.is_file() and not f.name.endswith(WEIGHT_SUFFIXES) and not f.name.endswith(".index.json"):
            shutil.copy2(f, tmp / f.name)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in hf_state_dict.items()}
    save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def serialize_named_tensors(hf_state_dict: dict[str, torch.Tensor]) -> str:
    """Base64 payload of ``[(name, tensor), ...]`` for ``/update_weights_from_tensor`` (imports sglang)."""
    check_state_dict(hf_state_dict)
    declare_torchvision_ops_in_process()
    import torch.multiprocessing as mp
    from sglang.srt.utils.common import MultiprocessingSerializer

    mp.set_sharing_strategy("file_system")
    named = [(k, v.detach().to("cpu").contiguous()) for k, v in hf_state_dict.items()]
    return MultiprocessingSerializer.serialize(named, output_str=True)
