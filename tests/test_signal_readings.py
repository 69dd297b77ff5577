"""ReCast readings one switch apart (contrast loss vs advantages in the shared ppo_clip), their gradient
scales on the same batch, GRPO+GT, the KL term in both losses, ``hardest_by: actor``, and ppo_clip == verl."""

import math

import pytest
import torch

from recast_mcore.config.signal import ContrastLossConfig, KlConfig, PpoLossConfig, RecastConfig, RewardConfig, SignalConfig
from recast_mcore.rewards import compute_rewards
from recast_mcore.signal import SignalInputs, build_update_batch, compute_policy_loss
from recast_mcore.signal.batch import Role
from signal_helpers import EOS, ITEM_LEN, ITEM_TOKENS, item_response, make_batch, make_groups, toy_score_fn

T = ITEM_LEN + 1


def _inputs(item_ids, logps, targets, calls=None):
    groups = make_groups(item_ids, logps, targets)
    rewards = compute_rewards(groups.item_ids, targets, ITEM_TOKENS, RewardConfig())
    return SignalInputs(groups=groups, rewards=rewards, item_tokens=ITEM_TOKENS, eos_id=EOS, score_fn=toy_score_fn(calls))


def _signal(builder="recast", **recast):
    return SignalConfig(builder=builder, recast=RecastConfig(**recast))


def test_advantages_reading_hand_computed():
    inputs = _inputs([[0, 1, 2, 3]], [[-3.0, -2.0, -1.0, -4.0]], [[0]])
    batch = build_update_batch(inputs, _signal(update="advantages"))
    assert batch.loss_name == "ppo_clip"
    assert isinstance(batch.loss_params, PpoLossConfig) and batch.roles.tolist() == [Role.POSITIVE, Role.NEGATIVE]
    a = 1.0 / (1.0 + math.exp(-(1.0 - (-3.0 - (-1.0)))))  # c sigmoid(margin - beta (s+ - s-)) = sigmoid(3)
    assert batch.advantages.tolist() == pytest.approx([a, -a], rel=1e-6)
    assert batch.weights.tolist() == [1.0, 1.0] and batch.pairs.tolist() == [[0, 1]]
    # on-policy ppo_clip: loss_sum = sum_i -A_i T = 0 here, gradient -A_i on every token of row i
    lp = batch.old_logprobs.clone().requires_grad_(True)
    loss_sum, denom, _ = compute_policy_loss(lp, batch)
    loss_sum.backward()
    assert denom.item() == 2 * T and loss_sum.item() == pytest.approx(0.0, abs=1e-6)
    assert torch.allclose(lp.grad, torch.tensor([[-a] * T, [a] * T]))


def test_advantages_reading_k_negatives_anchor_weight_constant_and_negative_scale():
    # group 0: all-zero -> anchor (item 7, toy score -1.7) vs two hardest negatives (-0.5, -1.0)
    inputs = _inputs([[1, 2, 3]], [[-0.5, -1.0, -2.0]], [[7]])
    cfg = _signal(update="advantages", num_negatives=2, anchor_weight=2.0)
    cfg.recast.advantages.negative_scale = 0.5
    batch = build_update_batch(inputs, cfg)
    assert batch.roles.tolist() == [Role.ANCHOR, Role.NEGATIVE, Role.NEGATIVE]
    sig = lambda x: 1.0 / (1.0 + math.exp(-x))  # noqa: E731
    a1, a2 = 2.0 * sig(1.0 - (-1.7 + 0.5)), 2.0 * sig(1.0 - (-1.7 + 1.0))
    assert batch.advantages.tolist() == pytest.approx([a1 + a2, -0.5 * a1, -0.5 * a2], rel=1e-5)
    cfg.recast.advantages.magnitude, cfg.recast.advantages.scale = "constant", 0.3
    const = build_update_batch(inputs, cfg)
    assert const.advantages.tolist() == pytest.approx([1.2, -0.3, -0.3], rel=1e-6)


