"""Rank 0's side of a streaming weight sync (the senders are in weight_sync.py and its transports).

    target = coordinator.begin(version)      # pause generation (abort in-flight requests), open update sessions
    ... every stage source: open_sender(target, stage).push(...) ... close() -> {name: file}
    coordinator.commit(target, pushed)        # every tensor exactly once -> serve `version`, resume generation
    coordinator.abort(target, message)        # on any failure: servers labelled "partial-<version>", resumed

Versions: ``commit`` labels the servers with ``version`` only after every tensor arrived (disk: with the
``/update_weights_from_disk`` call itself; tensor/distributed: ``/update_weight_version`` after the update
session closed and the radix cache was flushed). Generation is paused for the whole sync, so no sample mixes
weights; after a failed tensor/distributed sync a server holds a mix of old and new tensors and is labelled
``partial-<version>``: every sample it returns is rejected as stale until the next successful sync.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

from recast_mcore.config.rollout import SGLangServerConfig, WeightSyncConfig
from recast_mcore.rollout.client import SGLangClient
from recast_mcore.rollout.sync_disk import finalize_snapshot
from recast_mcore.rollout.weight_sync import (
    ServerEndpoint, SyncTarget, check_complete, expect_success, template_shapes,
)


def retry_plan(max_retries: int) -> list[str]:
    """The attempts of one weight sync, as the pool treats a failed weight update (rollout/pool.py): a first try,
    ``max_retries`` retries after restarting only servers that died or stopped answering ("recover"), then
    one last try after restarting every launched server ("restart_all"; attached servers cannot be)."""
    return ["first"] + ["recover"] * max_retries + ["restart_all"]


def server_tp_size(client: SGLangClient) -> int:
    """The server's tensor-parallel size (``/server_info``)."""
    info = client.session.get(client.url + "/server_info", timeout=client.timeout_s)
    info.raise_for_status()
    return int(info.json().get("tp_size", 1))


