"""MegatronActor: the policy the trainer drives (SFT steps, constrained log-probs, policy updates, checkpoints).

Construct it on EVERY rank after ``initialize_distributed(parallel_cfg)``; every public method is a
collective (all ranks call it with the same arguments). Inputs are replicated on all ranks; each rank
computes its data-parallel share (see actor/microbatch.py) and results are returned on all ranks
(``full_state_dict`` only on global rank 0).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

from recast_mcore.actor import checkpointing
from recast_mcore.actor.forward_backward import MicroBatch, causal_mask, run_micro_batches
from recast_mcore.actor.import_weights import load_shards
from recast_mcore.actor.instrument import UpdateTimer, update_metrics
from recast_mcore.actor.microbatch import micro_batch_rows, plan_rows, plan_update, step_seq_len
from recast_mcore.actor.model import build_model_chunks, use_transformer_engine
from recast_mcore.actor.nonfinite import StepGuard
from recast_mcore.actor.offload import move_optimizer_state
from recast_mcore.actor.packing import pack_micro_batches, resolve_layout, sequence_lengths, thd_multiple
from recast_mcore.actor.reference import ReferencePolicy
from recast_mcore.actor.state_dict import gather_full, load_full
from recast_mcore.actor.weight_export import Bucket, export_buckets
from recast_mcore.config.actor import ModelConfig, OptimConfig, ParallelConfig
from recast_mcore.config.train import DDP_FIXED_OPTIM_FIELDS
from recast_mcore.data.trie import ItemTrie
from recast_mcore.signal.batch import Role, UpdateBatch

PAD_ID = 0


class MegatronActor:
    """Megatron-Core policy with Megatron's optimizer, LR schedule and dist checkpoints."""

    def __init__(
        self, model_cfg: ModelConfig, parallel_cfg: ParallelConfig, optim_cfg: OptimConfig, vocab_size: int, trie: ItemTrie
    ) -> None:
        if not parallel_state.model_parallel_is_initialized():
            raise RuntimeError("call recast_mcore.actor.initialize_distributed(parallel_cfg) before MegatronActor(...)")
        if trie.vocab_size != vocab_size:
            raise ValueError(f"trie vocab_size {trie.vocab_size} != actor vocab_size {vocab_size}")
        self.model_cfg, self.parallel_cfg, self.optim_cfg = model_cfg, parallel_cfg, optim_cfg
        self.vocab_size, self.trie = vocab_size, trie
        self.chunks, self.config = build_model_chunks(model_cfg, parallel_cfg, vocab_size)
        self.layout = resolve_layout(
            parallel_cfg.sequence_packing, use_transformer_engine(model_cfg), PAD_ID,
            thd_multiple(parallel_cfg.tensor_parallel, parallel_cfg.sequence_parallel, model_cfg.fp8, model_cfg.fp8_recipe),
        )
        self.model = self._wrap_ddp(self.chunks)
        self.optimizer = get_megatron_optimizer(self._optimizer_config(), self.model)
        self.scheduler = self._scheduler()
        self.config.finalize_model_grads_func = finalize_model_grads
        self.config.grad_scale_func = self.optimizer.scale_loss
        self.config.no_sync_func = _one_or_list([m.no_sync for m in self.model])
        if optim_cfg.overlap_grad_reduce:  # as Megatron-LM's training.py (align_grad_reduce)
            self.config.grad_sync_func = _one_or_list([m.start_grad_sync for m in self.model])
        self.guard = StepGuard(optim_cfg)
        self._params_stale = False
        self.step_count = 0
        self.reference: ReferencePolicy | None = None
        """Frozen reference policy (``build_reference``); saved in every checkpoint while it exists."""

    # ------------------------------------------------------------------ construction
    def _wrap_ddp(self, chunks: list[torch.nn.Module]) -> list[DistributedDataParallel]:
        o = self.optim_cfg
        ddp_cfg = DistributedDataParallelConfig(
            grad_reduce_in_fp32=True,
            overlap_grad_reduce=o.overlap_grad_reduce,
            overlap_param_gather=o.overlap_param_gather,
            use_distributed_optimizer=o.distributed_optimizer,
            check_for_nan_in_grad=o.nonfinite_policy == "stop",  # see actor/nonfinite.py
        )
        return [
            DistributedDataParallel(self.config, ddp_cfg, module=c, disable_bucketing=i > 0) for i, c in enumerate(chunks)
        ]

    def _optimizer_config(self) -> OptimizerConfig:
        o = self.optim_cfg
        bf16 = self.model_cfg.params_dtype == "bf16"
        return OptimizerConfig(
            optimizer="adam",
            lr=o.lr,
            min_lr=o.min_lr,
            weight_decay=o.weight_decay,
            adam_beta1=o.adam_beta1,
            adam_beta2=o.adam_beta2,
            adam_eps=o.adam_eps,
            clip_grad=o.clip_grad,
            bf16=bf16,
            params_dtype=torch.bfloat16 if bf16 else torch.float32,
            use_distributed_optimizer=o.distributed_optimizer,
            overlap_param_gather=o.overlap_param_gather,
        )

    def _scheduler(self) -> OptimizerParamScheduler:
        o = self.optim_cfg
        return OptimizerParamScheduler(
            self.optimizer,
            init_lr=0.0 if o.warmup_steps > 0 else o.lr,
            max_lr=o.lr,
            min_lr=o.min_lr,
            lr_warmup_steps=o.warmup_steps,
            lr_decay_steps=max(o.decay_steps, o.warmup_steps + 1),
            lr_decay_style=o.decay_style,
            start_wd=o.weight_decay,
            end_wd=o.weight_decay,
            wd_incr_steps=1,
            wd_incr_style="constant",
        )

    def use_optimizer(self, optim_cfg: OptimConfig) -> None:
        """Replace the optimizer and LR schedule by fresh ones from ``optim_cfg`` (zero moments, step 0 of its
        schedule), over the same DDP buffers: the RL stage's own optimizer. ``distributed_optimizer`` must
        match the one the DDP wrappers were built for."""
        differ = [f"{k}={getattr(optim_cfg, k)} (actor: {getattr(self.optim_cfg, k)})" for k in DDP_FIXED_OPTIM_FIELDS
                  if getattr(optim_cfg, k) != getattr(self.optim_cfg, k)]
        if differ:
            raise ValueError(f"use_optimizer: the DDP wrappers were built for other settings: {', '.join(differ)}")
        self.sync_params()
        self._zero_grads()
        self.optim_cfg = optim_cfg
        self.optimizer = get_megatron_optimizer(self._optimizer_config(), self.model)
        self.scheduler = self._scheduler()
        self.guard = StepGuard(optim_cfg)
        self.config.grad_scale_func = self.optimizer.scale_loss

    def build_reference(self, offload: bool = False) -> ReferencePolicy:
        """Freeze a copy of the current weights as the reference policy (local shards, no gather)."""
        self.reference = ReferencePolicy(self, offload=offload)
        return self.reference

    # ------------------------------------------------------------------ helpers
    @property
    def dp_size(self) -> int:
        return parallel_state.get_data_parallel_world_size()

    @property
    def dp_rank(self) -> int:
        return parallel_state.get_data_parallel_rank()

    @property
    def pipeline_stage(self) -> int:
        return parallel_state.get_pipeline_model_parallel_rank()

    @property
    def pipeline_stages(self) -> int:
        return parallel_state.get_pipeline_model_parallel_world_size()

    @property
    def seq_multiple(self) -> int:
        """Sequence length multiple: TP size with sequence parallelism; 16 with FP8 (TE GEMM shape rule)."""
        tp = self.parallel_cfg.tensor_parallel if self.parallel_cfg.sequence_parallel else 1
        return math.lcm(tp, 16 if self.model_cfg.fp8 != "none" else 1)

    @property
    def micro_batches_multiple(self) -> int:
        return self.parallel_cfg.pipeline_parallel if self.parallel_cfg.virtual_pipeline_parallel > 1 else 1

    def _check_responses(self, prompt_ids: list[list[int]], responses: torch.Tensor) -> None:
        if responses.dim() != 2 or len(prompt_ids) != responses.shape[0]:
            raise ValueError(f"need N prompts and responses [N, T]; got {len(prompt_ids)} prompts, {tuple(responses.shape)}")
        longest = max(len(p) for p in prompt_ids) + responses.shape[1]
        if longest > self.model_cfg.max_seq_len:
            raise ValueError(f"prompt + response of {longest} tokens > model.max_seq_len={self.model_cfg.max_seq_len}")

    def _row_micro_batches(self, prompt_ids: list[list[int]], responses: torch.Tensor) -> tuple[list[MicroBatch], list[list[int]], int]:
        """Forward-only / SFT split of independent rows: this DP rank's micro-batches of equal size m
        (short ones padded with copies of their first row, ``num_real`` marks the real ones)."""
        s = step_seq_len(prompt_ids, responses.shape[1], self.seq_multiple)
        m = micro_batch_rows(1, s, self.parallel_cfg.micro_batch_size, self.parallel_cfg.max_tokens_per_micro_batch)
        m = min(m, -(-len(prompt_ids) // self.dp_size))
        chunks = plan_rows(len(prompt_ids), self.dp_size, self.dp_rank, m) or [[]]
        k = -(-len(chunks) // self.micro_batches_multiple) * self.micro_batches_multiple
        chunks += [[]] * (k - len(chunks))
        seqs = []
        for rows in chunks:  # padded layout: m rows each (equal shapes); packed layouts pad tokens instead
            filled = rows + [rows[0] if rows else 0] * ((m if self.layout.mode == "off" else 1) - len(rows))
            seqs.append(([prompt_ids[i] for i in filled], responses[filled]))
        packed = pack_micro_batches(seqs, self.layout, s, equal_shapes=self._pipelined)
        return [MicroBatch(pk, num_real=len(rows)) for pk, rows in zip(packed, chunks)], chunks, s

    @property
    def _pipelined(self) -> bool:
        return self.parallel_cfg.pipeline_parallel > 1

    def _zero_grads(self) -> None:
        for m in self.model:
            m.zero_grad_buffer()
        self.optimizer.zero_grad()

    def _optimizer_step(self, loss: float) -> dict[str, float]:
        """Step unless the loss or the global grad norm is non-finite (actor/nonfinite.py)."""
        t0 = time.perf_counter()
        found_inf = self.optimizer.prepare_grads()  # fp16 grad scaler only; step() prepares again (idempotent)
        grad_norm = float("nan") if found_inf else float(self.optimizer.get_grad_norm())
        skipped = self.guard.should_skip(self.step_count, loss, grad_norm)
        if not skipped:
            ok, _, _ = self.optimizer.step()
            if not ok:
                raise RuntimeError("optimizer step was skipped (non-finite gradients)")
            self.scheduler.step(increment=1)
            self.step_count += 1
            # overlapped param all-gather: other ranks' shards arrive in the next forward's pre-hooks
            self._params_stale = self.optim_cfg.overlap_param_gather
        return {
            "grad_norm": grad_norm,
            "lr": float(self.optimizer.param_groups[0]["lr"]),
            "optimizer_seconds": time.perf_counter() - t0,
            **self.guard.metrics(skipped),
        }

    def sync_params(self) -> None:
        """Finish the parameter all-gather a step left pending (overlap_param_gather); call before reading
        full parameters outside a forward (state dict export, checkpoints). Collective; no-op otherwise."""
        if self._params_stale:
            for m in self.model:
                m.start_param_sync(force_sync=True)
            self._params_stale = False

    def _reduce_metrics(self, stores: list[dict[str, Any]]) -> dict[str, float]:
        """Sum per-micro-batch metric dicts, all-reduce over DP (last stage), broadcast to all PP stages."""
        sums: dict[str, float] = {}
        if parallel_state.is_pipeline_last_stage(ignore_virtual=True):
            keys = sorted(k for k in stores[0] if k != "logprobs")
            vec = torch.tensor([sum(float(s[k]) for s in stores) for k in keys], dtype=torch.float64, device=_comm_device())
            dist.all_reduce(vec, group=parallel_state.get_data_parallel_group(with_context_parallel=True))
            sums = dict(zip(keys, vec.cpu().tolist()))
        box = [sums]
        if self.parallel_cfg.pipeline_parallel > 1:
            dist.broadcast_object_list(
                box, src=parallel_state.get_pipeline_model_parallel_last_rank(), group=parallel_state.get_pipeline_model_parallel_group()
            )
        return box[0]

    # ------------------------------------------------------------------ public API
    def logprobs(self, prompt_ids: list[list[int]], responses: torch.Tensor) -> torch.Tensor:
        """[N, T] constrained token log-probs of ``responses`` given ``prompt_ids`` (forward only), on all ranks."""
        return self.forward_logprobs(self.model, prompt_ids, responses)

    def forward_logprobs(self, model: list[torch.nn.Module], prompt_ids: list[list[int]], responses: torch.Tensor) -> torch.Tensor:
        """``logprobs`` of any model chunks in this actor's layout (the actor's, or the frozen reference's)."""
        self._check_responses(prompt_ids, responses)
        n, t = responses.shape
        mbs, chunks, _ = self._row_micro_batches(prompt_ids, responses)
        for m in model:
            m.eval()
        with torch.no_grad():
            stores = run_micro_batches(model, mbs, kind="logprobs", trie=self.trie, vocab_size=self.vocab_size, forward_only=True)
        out = torch.zeros(n, t, dtype=torch.float32)
        if parallel_state.is_pipeline_last_stage(ignore_virtual=True):
            for rows, store in zip(chunks, stores):
                if rows:
                    out[rows] = store["logprobs"][: len(rows)].float()
        out = out.to(_comm_device())
        dist.all_reduce(out, group=parallel_state.get_data_parallel_group(with_context_parallel=True))
        if self.parallel_cfg.pipeline_parallel > 1:
            dist.all_reduce(out, group=parallel_state.get_pipeline_model_parallel_group())
        return out.cpu()

    def forward_backward_sft(self, prompt_ids: list[list[int]], responses: torch.Tensor) -> dict[str, float]:
        """Gradients of the SFT loss (no optimizer step); returns summed loss/denom."""
        self._check_responses(prompt_ids, responses)
        mbs, _, _ = self._row_micro_batches(prompt_ids, responses)
        for m in self.model:
            m.train()
        self._zero_grads()
        stores = run_micro_batches(self.model, mbs, kind="sft", trie=self.trie, vocab_size=self.vocab_size, forward_only=False)
        return self._reduce_metrics(stores)

    def sft_step(self, prompt_ids: list[list[int]], responses: torch.Tensor) -> dict[str, float]:
        """One optimizer step of next-item cross-entropy on the response tokens. Returns metrics on all ranks."""
        with UpdateTimer() as timer:
            sums = self.forward_backward_sft(prompt_ids, responses)
            loss = sums["loss_sum"] / max(sums["denom"], 1.0)
            metrics = self._optimizer_step(loss)
        metrics["loss"] = loss
        metrics["response_tokens"] = sums["denom"]
        metrics.update(self._instrument(timer, sums, prompt_ids, responses.shape[1]))
        return metrics

    def forward_backward_policy(self, batch: UpdateBatch) -> tuple[dict[str, float], int]:
        """Gradients of ``batch``'s policy loss (no optimizer step): (summed metrics, rows computed here)."""
        batch.validate()
        self._check_responses(batch.prompt_ids, batch.responses)
        plan = plan_update(
            batch,
            self.dp_size,
            self.dp_rank,
            micro_batch_size=self.parallel_cfg.micro_batch_size,
            max_tokens_per_micro_batch=self.parallel_cfg.max_tokens_per_micro_batch,
            seq_multiple=self.seq_multiple,
            num_micro_batches_multiple=self.micro_batches_multiple,
            equal_rows=self._pipelined and self.layout.mode == "off",
        )
        packed = pack_micro_batches(
            [(mb.prompt_ids, mb.responses) for mb in plan.micro_batches], self.layout, plan.seq_len, equal_shapes=self._pipelined
        )
        mbs = [MicroBatch(pk, policy_batch=mb) for pk, mb in zip(packed, plan.micro_batches)]
        for m in self.model:
            m.train()
        self._zero_grads()
        stores = run_micro_batches(self.model, mbs, kind="policy", trie=self.trie, vocab_size=self.vocab_size, forward_only=False)
        sums = self._reduce_metrics(stores)
        if sums["denom"] <= 0:
            raise RuntimeError(f"policy loss '{batch.loss_name}' has sum(denom)=0 over the step: nothing to train on")
        sums["micro_batches"] = float(len(mbs))
        sums["micro_batch_rows"] = float(plan.rows)
        return sums, sum(mb.rows.tokens.shape[0] for mb in mbs)

    def update(self, batch: UpdateBatch) -> dict[str, float]:
        """Forward + backward + optimizer step on an UpdateBatch of any size; metrics on all ranks.

        ``loss = sum(loss_sum) / sum(denom)`` over the step; ``*_sum`` metrics of the loss are also
        reported as ``*_mean`` (divided by ``sum(denom)``).
        """
        with UpdateTimer() as timer:
            sums, _ = self.forward_backward_policy(batch)
            metrics = self._optimizer_step(sums["loss_sum"] / sums["denom"])
        denom = sums["denom"]
        metrics["loss"] = sums["loss_sum"] / denom
        for key, value in sums.items():
            metrics[key] = value
            if key.endswith("_sum") and key != "loss_sum":
                metrics[key[:-4] + "_mean"] = value / denom
        real = (batch.roles != Role.PAD).tolist()
        metrics.update(self._instrument(timer, sums, [p for p, r in zip(batch.prompt_ids, real) if r], batch.response_len))
        return metrics

    def _instrument(self, timer: UpdateTimer, sums: dict[str, float], prompt_ids: list[list[int]], t: int) -> dict[str, float]:
        """Time/memory/MFU of the real sequences (``prompt_ids`` of the non-PAD rows) + the padding fraction."""
        out = update_metrics(
            timer, self.model_cfg, seq_lens=sequence_lengths(prompt_ids, t), vocab_size=self.vocab_size,
            world_size=dist.get_world_size(),
        )
        out["padding_fraction"] = 1.0 - sums["real_slots"] / max(sums["token_slots"], 1.0)
        return out

    def full_state_dict(self) -> dict[str, torch.Tensor] | None:
        """Full TP/PP-gathered Megatron state dict (fp32, CPU) on global rank 0, None elsewhere. Collective.
        For tests, tools and small models: it holds the whole model on rank 0 (weight sync streams instead,
        see ``export_buckets``)."""
        self.sync_params()
        return gather_full(self.chunks, self.model_cfg.tie_embeddings)

    def full_grads(self) -> dict[str, torch.Tensor] | None:
        """Full gathered gradients (``main_grad`` after finalize) on rank 0, for tests and debugging. Collective."""
        if self.optim_cfg.distributed_optimizer and self.dp_size > 1:
            raise ValueError("full_grads: with the distributed optimizer main_grad is reduce-scattered over DP (each rank holds a shard)")
        return gather_full(self.chunks, self.model_cfg.tie_embeddings, value_of=lambda p: p.main_grad)

    def export_buckets(self, bucket_bytes: int, dtype: torch.dtype | None) -> Iterator[Bucket]:
        """Streamed HF-layout weights of this rank's pipeline stage (actor/weight_export.py). Every rank calls it
        (a parameter all-gather left pending by the step is finished first); the export itself is collective
        within the TP group of DP replica 0; buckets appear on each stage's source rank only."""
        self.sync_params()
        return export_buckets(self.chunks, self.model_cfg, self.vocab_size, bucket_bytes=bucket_bytes, dtype=dtype)

    def offload_optimizer(self) -> int:
        """Optimizer state to CPU memory (colocated rollout); returns the bytes moved (0 without CUDA)."""
        return move_optimizer_state(self.optimizer, [p for c in self.chunks for p in c.parameters()], "cpu")

    def restore_optimizer(self) -> int:
        """Optimizer state back to the GPU before the update; returns the bytes moved (0 without CUDA)."""
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"
        return move_optimizer_state(self.optimizer, [p for c in self.chunks for p in c.parameters()], device)

    def load_full_state_dict(self, full: dict[str, torch.Tensor]) -> None:
        """Load weights from a full Megatron state dict (every rank passes the same dict); refreshes the
        optimizer's fp32 main params."""
        load_full(self.chunks, self.model_cfg.tie_embeddings, full)
        self.optimizer.reload_model_params()

    def load_shards(self, shard_of) -> int:
        """Load every local parameter from ``shard_of(global_name, tp_rank, tp_size)`` (actor/import_weights.py,
        e.g. a streamed Hugging Face checkpoint); refreshes the optimizer's fp32 main params. Returns the count."""
        count = load_shards(self.chunks, shard_of)
        self.optimizer.reload_model_params()
        return count

    def logits_fn(self, tokens: torch.Tensor) -> torch.Tensor:
        """[b, s] token ids -> [b, s, V] fp32 logits (real vocabulary), no grad. World size 1 only
        (for an in-process rollout engine sharing this process)."""
        if dist.get_world_size() != 1:
            raise RuntimeError(f"logits_fn needs world size 1 (got {dist.get_world_size()}); use the SGLang engine")
        self.sync_params()
        chunk = self.chunks[0]
        device = next(chunk.parameters()).device
        b, s = tokens.shape
        chunk.eval()
        with torch.no_grad():
            pos = torch.arange(s, device=device).expand(b, s)
            logits = chunk(tokens.to(device), pos, causal_mask(s, device))
        return logits[..., : self.vocab_size].float()

    def save(self, directory: str | Path, trainer_state: dict[str, Any], *, info: dict[str, Any] | None = None,
             update_latest: bool = True) -> Path:
        """Atomic dist checkpoint (model, optimizer, scheduler, RNG, trainer state) at ``directory``, sealed by a
        manifest (sha256 of every file + ``info``); ``update_latest`` also points ``<parent>/latest`` at it."""
        self.sync_params()
        return checkpointing.save(self, Path(directory), trainer_state, info=info, update_latest=update_latest)

    def load_reference(self, directory: str | Path) -> Path:
        """Load the reference weights saved in a checkpoint (``build_reference`` first); returns its path."""
        if self.reference is None:
            raise RuntimeError("load_reference: call build_reference() first")
        return checkpointing.load_reference(self, Path(directory))

    def saved_trainer_state(self, directory: str | Path) -> dict[str, Any]:
        """The trainer state a checkpoint holds, read without loading anything."""
        return checkpointing.saved_trainer_state(Path(directory))

    def load(self, directory: str | Path, *, load_optimizer: bool = True, verify: bool = True) -> dict[str, Any]:
        """Load a checkpoint (``directory`` itself, or the one its ``latest`` file names), verified against its
        manifest first (``CheckpointError`` naming the file) unless ``verify=False``; returns trainer_state."""
        return checkpointing.load(self, Path(directory), load_optimizer=load_optimizer, verify_files=verify)

    def verify_checkpoint(self, directory: str | Path) -> list[str]:
        """Collective: problems of checkpoint ``directory`` against its manifest ([] = intact)."""
        return checkpointing.verify(Path(directory))


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")


def _one_or_list(funcs: list):
    """Megatron's config hooks take one callable per model chunk, or the callable itself for one chunk."""
    return funcs if len(funcs) > 1 else funcs[0]
