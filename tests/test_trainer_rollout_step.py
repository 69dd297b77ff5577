"""Rank 0's step: prompts -> rollout -> rewards -> UpdateBatch, and the rollout-budget accounting
(real in-process torch engine on a fixed random 'model'; no Megatron)."""

import torch

from recast_mcore.config.rollout import RolloutConfig, SamplingConfig
from recast_mcore.config.signal import RewardConfig, SignalConfig
from recast_mcore.data.dataset import Example
from recast_mcore.data.tokens import ItemVocab
from recast_mcore.rollout.base import EngineResources, build_rollout_engine
from recast_mcore.rollout.catalog import ItemCatalog
from recast_mcore.trainer.data_feed import EpochSampler
from recast_mcore.trainer.rollout_step import build_step_batch, target_hits
from recast_mcore.trainer.weights import reseed_engine

G = 4


def _setup():
    codes = torch.tensor([[a, b] for a in range(3) for b in range(3)])  # 9 items, item_len 2
    vocab = ItemVocab(codes, [3, 3])
    table = torch.randn(vocab.vocab_size, vocab.vocab_size, generator=torch.Generator().manual_seed(0))

    def logits_fn(ids):  # a fixed bigram "model": next-token logits depend on the last token only
        return table[ids]

    engine = build_rollout_engine(RolloutConfig(engine="torch"), EngineResources(catalog=ItemCatalog.from_vocab(vocab),
                                                                                 logits_fn=logits_fn))
    examples = [Example(user=u, history=[u % 9, (u + 1) % 9], targets=[(u + 2) % 9]) for u in range(12)]
    return vocab, engine, EpochSampler(examples, 6, seed=1, name="rl_epoch")


def _score(prompt_ids, responses):
    return torch.full(responses.shape, -0.5)


def test_recast_step_counts_every_candidate():
    vocab, engine, prompts = _setup()
    reseed_engine(engine, 123)
    batch, m = build_step_batch(1, engine, prompts, vocab, SamplingConfig(group_size=G), RewardConfig(),
                                SignalConfig(builder="recast"), _score)
    assert m["rollouts"] == 6 * G and m["sampling_rounds"] == 1
    assert 0 <= m["hit_rate"] <= 1 and m["reward_mean"] == m["hit_rate"]  # hit reward
    assert batch.stats.update_width <= 2
    # reseeding replays the step exactly
    reseed_engine(engine, 123)
    batch2, m2 = build_step_batch(1, engine, prompts, vocab, SamplingConfig(group_size=G), RewardConfig(),
                                  SignalConfig(builder="recast"), _score)
    assert m == m2 and torch.equal(batch.responses, batch2.responses)


def test_dynamic_sampling_extra_rounds_count_in_the_budget():
    vocab, engine, prompts = _setup()
    cfg = SignalConfig(builder="grpo")
    cfg.dynamic_sampling.enabled = True
    cfg.dynamic_sampling.max_extra_rounds = 3
    reseed_engine(engine, 7)
    batch, m = build_step_batch(2, engine, prompts, vocab, SamplingConfig(group_size=G), RewardConfig(), cfg, _score)
    rounds = int(m["sampling_rounds"])
    assert rounds > 1  # ~38% of groups have reward variance here, so one round cannot fill 6 groups
    assert m["rollouts"] == rounds * 6 * G  # every round drew 6 prompts x G candidates, kept or not
    assert batch.stats.rollouts == m["rollouts"] and batch.stats.extra_rollouts == (rounds - 1) * 6 * G
    assert m["all_zero_group_frac"] > 0  # measured over every generated group, dropped ones included


def test_target_hits():
    item_ids = torch.tensor([[1, 2, 3], [4, 4, 0]])
    assert target_hits(item_ids, [[3, 9], [4]]).tolist() == [[False, False, True], [True, True, False]]
