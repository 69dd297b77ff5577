"""The production rollout engine: real SGLang servers, trie-constrained sampling, beam search, weight sync.

Sampling: one ``/generate`` call per chunk of prompts (each repeated G times), ``max_new_tokens = T``, the trie
``CustomLogitProcessor`` and ``return_logprob``. Launched servers run with
``SGLANG_RETURN_ORIGINAL_LOGPROB=1``: the returned log-prob of y_t is ``log_softmax(z masked by the trie)[y_t]``
at temperature 1, i.e. ``log pi_c(y_t | x, y_<t)`` of the contract, whatever the sampling temperature.

Beam search (``beam.constrained_beam_search``): per level, one query per live (prompt, beam) =
``prompt + beam prefix`` with ``max_new_tokens = 1``, greedy, ``top_logprobs_num = K`` under the trie processor
(told the prefix length by the processor string of level t), so SGLang returns the K best allowed tokens with
their constrained (renormalized) log-probs: no allowed-id lists are sent. One HTTP request per prompt chunk
and level; a chunk stays on one server across levels (its prompt KV is in that server's radix cache).

Requests carry the catalog and prefix length inside the processor string (``trie_processor_string(path, t)``)
and ``custom_params = {}``, so they survive sglang-router (``use_router``), which drops ``custom_params``; its
workers need the ``custom_params`` shim (``rollout/server_path``, on every launched server's PYTHONPATH).

Versions: servers are launched with ``--weight-version v`` (attached servers are loaded from ``model_dir`` and
labelled ``v`` with ``/update_weights_from_disk`` at construction) and every update passes ``weight_version``;
each returned sample reports the version it came from and a mismatch raises (no stale sample is ever
labelled as the current policy).
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from itertools import chain
from operator import add, itemgetter, methodcaller
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from recast_mcore.config.rollout import RolloutConfig, SamplingConfig, SGLangServerConfig, WeightSyncConfig
from recast_mcore.rollout.base import EngineResources, register_engine
from recast_mcore.rollout.beam import constrained_beam_search
from recast_mcore.rollout.catalog import ItemCatalog, check_prompts
from recast_mcore.rollout.client import SGLangClient
from recast_mcore.rollout.cpu_bridge import SERVER_PATH, needs_cpu_bridges
from recast_mcore.rollout.pool import ServerPool
from recast_mcore.rollout.trie_processor import trie_processor_string
from recast_mcore.rollout.types import BeamResults, RolloutGroups
from recast_mcore.rollout.placement import ServerSlot
from recast_mcore.rollout.sync_coordinator import SyncCoordinator, retry_plan
from recast_mcore.rollout.weight_sync import (
    SyncTarget, check_matches_template, dict_buckets, is_retryable, open_sender,
)


class StaleWeightsError(RuntimeError):
    """A server answered with a weight version other than the engine's current one."""


class RouterUnsupportedError(RuntimeError):
    """sglang-router does not deliver what the trie-constrained requests need (see ``_check_router_applies_the_trie``)."""


