"""Loaded automatically by a launched SGLang server process (this directory is on its PYTHONPATH only): installs
the ``custom_params`` shim (recast_sglang_shim.py), then runs the ``sitecustomize`` this file shadows, if any (a
GPU image may ship one further down the path). On CPU ``cpu_server_path`` comes first on the path and its
sitecustomize installs the shim instead (only one ``sitecustomize`` is imported per process)."""

import os as _os
import sys as _sys

try:
    import recast_sglang_shim

    recast_sglang_shim.install()
except Exception as exc:  # a broken shim must not hide the real error; the engine's router check still refuses
    print(f"[recast_mcore sglang shim] not installed: {exc!r}", file=_sys.stderr)


def _run_shadowed_sitecustomize() -> None:
    import importlib.machinery
    import importlib.util

    here = _os.path.dirname(_os.path.abspath(__file__))
    rest = [p for p in _sys.path if _os.path.abspath(p or _os.getcwd()) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


try:
    _run_shadowed_sitecustomize()
except Exception as exc:
    print(f"[recast_mcore sglang shim] the shadowed sitecustomize failed: {exc!r}", file=_sys.stderr)