def test_gradient_scales_of_the_arms_on_the_same_batch():
    """docs/signal.md, "Gradient scale of each reading": at lp = old (ratio 1, first mini-batch), per token t of row i,
    GRPO: -A_i / (B G T); ReCast advantages: -A_i / (N T); ReCast contrast: -A_i / D with A_i the same
    contrastive advantage (c = beta) and D = N T (normalize: tokens) or P (normalize: pairs)."""
    gen = torch.Generator().manual_seed(3)
    b, g = 16, 6
    ids = torch.randint(0, 12, (b, g), generator=gen).tolist()
    logps = (-0.2 - 4 * torch.rand(b, g, generator=gen)).tolist()
    targets = [[int(x)] for x in torch.randint(0, 12, (b,), generator=gen)]
    inputs = _inputs(ids, logps, targets)

    def grad(batch):
        lp = batch.old_logprobs.clone().requires_grad_(True)
        loss_sum, denom, _ = compute_policy_loss(lp, batch)
        (loss_sum / denom).backward()
        return lp.grad

    adv = build_update_batch(inputs, _signal(update="advantages", num_negatives=2))
    tokens = build_update_batch(inputs, _signal(num_negatives=2, loss=ContrastLossConfig(normalize="tokens")))
    pairs = build_update_batch(inputs, _signal(num_negatives=2))
    n, p = adv.num_sequences, adv.num_pairs
    assert torch.equal(adv.responses, tokens.responses) and p > b // 2
    expected = -adv.advantages[:, None].expand(n, T) / (n * T)
    assert torch.allclose(grad(adv), expected, atol=1e-7)
    assert torch.allclose(grad(tokens), expected, atol=1e-7)
    assert torch.allclose(grad(pairs), expected * (n * T) / p, atol=1e-6)
    grpo = build_update_batch(inputs, SignalConfig(builder="grpo"))
    assert torch.allclose(grad(grpo), -grpo.advantages[:, None].expand(b * g, T) / (b * g * T), atol=1e-7)


def test_grpo_gt_control_adds_ground_truth_nll_rows():
    calls = []
    inputs = _inputs([[0, 1], [2, 3]], [[-1.0, -2.0], [-1.5, -0.5]], [[0], [9]], calls=calls)
    cfg = SignalConfig(builder="grpo_gt")
    cfg.grpo.gt_nll_coef = 2.0
    batch = build_update_batch(inputs, cfg)
    assert batch.group_index.tolist() == [0, 0, 1, 1, 1]  # the GT row closes its group
    assert batch.roles.tolist() == [Role.SAMPLED] * 4 + [Role.GT_NLL]
    assert torch.equal(batch.responses[4], item_response(9)) and batch.weights.tolist() == [1.0] * 4 + [2.0]
    assert len(calls) == 1 and calls[0][0] == [[1, 5]]  # scored once, with group 1's prompt
    assert batch.stats.frac_repaired == 0.5 and batch.stats.frac_zero_signal == 0.0
    lp = batch.old_logprobs.clone().requires_grad_(True)
    loss_sum, denom, metrics = compute_policy_loss(lp, batch)
    loss_sum.backward()
    # group 0: advantages +-1/sqrt(1/2) cancel; GT row: 2 * (-sum lp) = 2 * 1.9
    assert loss_sum.item() == pytest.approx(2.0 * 1.9, rel=1e-5) and denom.item() == 5 * T
    assert metrics["gt_nll_sum"].item() == pytest.approx(2.0 * 1.9, rel=1e-5)
    assert torch.allclose(lp.grad[4], torch.full((T,), -2.0)) and torch.count_nonzero(lp.grad[2:4]) == 0
    plain = build_update_batch(inputs, SignalConfig(builder="grpo"))
    assert plain.num_sequences == 4 and plain.stats.frac_zero_signal == 0.5


def test_kl_term_in_both_losses_and_zero_at_the_reference():
    old = torch.tensor([[-0.5, -0.5], [-1.0, -1.0]])
    ref = old + torch.tensor([[0.5, -0.25], [0.0, 0.1]])
    k3 = lambda d: math.exp(d) - d - 1  # noqa: E731
    kl_sum = k3(0.5) + k3(-0.25) + k3(0.1)
    contrast = make_batch(old, group_index=[0, 0], roles=[int(Role.POSITIVE), int(Role.NEGATIVE)], pairs=[(0, 1)],
                          loss="pairwise_contrast", params=ContrastLossConfig(normalize="tokens"), ref_logprobs=ref)
    ppo = make_batch(old, group_index=[0, 0], advantages=[0.0, 0.0], ref_logprobs=ref)
    for batch in (contrast, ppo):
        batch.kl = KlConfig(use_kl=True, coef=0.1)
        with_kl, denom, metrics = compute_policy_loss(old, batch)
        batch.kl = None
        without, _, _ = compute_policy_loss(old, batch)
        assert (with_kl - without).item() == pytest.approx(0.1 * kl_sum, rel=1e-5)
        assert metrics["kl_ref_sum"].item() == pytest.approx(kl_sum, rel=1e-5) and denom.item() == 4
        batch.kl, batch.ref_logprobs = KlConfig(use_kl=True), old.clone()
        assert compute_policy_loss(old, batch)[2]["kl_ref_sum"].item() == 0.0  # reference == policy: KL exactly 0
    built = build_update_batch(_inputs([[0, 1]], [[-1.0, -2.0]], [[0]]), SignalConfig(builder="recast", kl=KlConfig(use_kl=True)))
    assert built.kl is not None and built.kl.coef == 0.001


