"""Controllability analysis with synthetic generators whose behaviour does / does not follow λ, and its plots."""

import json
import math
import random

import numpy as np
import pytest

from lambda_dpo.evaluation.controllability import (
    ControllabilityResult,
    evaluate_controllability,
    lambda_grid,
    shared_hypervolumes,
)
from lambda_dpo.evaluation.metrics import hypervolume, pareto_front
from lambda_dpo.evaluation.plots import plot_pareto, plot_pareto_grid, plot_score_vs_lambda

DIMS = ["a", "b", "c"]
PROMPTS = [f"prompt {i}" for i in range(20)]


def steerable_sample_fn(prompts, lambdas, num_samples):
    """Writes round(10·λ_d) copies of letter d, plus 0–2 random letters of noise per response."""
    rng = random.Random(json.dumps(lambdas, sort_keys=True))
    body = "".join(letter * round(10 * weight) for letter, weight in lambdas.items())
    return [
        [body + "".join(rng.choices(DIMS, k=rng.randint(0, 2))) for _ in range(num_samples)] for _ in prompts
    ]


def blind_sample_fn_factory(seed=0):
    """Ignores λ: the same budget of 10 letters as the steerable generator, split at random (plus the same noise)."""
    rng = random.Random(seed)
    return lambda prompts, lambdas, num_samples: [
        ["".join(rng.choices(DIMS, k=10 + rng.randint(0, 2))) for _ in range(num_samples)] for _ in prompts
    ]


def count_letters(prompt, response):
    return {letter: float(response.count(letter)) for letter in DIMS}


def test_lambda_grid_points_lie_on_the_simplex():
    grid = lambda_grid(DIMS, n=2)
    vectors = {tuple(round(point[d], 6) for d in DIMS) for point in grid}
    assert len(grid) == len(vectors) == 7  # 3 vertices + 3 edge midpoints + the centre
    assert {(1, 0, 0), (0, 1, 0), (0, 0, 1), (0.5, 0.5, 0), (0.5, 0, 0.5), (0, 0.5, 0.5)} < vectors
    assert (round(1 / 3, 6),) * 3 in vectors
    for point in lambda_grid(DIMS) + lambda_grid(["w", "x", "y", "z"]):
        assert all(v >= 0 for v in point.values()) and sum(point.values()) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("m", "n", "count"), [(3, 3, 10), (3, 2, 7), (4, 3, 21), (4, 4, 35), (2, 3, 5), (1, 3, 1)]
)
def test_lambda_grid_counts(m, n, count):
    # C(n+m−1, m−1) lattice points, plus the centre when m does not divide n
    assert len(lambda_grid([f"d{i}" for i in range(m)], n)) == count
    assert math.comb(n + m - 1, m - 1) + (n % m != 0) == count


def test_lambda_grid_default_and_errors():
    default = lambda_grid(DIMS)
    assert len(default) >= 10 and {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3} in default
    with pytest.raises(ValueError, match="distinct"):
        lambda_grid(["a", "a"])
    with pytest.raises(ValueError, match="positive integer"):
        lambda_grid(DIMS, n=0)


def test_steerable_generator_is_controllable():
    result = evaluate_controllability(
        steerable_sample_fn, count_letters, PROMPTS, DIMS, num_samples=2, keep_responses=True, progress=False
    )
    grid_size = len(lambda_grid(DIMS))
    assert result.scores.shape == (grid_size, len(PROMPTS), 2, 3)
    assert result.mean_scores.shape == result.std_scores.shape == (grid_size, 3)
    for d in DIMS:
        assert result.spearman_rows[d] > 0.9
        assert result.spearman_means[d] > 0.9
    # the one-hot vertex of "a" has ~10 a's on average
    vertex = result.grid.index({"a": 1.0, "b": 0.0, "c": 0.0})
    assert 10 <= result.mean_scores[vertex, 0] <= 12
    assert result.pareto_indices == pareto_front(result.mean_scores).tolist()
    assert result.hypervolume > 0
    assert result.hypervolume == pytest.approx(hypervolume(result.mean_scores, result.reference_point))
    assert len(result.responses) == grid_size and result.responses[vertex][0][0].startswith("a" * 10)


