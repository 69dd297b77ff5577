"""Loaded by every SGLang server process the engine launches (``server_path`` is on its PYTHONPATH; attached servers
behind sglang-router need it too): a request that carries a ``custom_logit_processor`` but no
``sampling_params.custom_params`` is treated as if it carried ``custom_params = {}``.

Why: SGLang 0.5.23 hands a custom logit processor the request object (``custom_params["__req__"]``, which the trie
processor reads the generated prefix from) only when ``custom_params`` is a dict
(``Req.__init__``, ``sglang/srt/managers/schedule_batch.py:1148-1156``), and sglang-router 0.3.2 re-serializes
``/generate`` without ``custom_params``. The trie processor's per-request values travel in the processor string
(rollout/trie_processor.py), so an empty dict is all the request needs.

How: sglang is not imported when this module loads (``sitecustomize`` time), so ``install()`` puts an import hook
on ``sys.meta_path`` that wraps ``Req.__init__`` right after ``sglang.srt.managers.schedule_batch`` executes (in
every process that imports it: the scheduler subprocesses inherit PYTHONPATH). Narrow: only a ``None``
``custom_params`` next to a processor changes (to a fresh ``{}`` on a copy of the sampling params); everything
else reaches the original ``__init__`` untouched. If the target is missing or its signature changed (SGLang
version drift), nothing is patched and one line on stderr says so; the engine's router check then refuses the
router with instructions.
"""

from __future__ import annotations

import copy
import functools
import importlib.abc
import inspect
import sys

TARGET = "sglang.srt.managers.schedule_batch"
MARK = "_recast_custom_params_shim"


def _say(message: str) -> None:
    print(f"[recast_mcore sglang shim] {message}", file=sys.stderr, flush=True)


def patch_module(module) -> bool:
    """Wrap ``module.Req.__init__`` (see module docstring); True when patched (or already patched)."""
    req = getattr(module, "Req", None)
    if not isinstance(req, type):
        _say(f"{module.__name__}.Req not found: requests without custom_params get no __req__ (not patched)")
        return False
    init = req.__init__
    if getattr(init, MARK, False):
        return True
    try:
        names = list(inspect.signature(init).parameters)
        sp_pos, clp_pos = names.index("sampling_params"), names.index("custom_logit_processor")
    except (TypeError, ValueError) as exc:
        _say(f"{module.__name__}.Req.__init__ lacks sampling_params/custom_logit_processor ({exc}): not patched")
        return False

    @functools.wraps(init)
    def __init__(*args, **kwargs):  # positions count ``self`` (signature of the plain function)
        clp = kwargs.get("custom_logit_processor", args[clp_pos] if len(args) > clp_pos else None)
        if clp is not None:
            in_kwargs = "sampling_params" in kwargs
            sp = kwargs["sampling_params"] if in_kwargs else (args[sp_pos] if len(args) > sp_pos else None)
            if sp is not None and getattr(sp, "custom_params", False) is None:
                sp = copy.copy(sp)
                sp.custom_params = {}
                if in_kwargs:
                    kwargs["sampling_params"] = sp
                else:
                    args = args[:sp_pos] + (sp,) + args[sp_pos + 1 :]
        return init(*args, **kwargs)

    setattr(__init__, MARK, True)
    req.__init__ = __init__
    _say(f"{module.__name__}.Req: a request with a custom_logit_processor and no custom_params gets custom_params={{}}")
    return True


class _PatchAfterLoad(importlib.abc.MetaPathFinder):
    """Finds ``target`` with the other finders and patches the module right after it executes."""

    def __init__(self, target: str):
        self.target = target

    def find_spec(self, name, path, target=None):
        if name != self.target:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                run = spec.loader.exec_module

                def exec_module(module, run=run):
                    run(module)
                    patch_module(module)

                spec.loader.exec_module = exec_module
                return spec
        return None


def install(target: str = TARGET) -> None:
    """Patch ``target`` now if it is loaded, else when it is first imported (idempotent)."""
    if target in sys.modules:
        patch_module(sys.modules[target])
        return
    if not any(isinstance(f, _PatchAfterLoad) and f.target == target for f in sys.meta_path):
        sys.meta_path.insert(0, _PatchAfterLoad(target))
