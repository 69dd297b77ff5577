"""sglang-router (the SGLang project's Rust router, PyPI ``sglang-router``) in front of the rollout servers.

``LaunchedRouter`` starts ``python -m sglang_router.launch_router`` on a free loopback port with the workers'
URLs, the configured policy (``cache_aware`` by default) and the router's own retries and circuit breaker off:
the pool (pool.py) owns recovery, so a failure reaches it, the failed worker is restarted from the current
weights and the chunk is re-sent (results by index, nothing lost or double-counted).

Why ``cache_threshold`` defaults to 0.01 (sglang-router 0.3.2): for a batched ``/generate`` the router's
routing text is every sequence's ids joined, so a beam-search chunk at level t (w beams x (prompt + t tokens))
shares only its prompts with the level-0 chunk: a match ratio of about 1/w, below the default 0.3, and the
router would send the level elsewhere (measured: with 0.3 the levels of a chunk moved between the 2 workers,
with 0.01 every level of every chunk stayed on its level-0 worker; tests/test_rollout_router.py).

What it needs from the workers: the ``custom_params`` shim (rollout/server_path; on every launched server's
PYTHONPATH), because the router re-serializes ``/generate`` without ``sampling_params.custom_params``; the engine
checks this at construction (sglang_engine.py).

API keys (measured with header-recording workers behind sglang-router 0.3.2, tests/test_rollout_router.py):
without ``--api-key`` the router forwards the client's ``Authorization`` header to the worker unchanged and
sends its own ``/health`` checks without one (SGLang answers ``/health`` without a key); with ``--api-key K`` it
requires ``Bearer K`` from the client and sends it to the workers. So the router is started WITHOUT the key (its
argv and environment never hold it) and our client sends ``Authorization: Bearer <key>`` to it: a request
without the key is answered 401 by the worker, through the router.
"""

from __future__ import annotations

import sys

from recast_mcore.config.rollout import SGLangServerConfig
from recast_mcore.rollout.server import LaunchedServer, find_free_port


class LaunchedRouter(LaunchedServer):
    """One sglang-router process; ``start()`` blocks until its /health answers 200."""

    def __init__(self, cfg: SGLangServerConfig, worker_urls: list[str], log_path, port: int = 0):
        super().__init__(cfg, "", log_path, port)
        self.worker_urls = list(worker_urls)

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "sglang_router.launch_router",
            "--host", self.cfg.host, "--port", str(self.port),
            "--worker-urls", *self.worker_urls,
            "--policy", self.cfg.router_policy,
            "--cache-threshold", str(self.cfg.router_cache_threshold),
            "--disable-retries", "--disable-circuit-breaker",
            "--health-check-interval-secs", "2", "--health-failure-threshold", "1", "--health-success-threshold", "1",
            "--request-timeout-secs", str(int(self.cfg.request_timeout_s) + 60),
            "--max-payload-size", str(1 << 30),
            "--prometheus-host", self.cfg.host, "--prometheus-port", str(find_free_port(self.cfg.host)),  # default 29000 clashes
            "--log-level", "warn",
        ]

    def restart(self, model_path: str, weight_version: int) -> None:
        raise RuntimeError("the router is not restarted with weights; restart its workers")