class SyncCoordinator:
    """Opens, commits and aborts syncs on the servers of ``pool`` (see module docstring)."""

    def __init__(self, pool, server_cfg: SGLangServerConfig, sync_cfg: WeightSyncConfig, *, api_key: str,
                 initial_model_dir: str, work_dir: Path, group_backend: str):
        self.pool, self.server_cfg, self.sync_cfg = pool, server_cfg, sync_cfg
        self._api_key = api_key
        self.initial_model_dir = initial_model_dir
        self.work_dir = Path(work_dir)
        self.group_backend = group_backend
        self._shapes: dict[str, tuple[int, ...]] | None = None
        self._tp_sizes: dict[str, int] = {}
        self.group_epoch = 0
        self._last_endpoints: list[str] = []
        self.active: SyncTarget | None = None

    @property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """``{hf_name: shape}`` of the served model (read from the initial export at the first use)."""
        if self._shapes is None:
            self._shapes = template_shapes(self.initial_model_dir)
        return self._shapes

    def tp_size(self, i: int) -> int:
        """Server ``i``'s tensor-parallel size (asked once per URL: a restarted server keeps its flags)."""
        client = self.pool.clients[i]
        if client.url not in self._tp_sizes:
            self._tp_sizes[client.url] = server_tp_size(client)
        return self._tp_sizes[client.url]

    # ---- the three steps ---------------------------------------------------------------------------
    def begin(self, version: int) -> SyncTarget:
        if self.active is not None:
            raise RuntimeError(f"a weight sync to version {self.active.version} is still open")
        method = self.sync_cfg.method
        endpoints = [ServerEndpoint(self.pool.clients[i].url, self.tp_size(i)) for i in self.pool.live]
        if [e.url for e in endpoints] != self._last_endpoints:  # a server came or went: new update groups
            self.group_epoch += 1 if self._last_endpoints else 0
            self._last_endpoints = [e.url for e in endpoints]
        target = SyncTarget(
            method=method, version=version, endpoints=endpoints, bucket_bytes=self.sync_cfg.bucket_bytes,
            dtype=self.server_cfg.dtype, shapes=dict(self.shapes), request_timeout_s=self.server_cfg.request_timeout_s,
            snapshot_dir=str(self._snapshot_path(version, tmp=True)) if method == "disk" else "",
            group_epoch=self.group_epoch, group_backend=self.group_backend, master_addr=self.sync_cfg.master_addr,
            api_key=self._api_key,
        )
        if method == "disk":
            shutil.rmtree(target.snapshot_dir, ignore_errors=True)
            Path(target.snapshot_dir).mkdir(parents=True)
        try:
            self._each(lambda c: c.post("/pause_generation", {"mode": "abort"}))
            if method != "disk":
                self._each(lambda c: expect_success(c.post("/begin_weight_update", {}), c, "begin_weight_update"))
        except Exception as exc:
            self.abort(target, str(exc))  # servers that were paused / opened a session are released
            raise
        self.active = target
        return target

    def commit(self, target: SyncTarget, pushed: list[dict[str, str]],
               on_snapshot: Callable[[str], None] | None = None) -> str | None:
        """Serve ``target.version``; returns the new snapshot directory for disk sync (None otherwise).

        disk: ``on_snapshot(dir)`` runs once the snapshot is complete, before any server loads it (the engine
        then restarts servers from it); the loads go through ``pool.broadcast``: a failed load is retried while
        the server answers /health, then the server is restarted from the new snapshot (rollout/pool.py)."""
        weight_map = check_complete(pushed, target.shapes)
        version, snapshot = str(target.version), None
        if target.method == "disk":
            snapshot = str(finalize_snapshot(Path(target.snapshot_dir), self._snapshot_path(target.version), weight_map,
                                             template_dir=Path(self.initial_model_dir)))
            if on_snapshot is not None:
                on_snapshot(snapshot)
            self.pool.broadcast(lambda c: c.update_weights_from_disk(snapshot, target.version))
            self._prune_snapshots()
        else:
            self._each(lambda c: expect_success(c.post("/end_weight_update", {}), c, "end_weight_update"))
            self._each(lambda c: c.flush_cache())  # answers plain text, not JSON
            self._each(lambda c: c.post("/update_weight_version", {"new_version": version, "abort_all_requests": False}))
        self._each(lambda c: c.post("/continue_generation", {}))
        self.active = None
        return snapshot

    def abort(self, target: SyncTarget, message: str) -> None:
        """Best effort on every server (a failing one is skipped); raises nothing."""
        calls = []
        if target.method == "disk":
            shutil.rmtree(target.snapshot_dir, ignore_errors=True)
        else:
            calls += [lambda c: c.post("/end_weight_update", {}), lambda c: c.flush_cache(),
                      lambda c: c.post("/update_weight_version", {"new_version": f"partial-{target.version}",
                                                                  "abort_all_requests": False})]
        calls.append(lambda c: c.post("/continue_generation", {}))
        for call in calls:
            for i in list(self.pool.live):
                try:
                    call(self.pool.clients[i])
                except Exception:  # noqa: BLE001  (the sync already failed with `message`)
                    pass
        self.active = None

    # ---- helpers -----------------------------------------------------------------------------------
    def _each(self, call) -> None:
        for i in list(self.pool.live):
            call(self.pool.clients[i])

    def _snapshot_path(self, version: int, tmp: bool = False) -> Path:
        root = Path(self.sync_cfg.sync_dir) if self.sync_cfg.sync_dir else self.work_dir / "weights"
        return root / (f"v{version:08d}" + (".tmp" if tmp else ""))

    def _prune_snapshots(self) -> None:
        """Keep the newest ``keep_snapshots`` snapshot directories (the newest is what servers now load)."""
        root = self._snapshot_path(0).parent
        snaps = sorted(p for p in root.glob("v*") if p.is_dir() and not p.name.endswith((".tmp", ".old")))
        for old in snaps[: max(len(snaps) - self.sync_cfg.keep_snapshots, 0)]:
            shutil.rmtree(old, ignore_errors=True)
