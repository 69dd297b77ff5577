"""Actor checkpoints with Megatron ``dist_checkpointing`` (reshardable across TP/PP), saved atomically.

Layout of a checkpoint directory ``D`` (e.g. ``<run>/checkpoints/rl_step_000010``)::

    D/                 dist_checkpointing files: model (+ optimizer) sharded tensors, common state
                       (scheduler state_dict, trainer_state, saved layout)
    D/rng/rank_<r>.pt  torch CPU (and CUDA) RNG state of global rank r (restored only at the same layout)
    D/actor_meta.json  layout and model config
    (reference policy) when the actor has one (RL with a KL term), its weights under keys ``reference.*``
                       in the same dist_checkpointing files; ``has_reference`` in actor_meta.json
    D/manifest.json    size + sha256 of every other file (the reference's shards included), model config,
                       the caller's ``info`` (e.g. the dataset fingerprint); written last (checkpoint/manifest.py)
    <parent>/latest    text: the name of the last complete checkpoint (same format as trainer/checkpoints.py);
                       only written with ``update_latest=True`` (the trainer), never by tools

Atomic save: everything is written to ``<parent>/.<name>.tmp``; after all ranks finished, every rank hashes
its share of the files (``manifest.assign``: the shards it wrote), rank 0 writes the manifest, renames the
directory to ``D`` (an existing ``D`` is moved aside first and deleted after) and rewrites ``latest`` via
tmp+rename. A crash before the rename leaves the previous checkpoint and ``latest`` untouched.

Verification (``verify``, run by ``load`` unless ``verify=False``): rank 0 checks the manifest and the file
sizes (stat only), then every rank re-hashes its share and the problems are gathered, so every rank gets
the same answer and raises the same ``CheckpointError`` naming the file.

Resharding: model tensors are stored by global key, so a checkpoint loads at another TP/PP size. The
non-distributed optimizer's state reshards the same way; the DistributedOptimizer uses the
``dp_reshardable`` format, which only loads at the saved layout (loading it elsewhere raises unless
``load_optimizer=False``). RNG states are restored only at the saved layout (the trainer derives its
randomness from (seed, stage, step), and the model has no dropout).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state

from recast_mcore.checkpoint import manifest
from recast_mcore.checkpoint.manifest import CheckpointError
from recast_mcore.utils.dist import broadcast_object

if TYPE_CHECKING:
    from recast_mcore.actor.actor import MegatronActor

META = "actor_meta.json"
LATEST = "latest"


def _layout() -> dict[str, int]:
    return {
        "tensor_parallel": parallel_state.get_tensor_model_parallel_world_size(),
        "pipeline_parallel": parallel_state.get_pipeline_model_parallel_world_size(),
        "data_parallel": parallel_state.get_data_parallel_world_size(),
        "world_size": dist.get_world_size(),
    }


def _model_sharded(actor: "MegatronActor") -> dict[str, Any]:
    if len(actor.chunks) == 1:
        return {"model": actor.chunks[0].sharded_state_dict()}
    out = {}
    for i, chunk in enumerate(actor.chunks):
        parallel_state.set_virtual_pipeline_model_parallel_rank(i)
        out[f"model{i}"] = chunk.sharded_state_dict()
    parallel_state.set_virtual_pipeline_model_parallel_rank(0)
    return out


def _optimizer_metadata(actor: "MegatronActor") -> dict[str, str] | None:
    return {"distrib_optim_sharding_type": "dp_reshardable"} if actor.optim_cfg.distributed_optimizer else None


def _rng_state() -> dict[str, Any]:
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def save(actor: "MegatronActor", directory: Path, trainer_state: dict[str, Any], *,
         info: dict[str, Any] | None = None, update_latest: bool = True) -> Path:
    """Save (collective); see module doc. ``info`` goes into the manifest (e.g. ``{"dataset": fingerprint}``)."""
    directory = directory.resolve()
    tmp = directory.parent / f".{directory.name}.tmp"
    if dist.get_rank() == 0:
        directory.parent.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)  # empty: dist_checkpointing warns about (and overwrites) non-empty dirs
    dist.barrier()
    sharded = _model_sharded(actor)
    has_state = _optimizer_has_state(actor.optimizer)
    if has_state:  # a never-stepped optimizer has no moments (and the DistributedOptimizer cannot say so)
        sharded["optimizer"] = actor.optimizer.sharded_state_dict(sharded, metadata=_optimizer_metadata(actor))
    sharded["scheduler"] = actor.scheduler.state_dict()
    sharded["trainer_state"] = dict(trainer_state)
    sharded["layout"] = _layout()
    reference = actor.reference
    if reference is not None:  # the frozen KL reference travels with the run (actor/reference.py)
        reference.onload()
        sharded["reference"] = reference.sharded_state_dict()
    dist_checkpointing.save(sharded, str(tmp))
    if reference is not None:
        reference.release()
    (tmp / "rng").mkdir(exist_ok=True)
    torch.save(_rng_state(), tmp / "rng" / f"rank_{dist.get_rank()}.pt")
    if dist.get_rank() == 0:
        (tmp / META).write_text(json.dumps(_meta(actor, has_state), indent=2))
    dist.barrier()
    files, seconds = _hash_collective(tmp)
    if dist.get_rank() == 0:
        body = {**_meta(actor, has_state), **(info or {}), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "hashing": {"bytes": sum(e["size"] for e in files.values()), "seconds_slowest_rank": round(seconds, 3)}}
        manifest.write_manifest(tmp, files, body)
        old = directory.parent / f".{directory.name}.old"
        if directory.exists():
            directory.rename(old)
        tmp.rename(directory)
        if old.exists():
            shutil.rmtree(old)
        if update_latest:
            pointer = directory.parent / (LATEST + ".tmp")
            pointer.write_text(directory.name + "\n")
            pointer.replace(directory.parent / LATEST)
    dist.barrier()
    return directory


def _optimizer_has_state(optimizer) -> bool:
    """False for an optimizer that never stepped (e.g. the RL optimizer right after ``use_optimizer``):
    its sharded state dict has no moments, so there is nothing to load back."""
    return any(bool(opt.optimizer.state) for opt in getattr(optimizer, "chained_optimizers", [optimizer]))


def _meta(actor: "MegatronActor", has_state: bool) -> dict[str, Any]:
    return {"layout": _layout(), "model": vars(actor.model_cfg), "vocab_size": actor.vocab_size,
            "distributed_optimizer": actor.optim_cfg.distributed_optimizer, "step_count": actor.step_count,
            "has_reference": actor.reference is not None, "optimizer_has_state": has_state}


def _all_gather(obj: Any) -> list[Any]:
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _hash_collective(directory: Path) -> tuple[dict[str, dict[str, Any]], float]:
    """Every rank hashes its share of the files rank 0 lists; returns all entries and the slowest rank's seconds."""
    sizes = broadcast_object(manifest.list_files(directory) if dist.get_rank() == 0 else None)
    start = time.perf_counter()
    mine = manifest.hash_files(directory, manifest.assign(sizes, dist.get_world_size())[dist.get_rank()])
    parts = _all_gather((mine, time.perf_counter() - start))
    return {k: v for part, _ in parts for k, v in part.items()}, max(sec for _, sec in parts)


