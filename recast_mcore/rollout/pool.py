"""A pool of SGLang servers (launched or attached): spreads request chunks, detects and recovers failures.

Delivery guarantee of ``map``: every payload's result is stored exactly once, under its own index.
A chunk whose request failed (``ServerUnavailable``: dead, hung past the timeout, HTTP 5xx) is re-sent
as a whole after its server was recovered; a partially served chunk is never merged, so nothing is
lost or double-counted. A rejected request (HTTP 4xx) is raised at once, never retried.

Recovery: a launched server that is dead or unhealthy is killed and restarted (same port) from the
current weights via ``current_weights() -> (model_path, version)`` and then ``after_restart(client)``
(tensor sync re-pushes the last weights). An attached server that stopped answering is taken out of
rotation while others remain (it cannot be restarted from here).

With ``use_router`` the chunks of ``map`` go through sglang-router (rollout/router.py; the router picks the
worker, cache-aware), the same guarantees hold: a failed chunk (the router's retries are off, so its failure
reaches us) triggers recovery of every dead/unhealthy worker and is re-sent through the router. ``broadcast``
(weight updates) never uses the router: the router forwards a request to ONE worker, while an update must
reach every worker and report per-worker success (and the version each serves).
"""

from __future__ import annotations

import importlib.util
import logging
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, TypeVar

import requests

from recast_mcore.config.rollout import SGLangServerConfig
from recast_mcore.rollout.client import RequestRejected, ServerUnavailable, SGLangClient, WeightUpdateFailed
from recast_mcore.rollout.placement import ServerSlot
from recast_mcore.rollout.router import LaunchedRouter
from recast_mcore.rollout.server import LaunchedServer, log_tail

log = logging.getLogger(__name__)
P = TypeVar("P")
ROUTER = -1
"""Endpoint index of the sglang-router front-end in ``map`` (workers are 0..n-1)."""
R = TypeVar("R")


