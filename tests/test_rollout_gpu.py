"""GPU only: a real SGLang server on CUDA with its default overlap scheduler; the trie tables live on the GPU.

With ``SGLANG_ENABLE_DELAY_SAMPLE=1`` (what ``LaunchedServer`` sets) every sampled item is a catalog item with
reference log-probs and beam search equals the in-process engine; without it the processor sees output ids one
token behind (the overlap lag) and the engine must fail loudly instead of returning wrong items.
"""

from __future__ import annotations

import pytest
import torch

from recast_mcore.config.rollout import SamplingConfig, SGLangServerConfig, WeightSyncConfig
from recast_mcore.rollout import server as server_mod
from recast_mcore.rollout.catalog import ItemCatalog
from recast_mcore.rollout.sglang_engine import SGLangRolloutEngine
from recast_mcore.rollout.testing import constrained_logprobs, hf_logits_fn, make_tiny_llama, random_catalog
from recast_mcore.rollout.torch_engine import TorchRolloutEngine

pytestmark = [pytest.mark.gpu, pytest.mark.sglang]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu")
    vocab = random_catalog(300, [20, 8, 4], seed=5)  # root has 20 children, some depth-1 nodes > 4
    model = make_tiny_llama(root / "hf", vocab.vocab_size)
    prompts = [vocab.encode_prompt([i, (7 * i) % 300]) for i in range(16)]
    return root, vocab, ItemCatalog.from_vocab(vocab), model, prompts


def _engine(root, catalog, name):
    cfg = SGLangServerConfig(mem_fraction_static=0.2, log_dir=str(root / name), request_timeout_s=300)
    return SGLangRolloutEngine(cfg, WeightSyncConfig(), catalog, str(root / "hf"), work_dir=str(root / f"w-{name}"))


def test_overlap_scheduler_with_delayed_sampling_gives_exact_constrained_rollouts(tiny):
    root, _, catalog, model, prompts = tiny
    with _engine(root, catalog, "delay") as engine:
        url = engine.pool.clients[0].url
        info = engine.pool.clients[0].session.get(url + "/get_server_info").json()
        assert info["disable_overlap_schedule"] is False and info["device"] == "cuda"
        groups = engine.generate(prompts, [[0]] * len(prompts), SamplingConfig(group_size=8))
        assert bool((groups.item_ids >= 0).all())
        flat = groups.responses.reshape(-1, catalog.response_len)
        ref = constrained_logprobs(model, catalog, [p for p in prompts for _ in range(8)], flat)
        assert (groups.token_logprobs.reshape(flat.shape) - ref).abs().max().item() < 2e-3  # bf16/tf32 kernels
        beams = engine.beam_search(prompts[:4], 16)
        local = TorchRolloutEngine(catalog, hf_logits_fn(model)).beam_search(prompts[:4], 16)
        assert (beams.item_ids == local.item_ids).float().mean().item() > 0.9  # near-ties may swap on GPU


def test_overlap_without_delayed_sampling_fails_loudly(tiny, monkeypatch):
    root, _, catalog, _, prompts = tiny
    real_command = server_mod.LaunchedServer.command
    monkeypatch.setattr(server_mod.LaunchedServer, "command",
                        lambda self: ["env", "-u", "SGLANG_ENABLE_DELAY_SAMPLE"] + real_command(self))
    with _engine(root, catalog, "nodelay") as engine:
        with pytest.raises(RuntimeError, match="not an item|non-catalog item"):
            engine.generate(prompts, [[0]] * len(prompts), SamplingConfig(group_size=8))
