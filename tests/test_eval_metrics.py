"""Evaluation metrics against hand-computed values (the arithmetic is written out next to each number)."""

import itertools
import math

import numpy as np
import pytest
import torch

from lambda_dpo.evaluation.metrics import (
    default_reference_point,
    hypervolume,
    kendall_tau,
    kl_estimate,
    length_bias,
    ndcg_at_k,
    pareto_front,
    per_list,
    ranking_accuracy,
    ranking_report,
    spearman,
    win_rate,
)
from lambda_dpo.targets import target_probs_from_scores

# x strictly increasing; y has a tie (7, 7) and one inversion (8 then 7).
X = [1, 2, 3, 4, 5]
Y = [5, 6, 7, 8, 7]


def test_spearman_with_ties_by_hand():
    # ranks(y) = [1, 2, 3.5, 5, 3.5]; centred: dx = [-2,-1,0,1,2], dy = [-2,-1,.5,2,.5]
    # Σ dx·dy = 4+1+0+2+1 = 8; Σ dx² = 10; Σ dy² = 4+1+.25+4+.25 = 9.5  →  ρ = 8 / sqrt(95)
    assert spearman(X, Y) == pytest.approx(8 / math.sqrt(95))
    assert spearman(X, X) == pytest.approx(1.0)
    assert spearman(X, X[::-1]) == pytest.approx(-1.0)


def test_correlations_of_a_constant_side_are_nan():
    assert math.isnan(spearman([1, 2, 3], [4, 4, 4]))
    assert math.isnan(kendall_tau([2, 2, 2], [1, 2, 3]))
    assert math.isnan(spearman([1], [2]))


def test_kendall_tau_b_with_ties_by_hand():
    # 10 pairs: concordant 8, discordant 1 ((4,5): 8 > 7), tied in y 1 ((3,5): 7 = 7), none tied in x
    # τ-b = (8 − 1) / sqrt((10 − 0)(10 − 1)) = 7 / sqrt(90)
    assert kendall_tau(X, Y) == pytest.approx(7 / math.sqrt(90))
    # A perfect ranking with ties on both sides still reaches 1 under τ-b.
    assert kendall_tau([1, 1, 2], [3, 3, 5]) == pytest.approx(1.0)


