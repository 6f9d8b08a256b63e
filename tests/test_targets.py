"""Scores → target distributions and λ-mixing (docs/spec.md §1, "Targets" and "Masked dimensions drop out")."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lambda_dpo.targets import mix_targets, record_targets, scores_to_tensor, target_probs_from_scores

NAN = math.nan
DIMS = ["helpfulness", "honesty", "instruction_following", "truthfulness"]


def softmax(values: list[float]) -> list[float]:
    exps = [math.exp(v) for v in values]
    return [e / sum(exps) for e in exps]


def test_ultrafeedback_ratings_with_na_give_a_three_way_softmax_and_zero_for_the_missing_one():
    probs, mask = record_targets({"honesty": [5, 4, 3, None]}, ["honesty"])
    e2, e1 = math.exp(2), math.exp(1)
    expected = [e2 / (e2 + e1 + 1), e1 / (e2 + e1 + 1), 1 / (e2 + e1 + 1), 0.0]
    assert probs.shape == (1, 4) and mask.tolist() == [True]
    assert probs[0].tolist() == pytest.approx(expected, abs=1e-6)
    assert probs[0].tolist() == pytest.approx([0.665241, 0.244728, 0.090031, 0.0], abs=1e-6)
    # N/A is "no score", not "the worst score": a worst rating of 1 would still get some probability.
    assert probs[0, 3] == 0.0
    worst_instead = record_targets({"honesty": [5, 4, 3, 1]}, ["honesty"])[0]
    assert worst_instead[0, 3] > 0


def test_record_targets_uses_the_given_dimension_order_and_masks_absent_dimensions():
    scores = {"truthfulness": [1, 2, 3], "helpfulness": [3, 3, 3]}
    probs, mask = record_targets(scores, DIMS)
    assert probs.shape == (4, 3)
    assert mask.tolist() == [True, False, False, True]
    assert probs[0].tolist() == pytest.approx([1 / 3] * 3)
    assert probs[3].tolist() == pytest.approx(softmax([1, 2, 3]))
    assert probs[1].tolist() == [0.0] * 3 and probs[2].tolist() == [0.0] * 3


def test_scores_to_tensor_marks_missing_and_pads_with_nan():
    tensor = scores_to_tensor({"honesty": [2, None], "helpfulness": [1, 2, 3]}, ["honesty", "safety"], k=4)
    assert tensor.shape == (2, 4)
    assert tensor[0, 0] == 2 and torch.isnan(tensor[0, 1:]).all()
    assert torch.isnan(tensor[1]).all()  # a dimension the record does not score


def test_all_equal_scores_give_a_uniform_target():
    probs, _ = target_probs_from_scores(torch.tensor([[7.0, 7.0, 7.0, 7.0], [2.0, NAN, 2.0, 2.0]]))
    assert probs[0].tolist() == pytest.approx([0.25] * 4)
    assert probs[1].tolist() == pytest.approx([1 / 3, 0.0, 1 / 3, 1 / 3])


def test_tau_scales_the_scores():
    scores = torch.tensor([[5.0, 4.0, 3.0, NAN]])
    at_tau_2, _ = target_probs_from_scores(scores, tau=2.0)
    assert at_tau_2[0, :3].tolist() == pytest.approx(softmax([2.5, 2.0, 1.5]), abs=1e-6)
    sharp, _ = target_probs_from_scores(scores, tau=0.01)
    flat, _ = target_probs_from_scores(scores, tau=1000.0)
    assert sharp[0].tolist() == pytest.approx([1.0, 0.0, 0.0, 0.0], abs=1e-6)
    assert flat[0].tolist() == pytest.approx([1 / 3, 1 / 3, 1 / 3, 0.0], abs=1e-3)


@pytest.mark.parametrize("tau", [0.0, -1.0, NAN, math.inf])
def test_bad_tau_is_rejected(tau):
    with pytest.raises(ValueError, match="tau must be a finite number > 0"):
        target_probs_from_scores(torch.tensor([[1.0, 2.0]]), tau=tau)


def test_dimension_with_fewer_than_two_scored_responses_is_masked():
    scores = torch.tensor([[1.0, 2.0, 3.0], [4.0, NAN, NAN], [NAN, NAN, NAN], [NAN, 1.0, 5.0]])
    probs, mask = target_probs_from_scores(scores)
    assert mask.tolist() == [True, False, False, True]
    assert probs[1].tolist() == [0.0] * 3 and probs[2].tolist() == [0.0] * 3
    assert probs[3].tolist() == pytest.approx([0.0, *softmax([1.0, 5.0])])
    assert not torch.isnan(probs).any()


def test_response_mask_padding_acts_like_missing_scores():
    # Two prompts padded to k = 4; the padding slots hold real-looking numbers that must be ignored.
    scores = torch.tensor([[[3.0, 1.0, 2.0, 9.0]], [[1.0, 9.0, 9.0, 9.0]]])  # [B=2, m=1, k=4]
    response_mask = torch.tensor([[True, True, True, False], [True, True, False, False]])
    probs, mask = target_probs_from_scores(scores, response_mask=response_mask)
    assert probs[0, 0].tolist() == pytest.approx([*softmax([3.0, 1.0, 2.0]), 0.0])
    assert probs[1, 0].tolist() == pytest.approx([*softmax([1.0, 9.0]), 0.0, 0.0])
    assert mask.tolist() == [[True], [True]]
    # Padding that leaves a dimension a single scored response masks it for that prompt only.
    _, mask = target_probs_from_scores(
        scores, response_mask=torch.tensor([[True] * 4, [True, False, False, False]])
    )
    assert mask.tolist() == [[True], [False]]


score_lists = st.lists(st.one_of(st.none(), st.floats(-10, 10, allow_nan=False)), min_size=2, max_size=6)


@settings(max_examples=60, deadline=None)
@given(rows=st.lists(score_lists, min_size=1, max_size=4), shift=st.floats(-5, 5), seed=st.integers(0, 1000))
def test_targets_are_distributions_invariant_to_shifts_and_permutations(rows, shift, seed):
    k = max(len(r) for r in rows)
    scores = scores_to_tensor(
        {f"d{i}": r for i, r in enumerate(rows)}, [f"d{i}" for i in range(len(rows))], k=k
    )
    probs, mask = target_probs_from_scores(scores)
    scored = ~torch.isnan(scores)
    assert mask.tolist() == (scored.sum(-1) >= 2).tolist()
    assert torch.allclose(probs.sum(-1), mask.float(), atol=1e-5)
    assert (probs[~scored] == 0).all() and (probs >= 0).all()

    shifted, _ = target_probs_from_scores(scores + shift)
    assert torch.allclose(shifted, probs, atol=1e-5)
    permutation = torch.randperm(k, generator=torch.Generator().manual_seed(seed))
    permuted, _ = target_probs_from_scores(scores[:, permutation])
    assert torch.allclose(permuted, probs[:, permutation], atol=1e-6)


def test_mix_targets_is_the_lambda_weighted_sum():
    target_probs = torch.tensor([[[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]])  # [B=1, m=2, k=3]
    mixed = mix_targets(target_probs, torch.tensor([[0.25, 0.75]]))
    assert mixed[0].tolist() == pytest.approx(
        [0.25 * 0.7 + 0.75 * 0.1, 0.25 * 0.2 + 0.75 * 0.1, 0.25 * 0.1 + 0.75 * 0.8]
    )


def test_mix_targets_renormalises_lambda_over_unmasked_dimensions():
    probs, mask = target_probs_from_scores(
        torch.tensor([[[3.0, 1.0, 2.0], [5.0, NAN, NAN], [1.0, 2.0, 4.0]]])  # honesty has one score: masked
    )
    lambdas = torch.tensor([[0.2, 0.6, 0.2]])
    mixed = mix_targets(probs, lambdas, mask)
    expected = 0.5 * probs[0, 0] + 0.5 * probs[0, 2]
    assert torch.allclose(mixed[0], expected, atol=1e-6)
    assert mixed.sum().item() == pytest.approx(1.0)


def test_mix_targets_gives_a_zero_row_when_no_weighted_dimension_has_signal():
    probs, mask = target_probs_from_scores(
        torch.tensor([[[3.0, NAN], [1.0, 2.0]], [[1.0, 2.0], [3.0, 4.0]]])  # [B=2, m=2, k=2]
    )
    mixed = mix_targets(probs, torch.tensor([[1.0, 0.0], [0.5, 0.5]]), mask)
    assert mixed[0].tolist() == [0.0, 0.0]  # all λ on the masked dimension
    assert mixed[1].sum().item() == pytest.approx(1.0)
    all_masked = mix_targets(
        probs, torch.tensor([[0.5, 0.5], [0.5, 0.5]]), torch.zeros(2, 2, dtype=torch.bool)
    )
    assert torch.equal(all_masked, torch.zeros(2, 2))


def test_score_scale_is_a_per_dimension_unit_of_tau():
    scores = torch.tensor([[[0.0, 2.0, 4.0], [0.0, 0.5, 1.0]]])  # [1, m=2, k=3]: 0–4 and 0–1 ratings
    scaled, _ = target_probs_from_scores(scores, 0.5, score_scale=[4.0, 1.0])
    torch.testing.assert_close(scaled[0, 0], target_probs_from_scores(scores[:, :1], 2.0)[0][0, 0])
    torch.testing.assert_close(scaled[0, 1], target_probs_from_scores(scores[:, 1:], 0.5)[0][0, 0])
    torch.testing.assert_close(scaled[0, 0], scaled[0, 1])  # the same ratings on two scales: the same target
