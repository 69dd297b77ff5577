"""rollout.mode: sample | beam. Beam rollouts are the top-G constrained beams with their log-probs as old
log-probs; both signal builders, dynamic sampling and the trainer's step work with them (in-process engine)."""

import pytest
import torch

from recast_mcore.config.base import ConfigError, load_config
from recast_mcore.config.rollout import RolloutConfig, SamplingConfig
from recast_mcore.config.signal import RewardConfig, SignalConfig
from recast_mcore.data.dataset import Example
from recast_mcore.data.tokens import ItemVocab
from recast_mcore.rollout.base import EngineResources, build_rollout_engine
from recast_mcore.rollout.catalog import ItemCatalog
from recast_mcore.rollout.modes import beam_groups, roll_out
from recast_mcore.trainer.data_feed import EpochSampler
from recast_mcore.trainer.rollout_step import build_step_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")
G, W = 4, 6


def _setup():
    codes = torch.tensor([[a, b] for a in range(3) for b in range(3)])  # 9 items, item_len 2
    vocab = ItemVocab(codes, [3, 3])
    table = torch.randn(vocab.vocab_size, vocab.vocab_size, generator=torch.Generator().manual_seed(0))

    def logits_fn(ids):  # a fixed bigram "model"
        return table[ids]

    catalog = ItemCatalog.from_vocab(vocab)
    engine = build_rollout_engine(RolloutConfig(engine="torch"), EngineResources(catalog=catalog, logits_fn=logits_fn))
    examples = [Example(user=u, history=[u % 9, (u + 1) % 9], targets=[(u + 2 * (u % 3)) % 9]) for u in range(12)]
    return vocab, catalog, table, engine, examples


def _reference_logprobs(table, catalog, prompt, responses):
    """log pi_c of each response token under the bigram model, teacher-forced (hand-rolled, no engine)."""
    out = torch.zeros(responses.shape, dtype=torch.float32)
    for r, resp in enumerate(responses.tolist()):
        seq = list(prompt)
        for t, tok in enumerate(resp):
            allowed = catalog.allowed_mask([resp[:t]])[0]
            lp = torch.log_softmax(table[seq[-1]].masked_fill(~allowed, float("-inf")), -1)
            out[r, t] = lp[tok]
            seq.append(tok)
    return out


def test_beam_mode_groups_are_the_top_beams_with_their_logprobs():
    vocab, catalog, table, engine, examples = _setup()
    cfg = RolloutConfig(engine="torch", mode="beam", beam_width=W, sampling=SamplingConfig(group_size=G))
    prompts = [vocab.encode_prompt(ex.history) for ex in examples[:3]]
    groups = roll_out(engine, prompts, [ex.targets for ex in examples[:3]], cfg)
    beams = engine.beam_search(prompts, W)
    assert groups.responses.shape == (3, G, 3) and groups.num_sampled == 3 * W  # the budget counts every beam
    assert torch.equal(groups.item_ids, beams.item_ids[:, :G])
    assert all(len(set(row)) == G for row in groups.item_ids.tolist())  # distinct items per group
    for b, prompt in enumerate(prompts):
        ref = _reference_logprobs(table, catalog, prompt, groups.responses[b])
        assert torch.allclose(groups.token_logprobs[b], ref, atol=1e-5)  # old log-probs = constrained log-probs
    again = roll_out(engine, prompts, [ex.targets for ex in examples[:3]], cfg)
    assert torch.equal(again.responses, groups.responses)  # deterministic for fixed weights
    sampled = roll_out(engine, prompts, [ex.targets for ex in examples[:3]], cfg.sampling)  # bare SamplingConfig
    assert sampled.num_sampled == 3 * G


@pytest.mark.parametrize("builder", ["grpo", "recast"])
def test_trainer_step_builders_and_dynamic_sampling_work_in_beam_mode(builder):
    vocab, _, _, engine, examples = _setup()
    cfg = RolloutConfig(engine="torch", mode="beam", beam_width=W, sampling=SamplingConfig(group_size=G))
    signal = SignalConfig(builder=builder)
    signal.dynamic_sampling.enabled = True
    signal.dynamic_sampling.max_extra_rounds = 3
    signal.dynamic_sampling.on_exhausted = "use_partial"
    prompts = EpochSampler(examples, 6, seed=1, name="rl_epoch")
    batch, m = build_step_batch(1, engine, prompts, vocab, cfg, RewardConfig(), signal,
                                lambda p, r: torch.full(r.shape, -0.5))
    rounds = int(m["sampling_rounds"])
    assert m["rollouts"] == rounds * 6 * W  # every round's beams, kept groups or not
    assert batch.stats.rollouts == m["rollouts"]
    assert batch.num_sequences > 0


def test_beam_mode_config_and_short_catalog_errors():
    with pytest.raises(ConfigError, match="beam_width .* must be >= it"):
        load_config(RolloutConfig, None, ["mode=beam", "beam_width=4", "sampling.group_size=8"])
    with pytest.raises(ConfigError, match="'sample', 'beam'"):
        load_config(RolloutConfig, None, ["mode=greedy"])
    vocab, _, _, engine, examples = _setup()
    beams = engine.beam_search([vocab.encode_prompt([1])], 20)  # only 9 items exist
    assert beams.responses.shape[1] == 9
    with pytest.raises(ValueError, match="returned 9 beams per prompt, fewer than sampling.group_size=12"):
        beam_groups(beams, [[0]], 12)
