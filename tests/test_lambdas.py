"""λ schedules (docs/spec.md §1, "λ schedules"): simplex, distributions, reproducibility, checkpoint state, errors."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lambda_dpo.lambdas import SCHEDULES, LambdaSchedule, make_schedule, simplex_grid

DIMS = ["helpfulness", "honesty", "instruction_following", "truthfulness"]

CASES = [
    ("fixed", {}),
    ("fixed", {"weights": "helpfulness=0.7,honesty=0.3"}),
    ("fixed", {"weights": [0.1, 0.2, 0.3, 0.4]}),
    ("unimodal", {}),
    ("unimodal", {"probs": {"honesty": 1.0, "truthfulness": 3.0}}),
    ("unimodal", {"uniform_fraction": 0.3}),
    ("uniform", {}),
    ("dirichlet", {"alpha": 0.05}),
    ("dirichlet", {"alpha": [5.0, 1.0, 1.0, 1.0]}),
    ("gaussian", {}),
    ("gaussian", {"mu": [3.0, 0.0, 0.0, -1.0], "sigma": 4.0}),
    ("learned", {}),
    ("learned", {"grid_size": 2, "concentration": None, "exploration": 0.0}),
]
RANDOM_CASES = [(name, options) for name, options in CASES if name != "fixed"]


def assert_on_simplex(lambdas: torch.Tensor, n: int, m: int) -> None:
    assert lambdas.shape == (n, m)
    assert lambdas.dtype == torch.float32
    assert torch.isfinite(lambdas).all()
    assert (lambdas >= 0).all()
    assert torch.allclose(lambdas.sum(-1), torch.ones(n), atol=1e-6, rtol=0)


@pytest.mark.parametrize(("name", "options"), CASES)
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 50))
def test_samples_lie_on_the_simplex(name, options, seed, n):
    assert_on_simplex(make_schedule(name, DIMS, seed=seed, **options).sample(n), n, len(DIMS))


@pytest.mark.parametrize("name", ["fixed", "unimodal", "uniform", "gaussian", "learned"])
def test_one_dimension_always_gives_weight_one(name):
    assert torch.equal(make_schedule(name, ["helpfulness"]).sample(5), torch.ones(5, 1))
    assert torch.equal(make_schedule("dirichlet", ["helpfulness"], alpha=0.3).sample(5), torch.ones(5, 1))


def test_registry_holds_every_spec_schedule():
    assert set(SCHEDULES) == {"fixed", "unimodal", "uniform", "dirichlet", "gaussian", "learned"}
    assert all(issubclass(cls, LambdaSchedule) and cls.name == name for name, cls in SCHEDULES.items())


def test_fixed_returns_the_given_vector_default_uniform():
    assert torch.equal(make_schedule("fixed", DIMS).sample(3), torch.full((3, 4), 0.25))
    from_text = make_schedule("fixed", DIMS, weights="honesty=0.6,truthfulness=0.4").sample(2)
    from_mapping = make_schedule("fixed", DIMS, weights={"truthfulness": 0.4, "honesty": 0.6}).sample(2)
    assert torch.equal(from_text, torch.tensor([[0.0, 0.6, 0.0, 0.4]] * 2))
    assert torch.equal(from_mapping, from_text)


def test_unimodal_draws_one_hot_vectors_of_every_dimension():
    lambdas = make_schedule("unimodal", DIMS, seed=3).sample(400)
    assert set(lambdas.flatten().tolist()) == {0.0, 1.0}
    assert torch.equal(lambdas.sum(-1), torch.ones(400))
    counts = lambdas.sum(0)
    assert (counts > 60).all(), f"each of 4 dimensions should get ~100 of 400 draws, got {counts.tolist()}"


def test_unimodal_probs_weight_the_dimensions():
    lambdas = make_schedule("unimodal", DIMS, seed=0, probs=[1.0, 0.0, 3.0, 0.0]).sample(4000)
    share = lambdas.mean(0)
    assert share[1] == 0 and share[3] == 0
    assert share[2].item() == pytest.approx(0.75, abs=0.03)


def test_uniform_is_dirichlet_one_with_the_right_moments():
    m, n = len(DIMS), 20000
    lambdas = make_schedule("uniform", DIMS, seed=0).sample(n)
    assert torch.equal(lambdas, make_schedule("dirichlet", DIMS, seed=0, alpha=1.0).sample(n))
    assert torch.allclose(lambdas.mean(0), torch.full((m,), 1 / m), atol=0.01)
    # Marginal of Dirichlet(1,…,1): Beta(1, m-1), variance (m-1) / (m²(m+1)) = 0.0375 for m = 4.
    assert torch.allclose(lambdas.var(0), torch.full((m,), (m - 1) / (m**2 * (m + 1))), atol=0.003)


def test_dirichlet_mean_is_alpha_over_its_sum():
    alpha = torch.tensor([5.0, 1.0, 2.0, 0.5])
    lambdas = make_schedule("dirichlet", DIMS, seed=1, alpha=alpha.tolist()).sample(20000)
    assert torch.allclose(lambdas.mean(0), alpha / alpha.sum(), atol=0.01)


def test_small_dirichlet_alpha_concentrates_near_the_corners():
    sparse = make_schedule("dirichlet", DIMS, seed=0, alpha=0.05).sample(2000).max(-1).values.mean()
    dense = make_schedule("dirichlet", DIMS, seed=0, alpha=50.0).sample(2000).max(-1).values.mean()
    assert sparse > 0.9 and dense < 0.35


def test_gaussian_with_large_mu_on_one_dimension_favours_it():
    lambdas = make_schedule(
        "gaussian",
        DIMS,
        seed=0,
        mu={"helpfulness": 4.0, "honesty": 0.0, "instruction_following": 0.0, "truthfulness": 0.0},
    ).sample(2000)
    assert lambdas[:, 0].mean() > 0.8
    assert (lambdas.argmax(-1) == 0).float().mean() > 0.9


def test_gaussian_default_is_symmetric_and_sigma_sharpens():
    lambdas = make_schedule("gaussian", DIMS, seed=0).sample(20000)
    assert torch.allclose(lambdas.mean(0), torch.full((4,), 0.25), atol=0.01)
    wide = make_schedule("gaussian", DIMS, seed=0, sigma=5.0).sample(2000).max(-1).values.mean()
    narrow = make_schedule("gaussian", DIMS, seed=0, sigma=0.1).sample(2000).max(-1).values.mean()
    assert wide > 0.8 and narrow < 0.3


@pytest.mark.parametrize(("name", "options"), RANDOM_CASES)
def test_same_seed_same_draws_different_seed_different_draws(name, options):
    first = make_schedule(name, DIMS, seed=7, **options).sample(64)
    assert torch.equal(first, make_schedule(name, DIMS, seed=7, **options).sample(64))
    assert not torch.equal(first, make_schedule(name, DIMS, seed=8, **options).sample(64))


@pytest.mark.parametrize(("name", "options"), RANDOM_CASES)
def test_draws_neither_use_nor_disturb_the_global_rng(name, options):
    torch.manual_seed(0)
    expected_global = torch.rand(3)
    torch.manual_seed(0)
    draws = make_schedule(name, DIMS, seed=5, **options).sample(16)
    assert torch.equal(torch.rand(3), expected_global)
    torch.manual_seed(123)
    assert torch.equal(make_schedule(name, DIMS, seed=5, **options).sample(16), draws)


@pytest.mark.parametrize(("name", "options"), CASES)
def test_state_dict_round_trip_through_torch_save_continues_the_sequence(name, options, tmp_path):
    schedule = make_schedule(name, DIMS, seed=11, **options)
    schedule.sample(37)
    state = schedule.state_dict()
    expected = schedule.sample(20)  # drawn after the snapshot: the snapshot must not alias the live generator

    resumed_in_memory = make_schedule(name, DIMS, seed=999, **options)
    resumed_in_memory.load_state_dict(state)
    assert torch.equal(resumed_in_memory.sample(20), expected)

    torch.save(state, tmp_path / "lambda_schedule.pt")
    resumed_from_disk = make_schedule(name, DIMS, seed=999, **options)
    resumed_from_disk.load_state_dict(torch.load(tmp_path / "lambda_schedule.pt", weights_only=True))
    assert torch.equal(resumed_from_disk.sample(20), expected)
    assert resumed_from_disk.num_sampled == 57


def test_state_dict_records_what_was_drawn():
    schedule = make_schedule("dirichlet", DIMS, seed=2, alpha=[1, 2, 3, 4])
    schedule.sample(5)
    state = schedule.state_dict()
    assert state["name"] == "dirichlet" and state["dimensions"] == DIMS and state["seed"] == 2
    assert state["options"] == {"alpha": [1.0, 2.0, 3.0, 4.0]} and state["num_sampled"] == 5


@pytest.mark.parametrize(
    ("other_name", "other_dims"), [("gaussian", DIMS), ("uniform", DIMS[:3]), ("uniform", DIMS[::-1])]
)
def test_load_state_dict_refuses_a_different_schedule(other_name, other_dims):
    state = make_schedule(other_name, other_dims).state_dict()
    with pytest.raises(ValueError, match="resume with the same lambda_schedule and dimensions"):
        make_schedule("uniform", DIMS).load_state_dict(state)
    with pytest.raises(ValueError, match="missing"):
        make_schedule("uniform", DIMS).load_state_dict({"name": "uniform"})


def test_update_hook_is_a_no_op_for_fixed_distributions():
    schedule, untouched = make_schedule("uniform", DIMS, seed=4), make_schedule("uniform", DIMS, seed=4)
    schedule.update(step=10, signals={"eval_loss": torch.tensor([0.9, 0.1, 0.5, 0.3])})
    assert torch.equal(schedule.sample(8), untouched.sample(8))
    assert schedule.stats() == {}


def test_describe_and_repr_name_the_schedule_and_options():
    schedule = make_schedule("gaussian", DIMS, seed=3, mu=1.0, sigma=0.5)
    assert schedule.describe() == (
        "gaussian(dimensions=['helpfulness', 'honesty', 'instruction_following', 'truthfulness'], "
        "mu=[1.0, 1.0, 1.0, 1.0], sigma=0.5, seed=3)"
    )
    assert repr(schedule) == f"GaussianSchedule:{schedule.describe()}"


@pytest.mark.parametrize(
    ("name", "dimensions", "options", "message"),
    [
        (
            "uniformm",
            DIMS,
            {},
            "unknown λ schedule 'uniformm'; choose one of: dirichlet, fixed, gaussian, learned, uniform",
        ),
        ("uniform", DIMS, {"alpha": 2.0}, r"'uniform' has no option\(s\) \['alpha'\]; its options: none"),
        ("gaussian", DIMS, {"scale": 2.0}, r"its options: mu, sigma"),
        ("dirichlet", DIMS, {}, r"needs the option\(s\) \['alpha'\]"),
        ("dirichlet", DIMS, {"alpha": -1.0}, "every alpha must be > 0"),
        ("dirichlet", DIMS, {"alpha": 0.0}, "every alpha must be > 0"),
        ("dirichlet", DIMS, {"alpha": [1.0, 1.0]}, "got 2 values .* but there are 4 dimensions"),
        ("dirichlet", DIMS, {"alpha": {"honesty": 1.0}}, r"no value for dimension\(s\) \['helpfulness'"),
        (
            "dirichlet",
            DIMS,
            {"alpha": {"safety": 1.0}},
            r"unknown dimension\(s\) \['safety'\]; known dimensions",
        ),
        ("dirichlet", DIMS, {"alpha": "big"}, "expected a number, a list or a mapping"),
        ("dirichlet", DIMS, {"alpha": math.nan}, "must be finite"),
        ("gaussian", DIMS, {"sigma": 0.0}, "sigma must be a finite number > 0"),
        ("gaussian", DIMS, {"sigma": -1.0}, "sigma must be a finite number > 0"),
        ("gaussian", DIMS, {"sigma": math.inf}, "sigma must be a finite number > 0"),
        ("gaussian", DIMS, {"mu": [0.0, 1.0, 2.0]}, "got 3 values .* but there are 4 dimensions"),
        ("fixed", DIMS, {"weights": [0.5, 0.2, 0.2, 0.2]}, "not on the simplex .* sum to 1.1"),
        ("fixed", DIMS, {"weights": [1.5, -0.5, 0.0, 0.0]}, "not on the simplex"),
        ("fixed", DIMS, {"weights": [0.5, 0.5]}, "got 2 values"),
        ("fixed", DIMS, {"weights": "helpfulness=0.5,safety=0.5"}, "unknown dimension 'safety'"),
        ("fixed", DIMS, {"weights": "helpfulness=0.5"}, "must sum to 1"),
        ("unimodal", DIMS, {"probs": [0.0, 0.0, 0.0, 0.0]}, "must be >= 0 with a positive sum"),
        ("unimodal", DIMS, {"probs": [1.0, -1.0, 1.0, 1.0]}, "must be >= 0 with a positive sum"),
        ("uniform", [], {}, "needs at least one dimension"),
        ("uniform", ["honesty", "honesty"], {}, r"must be unique, repeated: \['honesty'\]"),
    ],
)
def test_bad_names_and_options_raise_actionable_errors(name, dimensions, options, message):
    with pytest.raises(ValueError, match=message):
        make_schedule(name, dimensions, **options)


@pytest.mark.parametrize("n", [-1, 2.5, True])
def test_sample_rejects_a_bad_count(n):
    with pytest.raises(ValueError, match="integer n >= 0"):
        make_schedule("uniform", DIMS).sample(n)


def test_simplex_grid_m3_n2_is_corners_and_edge_midpoints():
    grid = simplex_grid(3, 2)
    expected = {
        (1.0, 0.0, 0.0),
        (0.0, 1.0, 0.0),
        (0.0, 0.0, 1.0),
        (0.5, 0.5, 0.0),
        (0.5, 0.0, 0.5),
        (0.0, 0.5, 0.5),
    }
    assert grid.shape == (6, 3)
    assert set(map(tuple, grid.tolist())) == expected


@settings(max_examples=40, deadline=None)
@given(m=st.integers(1, 5), n=st.integers(1, 8))
def test_simplex_grid_counts_and_lies_on_the_simplex(m, n):
    grid = simplex_grid(m, n)
    assert_on_simplex(grid, math.comb(n + m - 1, m - 1), m)
    assert len(set(map(tuple, grid.tolist()))) == len(grid)  # no point twice
    counts = grid * n
    assert torch.allclose(counts, counts.round(), atol=1e-5)  # entries are multiples of 1/n


@pytest.mark.parametrize(("m", "n"), [(0, 2), (3, 0)])
def test_simplex_grid_rejects_empty_requests(m, n):
    with pytest.raises(ValueError, match="needs m >= 1 dimensions and n >= 1 steps"):
        simplex_grid(m, n)


def test_unimodal_uniform_fraction_mixes_in_uniform_draws_and_zero_keeps_the_one_hot_stream():
    dims = ["a", "b", "c"]
    plain = make_schedule("unimodal", dims, seed=3).sample(500)
    assert torch.equal(make_schedule("unimodal", dims, seed=3, uniform_fraction=0.0).sample(500), plain)
    mixed = make_schedule("unimodal", dims, seed=3, uniform_fraction=0.3).sample(4000)
    assert_on_simplex(mixed, 4000, 3)
    interior = (mixed.max(-1).values < 1.0).float().mean().item()
    assert 0.27 < interior < 0.33
    assert (make_schedule("unimodal", dims, seed=3, uniform_fraction=1.0).sample(200).max(-1).values < 1.0).all()
    with pytest.raises(ValueError, match="uniform_fraction"):
        make_schedule("unimodal", dims, uniform_fraction=1.5)
