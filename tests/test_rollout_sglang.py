"""Against a real SGLang server on this machine: the session's ONE launched server (plus one restart).

Reference = the tiny HF Llama the server loaded (or the weights last pushed to it) + the trie mask:
``log pi_c(y_t | x, y_<t)`` of docs/contracts.md, computed in fp32 with transformers.
"""

from __future__ import annotations

import sys
import time

import pytest
import torch

from recast_mcore.config.rollout import RolloutConfig, SamplingConfig, SGLangServerConfig, WeightSyncConfig
from recast_mcore.rollout.client import RequestRejected
from recast_mcore.rollout.modes import roll_out
from recast_mcore.rollout.sglang_engine import SGLangRolloutEngine
from recast_mcore.rollout.testing import (
    actor_model_cfg, constrained_logprobs, exhaustive_scores, hf_logits_fn, perturbed_state_dict, random_catalog,
)
from recast_mcore.rollout.torch_engine import TorchRolloutEngine

pytestmark = pytest.mark.sglang
TOL = 1e-4


@pytest.fixture(scope="module")
def setup(sglang_setup):
    """The session's launched server (tests/conftest.py), shared with tests/test_weight_sync_sglang.py."""
    return sglang_setup


def _check_groups_against_reference(state, groups, g):
    catalog, prompts = state["catalog"], state["prompts"]
    assert bool((groups.item_ids >= 0).all()), "every sampled item must be a catalog item"
    flat = groups.responses.reshape(-1, catalog.response_len)
    ref = constrained_logprobs(state["model"], catalog, [p for p in prompts for _ in range(g)], flat)
    err = (groups.token_logprobs.reshape(-1, catalog.response_len) - ref).abs().max().item()
    assert err < TOL, f"SGLang vs reference constrained log-probs differ by {err}"
    return err


def test_sampled_items_are_valid_with_reference_logprobs(setup):
    engine, prompts = setup["engine"], setup["prompts"]
    for sampling in (SamplingConfig(group_size=6), SamplingConfig(group_size=4, temperature=0.7, top_k=3, top_p=0.9)):
        groups = engine.generate(prompts, [[0]] * len(prompts), sampling)
        assert groups.responses.shape == (len(prompts), sampling.group_size, 4)
        assert groups.policy_version == 0 and groups.num_sampled == len(prompts) * sampling.group_size
        _check_groups_against_reference(setup, groups, sampling.group_size)
    assert len(torch.unique(groups.item_ids)) > 3  # it samples, not argmax


def test_server_runs_the_overlap_scheduler(setup):
    """Every test of this module runs with SGLang's overlap scheduler ON (delayed sampling keeps the trie
    processor's prefix exact; see docs/rollout.md)."""
    info = setup["engine"].pool.clients[0].session.get(setup["engine"].pool.clients[0].url + "/get_server_info").json()
    assert info["disable_overlap_schedule"] is False


def test_beam_search_equals_exhaustive_enumeration(setup):
    engine, catalog, model, prompts = setup["engine"], setup["catalog"], setup["model"], setup["prompts"][:2]
    before = engine.pool.traffic()
    full = engine.beam_search(prompts, beam_width=catalog.num_items)
    # O(levels) requests: one per prompt chunk (prompts_per_request = 16 > 2 prompts) and item level
    assert engine.pool.traffic()["requests"] - before["requests"] == catalog.item_len
    assert bool((full.item_ids >= 0).all())
    for b, prompt in enumerate(prompts):
        exact = exhaustive_scores(model, catalog, prompt).topk(catalog.num_items)
        assert torch.equal(full.item_ids[b], exact.indices)
        assert (full.scores[b] - exact.values).abs().max().item() < TOL
    narrow = engine.beam_search(prompts, beam_width=5)
    local = TorchRolloutEngine(catalog, hf_logits_fn(model)).beam_search(prompts, beam_width=5)
    assert torch.equal(narrow.item_ids, local.item_ids)
    assert (narrow.scores - local.scores).abs().max().item() < TOL
    tokens = narrow.token_logprobs.reshape(-1, catalog.response_len)
    ref = constrained_logprobs(model, catalog, [p for p in prompts for _ in range(5)], narrow.responses.reshape(-1, 4))
    assert (tokens - ref).abs().max().item() < TOL  # per-token constrained log-probs (the old log-probs of beam mode)


def test_beam_mode_rollouts(setup):
    engine, catalog = setup["engine"], setup["catalog"]
    cfg = RolloutConfig(mode="beam", beam_width=6, sampling=SamplingConfig(group_size=4))
    groups = roll_out(engine, setup["prompts"], [[0]] * 8, cfg)
    assert groups.responses.shape == (8, 4, 4) and groups.num_sampled == 8 * 6
    assert bool((groups.item_ids >= 0).all()) and groups.policy_version == engine.policy_version
    _check_groups_against_reference(setup, groups, 4)


