"""A few SGD steps of the ReCast loss on a tiny constrained logit-table policy raise s+ - s-."""

import torch

from recast_mcore.config.signal import ContrastLossConfig, RecastConfig, RewardConfig, SignalConfig
from recast_mcore.rewards import compute_rewards
from recast_mcore.rollout.types import RolloutGroups
from recast_mcore.signal import SignalInputs, build_update_batch, compute_policy_loss
from signal_helpers import EOS, ITEM_TOKENS

VOCAB = 4 + 2 + 3 + 12
# allowed tokens per response position: level a, level b, level c, then EOS only
ALLOWED = torch.zeros(4, VOCAB, dtype=torch.bool)
ALLOWED[0, 4:6] = ALLOWED[1, 6:9] = ALLOWED[2, 9:21] = True
ALLOWED[3, EOS] = True


def constrained_logprobs(table: torch.Tensor, responses: torch.Tensor) -> torch.Tensor:
    """[N, T] log pi_c(y_t) = z_t[y_t] - logsumexp_{v allowed at t} z_t[v] for a position-wise logit table [T, V]."""
    logp = torch.log_softmax(table.masked_fill(~ALLOWED, float("-inf")), dim=-1)  # [T, V]
    return logp.gather(1, responses.T).T


def test_recast_sgd_raises_positive_minus_negative_margin():
    torch.manual_seed(0)
    table = torch.nn.Parameter(torch.randn(4, VOCAB))
    b, g = 6, 5
    # candidates: item (k * g + j) % 12 for group k, member j (catalog items, so the hit reward applies)
    item_ids = torch.arange(b * g) % 12
    responses = torch.cat([ITEM_TOKENS[item_ids], torch.full((b * g, 1), EOS)], dim=1)
    with torch.no_grad():
        old = constrained_logprobs(table, responses)
    groups = RolloutGroups(
        prompt_ids=[[1, 4 + k] for k in range(b)], responses=responses.reshape(b, g, 4),
        token_logprobs=old.reshape(b, g, 4), item_ids=item_ids.reshape(b, g),
        # even groups: the first candidate is a hit; odd groups: a target nobody sampled -> repaired
        targets=[[int(item_ids[k * g])] if k % 2 == 0 else [int(item_ids[k * g]) + g] for k in range(b)],
        policy_version=0, num_sampled=b * g,
    )
    rewards = compute_rewards(groups.item_ids, groups.targets, ITEM_TOKENS, RewardConfig())

    def score_fn(prompt_ids, resp):
        with torch.no_grad():
            return constrained_logprobs(table, resp)

    inputs = SignalInputs(groups=groups, rewards=rewards, item_tokens=ITEM_TOKENS, eos_id=EOS, score_fn=score_fn)
    cfg = SignalConfig(builder="recast", recast=RecastConfig(loss=ContrastLossConfig(beta=1.0, margin=1.0)))
    batch = build_update_batch(inputs, cfg)
    assert batch.num_pairs == b and batch.stats.frac_repaired == 0.5

    def margins() -> torch.Tensor:
        s = constrained_logprobs(table, batch.responses).sum(1)
        return (s[batch.pairs[:, 0]] - s[batch.pairs[:, 1]]).detach()

    start = margins()
    losses = []
    for _ in range(10):
        loss_sum, denom, _ = compute_policy_loss(constrained_logprobs(table, batch.responses), batch)
        loss = loss_sum / denom
        table.grad = None
        loss.backward()
        with torch.no_grad():  # plain SGD, lr 0.5 (torch.optim's first step costs seconds of lazy imports)
            table -= 0.5 * table.grad
        losses.append(loss.item())
    end = margins()
    assert end.mean() > start.mean() + 0.5
    assert losses[-1] < losses[0]
