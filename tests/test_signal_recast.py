"""`recast` builder: repair of all-zero groups, strongest positive vs hardest negative, options, widths."""

import math

import pytest
import torch

from recast_mcore.config.signal import RecastConfig, RewardConfig, SignalConfig
from recast_mcore.rewards import compute_rewards
from recast_mcore.signal import SignalInputs, build_update_batch, compute_policy_loss
from recast_mcore.signal.batch import Role
from signal_helpers import EOS, ITEM_TOKENS, item_response, make_groups, toy_score_fn


def _build(item_ids, logps, targets, calls=None, score=True, reward="hit", **recast):
    groups = make_groups(item_ids, logps, targets)
    rewards = compute_rewards(groups.item_ids, targets, ITEM_TOKENS, RewardConfig(name=reward))
    inputs = SignalInputs(groups=groups, rewards=rewards, item_tokens=ITEM_TOKENS, eos_id=EOS,
                          score_fn=toy_score_fn(calls) if score else None)
    return build_update_batch(inputs, SignalConfig(builder="recast", recast=RecastConfig(**recast)))


def test_single_hit_group_strongest_positive_vs_hardest_negative():
    batch = _build([[0, 1, 2, 3]], [[-3.0, -2.0, -1.0, -4.0]], [[0]])
    assert batch.loss_name == "pairwise_contrast" and batch.num_sequences == 2
    assert batch.roles.tolist() == [Role.POSITIVE, Role.NEGATIVE]
    assert torch.equal(batch.responses[0], item_response(0))  # the hit
    assert torch.equal(batch.responses[1], item_response(2))  # zero reward, highest log-prob (-1)
    assert batch.pairs.tolist() == [[0, 1]] and batch.advantages.tolist() == [0.0, 0.0]
    # hand-computed loss at the rollout policy: s+ = -3, s- = -1, beta 1, margin 1
    loss_sum, denom, _ = compute_policy_loss(batch.old_logprobs, batch)
    assert loss_sum.item() == pytest.approx(math.log1p(math.exp(1.0 + 2.0)), rel=1e-5)
    assert denom.item() == 1
    assert batch.stats.mean_pair_margin == pytest.approx(-2.0) and batch.stats.mean_margin == pytest.approx(-2.0)


def test_all_zero_group_is_repaired_with_teacher_forced_target():
    calls = []
    batch = _build([[0, 1, 2]], [[-1.0, -0.5, -2.0]], [[7]], calls=calls, anchor_weight=2.0)
    assert batch.roles.tolist() == [Role.ANCHOR, Role.NEGATIVE]
    assert torch.equal(batch.responses[0], item_response(7))
    assert torch.equal(batch.responses[1], item_response(1))  # hardest negative (-0.5)
    assert batch.weights.tolist() == [2.0, 1.0] and batch.pair_weights.tolist() == [2.0]
    assert len(calls) == 1 and calls[0][0] == [[1, 4]]  # scored once, with the group's prompt
    assert batch.old_logprobs[0].sum().item() == pytest.approx(-1.7)  # toy score of item 7
    assert batch.rewards.tolist() == [1.0, 0.0]
    loss_sum, denom, _ = compute_policy_loss(batch.old_logprobs, batch)
    # 2 * softplus(1 - (-1.7 - (-0.5)))
    assert loss_sum.item() == pytest.approx(2.0 * math.log1p(math.exp(1.0 + 1.2)), rel=1e-5)
    assert batch.stats.frac_repaired == 1.0 and batch.stats.frac_all_zero == 1.0


def test_policy_best_anchor_and_first_anchor():
    # toy score: lower item id scores higher -> item 3 beats item 8
    first = _build([[0, 1]], [[-1.0, -2.0]], [[8, 3]], anchor_target="first")
    best = _build([[0, 1]], [[-1.0, -2.0]], [[8, 3]], anchor_target="policy_best")
    assert torch.equal(first.responses[0], item_response(8))
    assert torch.equal(best.responses[0], item_response(3))
    assert best.old_logprobs[0].sum().item() == pytest.approx(-1.3)


def test_repair_needs_score_fn_and_can_be_switched_off():
    with pytest.raises(ValueError, match="score_fn"):
        _build([[0, 1]], [[-1.0, -2.0]], [[5]], score=False)
    off = _build([[0, 1], [5, 1]], [[-1.0, -2.0], [-1.0, -2.0]], [[5], [5]], score=False, repair=False)
    assert off.group_index.tolist() == [1, 1]  # the all-zero group 0 is skipped
    assert off.stats.frac_skipped == 0.5 and off.stats.frac_repaired == 0.0


