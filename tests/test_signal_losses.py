"""Policy losses: hand-computed values, gradients, micro-batch additivity, registry errors."""

import math

import pytest
import torch

from recast_mcore.config.signal import ContrastLossConfig, KlConfig, PpoLossConfig
from recast_mcore.signal.batch import Role
from recast_mcore.signal.losses import compute_policy_loss, get_loss, register_loss
from signal_helpers import make_batch

LOG_HALF = math.log(0.5)


def _ppo_case(**params):
    old = torch.full((2, 2), LOG_HALF)
    ratios = torch.tensor([[1.5, 0.9], [0.5, 1.1]])
    lp = (old + ratios.log()).requires_grad_(True)
    batch = make_batch(old, group_index=[0, 0], advantages=[1.0, -1.0], params=PpoLossConfig(**params))
    return lp, batch


def test_ppo_clip_hand_computed():
    lp, batch = _ppo_case()
    loss_sum, denom, metrics = compute_policy_loss(lp, batch)
    # row 0 (A=+1): max(-1.5, -1.28) = -1.28, max(-0.9, -0.9) = -0.9
    # row 1 (A=-1): max(0.5, 0.8) = 0.8, max(1.1, 1.1) = 1.1
    assert loss_sum.item() == pytest.approx(-1.28 - 0.9 + 0.8 + 1.1, abs=1e-6)
    assert denom.item() == 4
    assert metrics["clipfrac_sum"].item() == 2
    loss_sum.backward()
    # clipped tokens get no gradient; d(-A rho)/d lp = -A rho elsewhere
    expected = torch.tensor([[0.0, -0.9], [0.0, 1.1]])
    assert torch.allclose(lp.grad, expected, atol=1e-6)


def test_ppo_dual_clip_bounds_negative_advantage():
    old = torch.zeros(1, 1)
    lp = torch.tensor([[math.log(5.0)]])
    batch = make_batch(old, group_index=[0], advantages=[-1.0])
    loss_sum, _, metrics = compute_policy_loss(lp, batch)
    assert loss_sum.item() == pytest.approx(3.0)  # min(max(5, 1.28), 3)
    assert metrics["clipfrac_lower_sum"].item() == 1
    batch.loss_params = PpoLossConfig(dual_clip_c=None)
    assert compute_policy_loss(lp, batch)[0].item() == pytest.approx(5.0)


def test_ppo_k3_kl_term_and_missing_ref_raises():
    old = torch.zeros(1, 2)
    lp = torch.zeros(1, 2)
    ref = torch.tensor([[0.5, -0.25]])
    batch = make_batch(old, group_index=[0], advantages=[0.0], ref_logprobs=ref)
    batch.kl = KlConfig(use_kl=True, coef=0.1)
    loss_sum, denom, metrics = compute_policy_loss(lp, batch)
    k3 = sum(math.exp(d) - d - 1 for d in (0.5, -0.25))
    assert loss_sum.item() == pytest.approx(0.1 * k3, rel=1e-6)
    assert metrics["kl_ref_sum"].item() == pytest.approx(k3, rel=1e-6)
    batch.ref_logprobs = None
    with pytest.raises(ValueError, match="ref_logprobs"):
        compute_policy_loss(lp, batch)


def _contrast_batch(params, roles=None, weights=None, pair_weights=None):
    # rows: 0 = positive (s=-1), 1 = negative (s=-2); T = 2
    old = torch.tensor([[-0.5, -0.5], [-1.0, -1.0]])
    roles = roles or [int(Role.POSITIVE), int(Role.NEGATIVE)]
    return make_batch(old, group_index=[0, 0], roles=roles, weights=weights, pairs=[(0, 1)],
                      pair_weights=pair_weights, loss="pairwise_contrast", params=params)


def test_contrast_logsigmoid_and_hinge_hand_computed():
    lp = torch.tensor([[-0.5, -0.5], [-1.0, -1.0]], requires_grad=True)
    batch = _contrast_batch(ContrastLossConfig(beta=1.0, margin=1.0))
    loss_sum, denom, metrics = compute_policy_loss(lp, batch)
    assert loss_sum.item() == pytest.approx(math.log(2.0))  # softplus(1 - 1)
    assert denom.item() == 1 and metrics["pair_margin_sum"].item() == pytest.approx(1.0)
    loss_sum.backward()
    # d softplus(m - (s+ - s-)) / d s+ = -sigmoid(0) = -0.5 on each positive token, +0.5 on negative tokens
    assert torch.allclose(lp.grad, torch.tensor([[-0.5, -0.5], [0.5, 0.5]]))
    hinge = _contrast_batch(ContrastLossConfig(form="hinge", beta=2.0, margin=3.0))
    assert compute_policy_loss(lp, hinge)[0].item() == pytest.approx(1.0)  # 3 - 2 * 1
    mean = _contrast_batch(ContrastLossConfig(form="hinge", score="mean", beta=1.0, margin=1.0))
    assert compute_policy_loss(lp, mean)[0].item() == pytest.approx(0.5)  # 1 - (-0.5 + 1.0)