def test_inputs_are_validated():
    with pytest.raises(ValueError, match="same length"):
        spearman([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="index 1"):
        kendall_tau([1, math.nan, 3], [1, 2, 3])


def test_ndcg_by_hand():
    pred, rel = [0.9, 0.8, 0.1], [1, 3, 0]
    log2_3 = math.log2(3)
    # ranked by pred: gains 1, 3, 0 → DCG = 1/1 + 3/log2(3); ideal: 3, 1, 0 → IDCG = 3/1 + 1/log2(3)
    assert ndcg_at_k(pred, rel) == pytest.approx((1 + 3 / log2_3) / (3 + 1 / log2_3))  # 0.796708
    assert ndcg_at_k(pred, rel) == pytest.approx(0.796708, abs=1e-6)
    assert ndcg_at_k(pred, rel, k=1) == pytest.approx(1 / 3)
    # exponential gains 2^rel − 1 = 1, 7, 0 → (1 + 7/log2 3) / (7 + 1/log2 3)
    assert ndcg_at_k(pred, rel, gain="exponential") == pytest.approx((1 + 7 / log2_3) / (7 + 1 / log2_3))
    assert ndcg_at_k([3, 2, 1], [3, 2, 1]) == pytest.approx(1.0)


def test_ndcg_ties_in_prediction_share_their_average_gain():
    # items 0 and 1 tie at the top: each of ranks 1, 2 gets the mean gain (1 + 3)/2 = 2
    expected = (2 / 1 + 2 / math.log2(3)) / (3 + 1 / math.log2(3))  # 0.898354
    assert ndcg_at_k([0.5, 0.5, 0.1], [1, 3, 0]) == pytest.approx(expected)
    assert ndcg_at_k([0.5, 0.5, 0.1], [3, 1, 0]) == pytest.approx(expected)  # tie order cannot matter


def test_ndcg_undefined_and_invalid():
    assert math.isnan(ndcg_at_k([1, 2], [0, 0]))
    with pytest.raises(ValueError, match="≥ 0"):
        ndcg_at_k([1, 2], [-1, 2])
    with pytest.raises(ValueError, match="gain"):
        ndcg_at_k([1, 2], [1, 2], gain="log")


def test_ranking_accuracy_by_hand():
    # target pairs ordered strictly: (0,1) (0,2) (0,3) (1,2) (1,3); (2,3) is tied and skipped.
    # pred orders (0,1) the wrong way (0.3 < 0.5) and the other four right → 4/5
    assert ranking_accuracy([0.3, 0.5, 0.1, 0.2], [3, 2, 1, 1]) == pytest.approx(0.8)
    # a tie in pred counts ½: (0,1) tie, (0,2), (1,2) right → 2.5/3
    assert ranking_accuracy([1, 1, 0], [2, 1, 0]) == pytest.approx(2.5 / 3)
    assert ranking_accuracy([0, 0, 0], [2, 1, 0]) == pytest.approx(0.5)  # all rewards equal → chance
    assert math.isnan(ranking_accuracy([1, 2], [5, 5]))


def test_per_list_masks_padding():
    pred = np.array([[0.3, 0.5, 0.1, 99.0], [1.0, 2.0, 3.0, 0.0]])
    target = np.array([[3, 2, 1, -99], [1, 2, 3, 0]])
    mask = np.array([[True, True, True, False], [True, True, True, False]])
    # row 0 without its padding: pairs (0,1) wrong, (0,2) right, (1,2) right → 2/3; row 1 all right
    np.testing.assert_allclose(per_list(ranking_accuracy, pred, target, mask), [2 / 3, 1.0])


def test_ranking_report_per_dimension_with_missing_scores():
    nan = math.nan
    # one list of k = 3; dimension "a" ranks 0 > 1 > 2, "b" ranks 2 > 1 and has no score for response 0,
    # "c" has a single score (masked: no signal)
    scores = torch.tensor([[[3.0, 2.0, 1.0], [nan, 1.0, 2.0], [1.0, nan, nan]]])
    target_probs, dimension_mask = target_probs_from_scores(scores)
    rewards = torch.tensor([[0.3, 0.2, 0.1]])
    report = ranking_report(rewards, target_probs, ["a", "b", "c"], dimension_mask=dimension_mask)
    assert report["a"] == {
        "ranking_accuracy": 1.0,
        "kendall_tau": pytest.approx(1.0),
        "ndcg": pytest.approx(1.0),
        "num_lists": 1,
    }
    # "b": only responses 1, 2 count; the rewards order them 1 > 2, the target 2 > 1
    assert report["b"]["ranking_accuracy"] == 0.0 and report["b"]["kendall_tau"] == pytest.approx(-1.0)
    assert report["c"]["num_lists"] == 0 and math.isnan(report["c"]["ranking_accuracy"])


def test_length_bias_and_win_rate():
    assert length_bias([-10.0, -20.0, -30.0], [5, 10, 15]) == pytest.approx(-1.0)
    # wins: 1, ½, 0, 1 → mean 0.625; std(ddof=1) = sqrt(((.375)²+(.125)²+(.625)²+(.375)²)/3) = sqrt(0.229167)
    rate, stderr = win_rate([2, 1, 0, 5], [1, 1, 3, 4])
    assert rate == pytest.approx(0.625)
    assert stderr == pytest.approx(math.sqrt(0.6875 / 3) / 2)


def test_kl_estimate_identical_distributions_is_zero():
    logps = torch.log_softmax(torch.randn(6, 5), dim=-1)
    mask = torch.ones(6, 5, dtype=torch.bool)
    assert kl_estimate(logps, logps, mask) == (0.0, 0.0)


def test_kl_estimate_by_hand():
    policy = torch.tensor([[-1.0, -2.0], [-1.0, -3.0]])
    reference = torch.tensor([[-2.0, -2.0], [-1.0, -1.0]])
    mask = torch.tensor([[True, True], [True, False]])  # response 1's second token is padding
    # per-response sums of log-ratios: (1 + 0) = 1 and (0) = 0 → mean 0.5; std(ddof=1) = 0.7071 → stderr 0.5
    mean, stderr = kl_estimate(policy, reference, mask)
    assert mean == pytest.approx(0.5) and stderr == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"\[N, T\]"):
        kl_estimate(policy, reference[:, :1], mask)