def test_invalid_prompts_give_clear_errors(setup):
    engine = setup["engine"]
    with pytest.raises(ValueError, match="prompt 1 has token ids outside"):
        engine.generate([[1, 4], [1, 10_000]], [[0], [0]], SamplingConfig(group_size=2))
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        engine.beam_search([[]], beam_width=2)
    too_long = [setup["vocab"].encode_prompt(list(range(40)) * 5)]  # 601 tokens > the model's 512 positions
    with pytest.raises(RequestRejected, match="HTTP 400"):
        engine.generate(too_long, [[0]], SamplingConfig(group_size=2))
    assert engine.pool.restarts == 0  # a rejected request is not a server failure


def test_weight_sync_disk_and_tensor_advance_the_version(setup):
    engine, model = setup["engine"], setup["model"]
    for version, method in ((1, "disk"), (2, "tensor")):
        engine.sync_cfg = WeightSyncConfig(method=method)
        new_weights = perturbed_state_dict(model, scale=0.05, seed=version)
        model.load_state_dict(new_weights)
        engine.update_weights(new_weights, version)
        assert engine.policy_version == version
        groups = engine.generate(setup["prompts"], [[0]] * 8, SamplingConfig(group_size=3))
        assert groups.policy_version == version
        _check_groups_against_reference(setup, groups, 3)
    with pytest.raises(ValueError, match="must increase"):
        engine.update_weights(new_weights, 2)


# ---- the Megatron actor as the reference --------------------------------------------------------------
# The worker runs in its own process (Megatron's global state and CPU patches stay out of pytest): it builds
# a MegatronActor shaped exactly like the fixture's HF Llama, takes one SFT step, writes the HF-layout
# weights (checkpoint/hf_mapping.py), waits for the responses SGLang sampled after the sync, and writes
# the actor's constrained log-probs of them.
def _actor_worker(out: str) -> None:
    from pathlib import Path

    from recast_mcore.actor.actor import MegatronActor
    from recast_mcore.actor.parallel import destroy_distributed, initialize_distributed
    from recast_mcore.checkpoint.hf_mapping import mcore_to_hf
    from recast_mcore.config.actor import OptimConfig, ParallelConfig
    from recast_mcore.data.trie import ItemTrie

    out = Path(out)
    vocab = random_catalog(40, [6, 5, 4], seed=3)
    model_cfg = actor_model_cfg()
    parallel_cfg = ParallelConfig()
    initialize_distributed(parallel_cfg)
    trie = ItemTrie(vocab.item_tokens, vocab.vocab_size, vocab.eos_id)
    actor = MegatronActor(model_cfg, parallel_cfg, OptimConfig(lr=1e-2), vocab.vocab_size, trie)
    prompts = [vocab.encode_prompt([i, i + 1]) for i in range(8)]
    responses = torch.tensor([vocab.encode_response(i + 2) for i in range(8)])
    actor.sft_step(prompts, responses)  # the weights SGLang gets are "after an actor update"
    hf = mcore_to_hf(actor.full_state_dict(), model_cfg, vocab.vocab_size)
    torch.save(hf, out / "hf.tmp")
    (out / "hf.tmp").rename(out / "hf.pt")
    deadline = time.monotonic() + 300
    while not (out / "sampled.pt").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("no sampled.pt from the test")
        time.sleep(0.2)
    sampled = torch.load(out / "sampled.pt")
    torch.save(actor.logprobs(sampled["prompts"], sampled["responses"]), out / "actor.tmp")
    (out / "actor.tmp").rename(out / "actor_logprobs.pt")
    destroy_distributed()


def _wait_for(path, proc, timeout_s=300):
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"actor worker exited with {proc.returncode}:\n{proc.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError(f"actor worker produced no {path.name}")
        time.sleep(0.2)