def test_contrast_anchor_weight_and_nll_term():
    lp = torch.tensor([[-0.5, -0.5], [-1.0, -1.0]])
    params = ContrastLossConfig(form="hinge", beta=1.0, margin=2.0, anchor_nll_coef=0.5)
    batch = _contrast_batch(params, roles=[int(Role.ANCHOR), int(Role.NEGATIVE)], weights=[3.0, 1.0], pair_weights=[3.0])
    loss_sum, denom, _ = compute_policy_loss(lp, batch)
    # pair: 3 * (2 - 1) = 3; nll: 0.5 * 3 * 1.0 = 1.5
    assert loss_sum.item() == pytest.approx(4.5) and denom.item() == 1


def test_contrast_ratio_clip_stops_gradient_outside_trust_region():
    params = ContrastLossConfig(beta=1.0, margin=1.0, ratio_clip=True, clip_low=0.2, clip_high=0.2)
    batch = _contrast_batch(params)
    # positive already 1 nat above its old score (ratio e > 1.2), negative unchanged
    lp = torch.tensor([[0.0, 0.0], [-1.0, -1.0]], requires_grad=True)
    loss_sum, _, _ = compute_policy_loss(lp, batch)
    loss_sum.backward()
    assert torch.all(lp.grad[0] == 0) and torch.all(lp.grad[1] > 0)
    capped = -1.0 + math.log(1.2)
    assert loss_sum.item() == pytest.approx(math.log1p(math.exp(1.0 - (capped + 2.0))), rel=1e-6)


def test_losses_add_up_over_group_micro_batches():
    torch.manual_seed(0)
    old = torch.randn(6, 3)
    lp = old + 0.3 * torch.randn(6, 3)
    for loss, kw in [("ppo_clip", {"advantages": [1.0, -0.5, 0.3, -1.0, 2.0, 0.0]}),
                     ("pairwise_contrast", {"pairs": [(0, 1), (0, 2), (3, 4)]})]:
        batch = make_batch(old, group_index=[0, 0, 0, 1, 1, 2], loss=loss, **kw)
        full_sum, full_den, _ = compute_policy_loss(lp, batch)
        parts = batch.group_partition(3)
        sums = [compute_policy_loss(lp[idx], batch.select(idx)) for idx in parts]
        assert sum(s for s, _, _ in sums).item() == pytest.approx(full_sum.item(), rel=1e-6)
        assert sum(d for _, d, _ in sums).item() == full_den.item()


def test_pad_rows_change_nothing():
    old = torch.randn(3, 2)
    lp = old + 0.1
    batch = make_batch(old, group_index=[0, 0, 1], advantages=[1.0, -1.0, 0.5])
    padded = batch.pad_to(5)
    padded.validate()
    lp_pad = torch.cat([lp, torch.randn(2, 2)])
    a, b = compute_policy_loss(lp, batch), compute_policy_loss(lp_pad, padded)
    assert a[0].item() == pytest.approx(b[0].item()) and a[1].item() == b[1].item()


def test_registry_errors():
    with pytest.raises(KeyError, match="valid: pairwise_contrast, ppo_clip"):
        get_loss("dpo")
    with pytest.raises(ValueError, match="already registered"):
        register_loss("ppo_clip")(lambda lp, b: None)
    lp, batch = _ppo_case()
    batch.loss_params = ContrastLossConfig()
    with pytest.raises(TypeError, match="PpoLossConfig"):
        compute_policy_loss(lp, batch)
    with pytest.raises(ValueError, match="token_logprobs shape"):
        compute_policy_loss(lp[:1], batch)


@pytest.mark.gpu
def test_losses_on_cuda_match_cpu():
    torch.manual_seed(0)
    old = torch.randn(4, 3)
    lp = old + 0.2 * torch.randn(4, 3)
    for loss, kw in [("ppo_clip", {"advantages": [1.0, -1.0, 0.5, -0.5]}), ("pairwise_contrast", {"pairs": [(0, 1), (2, 3)]})]:
        batch = make_batch(old, group_index=[0, 0, 1, 1], loss=loss, **kw)
        cpu = compute_policy_loss(lp, batch)
        gpu = compute_policy_loss(lp.cuda(), batch.to("cuda"))
        assert gpu[0].device.type == "cuda" and gpu[1].device.type == "cuda"
        assert gpu[0].item() == pytest.approx(cpu[0].item(), rel=1e-5) and gpu[1].item() == cpu[1].item()