def test_pareto_front():
    points = [[1, 3], [2, 2], [3, 1], [1, 1], [2, 2]]
    # (1,1) is dominated by all; the duplicate (2,2) pair do not dominate each other
    assert pareto_front(points).tolist() == [0, 1, 2, 4]
    assert pareto_front(points, maximize=False).tolist() == [3]
    assert pareto_front([[1, 2, 3]]).tolist() == [0]


def test_hypervolume_single_point_is_the_box():
    assert hypervolume([[3.0, 2.0, 4.0]], [0.0, 0.0, 0.0]) == pytest.approx(24.0)
    assert hypervolume([[3.0, 2.0]], [1.0, -1.0]) == pytest.approx(2 * 3)
    assert hypervolume([[1.0, 5.0]], [1.0, 0.0]) == 0.0  # on the reference's boundary: no volume


def test_hypervolume_2d_staircase():
    # slabs x∈[0,1]·3 + x∈[1,2]·2 + x∈[2,3]·1 = 6
    assert hypervolume([[1, 3], [2, 2], [3, 1]], [0, 0]) == pytest.approx(6.0)


def test_hypervolume_3d_by_hand_and_dominated_points():
    # boxes of A, B, C have volume 2 each; every pairwise and the triple intersection is the unit cube:
    # |A ∪ B ∪ C| = 3·2 − 3·1 + 1 = 4
    points = [[2, 1, 1], [1, 2, 1], [1, 1, 2]]
    assert hypervolume(points, [0, 0, 0]) == pytest.approx(4.0)
    assert hypervolume([*points, [1, 1, 1], [0.5, 2, 0.5]], [0, 0, 0]) == pytest.approx(4.0)  # dominated
    assert hypervolume([*points, [2, 2, 2]], [0, 0, 0]) == pytest.approx(8.0)


def _hypervolume_inclusion_exclusion(points, ref):
    """Independent check: |∪ boxes| = Σ_{S≠∅} (−1)^{|S|+1} vol(∩_{i∈S} box_i), ∩ of boxes = box of the min."""
    points, total = np.asarray(points, float), 0.0
    for size in range(1, len(points) + 1):
        for subset in itertools.combinations(range(len(points)), size):
            corner = points[list(subset)].min(axis=0)
            total += (-1) ** (size + 1) * np.prod(np.clip(corner - ref, 0, None))
    return total


@pytest.mark.parametrize("m", [2, 3, 4])
def test_hypervolume_matches_inclusion_exclusion(m):
    rng = np.random.default_rng(m)
    for _ in range(5):
        points = rng.uniform(0, 1, size=(7, m))
        ref = rng.uniform(-0.3, 0.2, size=m)
        assert hypervolume(points, ref) == pytest.approx(_hypervolume_inclusion_exclusion(points, ref))


def test_default_reference_point_is_shared_and_below_every_point():
    a, b = np.array([[1.0, 5.0], [3.0, 5.0]]), np.array([[2.0, 5.0]])
    ref = default_reference_point(a, b, margin=0.1)
    # dim 0: min 1, span 2 → 1 − 0.2; dim 1: constant 5, span taken as 1 → 5 − 0.1
    np.testing.assert_allclose(ref, [0.8, 4.9])
    assert hypervolume(b, ref) > 0 and hypervolume(a, ref) > hypervolume(b, ref)
    with pytest.raises(ValueError, match="same m"):
        default_reference_point(a, np.zeros((2, 3)))