class SGLangRolloutEngine:
    """Rollouts from a pool of SGLang servers (see module docstring)."""

    def __init__(self, server_cfg: SGLangServerConfig, sync_cfg: WeightSyncConfig, catalog: ItemCatalog,
                 model_dir: str, *, work_dir: str = "", initial_version: int = 0, api_key: str | None = None,
                 slots: list[ServerSlot] | None = None, remote_urls: list[str] = (), memory_saver: bool = False):
        """``api_key``: None = the key named by ``server_cfg.api_key_env``, else a fresh random one for launched
        servers (attached servers without ``api_key_env`` get no key). ``slots``/``remote_urls``: GPU placement
        of the servers this process launches and the URLs of servers other nodes launched (trainer/weights.py)."""
        if not (Path(model_dir) / "config.json").is_file():
            raise FileNotFoundError(f"model_dir {model_dir!r} is not an exported HF directory (no config.json)")
        self.server_cfg, self.sync_cfg, self.catalog = server_cfg, sync_cfg, catalog
        self._own_work_dir = not work_dir
        self.work_dir = Path(work_dir or tempfile.mkdtemp(prefix="recast-rollout-"))
        self.initial_model_dir = str(model_dir)
        self.model_path = str(model_dir)  # what a (re)started server loads: the newest disk snapshot
        self.policy_version = initial_version
        self._model_path_version = initial_version  # the version of the weights in model_path
        self._last_pushed: dict[str, torch.Tensor] | None = None  # the caller's dict of update_weights (not a copy)
        self.memory_released = False  # colocated: release_memory() was called and not yet fully resumed
        self._recovering = False  # recover_servers() is restarting servers (a sync retry follows)
        self.resync: Callable[[], None] | None = None
        """Set by the trainer: re-sync the current weights from the actor (collective) after a server restart."""
        self.trie_path = str(catalog.save(self.work_dir / "trie"))
        self._processors: dict[int, str] = {}  # prefix_len -> this catalog's processor string
        self._api_key = resolve_api_key(server_cfg) if api_key is None else api_key
        self.pool = ServerPool(server_cfg, self.model_path, initial_version,
                               current_weights=lambda: (self.model_path, self._model_path_version),
                               after_restart=self._after_restart, api_key=self._api_key, slots=slots,
                               remote_urls=list(remote_urls), memory_saver=memory_saver)
        if server_cfg.mode == "attach":
            # Servers started by the user: make them serve exactly model_dir, labelled initial_version
            # (shared filesystem, as for disk sync).
            self.pool.broadcast(lambda c: c.update_weights_from_disk(self.model_path, initial_version))
        self.syncs = SyncCoordinator(self.pool, server_cfg, sync_cfg, api_key=self._api_key,
                                     initial_model_dir=self.initial_model_dir, work_dir=self.work_dir,
                                     group_backend="gloo" if needs_cpu_bridges() else "nccl")
        if server_cfg.use_router:
            self._check_router_applies_the_trie()

    def _processor(self, prefix_len: int) -> str:
        """The trie processor string of this catalog for rows whose last ``prefix_len`` inputs belong to the item."""
        if prefix_len not in self._processors:
            self._processors[prefix_len] = trie_processor_string(self.trie_path, prefix_len)
        return self._processors[prefix_len]

    def _check_router_applies_the_trie(self) -> None:
        """One constrained 1-token request through the router: its top-(n+1) log-probs at the root must hold the
        n root tokens and nothing else. sglang-router 0.3.2 re-serializes requests without
        ``sampling_params.custom_params`` (measured), so a worker without the shim never hands the processor the
        request (the processor then allows EOS only): refuse the router, saying how to start the workers."""
        roots = self.catalog.tables["edge_token"][: int(self.catalog.tables["node_start"][1])].tolist()
        body = {"input_ids": [[self.catalog.eos_id]], "custom_logit_processor": self._processor(0),
                "sampling_params": {"temperature": 0.0, "max_new_tokens": 1, "custom_params": {}},
                "return_logprob": True, "top_logprobs_num": min(len(roots) + 1, self.catalog.vocab_size)}
        top = self.pool.map([body], lambda client, b: client.generate(b))[0][0]["meta_info"]["output_top_logprobs"][0]
        finite = {int(t) for lp, t, _ in top if lp is not None and lp > -1e30}
        if finite != set(roots):
            self.close()
            raise RouterUnsupportedError(
                "sglang.use_router: the trie constraint is not applied through sglang-router: it forwards /generate "
                "without sampling_params.custom_params, and a worker hands the processor the request only with the "
                f"recast_mcore custom_params shim loaded. Start every attached server with PYTHONPATH={SERVER_PATH} "
                "(on CPU: recast_mcore/rollout/cpu_server_path first, then that directory), or use the built-in pool "
                "(use_router: false). See docs/rollout.md (Servers).")

    # ---- sampling -------------------------------------------------------------------------------
    def generate(self, prompt_ids: list[list[int]], targets: list[list[int]], sampling: SamplingConfig) -> RolloutGroups:
        check_prompts(prompt_ids, self.catalog.vocab_size)
        if len(targets) != len(prompt_ids):
            raise ValueError(f"{len(targets)} target lists for {len(prompt_ids)} prompts")
        g, t_len = sampling.group_size, self.catalog.response_len
        chunks = _chunks(list(range(len(prompt_ids))), self.server_cfg.prompts_per_request)
        bodies = [self._sample_body([prompt_ids[i] for i in c], sampling) for c in chunks]
        outs = self.pool.map(bodies, lambda client, body: client.generate(body))
        tokens, logprobs = [], []
        for chunk, out in zip(chunks, outs):
            if len(out) != len(chunk) * g:
                raise RuntimeError(f"SGLang returned {len(out)} samples for {len(chunk)} prompts x n={g}")
            for sample in out:
                ids, lps = self._parse_sample(sample, t_len)
                tokens.append(ids)
                logprobs.append(lps)
        b = len(prompt_ids)
        responses = torch.tensor(tokens, dtype=torch.long).reshape(b, g, t_len)
        item_ids = self.catalog.item_ids(responses)
        if bool((item_ids < 0).any()):
            bad = responses.reshape(-1, t_len)[(item_ids.reshape(-1) < 0).nonzero()[0, 0]].tolist()
            raise RuntimeError(f"SGLang returned a non-catalog item {bad}: the trie processor was not applied "
                               "(server without --enable-custom-logit-processor, or trie tables not readable there)")
        groups = RolloutGroups(
            prompt_ids=[list(p) for p in prompt_ids], responses=responses,
            token_logprobs=torch.tensor(logprobs, dtype=torch.float32).reshape(b, g, t_len), item_ids=item_ids,
            targets=[list(x) for x in targets], policy_version=self.policy_version, num_sampled=b * g,
        )
        groups.validate()
        return groups

    def _sample_body(self, prompts: list[list[int]], sampling: SamplingConfig) -> dict[str, Any]:
        # Each prompt repeated G times with n=1 (prompt-major order, as with n=G): SGLang's n>1 path runs a
        # sequential prefix warm-up request per prompt, which costs more than it saves here.
        return {
            "input_ids": [list(p) for p in prompts for _ in range(sampling.group_size)],
            "sampling_params": {
                "n": 1, "temperature": sampling.temperature, "top_p": sampling.top_p,
                "top_k": sampling.top_k, "max_new_tokens": self.catalog.response_len,
                "custom_params": {},  # the request object only (what sglang-router drops; server_path's shim)
            },
            "return_logprob": True,
            "custom_logit_processor": self._processor(0),
        }

    def _parse_sample(self, sample: dict[str, Any], t_len: int) -> tuple[list[int], list[float]]:
        meta = sample["meta_info"]
        self._check_version(meta)
        pairs = meta["output_token_logprobs"]
        ids = [int(p[1]) for p in pairs]
        if len(ids) != t_len or ids[-1] != self.catalog.eos_id:
            raise RuntimeError(f"SGLang sample {ids} is not an item of {t_len - 1} tokens + EOS "
                               f"(finish_reason {meta.get('finish_reason')}); an early EOS is how the trie processor "
                               "ends a row whose output ids lag the sampler: start servers with "
                               "SGLANG_ENABLE_DELAY_SAMPLE=1 (or --disable-overlap-schedule)")
        return ids, [float(p[0]) for p in pairs]

    def _check_version(self, meta: dict[str, Any]) -> None:
        got = meta.get("weight_version")
        if got != str(self.policy_version):
            raise StaleWeightsError(f"sample produced by weight version {got!r}, engine serves {self.policy_version}")

    def _check_versions(self, metas: list[dict[str, Any]]) -> None:
        """Every answer must come from the current weight version (one C-level pass)."""
        versions = set(map(methodcaller("get", "weight_version"), metas))
        if versions != {str(self.policy_version)}:
            bad = sorted(str(v) for v in versions - {str(self.policy_version)})
            raise StaleWeightsError(f"beam queries answered by weight version(s) {bad}, engine serves {self.policy_version}")

    # ---- beam search ----------------------------------------------------------------------------
    def beam_search(self, prompt_ids: list[list[int]], beam_width: int) -> BeamResults:
        check_prompts(prompt_ids, self.catalog.vocab_size)
        cat = self.catalog
        responses, token_lp, scores = constrained_beam_search(
            len(prompt_ids), cat.item_len, cat.eos_id, beam_width,
            lambda owner, prefixes, k: self._top_candidates(prompt_ids, owner, prefixes, k), cat.vocab_size)
        item_ids = cat.item_ids(responses)
        if bool((item_ids < 0).any()):
            raise RuntimeError("SGLang beam search produced a non-catalog item: the trie processor was not applied "
                               "(server without --enable-custom-logit-processor, or trie tables not readable there)")
        result = BeamResults(prompt_ids=[list(p) for p in prompt_ids], responses=responses, token_logprobs=token_lp,
                             scores=scores, item_ids=item_ids, policy_version=self.policy_version)
        result.validate()
        return result

    def _top_candidates(self, prompt_ids, owner: torch.Tensor, prefixes: torch.Tensor, k: int):
        """One query per live beam (prompt + beam prefix, 1 new token, top-k log-probs under the trie processor).

        Queries are grouped by prompt chunk (``prompts_per_request`` prompts, one HTTP request per chunk and
        level); a chunk keeps its server across levels (``affinity``), so the prompt's KV is in its radix cache.
        Returns ``[Q, k]`` constrained log-probs (-inf past the allowed count) and tokens.
        """
        size = self.server_cfg.prompts_per_request
        seqs = list(map(add, map(prompt_ids.__getitem__, owner.tolist()), prefixes.tolist()))
        chunk_of = owner // size
        bounds = torch.searchsorted(chunk_of, torch.arange(int(chunk_of[-1]) + 2)).tolist()
        spans = [(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:]) if hi > lo]
        processor = self._processor(prefixes.shape[1])
        bodies = [{
            "input_ids": seqs[lo:hi],
            "sampling_params": {"temperature": 0.0, "max_new_tokens": 1, "custom_params": {}},
            "return_logprob": True, "top_logprobs_num": k, "custom_logit_processor": processor,
        } for lo, hi in spans]
        outs = self.pool.map(bodies, lambda client, body: client.generate(body),
                             affinity=[int(chunk_of[lo]) for lo, _ in spans])
        samples = list(chain.from_iterable(outs))
        if len(samples) != len(seqs):
            raise RuntimeError(f"SGLang answered {len(samples)} of {len(seqs)} beam queries")
        metas = list(map(itemgetter("meta_info"), samples))
        self._check_versions(metas)
        # [Q, k, 3] = (logprob, token, text); JSON null (orjson's -inf) becomes NaN, dropped by the beam search.
        top = np.array(list(map(itemgetter(0), map(itemgetter("output_top_logprobs"), metas))), dtype=np.float64)
        if top.shape[:2] != (len(seqs), k):
            raise RuntimeError(f"SGLang returned top log-probs of shape {top.shape}, expected ({len(seqs)}, {k}, 3)")
        return torch.from_numpy(top[:, :, 0]).float(), torch.from_numpy(np.nan_to_num(top[:, :, 1])).long()

    # ---- weight sync (streamed; rollout/sync_coordinator.py) ---------------------------------------
    @property
    def sync_cfg(self) -> WeightSyncConfig:
        return self._sync_cfg

    @sync_cfg.setter
    def sync_cfg(self, cfg: WeightSyncConfig) -> None:
        self._sync_cfg = cfg
        if getattr(self, "syncs", None) is not None:
            self.syncs.sync_cfg = cfg

    def begin_sync(self, version: int, *, resync: bool = False) -> SyncTarget:
        """Open a sync to ``version`` (must increase; ``resync`` re-sends the current version)."""
        self.check_sync_version(version, resync=resync)
        return self.syncs.begin(version)

    def finish_sync(self, target: SyncTarget, pushed: list[dict[str, str]]) -> None:
        """Commit a sync: every tensor arrived (``pushed``: each stage's ``{name: file}``); serve its version."""
        def serve_from(snapshot: str) -> None:  # a server restarted from here on loads the new snapshot
            self.model_path, self._model_path_version = snapshot, target.version

        try:
            self.syncs.commit(target, pushed, on_snapshot=serve_from)
        except Exception as exc:
            self.fail_sync(target, str(exc))
            raise
        self.policy_version = target.version

    def fail_sync(self, target: SyncTarget, message: str) -> None:
        self.syncs.abort(target, message)

    def update_weights(self, hf_state_dict: dict[str, torch.Tensor] | None, version: int) -> None:
        """Single-process sync of a full HF state dict the caller holds (tests, tools): the same streamed
        path as the trainer's, with this process as the only sender. The trainer uses begin/finish_sync."""
        if hf_state_dict is None:
            raise ValueError("the SGLang engine needs the HF-layout state dict (see checkpoint/hf_mapping.py)")
        check_matches_template(hf_state_dict, self.syncs.shapes)  # a wrong tensor would kill the server
        self._push_dict(hf_state_dict, version, resync=False)
        self._last_pushed = None if self.sync_cfg.method == "disk" else hf_state_dict

    def _push_dict(self, hf_state_dict: dict[str, torch.Tensor], version: int, *, resync: bool) -> None:
        """With the trainer's retries (sync_coordinator.retry_plan; a layout mismatch or a 4xx is never retried)."""
        self.check_sync_version(version, resync=resync)
        plan, error = retry_plan(self.server_cfg.max_retries), None
        for step in plan:
            if error is not None:
                self.recover_servers(restart_all=step == "restart_all")
            try:
                return self._push_dict_once(hf_state_dict, version, resync=resync)
            except Exception as exc:  # noqa: BLE001  (retried, then raised below)
                if not is_retryable(exc):
                    raise
                error = exc
        raise RuntimeError(f"weight sync to version {version} failed after {len(plan)} attempts: {error}") from error

    def _push_dict_once(self, hf_state_dict: dict[str, torch.Tensor], version: int, *, resync: bool) -> None:
        target = self.begin_sync(version, resync=resync)
        try:
            sender = open_sender(target, stage=0)
            for i, bucket in enumerate(dict_buckets(hf_state_dict, target.bucket_bytes, target.torch_dtype)):
                sender.push(i, bucket)
            pushed = [sender.close()]
        except Exception as exc:
            self.fail_sync(target, str(exc))
            raise
        self.finish_sync(target, pushed)

    def _after_restart(self, client: SGLangClient) -> None:
        """A restarted server loaded ``self.model_path`` (the newest disk snapshot), labelled with the version
        of those weights. After a tensor/distributed sync that is an older policy: re-sync every server (the
        trainer's ``resync``, or the dict last passed to ``update_weights``); with neither, its samples carry
        the old version and are rejected as stale."""
        self.syncs.group_epoch += 1  # its side of every weight-update group died with it
        if self._model_path_version >= self.policy_version or self._recovering:
            return  # it loaded the current (or the committing disk sync's) weights; or a sync retry follows
        if self.resync is not None:
            self.resync()
        elif self._last_pushed is not None:
            self._push_dict(self._last_pushed, self.policy_version, resync=True)

    def check_sync_version(self, version: int, *, resync: bool) -> None:
        """Raise a ValueError unless ``version`` may be synced now (increasing; a resync re-sends the current one)."""
        if resync and version != self.policy_version:
            raise ValueError(f"a resync re-sends the current version {self.policy_version}, got {version}")
        if not resync and version <= self.policy_version:
            raise ValueError(f"weight version must increase: {version} <= current {self.policy_version}")

    def recover_servers(self, *, restart_all: bool) -> int:
        """After a failed sync, before the next attempt (trainer/weights.sync_weights): restart launched servers
        that died or stopped answering (``restart_all``: every launched server, as the pool does after a weight
        update failed ``max_retries + 1`` times on a healthy one); attached ones that stopped answering leave
        rotation (raises if none is left). No resync here: the next attempt sends the weights. Returns restarts."""
        before = self.pool.restarts
        self._recovering = True
        try:
            for ep in list(self.pool.live):
                if restart_all and self.pool.servers[ep] is not None:
                    self.pool.restart(ep, "kept failing weight syncs")
                else:
                    self.pool.recover(ep)
        finally:
            self._recovering = False
        return self.pool.restarts - before

    def release_memory(self) -> None:
        """Colocated servers: free their GPU memory (weights, KV cache, CUDA graphs) while the actor works."""
        self.pool.broadcast(lambda c: c.post("/release_memory_occupation", {}))
        self.memory_released = True

    def resume_memory(self, tags: list[str] | None = None) -> None:
        """Re-allocate what ``release_memory`` freed (``tags``: ["weights"] before a sync, then
        ["kv_cache", "cuda_graph"]; None = everything)."""
        self.pool.broadcast(lambda c: c.post("/resume_memory_occupation", {"tags": tags}))
        if tags is None or "kv_cache" in tags:
            self.memory_released = False

    def close(self) -> None:
        self.pool.close()
        if self._own_work_dir:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> "SGLangRolloutEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


@register_engine("sglang")
def build_sglang_engine(cfg: RolloutConfig, resources: EngineResources) -> SGLangRolloutEngine:
    if not resources.model_dir:
        raise ValueError("the 'sglang' rollout engine needs resources.model_dir (an exported HF directory)")
    return SGLangRolloutEngine(cfg.sglang, cfg.weight_sync, resources.catalog, resources.model_dir,
                               work_dir=cfg.work_dir, initial_version=resources.initial_version,
                               api_key=resources.api_key, slots=resources.server_slots,
                               remote_urls=resources.remote_urls, memory_saver=resources.memory_saver)


def resolve_api_key(cfg: SGLangServerConfig) -> str:
    """The servers' API key: from ``cfg.api_key_env`` when set (an unset or empty variable is an error), else a
    fresh random key for launched servers and none for attached ones."""
    if cfg.api_key_env:
        import os

        key = os.environ.get(cfg.api_key_env, "")
        if not key:
            raise ValueError(f"sglang.api_key_env names ${cfg.api_key_env}, which is unset or empty")
        return key
    return secrets.token_urlsafe(32) if cfg.mode == "launch" else ""
