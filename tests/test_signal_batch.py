"""UpdateBatch: validation, select (pair re-indexing), group partition, padding, width summary."""

import pytest
import torch

from recast_mcore.signal.batch import Role, update_width_summary
from signal_helpers import make_batch

P, N = int(Role.POSITIVE), int(Role.NEGATIVE)


def _pair_batch():
    # groups: 0 -> rows 0,1,2 (pairs (0,1),(0,2)); 1 -> rows 3,4 (pair (3,4)); 2 -> row 5 alone
    return make_batch(torch.zeros(6, 3), group_index=[0, 0, 0, 1, 1, 2], roles=[P, N, N, P, N, P],
                      pairs=[(0, 1), (0, 2), (3, 4)], pair_weights=[1.0, 1.0, 2.0], loss="pairwise_contrast")


def test_validate_accepts_good_and_names_bad_field():
    batch = _pair_batch()
    batch.validate()
    assert batch.num_sequences == 6 and batch.num_pairs == 3 and batch.response_len == 3
    batch.advantages = torch.zeros(5)
    with pytest.raises(ValueError, match="advantages has shape"):
        batch.validate()
    bad = _pair_batch()
    bad.pairs = torch.tensor([[0, 3]])
    bad.pair_weights = torch.ones(1)
    with pytest.raises(ValueError, match="different groups"):
        bad.validate()
    bad = _pair_batch()
    bad.group_index = torch.tensor([0, 1, 0, 1, 1, 2])
    with pytest.raises(ValueError, match="non-decreasing"):
        bad.validate()
    bad = _pair_batch()
    bad.roles[0] = 9
    with pytest.raises(ValueError, match="unknown codes"):
        bad.validate()


def test_select_reindexes_pairs_and_rejects_split_groups():
    batch = _pair_batch()
    sub = batch.select([3, 4, 5])
    sub.validate()
    assert sub.pairs.tolist() == [[0, 1]] and sub.pair_weights.tolist() == [2.0]
    assert sub.group_index.tolist() == [1, 1, 2] and sub.prompt_ids == batch.prompt_ids[3:]
    with pytest.raises(ValueError, match="split a contrastive pair"):
        batch.select([0, 1])
    with pytest.raises(IndexError):
        batch.select([7])


def test_group_partition_keeps_groups_whole_and_covers_rows():
    gi = [0, 0, 0, 1, 1, 2, 3, 3, 4, 4, 4, 4]
    batch = make_batch(torch.zeros(len(gi), 2), group_index=gi)
    for parts in (1, 2, 3, 5, 20):
        split = batch.group_partition(parts)
        assert len(split) == parts
        assert torch.cat(split).tolist() == list(range(len(gi)))
        owners = {}
        for k, idx in enumerate(split):
            for g in batch.group_index[idx].tolist():
                assert owners.setdefault(g, k) == k
    sizes = [len(p) for p in batch.group_partition(2)]
    assert sizes == [6, 6]  # groups {0,1,2} | {3,4}: the even cut without splitting a group


def test_pad_to_and_to_device():
    batch = _pair_batch().pad_to(8)
    batch.validate()
    assert batch.num_sequences == 8 and batch.roles[-1].item() == Role.PAD
    assert batch.group_index[-2:].tolist() == [-1, -1] and not batch.token_mask[-2:].any()
    assert batch.group_partition(2)[1].tolist()[-2:] == [6, 7]
    moved = batch.to("cpu")
    assert moved.pairs.tolist() == batch.pairs.tolist()
    with pytest.raises(ValueError, match="more than"):
        batch.pad_to(3)


def test_update_width_summary():
    summary = update_width_summary(torch.tensor([0, 0, 1, 1, 1, 3, -1]))
    assert summary == {"width_mean": 2.0, "width_min": 1.0, "width_max": 3.0, "groups": 3.0}
    assert update_width_summary(torch.tensor([], dtype=torch.int64))["groups"] == 0.0