def test_hardest_by_actor_ranks_with_the_actors_scores():
    # rollout log-probs say item 3 is hardest (-0.5); the actor (toy score -(1 + i/10)) says item 1
    calls = []
    inputs = _inputs([[0, 1, 3]], [[-3.0, -2.0, -0.5]], [[0]], calls=calls)
    by_rollout = build_update_batch(inputs, _signal())
    assert torch.equal(by_rollout.responses[1], item_response(3)) and not calls
    by_actor = build_update_batch(inputs, _signal(hardest_by="actor"))
    assert torch.equal(by_actor.responses[1], item_response(1))
    assert len(calls) == 1 and calls[0][1].shape == (3, T)  # one forward over all B * G candidates
    assert torch.equal(by_actor.old_logprobs, torch.stack([inputs.groups.token_logprobs[0, 0], inputs.groups.token_logprobs[0, 1]]))


def _verl_vanilla_policy_loss(old, lp, adv, mask, clip_low, clip_high, clip_c):
    """Independent transcription of verl ``compute_policy_loss`` (vanilla, dual clip, ``loss_agg_mode=token-mean``),
    verl/trainer/ppo/core_algos.py as shipped in OpenOneRec's verl_rl: returns (pg_loss, clipfrac, ppo_kl, clipfrac_lower)."""
    def masked_mean(x):
        return (x * mask).sum() / mask.sum()

    neg_kl = torch.clamp(lp - old, -20.0, 20.0)
    ratio = torch.exp(neg_kl)
    ppo_kl = masked_mean(-neg_kl)
    l1, l2 = -adv * ratio, -adv * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    clip1 = torch.maximum(l1, l2)
    clipfrac = masked_mean(torch.gt(l2, l1).float())
    l3 = -adv * clip_c
    clip2 = torch.min(l3, clip1)
    clipfrac_lower = masked_mean(torch.gt(clip1, l3).float() * (adv < 0).float())
    pg = torch.where(adv < 0, clip2, clip1)
    return masked_mean(pg), clipfrac, ppo_kl, clipfrac_lower


def test_ppo_clip_equals_verl_on_the_same_inputs():
    gen = torch.Generator().manual_seed(0)
    n, t = 12, 5
    old = -torch.rand(n, t, generator=gen) * 3
    lp = old + 1.5 * torch.randn(n, t, generator=gen)
    adv = torch.randn(n, generator=gen) * 2
    mask = torch.rand(n, t, generator=gen) > 0.2
    batch = make_batch(old, group_index=sorted(i // 3 for i in range(n)), advantages=adv.tolist())
    batch.token_mask = mask
    loss_sum, denom, m = compute_policy_loss(lp, batch)
    pg, clipfrac, ppo_kl, lower = _verl_vanilla_policy_loss(old, lp, adv[:, None].expand(n, t), mask.float(), 0.2, 0.28, 3.0)
    assert (loss_sum / denom).item() == pytest.approx(pg.item(), rel=1e-6)
    assert (m["clipfrac_sum"] / denom).item() == pytest.approx(clipfrac.item(), rel=1e-6)
    assert (m["approx_kl_old_sum"] / denom).item() == pytest.approx(ppo_kl.item(), rel=1e-6)
    assert (m["clipfrac_lower_sum"] / denom).item() == pytest.approx(lower.item(), rel=1e-6)
    assert 0 < clipfrac.item() < 1 and 0 < lower.item() < 1  # both clips bind somewhere in this case
