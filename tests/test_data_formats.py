"""Every input format of docs/spec.md §2 → listwise records, on real samples where the format has public data."""

from __future__ import annotations

import gzip
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lambda_dpo.data import (
    DataSourceError,
    DataValidationError,
    dataset_dimensions,
    load_listwise,
)

HELPSTEER2 = ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]
USR = ["understandability", "naturalness", "coherence", "engagingness", "groundedness", "overall"]
ULTRAFEEDBACK = ["helpfulness", "honesty", "instruction_following", "truthfulness"]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def load(path, **kwargs):
    return load_listwise(path, keep_in_memory=True, return_report=True, **kwargs)


def test_helpsteer2_rows_grouped_by_prompt(data_dir):
    path = data_dir / "helpsteer2" / "train_sample.jsonl"
    ds, report = load(path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert (report.format, report.format_detected, report.rows_read) == ("helpsteer2", True, 60)
    assert len(ds) == 30 and all(len(r) == 2 for r in ds["responses"])
    assert dataset_dimensions(ds) == HELPSTEER2 and not report.rejections
    first = ds[0]  # rows 1 and 2 of the file share this prompt
    assert first["prompt"] == [{"role": "user", "content": rows[0]["prompt"]}] and first["system"] == ""
    assert first["responses"] == [rows[0]["response"], rows[1]["response"]]
    assert first["scores"] == {d: [float(rows[0][d]), float(rows[1][d])] for d in HELPSTEER2}


def test_usr_topical_chat_is_60_lists_of_6(data_dir):
    path = data_dir / "topicalchat_usr" / "topical_chat.json.gz"
    ds, report = load(path)
    assert report.format == "usr" and report.rows_read == 360
    assert len(ds) == 60 and all(len(r) == 6 for r in ds["responses"])
    assert dataset_dimensions(ds) == USR
    raw = json.loads(gzip.decompress(path.read_bytes()))
    record = ds[7]
    mine = [row for row in raw if row["source"] == record["prompt"][0]["content"]]
    assert record["responses"] == [row["system_output"] for row in mine]
    assert record["scores"]["overall"] == [row["scores"]["overall"] for row in mine]
    assert all(v is not None for scores in ds["scores"] for d in USR for v in scores[d])


def test_qa_feedback_win_counts(data_dir):
    ds, report = load(data_dir / "qa_feedback" / "dev_feedback_sample.json")
    assert report.format == "qa_feedback" and len(ds) == 8 and all(len(r) == 4 for r in ds["responses"])
    # Record 1: preference [0, 1, 2, 1, 0, 2] over (1v2, 1v3, 1v4, 2v3, 2v4, 3v4):
    # 1v2 tie (+½ each), 1 beats 3, 4 beats 1, 2 beats 3, 2v4 tie (+½ each), 4 beats 3.
    assert ds[0]["prompt"][0]["content"] == "When does bloom by troye sivan come out?"
    assert ds[0]["scores"]["preference"] == [1.5, 2.0, 0.0, 2.5]
    assert all(sum(s["preference"]) == 6 for s in ds["scores"])  # every judgement hands out exactly 1 win


def test_qa_feedback_passages_option(data_dir):
    ds, _ = load(data_dir / "qa_feedback" / "dev_feedback_sample.json", include_passages=True)
    prompt = ds[0]["prompt"][0]["content"]
    assert prompt.startswith(
        "When does bloom by troye sivan come out?\n\nPassages:\nBloom (Troye Sivan album): "
    )


def test_ultrafeedback_na_and_unparseable_ratings_are_missing(data_dir):
    ds, report = load(data_dir / "ultrafeedback" / "sample.jsonl")
    assert report.format == "ultrafeedback" and dataset_dimensions(ds) == ULTRAFEEDBACK
    assert [len(r) for r in ds["responses"]] == [4, 3, 5]
    first, second, third = ds
    assert first["scores"]["honesty"] == [5.0, 4.0, None, 3.0]  # "N/A" is missing, not the worst score
    assert second["scores"]["truthfulness"] == [None, None, None]
    assert second["scores"]["honesty"] == [5.0, 4.0, None]  # "?" is unparseable
    assert second["scores"]["helpfulness"] == [5.0, 2.0, None]  # annotation absent
    assert third["scores"]["helpfulness"] == [5.0, 4.0, 2.0, 2.0, None]
    assert first["responses"][2] == "Primary colors are colors."


def test_pairwise_standard_and_scores(tmp_path):
    path = write_jsonl(
        tmp_path / "pairs.jsonl",
        [
            {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "Go away."},
            {
                "prompt": "Count to 2.",
                "chosen": "1, 2",
                "rejected": "2, 1",
                "score_chosen": 9,
                "score_rejected": 4.5,
            },
        ],
    )
    ds, report = load(path)
    assert report.format == "pairwise"
    assert ds["responses"] == [["Hi!", "Go away."], ["1, 2", "2, 1"]]
    assert [s["preference"] for s in ds["scores"]] == [[1.0, 0.0], [9.0, 4.5]]


def test_pairwise_conversational_and_implicit_prompt(tmp_path):
    system = {"role": "system", "content": "Be brief."}
    user = {"role": "user", "content": "Capital of France?"}
    path = write_jsonl(
        tmp_path / "conv.jsonl",
        [
            {
                "prompt": [system, user],
                "chosen": [{"role": "assistant", "content": "Paris."}],
                "rejected": [{"role": "assistant", "content": "Lyon."}],
            },
            {
                "chosen": [user, {"role": "assistant", "content": "Paris."}],
                "rejected": [user, {"role": "assistant", "content": "Nice."}],
            },
        ],
    )
    ds, _ = load(path)
    assert ds[0]["system"] == "Be brief." and ds[0]["prompt"] == [user]
    assert ds[1]["system"] == "" and ds[1]["prompt"] == [user] and ds[1]["responses"] == ["Paris.", "Nice."]


def test_pairwise_grouped_into_ranked_lists(tmp_path):
    rows = [
        {"prompt": "p", "chosen": "A", "rejected": "B"},
        {"prompt": "q", "chosen": "x", "rejected": "y", "score_chosen": 4, "score_rejected": 1},
        {"prompt": "p", "chosen": "B", "rejected": "C"},
        {"prompt": "q", "chosen": "x", "rejected": "z", "score_chosen": 2, "score_rejected": 3},
        {"prompt": "p", "chosen": "A", "rejected": "C"},
    ]
    ds, _ = load(write_jsonl(tmp_path / "pairs.jsonl", rows), group_by_prompt=True)
    assert ds["responses"] == [["A", "B", "C"], ["x", "y", "z"]]
    assert ds[0]["scores"]["preference"] == [-1.0, -2.0, -3.0]  # ranked by net wins: A 2, B 0, C −2
    assert ds[1]["scores"]["preference"] == [3.0, 1.0, 3.0]  # mean of the scores each response was given


def test_pairwise_ties_broken_at_random_with_a_seed(tmp_path):
    # A and C both win once, B and D both lose once: two tied pairs of ranks.
    path = write_jsonl(
        tmp_path / "ties.jsonl",
        [{"prompt": "p", "chosen": "A", "rejected": "B"}, {"prompt": "p", "chosen": "C", "rejected": "D"}],
    )

    def ranks(seed):
        return tuple(load(path, group_by_prompt=True, seed=seed)[0][0]["scores"]["preference"])

    assert ranks(3) == ranks(3)
    outcomes = {ranks(seed) for seed in range(12)}
    assert len(outcomes) > 1  # the seed decides the tie-break
    for scores in outcomes:
        assert sorted(scores) == [-4.0, -3.0, -2.0, -1.0] and min(scores[0], scores[2]) > max(
            scores[1], scores[3]
        )


def test_ranked_lists(tmp_path):
    path = write_jsonl(
        tmp_path / "ranked.jsonl",
        [
            {"prompt": "p", "responses": ["a", "b", "c"], "ranks": [2, 1, 3]},
            {"prompt": "q", "responses": ["a", "b"], "ranks": {"safety": [1, 2], "style": [None, 1]}},
        ],
    )
    ds, report = load(path)
    assert report.format == "ranked" and dataset_dimensions(ds) == ["preference", "safety", "style"]
    assert ds[0]["scores"] == {"preference": [-2.0, -1.0, -3.0], "safety": [None] * 3, "style": [None] * 3}
    assert ds[1]["scores"]["style"] == [None, -1.0]


def test_native_listwise_messages_system_and_ids(tmp_path):
    path = write_jsonl(
        tmp_path / "native.jsonl",
        [
            {
                "id": "a",
                "prompt": [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
                "responses": ["r1", [{"role": "assistant", "content": "r2"}]],
                "scores": {"h": [1, None]},
            },
            {"id": 7, "prompt": "P", "system": "T", "responses": ["x", "y", "z"], "scores": {"h": [0, 1, 2]}},
            {"prompt": "no id", "responses": ["x", "y"], "scores": {"h": [0, 1]}},
            {
                "prompt": "no id",
                "responses": ["x", "y"],
                "scores": {"h": [1, 0]},
            },  # same content, second annotator
        ],
    )
    ds, report = load(path)
    assert ds[0]["system"] == "S" and ds[0]["prompt"] == [{"role": "user", "content": "U"}]
    assert ds[0]["responses"] == ["r1", "r2"] and ds[0]["scores"]["h"] == [1.0, None]
    assert ds[1]["id"] == "7" and ds[1]["system"] == "T"
    generated = ds["id"][2:]
    assert generated[1] == generated[0] + "-2" and not report.rejections
    assert load(path)[0]["id"] == ds["id"]  # generated ids are stable


def test_requested_dimensions_set_order_and_fill_missing(tmp_path, caplog):
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"prompt": "p", "responses": ["a", "b"], "scores": {"b": [1, 2]}}]
    )
    with caplog.at_level(logging.WARNING, logger="lambda_dpo.data"):
        ds, report = load(path, dimensions=["a", "b"])
    assert dataset_dimensions(ds) == ["a", "b"] and ds[0]["scores"] == {"a": [None, None], "b": [1.0, 2.0]}
    assert report.unscored_dimensions == ["a"] and "no record scores dimension(s) ['a']" in caplog.text


