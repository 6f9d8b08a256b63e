"""Malformed input: every rejection class is reported with file, line and field; valid records survive."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lambda_dpo.data import REJECTION_KINDS, DataSourceError, DataValidationError, load_listwise

GOOD = {"prompt": "What is 2 + 2?", "responses": ["4", "5"], "scores": {"correct": [1, 0]}}


def good(**changes) -> str:
    return json.dumps({**GOOD, **changes})


# (bad line as written in the file, rejection kind, field named in the report)
CASES = {
    "malformed_json": ('{"prompt": "x", "responses": ["a", "b"', "malformed_json", "(json)"),
    "not_an_object": ('["a", "b"]', "wrong_type", "(record)"),
    "missing_field": (
        json.dumps({"prompt": "x", "scores": {"correct": [1, 0]}}),
        "missing_field",
        "responses",
    ),
    "wrong_type_prompt": (good(prompt=42), "wrong_type", "prompt"),
    "wrong_type_score": (good(scores={"correct": ["1", 0]}), "wrong_type", "scores.correct[0]"),
    "wrong_type_message": (
        good(prompt=[{"role": "user", "content": ["image"]}]),
        "wrong_type",
        "prompt[0].content",
    ),
    "empty_prompt": (good(prompt="   "), "empty_text", "prompt"),
    "empty_response": (good(responses=["4", ""]), "empty_text", "responses[1]"),
    "too_few_responses": (good(responses=["4"], scores={"correct": [1]}), "too_few_responses", "responses"),
    "score_length": (good(scores={"correct": [1, 0, 1]}), "score_length", "scores.correct"),
    "nan_score": (
        '{"prompt": "x", "responses": ["a", "b"], "scores": {"correct": [NaN, 1]}}',
        "non_finite_score",
        "scores.correct[0]",
    ),
    "inf_score": (
        '{"prompt": "x", "responses": ["a", "b"], "scores": {"correct": [1, -Infinity]}}',
        "non_finite_score",
        "scores.correct[1]",
    ),
    "float32_overflow": (good(scores={"correct": [1e39, 0]}), "score_out_of_range", "scores.correct[0]"),
    "float64_max": (good(scores={"correct": [1, -1e308]}), "score_out_of_range", "scores.correct[1]"),
    "huge_integer": (
        '{"prompt": "x", "responses": ["a", "b"], "scores": {"correct": [1' + "0" * 400 + ', 0]}}',
        "score_out_of_range",
        "scores.correct[0]",
    ),
    "unpaired_surrogate": (
        '{"prompt": "x", "responses": ["a\\ud800", "b"], "scores": {"correct": [1, 0]}}',
        "invalid_text",
        "responses[0]",
    ),
    "no_scores": (good(scores={}), "no_scores", "scores"),
    "late_system_message": (
        good(prompt=[{"role": "user", "content": "u"}, {"role": "system", "content": "s"}]),
        "bad_value",
        "prompt[1].role",
    ),
    "unknown_dimension": (good(scores={"corect": [1, 0]}), "unknown_dimension", "scores.corect"),
    "duplicate_id": (good(id="same"), "duplicate_id", "id"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_rejection_class_names_file_line_and_field(tmp_path: Path, case: str):
    bad_line, kind, field = CASES[case]
    path = tmp_path / "data.jsonl"
    # Line 1 and 4 are valid; line 3 is blank (skipped, not an error); the bad record is on line 2.
    path.write_text(
        "\n".join([good(id="same"), bad_line, "", good(id="last", prompt="Another prompt?")]) + "\n"
    )
    ds, report = load_listwise(path, dimensions=["correct"], keep_in_memory=True, return_report=True)
    assert ds["id"] == ["same", "last"]  # the valid records survive
    assert len(report.rejections) == 1
    rejection = report.rejections[0]
    assert (rejection.file, rejection.line, rejection.field, rejection.kind) == (str(path), 2, field, kind)
    assert str(rejection).startswith(f"{path}:2: {field}: ")
    assert report.counts_by_reason() == {kind: 1}
    assert f"rejected      1 × {kind}" in report.summary()

    with pytest.raises(DataValidationError) as caught:
        load_listwise(path, dimensions=["correct"], strict=True, keep_in_memory=True)
    assert isinstance(caught.value, ValueError)
    assert f"{path}:2: {field}: " in str(caught.value) and "strict" in str(caught.value)


def test_every_rejection_kind_has_a_case():
    assert {kind for _, kind, _ in CASES.values()} == set(REJECTION_KINDS)


def test_messages_say_how_to_fix(tmp_path: Path):
    path = tmp_path / "data.jsonl"
    path.write_text(
        "\n".join([CASES["score_length"][0], CASES["nan_score"][0], good(), good(id=1), good(id=1)])
    )
    _, report = load_listwise(path, keep_in_memory=True, return_report=True)
    reasons = [str(r) for r in report.rejections]
    assert reasons[0].endswith("scores.correct: 3 scores for 2 responses; give one per response")
    assert reasons[1].endswith("score is nan; use null for a missing score")
    assert reasons[2] == f"{path}:5: id: id '1' was already used at {path}:4; ids must be unique"


def test_rated_row_rejections_point_at_the_row_and_keep_the_group(tmp_path: Path):
    rows = [
        {"prompt": "p", "response": "a", "helpfulness": 3},
        {"prompt": "p", "response": "b", "helpfulness": "high"},  # rejected on its own line
        {"prompt": "p", "response": "c", "helpfulness": 1},
        {"prompt": "q", "response": "only one", "helpfulness": 2},  # its prompt ends up with one response
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds, report = load_listwise(path, keep_in_memory=True, return_report=True)
    assert ds["responses"] == [["a", "c"]] and ds[0]["scores"] == {"helpfulness": [3.0, 1.0]}
    assert [str(r) for r in report.rejections] == [
        f'{path}:2: helpfulness: expected a number or null, got "high"',
        f"{path}:4: responses: 1 response(s); a list needs at least 2 to compare",
    ]


def test_ultrafeedback_and_qa_feedback_fields(tmp_path: Path):
    completion = {"response": "ok", "annotations": {"helpfulness": {"Rating": "4"}}}
    path = tmp_path / "uf.jsonl"
    path.write_text(json.dumps({"instruction": "i", "completions": [completion, {"model": "m"}]}) + "\n")
    with pytest.raises(
        DataValidationError, match=r"uf\.jsonl:1: completions\[1\]\.response: required field is missing"
    ):
        load_listwise(path, keep_in_memory=True)
    qa = tmp_path / "qa.json"
    record = {
        "question": "q",
        **{f"prediction {i}": f"answer {i}" for i in range(1, 5)},
        "preference": [0, 1, 2, 3, 0, 1],
    }
    qa.write_text(json.dumps([record, {**record, "preference": [1, 1, 1]}], indent=2))
    with pytest.raises(DataValidationError) as caught:
        load_listwise(qa, keep_in_memory=True, strict=True)
    assert f"{qa}:2: preference[3]: got 3; expected 0 (tie), 1 or 2" in str(caught.value)
    # the second object starts on line 17: "[", then 15 lines of the first object (6 judgements one per line)
    assert f"{qa}:17: preference: 3 judgements for 4 outputs; expected 6 (one per pair)" in str(caught.value)


def test_malformed_json_array_file_is_fatal_with_its_line(tmp_path: Path):
    path = tmp_path / "broken.json"
    path.write_text(f'[\n  {good()},\n  {{"prompt": "q" "responses": []}}\n]\n')
    with pytest.raises(
        DataSourceError, match=r"broken\.json:3: malformed JSON at column 18: Expecting ',' delimiter"
    ):
        load_listwise(path, keep_in_memory=True)


def test_invalid_utf8_line_is_rejected_alone(tmp_path: Path):
    path = tmp_path / "bytes.jsonl"
    path.write_bytes(
        good().encode() + b"\n" + b'{"prompt": "\xff"}\n' + good(prompt="other").encode() + b"\n"
    )
    ds, report = load_listwise(path, keep_in_memory=True, return_report=True)
    assert len(ds) == 2 and str(report.rejections[0]).startswith(f"{path}:2: (json): not valid UTF-8")


def test_nothing_valid_is_an_error_even_when_not_strict(tmp_path: Path):
    path = tmp_path / "bad.jsonl"
    path.write_text(good(responses=["only"]) + "\n")
    with pytest.raises(DataValidationError, match=r"no valid listwise record in .*bad\.jsonl"):
        load_listwise(path, keep_in_memory=True)


WARNED = {  # valid records that are probably a mistake: kept, and warned about once with a count and location
    "robot_role": ({"prompt": [{"role": "robot", "content": "hi"}, {"role": "user", "content": "q"}],
                    "responses": ["a", "b"], "scores": {"help": [1, 2]}}, "role 'robot' is not one chat templates"),
    "no_user_message": ({"prompt": [{"role": "assistant", "content": "hi"}], "responses": ["a", "b"],
                         "scores": {"help": [1, 2]}}, "a prompt with no user message"),
    "identical_responses": ({"prompt": "q", "responses": ["same", "same"], "scores": {"help": [1, 2]}},
                            "identical responses with different scores"),
    "misspelt_dimension": ({"prompt": "q", "responses": ["a", "b"], "scores": {"hlep": [1, 2]}},
                           "(the most scored one by 8) (a misspelling of 'help'?)"),
}


@pytest.mark.parametrize("case", sorted(WARNED))
def test_suspicious_records_are_kept_and_warned_about(tmp_path: Path, case: str):
    record, message = WARNED[case]
    good = [{"prompt": f"p{i}", "responses": ["x", "y"], "scores": {"help": [0, 1]}} for i in range(8)]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in [*good, record]))
    data, report = load_listwise(str(path), return_report=True, keep_in_memory=True)
    assert len(data) == 9 and not report.rejections
    assert len(report.warnings) == 1 and message in report.warnings[0], report.warnings
    assert f"{path}:9" in report.warnings[0] and f"warning: {report.warnings[0]}" in report.summary()
    # identical texts scored alike, and a rare dimension that was asked for, are not mistakes
    clean = load_listwise(str(path), return_report=True, keep_in_memory=True,
                          dimensions=["help", "hlep"])[1] if case == "misspelt_dimension" else None
    assert clean is None or not clean.warnings