class ServerPool:
    """Endpoints ``clients[i]`` (and ``servers[i]`` when launched)."""

    def __init__(self, cfg: SGLangServerConfig, model_dir: str, weight_version: int,
                 current_weights: Callable[[], tuple[str, int]], after_restart: Callable[[SGLangClient], None],
                 *, api_key: str = "", slots: list[ServerSlot] | None = None, remote_urls: list[str] = (),
                 memory_saver: bool = False):
        """``slots``: GPU placement of the servers this process launches (rollout/placement.py; None on CPU);
        ``remote_urls``: servers launched by other nodes (recovered like attached ones)."""
        self.cfg = cfg
        self.current_weights = current_weights
        self.after_restart = after_restart
        self.restarts = 0
        self.update_failures = 0  # failed weight-update attempts (each retried or answered by a restart)
        self._rotation = 0
        self._lock = threading.Lock()
        self._own_log_dir = cfg.mode == "launch" and not cfg.log_dir
        self.had_failure = False  # keeps a temporary log directory after close() for inspection
        self.servers: list[LaunchedServer | None] = []
        if cfg.mode == "launch":
            self.log_dir = Path(cfg.log_dir or tempfile.mkdtemp(prefix="recast-sglang-logs-"))
            for i, slot in enumerate(slots if slots is not None else [None] * cfg.num_servers):
                n = slot.index if slot is not None else i
                port = cfg.base_port + n if cfg.base_port else 0
                self.servers.append(LaunchedServer(cfg, model_dir, self.log_dir / f"server{n}.log", port, weight_version,
                                                   api_key=api_key, slot=slot, memory_saver=memory_saver))
            self._start_all()
            urls = [s.url for s in self.servers] + list(remote_urls)
            self.servers += [None] * len(remote_urls)
        else:
            urls = list(cfg.urls)
            self.servers = [None] * len(urls)
        self.clients = [SGLangClient(u, cfg.request_timeout_s, api_key) for u in urls]
        self.live = list(range(len(self.clients)))
        if cfg.mode == "attach":
            dead = [c.url for c in self.clients if not c.healthy()]
            if dead:
                raise ServerUnavailable(f"attached SGLang servers do not answer /health: {dead}")
        self.router: LaunchedRouter | None = None
        self.router_client: SGLangClient | None = None
        if cfg.use_router:
            self._start_router(urls, api_key)

    def _start_router(self, urls: list[str], api_key: str) -> None:
        """sglang-router in front of ``urls``; generation requests then go through it (see rollout/router.py).
        The router is started without the key: our client sends ``Authorization: Bearer <key>`` to the router,
        which forwards that header to the worker (measured, rollout/router.py)."""
        if importlib.util.find_spec("sglang_router") is None:
            self.close()
            raise ModuleNotFoundError("sglang.use_router: the sglang-router package is not installed "
                                      "(pip install sglang-router==0.3.2, pinned in requirements/cpu-lock.txt)")
        if self.cfg.mode == "attach":
            self._own_log_dir = not self.cfg.log_dir
            self.log_dir = Path(self.cfg.log_dir or tempfile.mkdtemp(prefix="recast-sglang-router-"))
        self.router = LaunchedRouter(self.cfg, urls, self.log_dir / "router.log")
        try:
            self.router.start()
        except BaseException:
            self.had_failure = True
            self.close()
            raise
        self.router_client = SGLangClient(self.router.url, self.cfg.request_timeout_s, api_key)

    def _start_all(self) -> None:
        errors: list[BaseException] = []
        threads = [threading.Thread(target=_start_into, args=(s, errors)) for s in self.servers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            self.had_failure = True
            self.close()
            raise errors[0]

    def map(self, payloads: list[P], call: Callable[[SGLangClient, P], R], affinity: list[int] | None = None) -> list[R]:
        """``[call(client, p) for p in payloads]`` spread over the live servers, with recovery and retries.

        ``affinity[i]``: payloads with the same value go to the same live server (``live[a % n]``), e.g. the
        levels of one prompt chunk's beam search (prefix cache); without it, round-robin.
        """
        if self.router_client is not None:
            self._recover_what_the_router_hides()  # it routes around unhealthy workers: restart them, never lose one
        results: list[R | None] = [None] * len(payloads)
        pending = list(range(len(payloads)))
        for attempt in range(self.cfg.max_retries + 1):
            failed = self._round(pending, payloads, call, results, affinity)
            if not failed:
                return results  # type: ignore[return-value]
            if attempt == self.cfg.max_retries:
                idx, (ep, exc) = next(iter(failed.items()))
                raise ServerUnavailable(
                    f"{len(failed)} request chunks still failing after {self.cfg.max_retries} retries; "
                    f"last error from {self._client(ep).url}: {exc}{self._tail(ep)}"
                ) from exc
            for ep in sorted({ep for ep, _ in failed.values()}):
                if ep == ROUTER:
                    self._recover_behind_router()
                else:
                    self.recover(ep)
            pending = sorted(failed)
        raise AssertionError("unreachable")

    def _round(self, pending, payloads, call, results, affinity=None) -> dict[int, tuple[int, BaseException]]:
        if not self.live:
            raise ServerUnavailable("no SGLang server is left in rotation")
        start, self._rotation = self._rotation, self._rotation + len(pending)  # balance small maps too
        slot = (lambda k, idx: affinity[idx]) if affinity is not None else (lambda k, idx: start + k)
        if self.router_client is not None:  # the router picks the worker (cache-aware: affinity by prefix)
            assign = {idx: ROUTER for idx in pending}
        else:
            assign = {idx: self.live[slot(k, idx) % len(self.live)] for k, idx in enumerate(pending)}
        failed: dict[int, tuple[int, BaseException]] = {}
        workers = min(len(pending), 4 * len(self.live))  # a router gets as many concurrent chunks

        def run(idx: int) -> None:
            ep = assign[idx]
            try:
                results[idx] = call(self._client(ep), payloads[idx])
            except ServerUnavailable as exc:
                with self._lock:
                    failed[idx] = (ep, exc)

        with ThreadPoolExecutor(max_workers=max(workers, 1)) as pool:
            for fut in [pool.submit(run, i) for i in pending]:
                fut.result()  # re-raises RequestRejected and programming errors
        return failed

    def traffic(self) -> dict[str, int]:
        """POST requests and payload bytes so far, summed over the servers (and the router)."""
        clients = self.clients + ([self.router_client] if self.router_client is not None else [])
        return {k: sum(c.traffic[k] for c in clients) for k in ("requests", "bytes_sent", "bytes_received")}

    def _client(self, ep: int) -> SGLangClient:
        return self.router_client if ep == ROUTER else self.clients[ep]

    def _recover_what_the_router_hides(self) -> None:
        """Before a map through the router: recover the workers the router marks unhealthy (one ``GET /workers``,
        its view from its own health checks every 2 s) and launched workers whose process died. Cheap: SGLang's
        ``/health`` takes at least 1 s (it waits for a 1-token generation, sglang/srt/entrypoints/http_server.py),
        so probing every worker before every map (measured: +1 s per worker per map) is left to failures."""
        self._restart_router_if_dead()
        try:
            listed = self.router_client.session.get(self.router.url + "/workers", timeout=10).json()["workers"]
            hidden = {w["url"] for w in listed if not w.get("is_healthy", True)}
        except (requests.RequestException, ValueError, KeyError, TypeError) as exc:
            log.warning("sglang-router /workers unreadable (%s); probing every worker", exc)
            return self._recover_behind_router()
        dead = {ep for ep in self.live if self.servers[ep] is not None and not self.servers[ep].is_running()}
        self._recover_and_wait([ep for ep in self.live if ep in dead or self.clients[ep].url in hidden])

    def _recover_behind_router(self) -> None:
        """A request through the router failed: recover every worker that is dead or unhealthy, then give the
        router's health check (every 2 s) time to route to the restarted ones again."""
        self._restart_router_if_dead()
        self._recover_and_wait(list(self.live))

    def _restart_router_if_dead(self) -> None:
        if self.router is not None and not self.router.is_running():
            self.had_failure = True
            log.warning("sglang-router at %s died; restarting it", self.router.url)
            self.router.stop()
            self.router.start()

    def _recover_and_wait(self, endpoints: list[int]) -> None:
        before = (self.restarts, len(self.live))
        for ep in endpoints:
            self.recover(ep)
        if (self.restarts, len(self.live)) != before:
            time.sleep(3.0)

    def recover(self, ep: int) -> None:
        """Make endpoint ``ep`` serve again (restart a launched server) or drop it (attached)."""
        server, client = self.servers[ep], self.clients[ep]
        if server is None:
            if client.healthy():
                return
            if len(self.live) > 1:
                log.warning("attached SGLang server %s stopped answering; removed from rotation", client.url)
                self.live.remove(ep)
                return
            raise ServerUnavailable(f"the only attached SGLang server {client.url} stopped answering /health")
        if server.is_running() and client.healthy():
            return  # transient (e.g. a slow request); the retry goes to the same healthy server
        self.restart(ep, "is dead or hung")

    def restart(self, ep: int, why: str) -> None:
        """Restart launched server ``ep`` from ``current_weights()`` and hand it to ``after_restart``."""
        server, client = self.servers[ep], self.clients[ep]
        if server is None:
            raise ValueError(f"SGLang server {client.url} was not launched here and cannot be restarted")
        self.had_failure = True
        model_path, version = self.current_weights()
        log.warning("SGLang server %s %s; restarting from %s (weight version %d)", client.url, why, model_path, version)
        server.restart(model_path, version)
        self.restarts += 1
        self.after_restart(client)

    def broadcast(self, call: Callable[[SGLangClient], None]) -> None:
        """Run ``call`` (a weight update) on every live server; never skips one silently.

        A failure (timeout, HTTP 5xx, ``success: false``) is retried ``max_retries`` times while the server
        still answers /health; then (or at once when it is dead) a launched server is restarted from
        ``current_weights()`` (which already name the new version) and re-synced by ``after_restart``. An
        attached server that cannot be updated is taken out of rotation (raises if it is the last one).
        """
        for ep in list(self.live):
            self._update_one(ep, call)

    def _update_one(self, ep: int, call: Callable[[SGLangClient], None]) -> None:
        client, server = self.clients[ep], self.servers[ep]
        error: BaseException | None = None
        for attempt in range(self.cfg.max_retries + 1):
            try:
                call(client)
                return
            except (ServerUnavailable, WeightUpdateFailed) as exc:
                error = exc
                self.update_failures += 1
                alive = (server is None or server.is_running()) and client.healthy()
                log.warning("weight update on %s failed (attempt %d/%d, server %s): %s", client.url, attempt + 1,
                            self.cfg.max_retries + 1, "healthy" if alive else "not answering", exc)
                if not alive:
                    break
        if server is None:
            if len(self.live) > 1:
                log.error("attached SGLang server %s could not be updated (%s); removed from rotation", client.url, error)
                self.live.remove(ep)
                return
            raise ServerUnavailable(f"the only attached SGLang server {client.url} could not be updated: {error}") from error
        self.restart(ep, "failed a weight update")

    def _tail(self, ep: int) -> str:
        server = self.router if ep == ROUTER else self.servers[ep]
        return f"\nlog tail of {server.log_path}:\n{log_tail(server.log_path)}" if server else ""

    def close(self) -> None:
        """Stop launched servers (and the router); a temporary log directory is removed unless something failed."""
        if getattr(self, "router", None) is not None:
            self.router.stop()
        for server in self.servers:
            if server is not None:
                server.stop()
        if self._own_log_dir and not self.had_failure:
            shutil.rmtree(self.log_dir, ignore_errors=True)
        elif any(s is not None for s in self.servers):
            log.info("SGLang server logs kept in %s", self.log_dir)


def _start_into(server: LaunchedServer, errors: list[BaseException]) -> None:
    try:
        server.start()
    except BaseException as exc:  # reported by the caller after every start finished
        errors.append(exc)