def test_auto_detection_is_logged(data_dir, caplog):
    with caplog.at_level(logging.INFO, logger="lambda_dpo.data"):
        load(data_dir / "ultrafeedback" / "sample.jsonl")
    assert "detected format 'ultrafeedback'" in caplog.text


def test_undetectable_format_and_bad_options(tmp_path):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"text": "hello"}])
    with pytest.raises(
        DataSourceError,
        match=r"odd\.jsonl: cannot detect the format from the first record's fields \['text'\]",
    ):
        load(path)
    with pytest.raises(DataSourceError, match="format 'listwise' has no option"):
        load(path, format="listwise", group_by_prompt=True)
    with pytest.raises(DataSourceError, match="unknown format 'csv'"):
        load(path, format="csv")


def test_wrong_explicit_format_rejects_everything_clearly(data_dir):
    with pytest.raises(
        DataValidationError,
        match=r"(?s)no valid listwise record.*looks like format 'helpsteer2'.*60 × missing_field",
    ) as caught:
        load(data_dir / "helpsteer2" / "train_sample.jsonl", format="listwise")
    assert str(caught.value.rejections[0]).startswith(
        f"{data_dir / 'helpsteer2' / 'train_sample.jsonl'}:1: responses:"
    )


def test_rated_rows_with_custom_columns(tmp_path):
    path = write_jsonl(
        tmp_path / "rows.jsonl",
        [
            {"question": "q1", "answer": "a", "clarity": 3, "note": "x"},
            {"question": "q1", "answer": "b", "clarity": None, "note": "y"},
        ],
    )
    ds, _ = load(path, format="rated_rows", prompt_field="question", response_field="answer")
    assert ds["responses"] == [["a", "b"]] and ds[0]["scores"] == {"clarity": [3.0, None]}


