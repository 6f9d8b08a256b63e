"""λ ⇄ text (docs/spec.md §1, "Steering needs conditioning"; docs/spec.md §3, `generate --lambda`)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lambda_dpo.conditioning import DEFAULT_TEMPLATE, parse_lambda, render_lambda, with_conditioning

DIMS = ["helpfulness", "honesty", "instruction_following", "truthfulness"]


def test_render_matches_the_spec_example():
    text = render_lambda([0.5, 0.2, 0.2, 0.1], DIMS)
    assert text == (
        "Preference weights: helpfulness=0.50 honesty=0.20 instruction_following=0.20 truthfulness=0.10"
    )


def test_render_uses_dataset_order_and_two_decimals_whatever_the_input_form():
    from_mapping = render_lambda({"truthfulness": 1 / 3, "helpfulness": 2 / 3}, DIMS)
    assert from_mapping == (
        "Preference weights: helpfulness=0.67 honesty=0.00 instruction_following=0.00 truthfulness=0.33"
    )
    assert render_lambda(torch.tensor([2 / 3, 0.0, 0.0, 1 / 3]), DIMS) == from_mapping


def test_render_fills_a_custom_template():
    text = render_lambda([1.0, 0.0], ["concise", "polite"], template="<steer>{weights}</steer>")
    assert text == "<steer>concise=1.00 polite=0.00</steer>"
    assert DEFAULT_TEMPLATE.format(weights="x") == "Preference weights: x"


@pytest.mark.parametrize(
    ("lambdas", "template", "message"),
    [
        ([0.5, 0.5], DEFAULT_TEMPLATE, "λ has 2 values but there are 4 dimensions"),
        (
            {"safety": 1.0},
            DEFAULT_TEMPLATE,
            r"unknown dimension\(s\) \['safety'\]; known dimensions: \['helpfulness'",
        ),
        ([0.25] * 4, "Preference weights: {w}", "must contain the field '{weights}'"),
    ],
)
def test_render_rejects_bad_input(lambdas, template, message):
    with pytest.raises(ValueError, match=message):
        render_lambda(lambdas, DIMS, template=template)


def test_with_conditioning_puts_the_lambda_line_first():
    assert (
        with_conditioning("You are terse.", "Preference weights: a=1.00")
        == "Preference weights: a=1.00\nYou are terse."
    )
    assert with_conditioning(None, "Preference weights: a=1.00") == "Preference weights: a=1.00"
    assert with_conditioning("", "Preference weights: a=1.00") == "Preference weights: a=1.00"


def test_parse_fills_unlisted_dimensions_with_zero():
    assert parse_lambda("helpfulness=0.7,honesty=0.3", DIMS) == {
        "helpfulness": 0.7,
        "honesty": 0.3,
        "instruction_following": 0.0,
        "truthfulness": 0.0,
    }


def test_parse_tolerates_spaces_and_space_separated_entries():
    expected = {"helpfulness": 0.25, "honesty": 0.75, "instruction_following": 0.0, "truthfulness": 0.0}
    assert parse_lambda(" helpfulness = 0.25 , honesty=0.75 ", DIMS) == expected
    assert parse_lambda("helpfulness=0.25 honesty=0.75", DIMS) == expected


def test_parse_requires_a_sum_of_one_unless_normalize():
    assert parse_lambda("helpfulness=0.3333333,honesty=0.6666667", DIMS)["honesty"] == pytest.approx(
        0.6666667
    )
    with pytest.raises(ValueError, match=r"must sum to 1 \(they sum to 0.9 .*pass normalize=True"):
        parse_lambda("helpfulness=0.6,honesty=0.3", DIMS)
    with pytest.raises(ValueError, match="must sum to 1"):
        parse_lambda("helpfulness=0.5,honesty=0.500002", DIMS)
    normalised = parse_lambda("helpfulness=2,truthfulness=6", DIMS, normalize=True)
    assert normalised == {
        "helpfulness": 0.25,
        "honesty": 0.0,
        "instruction_following": 0.0,
        "truthfulness": 0.75,
    }
    with pytest.raises(ValueError, match="no positive weight"):
        parse_lambda("helpfulness=0", DIMS, normalize=True)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("helpfulness=-0.5,honesty=1.5", r"weight of 'helpfulness' must be a finite number ≥ 0, got '-0.5'"),
        ("helpfulness=nan", "must be a finite number ≥ 0"),
        ("helpfulness=inf", "must be a finite number ≥ 0"),
        (
            "safety=1.0",
            r"unknown dimension 'safety' .*known dimensions: \['helpfulness', 'honesty', "
            r"'instruction_following', 'truthfulness'\]",
        ),
        ("honesty=0.5,honesty=0.5", "dimension 'honesty' is given twice"),
        ("helpfulness=", "weight '' of 'helpfulness' is not a number"),
        ("=0.5", "malformed dimension name ''"),
        ("helpfulness:0.5", "malformed λ entry 'helpfulness:0.5'.*expected name=weight"),
        ("helpfulness=x", "weight 'x' of 'helpfulness' is not a number"),
        ("helpfulness=0.5,,honesty=0.5", "malformed λ entry ''"),
        ("helpfulness=0.5=0.5", "malformed λ entry"),
        ("", "empty λ"),
        ("   ", "empty λ"),
    ],
)
def test_parse_rejects_bad_text_with_a_useful_message(text, message):
    with pytest.raises(ValueError, match=message):
        parse_lambda(text, DIMS)


@st.composite
def two_decimal_lambdas(draw):
    """λ whose entries are multiples of 0.01 summing to 1: exactly what render_lambda writes."""
    cuts = sorted(draw(st.lists(st.integers(0, 100), min_size=len(DIMS) - 1, max_size=len(DIMS) - 1)))
    edges = [0, *cuts, 100]
    return [(edges[i + 1] - edges[i]) / 100 for i in range(len(DIMS))]


@settings(max_examples=100, deadline=None)
@given(lambdas=two_decimal_lambdas())
def test_render_then_parse_round_trips(lambdas):
    rendered = render_lambda(lambdas, DIMS, template="{weights}")
    parsed = parse_lambda(rendered, DIMS)
    assert [parsed[d] for d in DIMS] == pytest.approx(lambdas, abs=1e-9)
    assert render_lambda(parsed, DIMS) == render_lambda(lambdas, DIMS)


@settings(max_examples=100, deadline=None)
@given(raw=st.lists(st.floats(0.01, 1.0), min_size=len(DIMS), max_size=len(DIMS)))
def test_any_simplex_point_survives_rendering_within_rounding(raw):
    lambdas = [v / sum(raw) for v in raw]
    parsed = parse_lambda(
        render_lambda(lambdas, DIMS).removeprefix("Preference weights: "), DIMS, normalize=True
    )
    # Each entry is rounded by at most 0.005, so after renormalising it moves by little more than that.
    assert [parsed[d] for d in DIMS] == pytest.approx(lambdas, abs=0.015)


def test_as_lambda_takes_every_form_with_the_same_checks():
    from lambda_dpo.conditioning import as_lambda

    dims = ["helpfulness", "honesty"]
    expected = {"helpfulness": 0.25, "honesty": 0.75}
    for form in ("helpfulness=0.25,honesty=0.75", {"honesty": 0.75, "helpfulness": 0.25}, [0.25, 0.75],
                 torch.tensor([0.25, 0.75])):
        assert as_lambda(form, dims) == pytest.approx(expected)
    assert as_lambda({"honesty": 1}, dims) == {"helpfulness": 0.0, "honesty": 1.0}  # unlisted names are 0
    assert as_lambda([1, 3], dims, normalize=True) == pytest.approx(expected)
    for bad, message in (({"safety": 1.0}, "unknown dimension 'safety'"), ([0.5, 0.6], "must sum to 1"),
                         ([1.0], "has 1 values"), ({"honesty": -1, "helpfulness": 2}, "finite number ≥ 0"),
                         ({"honesty": "x"}, "weight 'x' of 'honesty' is not a number"),
                         ([float("nan"), 1.0], "finite number ≥ 0")):
        with pytest.raises(ValueError, match=message):
            as_lambda(bad, dims)
