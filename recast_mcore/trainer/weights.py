"""The rollout engine on rank 0 and how the actor's weights reach it (collectives over every rank).

- ``torch`` engine: runs the actor's own model in process (``actor.logits_fn``); a sync only bumps the
  version. It needs tensor_parallel = pipeline_parallel = 1 (rank 0 then holds a full replica).
- ``sglang`` engine: every sync STREAMS the weights (docs/rollout.md "Weight sync"): rank 0 opens the sync
  (``engine.begin_sync``) and sends its description to every rank over the control plane; the source rank
  of each pipeline stage exports its own layers bucket by bucket (``actor.export_buckets``: TP all-gather,
  HF names, serving dtype) and pushes them (``rollout.weight_sync.open_sender``: disk | tensor |
  distributed); rank 0 checks that every tensor arrived once and commits the version. No rank holds the
  whole model. The initial HF directory the servers start from is written the same way (disk shards).
- servers on GPU nodes are placed by ``rollout/placement.py``; each node launches the servers it hosts.
"""

from __future__ import annotations

import atexit
import logging
import os
from pathlib import Path
from typing import Any

import torch

from recast_mcore.checkpoint.hf_mapping import hf_metadata_files, hf_shapes, mcore_to_hf
from recast_mcore.config.actor import ModelConfig
from recast_mcore.config.rollout import RolloutConfig
from recast_mcore.data.tokens import ItemVocab
from recast_mcore.rollout.base import EngineResources, RolloutEngine, build_rollout_engine
from recast_mcore.rollout.catalog import ItemCatalog
from recast_mcore.rollout.weight_sync import SyncFailed, SyncTarget, is_retryable, open_sender
from recast_mcore.utils.dist import all_gather_object, barrier, broadcast_object, is_rank0, rank

log = logging.getLogger(__name__)


# ---- streaming ---------------------------------------------------------------------------------------
def stream_weights(actor: Any, target: SyncTarget) -> list[dict[str, str]]:
    """Collective: every stage source pushes its buckets to ``target``; returns every stage's ``{name: file}``
    (on every rank). Stages take turns when the target needs it (one weight update at a time per server).
    A failure on any rank raises on every rank (after every rank finished its collectives)."""
    turns = range(actor.pipeline_stages) if target.serial_stages else [None]
    pushed, error, retryable = {}, "", True
    for turn in turns:
        if turn is None or turn == actor.pipeline_stage:
            pushed, error, retryable = _push_stage(actor, target)
        if turn is not None:
            barrier()
    results = all_gather_object((pushed, error, retryable))
    errors = [(e, r) for _, e, r in results if e]
    if errors:
        raise SyncFailed(f"weight sync to version {target.version} failed: {errors[0][0]}",
                         retryable=all(r for _, r in errors))
    return [p for p, _, _ in results if p]


def _push_stage(actor: Any, target: SyncTarget) -> tuple[dict[str, str], str, bool]:
    """This rank's part: join the export's collectives; on the stage source, push every bucket.
    Returns ``(pushed, error, retryable)``."""
    sender, error, retryable = None, "", True
    for bucket in actor.export_buckets(target.bucket_bytes, target.torch_dtype):
        if not error:  # after a failure keep draining: the TP peers are inside the all-gathers
            try:
                sender = sender or open_sender(target, bucket.stage)
                sender.push(bucket.index, bucket.tensors)
            except Exception as exc:  # noqa: BLE001  (reported to every rank by stream_weights)
                error = f"rank {rank()} (stage {bucket.stage}, bucket {bucket.index}): {type(exc).__name__}: {exc}"
                retryable = is_retryable(exc)
        del bucket
    return ({} if sender is None or error else sender.close()), error, retryable