def test_parquet_goes_through_datasets(tmp_path):
    from datasets import Dataset

    path = tmp_path / "rows.parquet"
    rows = [{"prompt": "p", "response": r, "helpfulness": h} for r, h in (("a", 1), ("", 5), ("b", 2))]
    Dataset.from_list(rows).to_parquet(path)
    ds, report = load(path)
    assert report.format == "rated_rows" and ds[0]["scores"] == {"helpfulness": [1.0, 2.0]}
    rejection = f"{path}:row 1: response: response is empty; remove the record or fill it in"
    assert [str(r) for r in report.rejections] == [rejection]  # row indices, as Parquet has no lines


def test_missing_local_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataSourceError, match=r"no such file.*check the path"):
        load(tmp_path / "nope.jsonl")


def test_offline_hub_name_fails_with_a_clear_message(tmp_path):
    # A subprocess, so that the offline variables are read when `datasets` is first imported.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    code = (
        "import sys; from lambda_dpo.cli import main; "
        f"sys.exit(main(['convert', 'no-such-org/no-such-dataset', '-o', {str(tmp_path / 'out.jsonl')!r}]))"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "'no-such-org/no-such-dataset' is not a local file" in done.stderr
    assert "HF_HUB_OFFLINE" in done.stderr and "local JSON/JSONL/Parquet file" in done.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_gzipped_jsonl_keeps_line_numbers(tmp_path):
    path = tmp_path / "rows.jsonl.gz"
    good = {"prompt": "p", "responses": ["a", "b"], "scores": {"h": [1, 0]}}
    lines = [json.dumps(good), json.dumps({**good, "responses": ["a"], "scores": {"h": [1]}})]
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    ds, report = load(path)
    assert len(ds) == 1 and str(report.rejections[0]).startswith(f"{path}:2: responses: 1 response(s)")


