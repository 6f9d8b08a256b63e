"""lambda_dpo.atomic: a file is replaced whole or not at all."""

import json
import os

import pytest

from lambda_dpo.atomic import atomic_path, atomic_write, write_jsonl


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "sub" / "out.json"
    with atomic_write(path) as f:
        f.write("old")
    with pytest.raises(RuntimeError), atomic_write(path) as f:
        f.write("half of the new")
        raise RuntimeError("disk full")
    assert path.read_text() == "old"
    assert os.listdir(path.parent) == ["out.json"]


def test_atomic_path_hands_a_temporary_name_then_replaces(tmp_path):
    path = tmp_path / "weights.bin"
    with atomic_path(path) as temporary:
        assert os.path.dirname(temporary) == str(tmp_path) and not path.exists()
        with open(temporary, "wb") as f:
            f.write(b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01" and os.listdir(tmp_path) == ["weights.bin"]


def test_write_jsonl_keeps_non_ascii_and_one_record_a_line(tmp_path):
    path = tmp_path / "r.jsonl"
    write_jsonl(path, ({"id": i, "text": "λ → ü"} for i in range(2)))
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["id"] for line in lines] == [0, 1] and "λ → ü" in lines[0]
    with pytest.raises(ValueError, match="mode must be"):
        with atomic_write(path, "a"):
            pass
