"""Reading raw rows, each with the line (or row index) it came from, from local files or the Hugging Face Hub.

JSON Lines and JSON files are read here, line by line, rather than by ``datasets``: its JSON loader parses a
whole file into one Arrow table, so one malformed line or one record of the wrong type fails the whole file
with no line number, and Arrow's schema inference would coerce mistyped fields instead of reporting them.
Reading them ourselves lets every bad record be rejected with ``file:line`` while the valid ones go on (to
``datasets.Dataset.from_list``). Parquet files, local dataset folders and hub names have a schema already and
go through ``datasets``; their locations are row indices.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lambda_dpo.data.records import DataSourceError, RecordError

LOCAL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".parquet")


@dataclass
class Source:
    """An opened input: ``rows`` yields ``(line_or_row, value)``, value a RecordError for a malformed line."""

    label: str
    unit: str  # "line" (1-based line numbers) or "row" (0-based row indices)
    rows: Iterator[tuple[int, object]]


def _open_text(path: Path):
    opener = gzip.open if path.suffix == ".gz" else open
    return opener(path, "rb")


def _read_errors(path: Path):
    """A truncated or corrupt .gz (EOFError, BadGzipFile) or an I/O error while reading: a message naming the file."""
    import contextlib

    @contextlib.contextmanager
    def guard():
        try:
            yield
        except (EOFError, gzip.BadGzipFile, OSError) as err:
            what = "truncated or corrupt gzip file" if path.suffix == ".gz" else "cannot be read"
            raise DataSourceError(f"{path}: {what} ({type(err).__name__}: {err}); re-download or re-compress "
                                  "the file") from None

    return guard()


def _jsonl_rows(path: Path) -> Iterator[tuple[int, object]]:
    with _read_errors(path):
        yield from _jsonl_lines(path)


def _jsonl_lines(path: Path) -> Iterator[tuple[int, object]]:
    with _open_text(path) as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as err:
                yield (
                    number,
                    RecordError("malformed_json", "(json)", f"not valid UTF-8 ({err.reason}); re-encode it"),
                )
                continue
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as err:
                reason = f"malformed JSON at column {err.colno}: {err.msg}; write one JSON object per line"
                yield number, RecordError("malformed_json", "(json)", reason)


def _json_array_rows(path: Path, text: str) -> Iterator[tuple[int, object]]:
    """The items of a top-level JSON array with the line each starts on (raw_decode gives the offsets).

    A syntax error inside an array leaves the rest unparseable, so it is fatal, with its line and column.
    """
    decoder = json.JSONDecoder()
    position, line, counted_to = text.index("[") + 1, 1, 0

    def skip_space(i: int) -> int:
        while i < len(text) and text[i] in " \t\r\n":
            i += 1
        return i

    def fail(err_pos: int, message: str):
        line_no = text.count("\n", 0, err_pos) + 1
        column = err_pos - text.rfind("\n", 0, err_pos)
        raise DataSourceError(
            f"{path}:{line_no}: malformed JSON at column {column}: {message}; fix the file"
        ) from None

    position = skip_space(position)
    if position < len(text) and text[position] == "]":
        return
    while True:
        position = skip_space(position)
        try:
            item, end = decoder.raw_decode(text, position)
        except json.JSONDecodeError as err:
            fail(err.pos, err.msg)
        line += text.count("\n", counted_to, position)
        counted_to = position
        yield line, item
        position = skip_space(end)
        if position >= len(text):
            fail(position, "the array is not closed with ']'")
        if text[position] == "]":
            return
        if text[position] != ",":
            fail(position, "expected ',' or ']' between array items")
        position += 1


def _json_rows(path: Path) -> Iterator[tuple[int, object]]:
    with _read_errors(path), _open_text(path) as f:
        try:
            text = f.read().decode("utf-8-sig")
        except UnicodeDecodeError as err:
            raise DataSourceError(f"{path}: not valid UTF-8 ({err.reason}); re-encode the file") from None
    if text.lstrip().startswith("["):
        yield from _json_array_rows(path, text)
    else:  # like `datasets`, accept JSON Lines in a .json file
        yield from _jsonl_rows(path)


def _load_with_datasets(name_or_path: str, split: str, local: bool):
    import datasets

    try:
        if local and name_or_path.endswith(".parquet"):
            return datasets.load_dataset("parquet", data_files=name_or_path, split="train")
        return datasets.load_dataset(name_or_path, split=split)
    except Exception as err:  # whatever went wrong (network, missing split, bad file): one clear message
        first_line = (str(err).strip().splitlines() or [""])[0][:300]
        if local:
            raise DataSourceError(
                f"{name_or_path}: cannot read it with `datasets` ({type(err).__name__}: {first_line})"
            ) from None
        flags = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
        offline = [f"{v}=1" for v in flags if os.environ.get(v, "").lower() in ("1", "true", "yes", "on")]
        hint = f" Offline mode is on ({', '.join(offline)}), so the hub cannot be reached." if offline else ""
        raise DataSourceError(
            f"{name_or_path!r} is not a local file, and loading it as a Hugging Face Hub dataset "
            f"(split {split!r}) failed: {type(err).__name__}: {first_line}.{hint} Give the path of a local "
            "JSON/JSONL/Parquet file, or download the dataset while online "
            "(e.g. `datasets.load_dataset(name, split=...).to_json(...)`)."
        ) from None


def _json_files(folder: Path) -> list[Path]:
    """The JSON/JSONL files (optionally .gz) under a folder, sorted, unless it is a dataset saved by `datasets`
    (whose own loader reads it)."""
    if (folder / "dataset_info.json").exists() or (folder / "state.json").exists():
        return []
    json_suffixes = tuple(s for s in LOCAL_SUFFIXES if "json" in s)
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith(json_suffixes))


def _folder_rows(folder: Path, files: list[Path]) -> Iterator[tuple[str, object]]:
    for path in files:
        rows = _jsonl_rows(path) if path.name.endswith((".jsonl", ".jsonl.gz")) else _json_rows(path)
        relative = path.relative_to(folder)
        for number, row in rows:
            yield f"{relative}:{number}", row


def open_source(path_or_name: str | os.PathLike, split: str = "train") -> Source:
    """Open a local JSON/JSONL (optionally .gz) or Parquet file, a local dataset folder, or a hub name."""
    text = os.fspath(path_or_name)
    path = Path(text).expanduser()
    if path.is_file():
        name = path.name
        if name.endswith((".jsonl", ".jsonl.gz")):
            return Source(text, "line", _jsonl_rows(path))
        if name.endswith((".json", ".json.gz")):
            return Source(text, "line", _json_rows(path))
        if name.endswith(".parquet"):
            return Source(text, "row", enumerate(_load_with_datasets(str(path), split, local=True)))
        suffixes = ", ".join(LOCAL_SUFFIXES)
        raise DataSourceError(
            f"{text}: unsupported file type; use one of {suffixes} (convert CSV with pandas first)"
        )
    if path.is_dir():
        files = _json_files(path)
        if files:  # read like single files, line by line, each line located as <folder>/<file>:<line>
            return Source(text, "file_line", _folder_rows(path, files))
        return Source(text, "row", enumerate(_load_with_datasets(str(path), split, local=True)))
    if text.endswith(LOCAL_SUFFIXES) or text.startswith((".", "/", "~")):
        raise DataSourceError(f"{text}: no such file (looked in {path.resolve()}); check the path")
    return Source(text, "row", enumerate(_load_with_datasets(text, split, local=False)))