def test_rated_rows_group_field_and_max_responses(tmp_path):
    import json as _json

    from lambda_dpo.data import load_listwise, long_lists_warning

    rows = []
    for batch in range(3):  # the same prompt text rated again in three annotation batches
        for j in range(4):
            rows.append({"prompt": "Same question?", "prompt_id": f"batch{batch}", "response": f"answer {batch}-{j}",
                         "helpful": float(j + batch), "honest": float(3 - j)})
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(_json.dumps(r) + "\n" for r in rows))
    merged = load_listwise(str(path), format="rated_rows", score_fields=["helpful", "honest"])
    assert len(merged) == 1 and len(merged[0]["responses"]) == 12
    grouped = load_listwise(str(path), format="rated_rows", score_fields=["helpful", "honest"], group_field="prompt_id")
    assert len(grouped) == 3 and all(len(r["responses"]) == 4 for r in grouped)
    capped = load_listwise(str(path), format="rated_rows", score_fields=["helpful", "honest"], max_responses=4)
    kept = capped[0]["responses"]
    means = {f"answer {b}-{j}": (j + b + 3 - j) / 2 for b in range(3) for j in range(4)}  # = (3 + b) / 2
    assert len(kept) == 4
    # the two best and the two worst by mean score (ties: earlier rows first), in row order
    assert kept == ["answer 0-0", "answer 0-1", "answer 2-0", "answer 2-1"]
    assert [means[k] for k in kept] == [1.5, 1.5, 2.5, 2.5]
    with pytest.raises(ValueError, match="max_responses"):
        load_listwise(str(path), format="rated_rows", max_responses=1)

    short = [{"prompt": f"q{i}", "responses": ["a", "b"], "scores": {"x": [1, 0]}} for i in range(20)]
    long = [{"prompt": "big", "responses": [f"r{j}" for j in range(40)], "scores": {"x": list(range(40))}}]
    lists = tmp_path / "lists.jsonl"
    lists.write_text("".join(_json.dumps(r) + "\n" for r in short + long))
    warning = long_lists_warning(load_listwise(str(lists)))
    assert "1 of 21 lists" in warning and "up to 40" in warning and "group_field" in warning
    assert long_lists_warning(load_listwise(str(lists)).select(range(20))) is None
