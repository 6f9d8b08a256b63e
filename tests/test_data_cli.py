"""`lambda-dpo convert` end to end through the real CLI entry point."""

from __future__ import annotations

import json

from lambda_dpo.cli import main
from lambda_dpo.data import load_listwise


def test_convert_ultrafeedback_writes_listwise_jsonl_and_a_summary(tmp_path, data_dir, capsys):
    source = data_dir / "ultrafeedback" / "sample.jsonl"
    out = tmp_path / "out" / "train.jsonl"
    assert main(["convert", str(source), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "format ultrafeedback (detected)" in printed
    assert "records in (rows read): 3    records out: 3    rejected: 0" in printed
    assert "k (responses per prompt): 3:1  4:1  5:1" in printed
    table = {
        line.split()[0]: line.split()[1:]
        for line in printed.splitlines()
        if line.startswith(("helpful", "honesty"))
    }
    assert table["honesty"][:2] == ["12", "2"]  # 12 scores, 2 masked ("N/A" and "?")
    assert "1:1" in table["helpfulness"] and "5:3" in table["helpfulness"]  # value:count histogram
    lines = out.read_text().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["scores"]["honesty"] == [5.0, 4.0, None, 3.0]
    assert [p.name for p in out.parent.iterdir()] == ["train.jsonl"]  # no temporary file left behind
    # The output is native listwise JSONL that loads back to the same records.
    original, converted = (load_listwise(p, keep_in_memory=True) for p in (source, out))
    assert converted.to_list() == original.to_list()


def test_convert_reports_rejections_and_strict_fails_without_touching_the_output(tmp_path, capsys):
    source = tmp_path / "pairs.jsonl"
    rows = [
        {"prompt": "p", "chosen": "A", "rejected": "B"},
        {"prompt": "p", "chosen": "B"},
        {"prompt": "p", "chosen": "B", "rejected": "C"},
    ]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    assert main(["convert", str(source), "-o", str(out), "--option", "group_by_prompt=true"]) == 0
    printed = capsys.readouterr().out
    assert "rejected      1 × missing_field" in printed
    assert f"{source}:2: rejected: required field is missing" in printed
    assert [json.loads(line)["responses"] for line in out.read_text().splitlines()] == [["A", "B", "C"]]

    before = out.read_text()
    assert main(["convert", str(source), "-o", str(out), "--strict"]) == 2
    assert f"{source}:2: rejected: required field is missing" in capsys.readouterr().err
    assert out.read_text() == before


def test_convert_dimensions_and_bad_option(tmp_path, data_dir, capsys):
    source = data_dir / "helpsteer2" / "train_sample.jsonl"
    out = tmp_path / "hs.jsonl"
    assert (
        main(
            ["convert", str(source), "-o", str(out), "--option", 'score_fields=["helpfulness", "verbosity"]']
        )
        == 0
    )
    assert "dimensions: helpfulness, verbosity" in capsys.readouterr().out
    assert main(["convert", str(source), "-o", str(out), "--dimensions", "helpfulness"]) == 2
    error = capsys.readouterr().err
    assert "no valid listwise record" in error and "rejected     30 × unknown_dimension" in error
    assert f"{source}:1: scores.correctness: " in error and "score_fields=[...]" in error
    assert main(["convert", str(source), "-o", str(out), "--option", "nonsense"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