def test_positive_ties_broken_by_log_prob_and_top_k_negatives():
    batch = _build([[0, 1, 2, 3, 4]], [[-3.0, -1.0, -2.5, -0.5, -4.0]], [[0, 1]], num_negatives=2)
    assert torch.equal(batch.responses[0], item_response(1))  # both hits reward 1; item 1 has higher log-prob
    assert [int(batch.responses[i, 2]) - 9 for i in (1, 2)] == [3, 2]  # negatives by log-prob
    assert batch.pairs.tolist() == [[0, 1], [0, 2]] and batch.num_sequences == 3
    k_more = _build([[0, 1, 2]], [[-3.0, -1.0, -2.5]], [[0]], num_negatives=5)
    assert k_more.num_sequences == 3 and k_more.num_pairs == 2  # only 2 negatives exist


def test_all_positive_group_skip_or_lowest_reward_never_another_target():
    ids, logps, targets = [[0, 1, 1]], [[-1.0, -2.0, -0.5]], [[0, 1]]
    skipped = _build(ids, logps, targets)
    assert skipped.num_sequences == 0 and skipped.stats.frac_all_positive == 1.0
    assert skipped.stats.frac_skipped == 1.0
    # review fix: every member is a target item (reward equal to the positive's): nothing to contrast with
    assert _build(ids, logps, targets, no_negative="lowest_reward").num_sequences == 0
    same_item = _build([[4, 4]], [[-1.0, -2.0]], [[4]], no_negative="lowest_reward")
    assert same_item.num_sequences == 0  # nothing different to contrast with
    # a hit plus a partial-credit non-target (prefix reward 2/3, not a negative): lowest_reward takes it
    partial = _build([[0, 6, 1]], [[-1.0, -0.5, -3.0]], [[0, 1]], reward="prefix_match", no_negative="lowest_reward")
    assert [int(partial.responses[i, 2]) - 9 for i in range(2)] == [0, 6]
    assert partial.roles.tolist() == [Role.POSITIVE, Role.NEGATIVE]


def test_top_k_negatives_are_distinct_items():
    # item 3 sampled twice (same log-prob); k = 2 must give items 3 and 2, not 3 twice
    batch = _build([[0, 3, 3, 2]], [[-3.0, -1.0, -1.0, -2.0]], [[0]], num_negatives=2)
    assert [int(batch.responses[i, 2]) - 9 for i in range(3)] == [0, 3, 2]
    only_dupes = _build([[0, 3, 3]], [[-3.0, -1.0, -1.0]], [[0]], num_negatives=2)
    assert only_dupes.num_pairs == 1  # duplicates count once


def test_prefix_reward_thresholds_and_repair_keys_on_no_full_hit():
    # target 0 = (4, 6, 9); item 6 = (4, 6, 15) shares 2 levels (r = 2/3), item 1 = (5, 7, 10) none (r = 0)
    batch = _build([[6, 1]], [[-0.5, -2.0]], [[0]], reward="prefix_match")
    assert batch.roles.tolist() == [Role.ANCHOR, Role.NEGATIVE]  # no full hit -> repaired
    assert torch.equal(batch.responses[1], item_response(1))  # the partial match is not a negative
    # a partial "positive" (threshold 0.5) does not stop the repair: repair keys on "no full hit"
    low = _build([[6, 1]], [[-0.5, -2.0]], [[0]], reward="prefix_match", positive_threshold=0.5)
    assert low.roles.tolist() == [Role.ANCHOR, Role.NEGATIVE] and torch.equal(low.responses[0], item_response(0))
    no_repair = _build([[6, 1]], [[-0.5, -2.0]], [[0]], reward="prefix_match", positive_threshold=0.5, repair=False)
    assert torch.equal(no_repair.responses[0], item_response(6)) and no_repair.roles[0] == Role.POSITIVE
    # partial credit only (items 6: r = 2/3, 2 = (4, 8, 11): r = 1/3), no member with r <= 0: still repaired,
    # the partner is the lowest-reward member
    partial = _build([[6, 2]], [[-0.5, -2.0]], [[0]], reward="prefix_match")
    assert partial.roles.tolist() == [Role.ANCHOR, Role.NEGATIVE]
    assert torch.equal(partial.responses[0], item_response(0)) and torch.equal(partial.responses[1], item_response(2))
    assert partial.stats.frac_repaired == 1.0


def test_update_width_at_most_one_plus_k_per_group():
    gen = torch.Generator().manual_seed(0)
    for k in (1, 3):
        ids = torch.randint(0, 12, (16, 6), generator=gen).tolist()
        logps = (-torch.rand(16, 6, generator=gen) * 5).tolist()
        targets = [[int(t)] for t in torch.randint(0, 12, (16,), generator=gen)]
        batch = _build(ids, logps, targets, num_negatives=k)
        _, counts = torch.unique_consecutive(batch.group_index, return_counts=True)
        assert int(counts.max()) <= 1 + k and batch.stats.update_width <= 1 + k
        assert batch.num_pairs == batch.num_sequences - counts.numel()
        assert batch.stats.update_width == pytest.approx(batch.num_sequences / 16)
    assert _build(ids, logps, targets).stats.update_width <= 2.0
