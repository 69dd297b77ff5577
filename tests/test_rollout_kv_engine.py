"""The KV-cache in-process engine (rollout/kv_engine.py) against the reference constrained log-probs, the
exhaustive ranking and the torch engine (tiny random HF Llama; prompts of different lengths: left padding)."""

import pytest
import torch

from recast_mcore.config.rollout import RolloutConfig, SamplingConfig
from recast_mcore.rollout.base import EngineResources, build_rollout_engine
from recast_mcore.rollout.kv_engine import KVCacheRolloutEngine
from recast_mcore.rollout.testing import (
    constrained_logprobs, exhaustive_scores, hf_logits_fn, make_tiny_llama, perturbed_state_dict,
)
from recast_mcore.rollout.torch_engine import TorchRolloutEngine
from test_rollout_units import catalog, vocab  # noqa: F401  (the same module-scoped fixtures)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, vocab):
    path = tmp_path_factory.mktemp("kv") / "m"
    make_tiny_llama(path, vocab.vocab_size)
    return path


def _prompts(vocab, n=6):
    return [vocab.encode_prompt([i, (3 * i) % 40, (5 * i + 1) % 40, (7 * i) % 40][: 1 + i % 4]) for i in range(n)]


def test_samples_are_valid_items_with_reference_logprobs_and_replay_after_reseed(vocab, catalog, model_dir):
    kv = KVCacheRolloutEngine(catalog, str(model_dir), batch_size=7, seed=1)
    prompts = _prompts(vocab)
    for sampling in (SamplingConfig(group_size=5), SamplingConfig(group_size=3, temperature=0.7, top_k=2, top_p=0.9)):
        kv.generator.manual_seed(1)
        groups = kv.generate(prompts, [[0]] * 6, sampling)
        g = sampling.group_size
        assert groups.responses.shape == (6, g, 4) and bool((groups.item_ids >= 0).all())
        flat = groups.responses.reshape(-1, 4)
        expected = constrained_logprobs(kv.model, catalog, [p for p in prompts for _ in range(g)], flat)
        assert torch.allclose(groups.token_logprobs.reshape(-1, 4), expected, atol=1e-5)
        assert torch.equal(groups.token_logprobs[..., -1], torch.zeros(6, g))  # EOS is forced
        kv.generator.manual_seed(1)  # what the trainer does every step: the same seed replays the same samples
        assert torch.equal(kv.generate(prompts, [[0]] * 6, sampling).responses, groups.responses)


def test_beam_search_equals_exhaustive_enumeration_and_the_torch_engine(vocab, catalog, model_dir):
    kv = KVCacheRolloutEngine(catalog, str(model_dir), batch_size=16)
    prompts = _prompts(vocab, 5)
    full = kv.beam_search(prompts, beam_width=catalog.num_items)
    for b, prompt in enumerate(prompts):
        exact = exhaustive_scores(kv.model, catalog, prompt).topk(catalog.num_items)
        assert torch.equal(full.item_ids[b], exact.indices)
        assert torch.allclose(full.scores[b], exact.values, atol=1e-5)
    narrow = kv.beam_search(prompts, beam_width=4)
    reference = TorchRolloutEngine(catalog, hf_logits_fn(kv.model)).beam_search(prompts, beam_width=4)
    assert torch.equal(narrow.item_ids, reference.item_ids)
    assert torch.allclose(narrow.scores, reference.scores, atol=1e-5)


def test_weight_updates_are_served_and_checked(vocab, catalog, model_dir):
    kv = build_rollout_engine(RolloutConfig(engine="torch_kv", seed=2), EngineResources(catalog=catalog, model_dir=str(model_dir)))
    before = kv.beam_search(_prompts(vocab, 2), 5).scores
    new = perturbed_state_dict(kv.model, scale=0.2)
    kv.update_weights(new, 1)
    assert kv.policy_version == 1
    after = kv.beam_search(_prompts(vocab, 2), 5)
    assert not torch.allclose(before, after.scores) and after.policy_version == 1
    with pytest.raises(ValueError, match="must increase"):
        kv.update_weights(new, 1)
    with pytest.raises(ValueError, match="does not fit"):
        kv.update_weights({"model.embed_tokens.weight": new["model.embed_tokens.weight"]}, 2)
    with pytest.raises(ValueError, match="needs resources.model_dir"):
        build_rollout_engine(RolloutConfig(engine="torch_kv"), EngineResources(catalog=catalog))
