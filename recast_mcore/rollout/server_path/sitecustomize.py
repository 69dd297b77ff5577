"""Loaded automatically by a launched SGLang server process (this directory is on its PYTHONPATH only): installs
the ``custom_params`` shim (recast_sglang_shim.py). On CPU ``cpu_server_path`` comes first on the path and its
sitecustomize installs the shim too (only one ``sitecustomize`` runs per process)."""

try:
    import recast_sglang_shim

    recast_sglang_shim.install()
except Exception as exc:  # a broken shim must not hide the real error; the engine's router check still refuses
    import sys

    print(f"[recast_mcore sglang shim] not installed: {exc!r}", file=sys.stderr)