def sync_weights(engine: Any, actor: Any, version: int, *, resync: bool = False) -> None:
    """Collective: serve the actor's current weights as ``version`` (``engine`` on rank 0, None elsewhere).

    A failed attempt (any server, any rank; every rank learns it) is retried the way the pool retries a weight
    update (rollout/sync_coordinator.retry_plan): ``sglang.max_retries`` more times, restarting launched servers
    that died or stopped answering in between, then once more after restarting every launched server; still
    failing -> RuntimeError on every rank. A server restarted here gets its weights from the next attempt."""
    from recast_mcore.rollout.sync_coordinator import retry_plan

    plan: Any = None
    if engine is not None:
        try:
            engine.check_sync_version(version, resync=resync)
            plan = retry_plan(engine.server_cfg.max_retries)
        except Exception as exc:  # noqa: BLE001  (every rank raises below)
            plan = f"{type(exc).__name__}: {exc}"
    plan = broadcast_object(plan)
    if isinstance(plan, str):
        raise RuntimeError(f"weight sync to version {version}: {plan}")
    error = ""
    for step in plan:
        if error:
            recovery = _recover(engine, restart_all=step == "restart_all", error=error)
            if recovery:
                raise RuntimeError(f"weight sync to version {version} failed ({error}); recovery failed: {recovery}")
        error, retryable = _sync_once(engine, actor, version, resync=resync)
        if not error:
            return
        if not retryable:
            raise RuntimeError(f"weight sync to version {version} failed (not retried): {error}")
    raise RuntimeError(f"weight sync to version {version} failed after {len(plan)} attempts: {error}")


def _recover(engine: Any, *, restart_all: bool, error: str) -> str:
    """Rank 0 restarts servers between attempts (engine.recover_servers); '' or its error, on every rank."""
    message = ""
    if engine is not None:
        log.warning("weight sync failed (%s); %s before the next attempt", error,
                    "restarting every launched server" if restart_all else "restarting dead servers")
        try:
            engine.recover_servers(restart_all=restart_all)
        except Exception as exc:  # noqa: BLE001  (reported on every rank)
            message = f"{type(exc).__name__}: {exc}"
    return broadcast_object(message)


def _sync_once(engine: Any, actor: Any, version: int, *, resync: bool) -> tuple[str, bool]:
    """One attempt: open (rank 0), stream (every stage source), commit (rank 0).
    ``('', True)`` or ``(error, retryable)``, the same on every rank."""
    target: Any = None
    if engine is not None:
        try:
            target = engine.begin_sync(version, resync=resync)
        except Exception as exc:  # noqa: BLE001
            target = (f"rank 0 could not open the sync: {type(exc).__name__}: {exc}", is_retryable(exc))
    target = broadcast_object(target)
    if isinstance(target, tuple):
        return target
    try:
        pushed = stream_weights(actor, target)
    except SyncFailed as exc:  # raised on every rank by stream_weights
        if engine is not None:
            engine.fail_sync(target, str(exc))
        return str(exc), exc.retryable
    outcome = ("", True)
    if engine is not None:
        try:
            engine.finish_sync(target, pushed)
        except Exception as exc:  # noqa: BLE001
            outcome = (f"rank 0 could not commit: {type(exc).__name__}: {exc}", is_retryable(exc))
    return broadcast_object(outcome)


# ---- building the engine --------------------------------------------------------------------------------
def export_initial(actor: Any, rollout_cfg: RolloutConfig, model_cfg: ModelConfig, vocab: ItemVocab,
                   work_dir: Path, tokenizer_dir: str = "") -> Path:
    """Collective: the HF directory servers start from, written as sharded safetensors by each stage's source
    (shared filesystem), then index + config/tokenizer by rank 0. Returns its path on every rank.

    ``tokenizer_dir``: the expanded tokenizer of an imported LLM (data.prompt.hf_tokenizer_dir): config.json
    starts from the base model's and the tokenizer files are copied (else the item-only WordLevel tokenizer is
    written; checkpoint/hf_mapping.hf_metadata_files)."""
    from recast_mcore.rollout.sync_disk import finalize_snapshot

    vocab_size, files, copies = hf_metadata_files(  # every rank: a mismatch fails everywhere, before any export
        model_cfg, None if tokenizer_dir else vocab.token_strings, pad_id=vocab.pad_id, bos_id=vocab.bos_id,
        eos_id=vocab.eos_id, torch_dtype=rollout_cfg.sglang.dtype, tokenizer_dir=tokenizer_dir or None)
    if vocab_size != vocab.vocab_size:
        raise ValueError(f"the served tokenizer ({tokenizer_dir or 'item vocabulary'}) has {vocab_size} tokens, "
                         f"the model's vocabulary {vocab.vocab_size}")
    final = Path(work_dir) / "hf_initial"
    target = SyncTarget(method="disk", version=0, endpoints=[], bucket_bytes=rollout_cfg.weight_sync.bucket_bytes,
                        dtype=rollout_cfg.sglang.dtype, shapes=hf_shapes(model_cfg, vocab.vocab_size),
                        request_timeout_s=rollout_cfg.sglang.request_timeout_s,
                        snapshot_dir=str(final.with_name(final.name + ".tmp")))
    if is_rank0():
        import shutil

        shutil.rmtree(target.snapshot_dir, ignore_errors=True)
    barrier()
    pushed = stream_weights(actor, target)
    if is_rank0():
        from recast_mcore.rollout.weight_sync import check_complete

        finalize_snapshot(Path(target.snapshot_dir), final, check_complete(pushed, target.shapes), files=files,
                          copies=copies)
    barrier()
    return final


