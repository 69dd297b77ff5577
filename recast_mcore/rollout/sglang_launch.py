"""``python -m recast_mcore.rollout.sglang_launch ARGS``: ``python -m sglang.launch_server ARGS`` with the API
key kept off the command line and out of the server's log.

The key arrives in the environment variable ``RECAST_SGLANG_API_KEY`` (``/proc/<pid>/environ`` is readable
by the same user only, ``/proc/<pid>/cmdline`` by everyone), is removed from the environment before SGLang
starts its scheduler/detokenizer processes, and is handed to SGLang's own argument parser as
``--api-key`` inside this process. SGLang 0.5.23 logs every server argument once at start-up
(``server_args=...`` in sglang/srt/entrypoints/engine.py, through ``_server_args_for_logging``, which
redacts only watermark secrets); that function is wrapped here to redact ``api_key`` / ``admin_api_key``.
"""

from __future__ import annotations

import os
import runpy
import sys

KEY_ENV = "RECAST_SGLANG_API_KEY"
REDACTED = "<redacted>"


def _redact_key_in_startup_log() -> None:
    from sglang.srt.entrypoints import engine

    original = engine._server_args_for_logging

    def redacted(server_args):
        shown = original(server_args)
        if isinstance(shown, dict):
            shown = {k: (REDACTED if k in ("api_key", "admin_api_key") and v else v) for k, v in shown.items()}
        return shown

    engine._server_args_for_logging = redacted


def main() -> None:
    key = os.environ.pop(KEY_ENV, "")
    if any(a == "--api-key" or a.startswith("--api-key=") for a in sys.argv):
        raise SystemExit(f"pass the API key in ${KEY_ENV}, not on the command line (it would show in ps and logs)")
    if key:
        _redact_key_in_startup_log()
        sys.argv.append(f"--api-key={key}")  # one token: a key starting with "-" (token_urlsafe) is no option
    runpy.run_module("sglang.launch_server", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