def test_sglang_logprobs_equal_megatron_actor_after_sync(setup, tmp_path):
    import os
    import subprocess

    engine = setup["engine"]
    proc = subprocess.Popen([sys.executable, __file__, "actor-worker", str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        _wait_for(tmp_path / "hf.pt", proc)
        hf = torch.load(tmp_path / "hf.pt")
        version = engine.policy_version + 1
        engine.sync_cfg = WeightSyncConfig(method="disk")
        engine.update_weights(hf, version)
        setup["model"].load_state_dict(hf)  # later tests compare against the weights the server now serves
        groups = engine.generate(setup["prompts"], [[0]] * 8, SamplingConfig(group_size=4))
        assert groups.policy_version == version and bool((groups.item_ids >= 0).all())
        prompts = [p for p in setup["prompts"] for _ in range(4)]
        responses = groups.responses.reshape(-1, 4)
        torch.save({"prompts": prompts, "responses": responses}, tmp_path / "sampled.pt")
        _wait_for(tmp_path / "actor_logprobs.pt", proc)
        assert proc.wait(timeout=120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    actor_lp = torch.load(tmp_path / "actor_logprobs.pt")
    err = (actor_lp - groups.token_logprobs.reshape(-1, 4)).abs().max().item()
    print(f"max |SGLang - Megatron actor| constrained log-prob: {err:.2e}")
    assert err < TOL


def test_killed_server_is_restarted_and_the_batch_completes(setup):
    engine = setup["engine"]
    # Last sync by tensor: the restarted server loads the newest snapshot, then must get these tensors re-pushed.
    engine.sync_cfg = WeightSyncConfig(method="tensor")
    new_weights = perturbed_state_dict(setup["model"], scale=0.05, seed=11)
    setup["model"].load_state_dict(new_weights)
    engine.update_weights(new_weights, engine.policy_version + 1)
    version = engine.policy_version
    restarts = engine.pool.restarts
    engine.pool.servers[0].kill()
    t0 = time.monotonic()
    groups = engine.generate(setup["prompts"], [[0]] * 8, SamplingConfig(group_size=3))
    print(f"restart + batch: {time.monotonic() - t0:.1f} s")
    assert engine.pool.restarts == restarts + 1
    assert groups.num_sampled == 8 * 3 and groups.responses.shape == (8, 3, 4)
    assert groups.policy_version == version  # the restarted server serves the latest weights again
    _check_groups_against_reference(setup, groups, 3)


def test_attach_mode_uses_a_running_server(setup, tmp_path):
    """Attach to the fixture's server (no new start-up): it is loaded from model_dir and labelled with the version."""
    engine = setup["engine"]
    engine.sync_cfg = WeightSyncConfig(method="disk")  # a snapshot of exactly the weights being served
    engine.update_weights(setup["model"].state_dict(), engine.policy_version + 1)
    cfg = SGLangServerConfig(mode="attach", urls=[engine.pool.clients[0].url], request_timeout_s=60)
    version = engine.policy_version
    attached = SGLangRolloutEngine(cfg, WeightSyncConfig(), setup["catalog"], engine.model_path,
                                   work_dir=str(tmp_path), initial_version=version, api_key=engine._api_key)
    try:
        groups = attached.generate(setup["prompts"], [[0]] * 8, SamplingConfig(group_size=2))
        assert groups.policy_version == version
        _check_groups_against_reference(setup, groups, 2)
    finally:
        attached.close()
    assert engine.pool.servers[0].is_running()  # closing an attached engine leaves the server alone


def test_router_serves_constrained_sampling_and_beam_search(setup, tmp_path, monkeypatch):
    """sglang-router 0.3.2 in front of the session's real CPU server (which requires the run's API key and loads
    the custom_params shim, like every launched server): the engine's construction check passes (the router drops
    custom_params; the shim hands the processor the request), sampled items are 100% catalog items with reference
    log-probs, the beam search through the router equals the pool's (items, scores, per-token log-probs) in
    O(levels) requests, and the key is on neither the router's command line nor its environment."""
    from pathlib import Path

    engine, catalog, prompts = setup["engine"], setup["catalog"], setup["prompts"]
    engine.sync_cfg = WeightSyncConfig(method="disk")  # a snapshot of exactly the weights being served
    engine.update_weights(setup["model"].state_dict(), engine.policy_version + 1)
    monkeypatch.setenv("RECAST_TEST_ROUTER_KEY", engine._api_key)
    cfg = SGLangServerConfig(mode="attach", urls=[engine.pool.clients[0].url], request_timeout_s=60, use_router=True,
                             api_key_env="RECAST_TEST_ROUTER_KEY", log_dir=str(tmp_path / "logs"))
    routed = SGLangRolloutEngine(cfg, WeightSyncConfig(), catalog, engine.model_path, work_dir=str(tmp_path / "w"),
                                 initial_version=engine.policy_version)
    try:
        assert routed.pool.router_client is not None
        for name in ("cmdline", "environ"):
            assert engine._api_key.encode() not in Path(f"/proc/{routed.pool.router.proc.pid}/{name}").read_bytes()
        groups = routed.generate(prompts, [[0]] * len(prompts), SamplingConfig(group_size=6))
        assert groups.policy_version == engine.policy_version
        _check_groups_against_reference(setup, groups, 6)  # 100% catalog items, constrained log-probs
        before = routed.pool.traffic()["requests"]
        through = routed.beam_search(prompts[:3], beam_width=5)
        assert routed.pool.traffic()["requests"] - before == catalog.item_len  # one request per chunk and level
        direct = engine.beam_search(prompts[:3], beam_width=5)
        assert torch.equal(through.item_ids, direct.item_ids) and torch.equal(through.responses, direct.responses)
        assert torch.equal(through.scores, direct.scores)
        assert torch.equal(through.token_logprobs, direct.token_logprobs)
    finally:
        routed.close()
    assert engine.pool.servers[0].is_running()  # the router stops, the server keeps serving


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "actor-worker":
    _actor_worker(sys.argv[2])