def test_lambda_blind_generator_is_not_controllable():
    result = evaluate_controllability(
        blind_sample_fn_factory(), count_letters, PROMPTS, DIMS, num_samples=2, progress=False
    )
    for d in DIMS:
        assert abs(result.spearman_rows[d]) < 0.2, (d, result.spearman_rows)


def test_result_serialises_and_round_trips():
    result = evaluate_controllability(steerable_sample_fn, count_letters, PROMPTS[:3], DIMS, progress=False)
    data = json.loads(json.dumps(result.to_dict(), allow_nan=False))
    assert data["dimensions"] == DIMS and data["num_prompts"] == 3 and data["num_samples"] == 1
    assert data["hypervolume"] == pytest.approx(result.hypervolume)
    again = ControllabilityResult.from_dict(data)
    np.testing.assert_allclose(again.mean_scores, result.mean_scores)
    assert again.spearman_rows == pytest.approx(result.spearman_rows)
    assert again.pareto_indices == result.pareto_indices
    table = result.to_markdown()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert len(rows) == len(result.grid) + 1 and "Hypervolume" in table and "✓" in table


def test_single_dimension_has_no_correlation_to_report():
    result = evaluate_controllability(
        steerable_sample_fn, lambda p, r: {"a": float(len(r))}, PROMPTS[:2], ["a"], progress=False
    )
    assert len(result.grid) == 1 and math.isnan(result.spearman_rows["a"])
    assert json.dumps(result.to_dict(), allow_nan=False)  # NaN is written as null


def test_shared_reference_point_compares_models():
    steer = evaluate_controllability(steerable_sample_fn, count_letters, PROMPTS[:4], DIMS, progress=False)
    blind = evaluate_controllability(
        blind_sample_fn_factory(), count_letters, PROMPTS[:4], DIMS, progress=False
    )
    ref = np.zeros(3) - 0.5
    shared = evaluate_controllability(
        steerable_sample_fn, count_letters, PROMPTS[:4], DIMS, reference_point=ref, progress=False
    )
    assert shared.hypervolume == pytest.approx(steer.hypervolume_at(ref))
    reference_point, volumes = shared_hypervolumes({"steer": steer, "blind": blind})
    assert np.all(reference_point < np.minimum(steer.mean_scores.min(0), blind.mean_scores.min(0)))
    assert volumes["steer"] == pytest.approx(steer.hypervolume_at(reference_point))
    # same letter budget, but only the steerable generator reaches the vertices (~10 of one letter); the λ-blind
    # one stays near the centre (~3.7 of each) wherever λ points
    assert volumes["steer"] > volumes["blind"] > 0


def test_bad_callables_and_grid_are_reported():
    with pytest.raises(ValueError, match="must return 20 lists"):
        evaluate_controllability(lambda p, lam, s: [["x"]], count_letters, PROMPTS, DIMS, progress=False)
    with pytest.raises(ValueError, match=r"no score for \['c'\]"):
        evaluate_controllability(
            steerable_sample_fn, lambda p, r: {"a": 1.0, "b": 2.0}, PROMPTS, DIMS, progress=False
        )
    with pytest.raises(ValueError, match="not on the simplex"):
        evaluate_controllability(
            steerable_sample_fn, count_letters, PROMPTS, DIMS, grid=[{"a": 0.7, "b": 0.7}], progress=False
        )


def test_plots_write_png_files(tmp_path):
    results = {
        "steerable": evaluate_controllability(
            steerable_sample_fn, count_letters, PROMPTS[:5], DIMS, progress=False
        ),
        "blind": evaluate_controllability(
            blind_sample_fn_factory(), count_letters, PROMPTS[:5], DIMS, progress=False
        ),
    }
    paths = [
        plot_score_vs_lambda(results, tmp_path / "score_vs_lambda.png"),
        plot_pareto(results, tmp_path / "pareto_a_c.png", dims=("a", "c")),
        plot_pareto_grid(results, tmp_path / "plots" / "pareto.png"),
    ]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == sorted(p.name for p in paths)
    with pytest.raises(ValueError, match="two different dimensions"):
        plot_pareto(results, tmp_path / "bad.png", dims=("a", "z"))
