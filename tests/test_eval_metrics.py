"""Ranking metrics against hand-computed rankings."""

import math

import pytest
import torch

from recast_mcore.eval.metrics import hit_matrix, ranking_metrics


def test_single_target_hand_computed():
    # user 0: target 7 at rank 1; user 1: target 3 at rank 3; user 2: target 9 absent.
    ranked = torch.tensor([[7, 1, 2, 4], [5, 6, 3, 8], [0, 1, 2, 3]])
    targets = [[7], [3], [9]]
    m = ranking_metrics(ranked, targets, ks=[1, 2, 3, 4])
    assert m["pass@1"] == pytest.approx(1 / 3)
    assert m["pass@2"] == pytest.approx(1 / 3)
    assert m["pass@3"] == pytest.approx(2 / 3)
    assert m["recall@3"] == pytest.approx(2 / 3)  # one target each: recall == pass
    assert m["ndcg@1"] == pytest.approx(1 / 3)
    assert m["ndcg@2"] == pytest.approx(1 / 3)
    assert m["ndcg@3"] == pytest.approx((1.0 + 1.0 / math.log2(4)) / 3)  # rank 3 -> 1/log2(4) = 0.5
    assert m["ndcg@4"] == pytest.approx(0.5)


def test_target_set_hand_computed():
    # |S| = 3, hits at ranks 2 and 4 of 5.
    ranked = torch.tensor([[10, 11, 12, 13, 14]])
    targets = [[11, 13, 99]]
    m = ranking_metrics(ranked, targets, ks=[1, 2, 5])
    assert m["pass@1"] == 0.0 and m["pass@2"] == 1.0
    assert m["recall@2"] == pytest.approx(1 / 3)
    assert m["recall@5"] == pytest.approx(2 / 3)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    idcg = 1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg@5"] == pytest.approx(dcg / idcg)
    # at K=2 the ideal list holds only 2 of the 3 targets
    assert m["ndcg@2"] == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))


def test_perfect_ranking_scores_one():
    ranked = torch.tensor([[4, 5, 6, 1], [2, 3, 0, 1]])
    targets = [[5, 4], [2]]
    m = ranking_metrics(ranked, targets, ks=[2, 4])
    assert m["ndcg@2"] == pytest.approx(1.0)
    assert m["recall@2"] == pytest.approx(1.0)


def test_padding_never_hits_and_short_lists():
    ranked = torch.tensor([[3, -1, -1]])
    m = ranking_metrics(ranked, [[3]], ks=[1, 10])  # K larger than the list
    assert m["pass@1"] == 1.0 and m["ndcg@10"] == pytest.approx(1.0)
    assert hit_matrix(ranked, [[-1]]).sum().item() == 0


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="repeat"):
        ranking_metrics(torch.tensor([[1, 1, 2]]), [[1]], ks=[1])
    with pytest.raises(ValueError, match="at least one target"):
        ranking_metrics(torch.tensor([[1, 2]]), [[]], ks=[1])
    with pytest.raises(ValueError, match="rows"):
        ranking_metrics(torch.tensor([[1, 2]]), [[1], [2]], ks=[1])
    with pytest.raises(ValueError, match="K must be"):
        ranking_metrics(torch.tensor([[1, 2]]), [[1]], ks=[0])


def test_drop_seen_moves_unseen_items_up_and_pads():
    from recast_mcore.eval.evaluate import drop_seen

    ranked = torch.tensor([[5, 3, 7, 1], [2, 4, 6, 8]])
    out = drop_seen(ranked, [[3, 1], []])
    assert out.tolist() == [[5, 7, -1, -1], [2, 4, 6, 8]]
    # scored as usual: -1 is never a hit
    assert ranking_metrics(out, [[7], [8]], [2])["pass@2"] == 0.5