def verify(directory: Path) -> list[str]:
    """Collective check of a checkpoint against its manifest (module doc); [] when it is intact."""
    problems = broadcast_object(manifest.check_structure(directory) if dist.get_rank() == 0 else None)
    if problems:
        return problems
    found = broadcast_object(manifest.read_manifest(directory) if dist.get_rank() == 0 else None)
    sizes = {name: entry["size"] for name, entry in found["files"].items()}
    mine = manifest.verify_files(directory, manifest.assign(sizes, dist.get_world_size())[dist.get_rank()], found)
    return sorted(p for part in _all_gather(mine) for p in part)


def resolve(directory: Path) -> Path:
    """A complete checkpoint dir: ``directory`` itself, or the one named by ``directory/latest``."""
    if (directory / META).is_file():
        return directory
    pointer = directory / LATEST
    if pointer.is_file():
        target = directory / pointer.read_text().strip()
        if (target / META).is_file():
            return target
        raise FileNotFoundError(f"{pointer} names {target}, which is not a complete actor checkpoint (no {META})")
    raise FileNotFoundError(f"{directory} is not an actor checkpoint (no {META}) and has no '{LATEST}' pointer")


def _restore_per_param_adam_step(optimizer) -> None:
    """DistributedOptimizer (dp_reshardable) restores Adam's step only in ``param_groups[i]["step"]``
    (where TE/apex FusedAdam keeps it). Without them Megatron falls back to ``torch.optim.AdamW``,
    which reads ``state[p]["step"]``; left stale, the bias correction after a resume is wrong
    (measured: weights 1e-3 off after one resumed step). Copy the group step into every param state."""
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        inner = getattr(opt, "optimizer", None)
        if not isinstance(inner, torch.optim.Adam):  # AdamW subclasses Adam
            continue
        for group in inner.param_groups:
            if "step" not in group:
                continue
            for p in group["params"]:
                st = inner.state.get(p)
                if st and "step" in st:
                    st["step"] = torch.as_tensor(float(group["step"]), dtype=st["step"].dtype, device=st["step"].device) if torch.is_tensor(st["step"]) else group["step"]