def build_engine(
    rollout_cfg: RolloutConfig, model_cfg: ModelConfig, vocab: ItemVocab, actor: Any, version: int, work_dir: Path,
    tokenizer_dir: str = "",
) -> RolloutEngine | None:
    """Collective (all ranks call it); returns the engine on rank 0 and None on the other ranks.

    ``tokenizer_dir``: the expanded tokenizer of an imported LLM (data.prompt.hf_tokenizer_dir); SGLang then
    serves the model with that tokenizer (else the item-only WordLevel tokenizer is written)."""
    catalog = ItemCatalog.from_vocab(vocab)
    if rollout_cfg.engine == "torch":
        if not is_rank0():
            return None
        return build_rollout_engine(rollout_cfg, EngineResources(catalog=catalog, logits_fn=actor.logits_fn, initial_version=version))
    model_dir = export_initial(actor, rollout_cfg, model_cfg, vocab, work_dir, tokenizer_dir)
    api_key = broadcast_object(_api_key(rollout_cfg) if is_rank0() else None)  # in memory, never logged
    slots = server_plan(rollout_cfg)
    remote = launch_node_servers(rollout_cfg, slots, str(model_dir), version, api_key, work_dir)
    if not is_rank0():
        return None
    local = [s for s in slots if s.node == 0] if slots is not None else None
    engine = build_rollout_engine(rollout_cfg, EngineResources(
        catalog=catalog, model_dir=str(model_dir), initial_version=version, api_key=api_key, server_slots=local,
        remote_urls=remote, memory_saver=_colocated_release(rollout_cfg) and torch.cuda.is_available()))
    engine.resync = lambda: lead_resync(engine, actor)
    return engine


def _api_key(rollout_cfg: RolloutConfig) -> str:
    from recast_mcore.rollout.sglang_engine import resolve_api_key

    return resolve_api_key(rollout_cfg.sglang)


def lead_resync(engine: Any, actor: Any) -> None:
    """Rank 0 (inside a rollout or evaluation, the other ranks in ``collective.follow``): re-send the current
    weights after a server restart."""
    broadcast_object(("resync", None))
    sync_weights(engine, actor, engine.policy_version, resync=True)


