"""The `learned` λ schedule (issue #7): simplex samples, the update rule, the exploration floor, resuming, errors."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lambda_dpo.lambdas import make_schedule, simplex_grid

DIMS = ["helpfulness", "honesty", "instruction_following", "truthfulness"]
WEAK = 2  # instruction_following: the dimension made artificially weak below
NAN = math.nan


def weak_signals(gap: float = 0.3) -> dict[str, torch.Tensor]:
    """What ScheduleUpdateCallback passes after trainer.evaluate(): per-dimension held-out loss and accuracy, one dimension lagging."""
    loss = torch.ones(len(DIMS))
    loss[WEAK] += gap
    accuracy = torch.full((len(DIMS),), 0.8)
    accuracy[WEAK] -= gap
    return {"loss": loss, "accuracy": accuracy}


def mass_near(schedule, dimension: int, threshold: float = 0.5) -> float:
    """Probability of drawing a grid point whose weight on ``dimension`` is at least ``threshold``."""
    return schedule.probabilities()[schedule.grid[:, dimension] >= threshold].sum().item()


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 40),
    grid_size=st.integers(1, 6),
    exploration=st.floats(0.0, 1.0),
    concentration=st.one_of(st.none(), st.floats(0.01, 1e4)),
    losses=st.lists(st.lists(st.floats(0.0, 10.0) | st.just(NAN), min_size=4, max_size=4), max_size=4),
)
def test_samples_stay_on_the_simplex_before_and_after_updates(
    seed, n, grid_size, exploration, concentration, losses
):
    schedule = make_schedule(
        "learned", DIMS, seed=seed, grid_size=grid_size, exploration=exploration, concentration=concentration
    )
    for step, loss in enumerate(losses):
        schedule.update(step, {"loss": torch.tensor(loss), "accuracy": torch.full((4,), 0.5)})
        lambdas = schedule.sample(n)
        assert lambdas.shape == (n, 4) and lambdas.dtype == torch.float32
        assert torch.isfinite(lambdas).all() and (lambdas >= 0).all()
        assert torch.allclose(lambdas.sum(-1), torch.ones(n), atol=1e-6, rtol=0)
        probabilities = schedule.probabilities()
        assert probabilities.sum().item() == pytest.approx(1.0, abs=1e-12)
        assert (probabilities >= exploration / len(probabilities) - 1e-12).all()


def test_starts_uniform_over_the_grid():
    schedule = make_schedule("learned", DIMS, seed=0)
    assert torch.equal(schedule.grid, simplex_grid(4, 4).double())
    assert torch.allclose(schedule.probabilities(), torch.full((35,), 1 / 35, dtype=torch.float64))
    stats = schedule.stats()
    assert stats["lambda_schedule/entropy"] == pytest.approx(math.log(35))
    assert stats["lambda_schedule/entropy_normalised"] == pytest.approx(1.0)
    assert stats["lambda_schedule/updates"] == 0.0
    assert torch.allclose(schedule.sample(20000).mean(0), torch.full((4,), 0.25), atol=0.01)


@pytest.mark.parametrize("signal_keys", [("loss", "accuracy"), ("loss",), ("accuracy",)])
def test_mass_moves_toward_an_artificially_weak_dimension(signal_keys):
    schedule = make_schedule("learned", DIMS, seed=0, exploration=0.2)
    mass_before, entropy_before = mass_near(schedule, WEAK), schedule.stats()["lambda_schedule/entropy"]
    for step in range(10, 110, 10):
        schedule.update(step, {key: value for key, value in weak_signals().items() if key in signal_keys})

    stats = schedule.stats()
    assert mass_near(schedule, WEAK) > 2 * mass_before, (mass_before, mass_near(schedule, WEAK))
    assert [stats[f"lambda_schedule/top/{d}"] for d in DIMS] == [0.0, 0.0, 1.0, 0.0]  # the weak corner
    assert stats["lambda_schedule/entropy"] < entropy_before
    assert stats["lambda_schedule/updates"] == 10.0
    means = schedule.sample(4000).mean(0)
    assert means[WEAK] > 0.4 and (means[[0, 1, 3]] < 0.2).all(), means
    # Every grid point keeps the exploration floor: no region is abandoned.
    assert schedule.probabilities().min().item() >= 0.2 / 35 - 1e-12


def test_the_floor_holds_even_under_an_extreme_lag():
    schedule = make_schedule("learned", DIMS, seed=0, exploration=0.1, learning_rate=1.0, temperature=0.01)
    schedule.update(0, {"loss": torch.tensor([0.0, 0.0, 5.0, 0.0])})
    probabilities = schedule.probabilities()
    assert probabilities.max().item() == pytest.approx(0.9 + 0.1 / 35)  # softmax saturated on the weak corner
    assert probabilities.min().item() == pytest.approx(0.1 / 35)
    assert (schedule.sample(5000)[:, WEAK] < 0.5).float().mean() > 0.05  # other regions are still drawn


def test_logits_follow_the_documented_rule_and_converge_to_boltzmann():
    eta, temperature = 0.5, 0.2
    schedule = make_schedule("learned", DIMS, seed=0, learning_rate=eta, temperature=temperature)
    loss = torch.tensor([1.0, 0.5, 2.0, NAN])  # truthfulness: no held-out pair → neutral
    known_mean = (1.0 + 0.5 + 2.0) / 3
    lag = torch.tensor(
        [1.0 / known_mean - 1, 0.5 / known_mean - 1, 2.0 / known_mean - 1, 0.0], dtype=torch.float64
    )
    key, computed = schedule.lag({"loss": loss})
    assert key == "loss" and torch.allclose(computed, lag)

    target = schedule.grid @ lag / temperature
    schedule.update(1, {"loss": loss})
    assert torch.allclose(schedule.logits, eta * target)
    for step in range(2, 40):
        schedule.update(step, {"loss": loss})
    expected = 0.8 * torch.softmax(target, 0) + 0.2 / len(target)
    assert torch.allclose(schedule.probabilities(), expected, atol=1e-9)


def test_accuracy_lag_is_the_shortfall_from_the_mean():
    schedule = make_schedule("learned", DIMS, signal="accuracy")
    key, lag = schedule.lag(
        {"loss": torch.tensor([9.0, 1.0, 1.0, 1.0]), "accuracy": torch.tensor([0.9, 0.7, NAN, 0.5])}
    )
    assert key == "accuracy"
    assert torch.allclose(lag, torch.tensor([-0.2, 0.0, 0.0, 0.2], dtype=torch.float64))


def test_distribution_relaxes_back_once_the_weak_dimension_catches_up():
    schedule = make_schedule("learned", DIMS, seed=0)
    for step in range(5):
        schedule.update(step, weak_signals())
    skewed = mass_near(schedule, WEAK)
    for step in range(5, 25):
        schedule.update(step, {"loss": torch.full((4,), 0.7)})
    assert skewed > 0.5 and mass_near(schedule, WEAK) == pytest.approx(10 / 35, abs=1e-4)  # uniform share
    assert schedule.stats()["lambda_schedule/entropy_normalised"] > 0.999


def test_missing_values_fall_back_then_skip_with_a_warning():
    all_nan = torch.full((4,), NAN)
    schedule = make_schedule("learned", DIMS, seed=0)
    schedule.update(
        1, {"loss": all_nan, "accuracy": torch.tensor([0.8, 0.8, 0.2, 0.8])}
    )  # falls back to accuracy
    assert schedule.num_updates == 1 and mass_near(schedule, WEAK) > mass_near(schedule, 0)

    before = schedule.probabilities()
    with pytest.warns(UserWarning, match="at step 2 every held-out 'loss' and 'accuracy' value is missing"):
        schedule.update(2, {"loss": all_nan, "accuracy": all_nan})
    assert schedule.num_updates == 1 and torch.equal(schedule.probabilities(), before)


@pytest.mark.parametrize("concentration", [50.0, None])
def test_state_round_trip_resumes_the_same_draws_and_distribution(concentration, tmp_path):
    schedule = make_schedule("learned", DIMS, seed=3, concentration=concentration)
    schedule.sample(17)
    schedule.update(10, weak_signals())
    state = schedule.state_dict()
    torch.save(state, tmp_path / "lambda_schedule.pt")

    def continue_run(s):
        draws = [s.sample(9)]
        s.update(20, weak_signals(gap=0.1))
        draws.append(s.sample(9))
        s.update(30, {"loss": torch.tensor([1.0, 2.0, 1.0, NAN])})
        draws.append(s.sample(9))
        return torch.cat(draws), s.probabilities(), s.stats()

    expected = continue_run(schedule)
    for source in (state, torch.load(tmp_path / "lambda_schedule.pt", weights_only=True)):
        resumed = make_schedule("learned", DIMS, seed=999, concentration=concentration)
        resumed.load_state_dict(source)
        assert resumed.num_updates == 1 and resumed.last_update_step == 10 and resumed.num_sampled == 17
        draws, probabilities, stats = continue_run(resumed)
        assert torch.equal(draws, expected[0])
        assert torch.equal(probabilities, expected[1])
        assert stats == expected[2]


def test_lattice_draws_without_jitter_and_near_lattice_draws_with_it():
    exact = make_schedule("learned", DIMS, seed=0, concentration=None).sample(500)
    lattice = {tuple(row) for row in simplex_grid(4, 4).tolist()}
    assert {tuple(row) for row in exact.tolist()} <= lattice

    jittered = make_schedule("learned", DIMS, seed=0, concentration=200.0).sample(500)
    distance = torch.cdist(jittered.double(), simplex_grid(4, 4).double()).min(-1).values
    assert (distance > 0).all() and distance.mean() < 0.1


def test_state_from_another_grid_is_refused():
    state = make_schedule("learned", DIMS, grid_size=3).state_dict()
    with pytest.raises(ValueError, match="has 20 grid weights but grid_size=4 over 4 dimensions has 35"):
        make_schedule("learned", DIMS).load_state_dict(state)
    with pytest.raises(ValueError, match="no 'logits'"):
        make_schedule("learned", DIMS).load_state_dict(make_schedule("uniform", DIMS).state_dict())


def test_options_are_recorded():
    schedule = make_schedule("learned", DIMS, grid_size=2, concentration=None, signal="accuracy")
    assert schedule.options() == {
        "grid_size": 2,
        "exploration": 0.2,
        "learning_rate": 0.5,
        "temperature": 0.1,
        "concentration": None,
        "signal": "accuracy",
    }
    assert schedule.state_dict()["options"] == schedule.options()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"grid_size": 0}, "grid_size must be an integer >= 1"),
        ({"grid_size": 2.5}, "grid_size must be an integer >= 1"),
        ({"grid_size": 200}, "gives 1373701 grid points .* choose a smaller grid_size"),
        ({"exploration": 1.5}, r"exploration must be in \[0, 1\], got 1.5"),
        ({"exploration": NAN}, r"exploration must be in \[0, 1\]"),
        ({"learning_rate": 0.0}, r"learning_rate must be in \(0, 1\]"),
        ({"temperature": -1.0}, "temperature must be a finite number > 0"),
        ({"temperature": math.inf}, "temperature must be a finite number > 0"),
        ({"concentration": 0.0}, r"concentration must be a finite number > 0 \(or None for no jitter\)"),
        ({"concentration": "high"}, "concentration must be a finite number > 0"),
        ({"signal": "margin"}, r"signal must be one of \['loss', 'accuracy'\], got 'margin'"),
        ({"step": 3}, r"has no option\(s\) \['step'\]; its options: grid_size, exploration"),
    ],
)
def test_bad_options_raise_actionable_errors(options, message):
    with pytest.raises(ValueError, match=message):
        make_schedule("learned", DIMS, **options)


@pytest.mark.parametrize(
    ("signals", "message"),
    [
        (
            {"eval_loss": torch.ones(4)},
            r"needs held-out per-dimension 'loss' or 'accuracy' .* got keys \['eval_loss'\]",
        ),
        ({"loss": torch.ones(3)}, r"signal 'loss' has shape \(3,\), expected \(4,\)"),
        ({"loss": torch.ones(4, 1)}, r"signal 'loss' has shape \(4, 1\)"),
        ({"loss": torch.tensor([1.0, -0.5, 1.0, 1.0])}, r"'loss' must be >= 0 .* \{'honesty': -0.5\}"),
        (
            {"accuracy": [0.5, 0.5, 1.5, 0.5]},
            r"'accuracy' must be in \[0, 1\]; .*'instruction_following': 1.5",
        ),
        ({"loss": "low"}, "signal 'loss' must be a Tensor"),
    ],
)
def test_bad_signals_raise_actionable_errors(signals, message):
    schedule = make_schedule("learned", DIMS)
    with pytest.raises(ValueError, match=message):
        schedule.update(1, signals)
    assert schedule.num_updates == 0


def test_the_schedule_update_callback_hands_the_eval_metrics_in_dimension_order():
    from transformers import TrainerControl, TrainerState

    from lambda_dpo.callbacks import ScheduleUpdateCallback

    schedule = make_schedule("learned", DIMS, seed=0)
    direct = make_schedule("learned", DIMS, seed=0)
    signals = weak_signals()
    metrics = {f"eval_{key}/{d}": signals[key][i].item() for key in ("loss", "accuracy") for i, d in enumerate(DIMS)}
    metrics["eval_loss"] = 1.0
    state = TrainerState()
    state.global_step = 7
    ScheduleUpdateCallback(schedule, DIMS).on_evaluate(None, state, TrainerControl(), metrics=metrics)
    direct.update(7, signals)
    torch.testing.assert_close(schedule.logits, direct.logits)
    assert schedule.last_update_step == 7 and mass_near(schedule, WEAK) > mass_near(make_schedule("learned", DIMS), WEAK)