def saved_trainer_state(directory: Path) -> dict[str, Any]:
    """The trainer_state stored in a checkpoint (``directory`` or what its ``latest`` names), read without loading."""
    return dict(dist_checkpointing.load_common_state_dict(str(resolve(directory)))["trainer_state"])


def load_reference(actor: "MegatronActor", directory: Path) -> Path:
    """Load the reference weights saved in a checkpoint into ``actor.reference`` (collective); returns the path.
    Not verified here: the trainer calls it on the checkpoint it has just verified and loaded (its manifest
    covers the reference's shards too); call ``verify`` first for any other checkpoint."""
    ckpt = resolve(directory)
    meta = json.loads((ckpt / META).read_text())
    if not meta.get("has_reference"):
        raise ValueError(f"checkpoint {ckpt} holds no reference policy (it was saved while none existed)")
    reference = actor.reference
    reference.onload()
    state = dist_checkpointing.load({"reference": reference.sharded_state_dict()}, str(ckpt))
    reference.load_state_dict(state["reference"])
    reference.release()
    dist.barrier()
    return ckpt


def load(actor: "MegatronActor", directory: Path, *, load_optimizer: bool, verify_files: bool = True) -> dict[str, Any]:
    """Load (collective); returns the saved trainer_state. See module doc for verification and resharding."""
    ckpt = resolve(directory)
    if verify_files:
        problems = verify(ckpt)
        if problems:
            raise CheckpointError(f"checkpoint {ckpt} failed verification:\n  " + "\n  ".join(problems))
    meta = json.loads((ckpt / META).read_text())
    if meta["vocab_size"] != actor.vocab_size:
        raise ValueError(f"checkpoint {ckpt} has vocab_size {meta['vocab_size']}, actor has {actor.vocab_size}")
    for key in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups", "qk_layernorm", "tie_embeddings"):
        if meta["model"][key] != getattr(actor.model_cfg, key):
            raise ValueError(f"checkpoint {ckpt} has model.{key}={meta['model'][key]}, actor has {getattr(actor.model_cfg, key)}")
    same_layout = meta["layout"] == _layout()
    if load_optimizer and meta["distributed_optimizer"] and not same_layout:
        raise ValueError(
            f"checkpoint {ckpt} has DistributedOptimizer state saved at layout {meta['layout']}, now {_layout()}: "
            "it only loads at the same layout; pass load_optimizer=False to load the model only"
        )
    if load_optimizer and meta["distributed_optimizer"] != actor.optim_cfg.distributed_optimizer:
        raise ValueError("checkpoint and actor disagree on optim.distributed_optimizer; pass load_optimizer=False")
    sharded = _model_sharded(actor)
    load_moments = load_optimizer and meta.get("optimizer_has_state", True)  # never stepped: keep the fresh optimizer
    if load_moments:
        sharded["optimizer"] = actor.optimizer.sharded_state_dict(sharded, is_loading=True, metadata=_optimizer_metadata(actor))
    common = dist_checkpointing.load_common_state_dict(str(ckpt))
    state = dist_checkpointing.load(sharded, str(ckpt))
    if len(actor.chunks) == 1:
        actor.chunks[0].load_state_dict(state["model"])
    else:
        for i, chunk in enumerate(actor.chunks):
            chunk.load_state_dict(state[f"model{i}"])
    if load_moments:
        with torch.no_grad():
            actor.optimizer.load_state_dict(state["optimizer"])
        if actor.optim_cfg.distributed_optimizer:
            _restore_per_param_adam_step(actor.optimizer)
    elif load_optimizer:  # saved before its first step: what resumes is a fresh optimizer (built on the loaded weights)
        actor.use_optimizer(actor.optim_cfg)
    else:
        actor.optimizer.reload_model_params()
    if load_optimizer:
        actor.scheduler.load_state_dict(common["scheduler"])
    if same_layout:
        rng = torch.load(ckpt / "rng" / f"rank_{dist.get_rank()}.pt", weights_only=True)  # plain tensors only
        torch.set_rng_state(rng["cpu"])
        if torch.cuda.is_available() and "cuda" in rng:
            torch.cuda.set_rng_state(rng["cuda"])
    actor.step_count = meta["step_count"]
    dist.barrier()
    return dict(common["trainer_state"])