# ---- placement -------------------------------------------------------------------------------------------
def server_plan(rollout_cfg: RolloutConfig) -> list | None:
    """The servers' GPU slots (rollout/placement.py) for launched servers on GPU nodes; None on CPU/attach."""
    if rollout_cfg.sglang.mode != "launch" or not torch.cuda.is_available():
        return None
    from recast_mcore.rollout.placement import ClusterLayout, plan_servers

    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    gpus = rollout_cfg.placement.gpus_per_node or torch.cuda.device_count()
    layout = ClusterLayout(nodes=max(world // local, 1), gpus_per_node=gpus, trainer_gpus_per_node=local)
    return plan_servers(layout, rollout_cfg.placement, rollout_cfg.sglang.num_servers)


def node_index() -> int:
    """This rank's node (torchrun's GROUP_RANK; ranks are node-major)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    return int(os.environ.get("GROUP_RANK", str(rank() // max(local, 1))))


def launch_node_servers(rollout_cfg: RolloutConfig, slots: list | None, model_dir: str, version: int, api_key: str,
                        work_dir: Path) -> list[str]:
    """Collective: local rank 0 of every node but node 0 starts the servers its node hosts (they stop when the
    process exits); returns their URLs (node 0's servers are launched by rank 0's engine)."""
    if slots is None or all(s.node == 0 for s in slots):
        return []
    from recast_mcore.rollout.server import LaunchedServer

    mine = [s for s in slots if s.node == node_index() and s.node != 0] if os.environ.get("LOCAL_RANK", "0") == "0" else []
    cfg = rollout_cfg.sglang
    servers = [LaunchedServer(cfg, model_dir, Path(cfg.log_dir or work_dir / "sglang_logs") / f"server{s.index}.log",
                              cfg.base_port + s.index if cfg.base_port else 0, version, api_key=api_key, slot=s,
                              memory_saver=_colocated_release(rollout_cfg) and torch.cuda.is_available())
               for s in mine]
    for server in servers:
        atexit.register(server.stop)
        server.start()
    urls = all_gather_object([(s.slot.index, s.url) for s in servers])
    return [url for _, url in sorted(pair for part in urls for pair in part)]


def _colocated_release(rollout_cfg: RolloutConfig) -> bool:
    return rollout_cfg.placement.mode == "colocated" and rollout_cfg.placement.release_memory


# ---- the RL step's memory phases (colocated placement) ----------------------------------------------------
def before_rollout(engine: RolloutEngine | None, rollout_cfg: RolloutConfig, actor: Any) -> None:
    """Every rank: optimizer state to CPU (if configured); rank 0: servers get their memory back if released."""
    if rollout_cfg.engine != "sglang" or rollout_cfg.placement.mode != "colocated":
        return
    if rollout_cfg.placement.offload_optimizer:
        actor.offload_optimizer()
    ensure_resident(engine)


def ensure_resident(engine: RolloutEngine | None) -> None:
    """Rank 0: servers that released their memory and got no sync since (an empty batch) take it back."""
    if engine is not None and getattr(engine, "memory_released", False):
        engine.resume_memory(None)


def after_rollout(engine: RolloutEngine | None, rollout_cfg: RolloutConfig, actor: Any) -> None:
    """Every rank: optimizer state back (if offloaded); rank 0: servers release their memory for the update."""
    if rollout_cfg.engine != "sglang" or rollout_cfg.placement.mode != "colocated":
        return
    if rollout_cfg.placement.offload_optimizer:
        actor.restore_optimizer()
    if engine is not None and rollout_cfg.placement.release_memory:
        engine.release_memory()


def push_weights(engine: RolloutEngine | None, rollout_cfg: RolloutConfig, actor: Any, model_cfg: ModelConfig,
                 vocab_size: int, version: int) -> None:
    """Collective: make the engine serve the actor's current weights as ``version`` (released colocated servers
    get their weights memory back first and their KV cache after the sync)."""
    if rollout_cfg.engine == "torch":
        if engine is not None:
            engine.update_weights(None, version)
        return
    if rollout_cfg.engine == "torch_kv":  # in-process CPU engine of small models: the full HF dict on rank 0
        full = actor.full_state_dict()
        if engine is not None:
            engine.update_weights(mcore_to_hf(full, model_cfg, vocab_size), version)
        return
    released = engine is not None and engine.memory_released
    if released:
        engine.resume_memory(["weights"])
    sync_weights(engine, actor, version)
    if released:
        engine.resume_memory(["kv_cache", "cuda_graph"])


def reseed_engine(engine: RolloutEngine, seed: int) -> None:
    """Make the engine's sampling for this step a function of ``seed`` (resume reproducibility).

    The in-process torch engine samples from ``engine.generator``; an engine with a ``reseed(seed)``
    method is asked directly. SGLang servers are not seeded per request: their rollouts do not replay
    after a resume (documented in docs/training.md).
    """
    reseed = getattr(engine, "reseed", None)
    if callable(reseed):
        reseed(seed)
    elif isinstance(getattr(engine, "generator", None), torch.Generator):
        engine.generator.manual_seed(seed)
