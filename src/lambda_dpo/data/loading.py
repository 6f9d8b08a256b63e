"""``load_listwise``: any docs/spec.md §2 input → a validated ``datasets.Dataset`` of listwise records + a report."""

from __future__ import annotations

import difflib
import logging
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from itertools import chain
from pathlib import Path

from lambda_dpo.data.converters import FORMATS, converter_options, detect_format
from lambda_dpo.data.records import (
    DataSourceError,
    DataValidationError,
    LoadReport,
    RecordError,
    Rejection,
    content_id,
)
from lambda_dpo.data.sources import open_source

logger = logging.getLogger("lambda_dpo.data")


def listwise_features(dimensions: Sequence[str]):
    """The ``datasets.Features`` of listwise records with these score dimensions (in this order)."""
    from datasets import Features, List, Value

    return Features(
        {
            "id": Value("string"),
            "prompt": List({"role": Value("string"), "content": Value("string")}),
            "system": Value("string"),
            "responses": List(Value("string")),
            "scores": {name: List(Value("float64")) for name in dimensions},
        }
    )


def dataset_dimensions(dataset) -> list[str]:
    """The dimension names of a listwise dataset in the data's order (the ``scores`` struct's fields)."""
    scores = dataset.features.get("scores")
    if not isinstance(scores, Mapping):
        raise ValueError(
            f"not a listwise dataset: it has no `scores` struct column (columns: {dataset.column_names})"
        )
    return list(scores)


def long_lists_warning(dataset, factor: float = 4.0) -> str | None:
    """A warning when some lists are far longer than the typical one (k > ``factor`` × median k and > 8): each
    response is one forwarded sequence, so a list of a hundred makes one step forward a hundred sequences. This
    happens when rows of a rated dataset share a prompt text across annotation batches. ``None`` when k is even."""
    import statistics

    ks = [len(responses) for responses in dataset["responses"]]
    if not ks:
        return None
    median = statistics.median(ks)
    long = [k for k in ks if k > max(8, factor * median)]
    if not long:
        return None
    return (f"{len(long)} of {len(ks)} lists have far more responses than the typical {median:g} (up to {max(long)}); "
            "a step forwards every response of its lists. If prompts repeat across annotation batches, group by a "
            "prompt id (rated rows: option group_field=COLUMN) or cap the lists (option max_responses=N keeps the "
            "best- and worst-rated responses)")


def _peek_first_object(rows: Iterator) -> tuple[list, object | None]:
    """Rows read up to and including the first JSON object (format detection looks at it), and that object."""
    seen = []
    for position, value in rows:
        seen.append((position, value))
        if isinstance(value, Mapping):
            return seen, value
    return seen, None


def _resolve_format(label: str, format: str, first, seen: list) -> str:
    if format != "auto":
        if format not in FORMATS:
            raise DataSourceError(f"unknown format {format!r}; choose one of {sorted(FORMATS)} or 'auto'")
        return format
    if first is None:
        problem = f" (first problem: {seen[0][1]})" if seen else " (it has no records)"
        raise DataSourceError(f"{label}: cannot detect the format: no JSON object found{problem}")
    try:
        format = detect_format(first)
    except DataSourceError as err:
        raise DataSourceError(f"{label}: {err}") from None
    logger.info("%s: detected format %r", label, format)
    return format


def _check_options(format: str, options: dict) -> list[str]:
    allowed = converter_options(format)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        choices = [o for o in allowed if o != "seed"]
        raise DataSourceError(f"format {format!r} has no option(s) {unknown}; its options: {choices}")
    return allowed


def _counted(rows, report: LoadReport):
    for item in rows:
        report.rows_read += 1
        yield item


def _accept(item: dict, dimensions: Sequence[str] | None, locations: dict[str, str], hint: str) -> None:
    """Cross-record checks (requested dimensions, unique ids); fills in a missing id."""
    if dimensions is not None:
        unknown = [name for name in item["scores"] if name not in dimensions]
        if unknown:
            raise RecordError(
                "unknown_dimension",
                f"scores.{unknown[0]}",
                f"dimension(s) {unknown} not in the requested dimensions {list(dimensions)}; "
                f"fix the name or add it to `dimensions`{hint}",
            )
    if item["id"] is None:
        base = item["id"] = content_id(item)
        copies = 1
        while item["id"] in locations:  # identical content (e.g. two annotators): keep both, distinct ids
            copies += 1
            item["id"] = f"{base}-{copies}"
    elif item["id"] in locations:
        raise RecordError(
            "duplicate_id",
            "id",
            f"id {item['id']!r} was already used at {locations[item['id']]}; ids must be unique",
        )


CHAT_ROLES = ("user", "assistant")  # besides "system", which normalize_messages moves out of the prompt
RARE_DIMENSION_SHARE = 0.2  # a dimension scored by < 20 % as many records as the most scored one looks misspelt


def data_warnings(records: Sequence[Mapping], locations: Mapping[str, str], dimensions_given: bool) -> list[str]:
    """Kept records that are valid but probably a mistake, one warning per kind (with a count and the first
    location): roles that chat templates do not know, a prompt with no user message, identical responses
    scored differently, and — when ``dimensions`` was not given — a dimension so rare it is likely misspelt."""
    def first(ids: list[str]) -> str:
        return f"{len(ids)} record(s), first at {locations[ids[0]]}"

    odd_roles: dict[str, list[str]] = {}
    no_user, identical = [], []
    for record in records:
        for message in record["prompt"]:
            if message["role"] not in CHAT_ROLES:
                odd_roles.setdefault(message["role"], []).append(record["id"])
        if not any(m["role"] == "user" for m in record["prompt"]):
            no_user.append(record["id"])
        by_text: dict[str, int] = {}
        for i, text in enumerate(record["responses"]):
            j = by_text.setdefault(text, i)
            if j != i and any(
                s[i] is not None and s[j] is not None and s[i] != s[j] for s in record["scores"].values()
            ):
                identical.append(record["id"])
                break
    out = [
        f"role {role!r} is not one chat templates know ({', '.join(CHAT_ROLES)}, system): {first(ids)}; many "
        f"templates render it as-is (e.g. <|{role}|>) or fail; rename it"
        for role, ids in odd_roles.items()
    ]
    if no_user:
        out.append(f"a prompt with no user message (only assistant turns): {first(no_user)}; the response then "
                   "continues the assistant's turn; check the prompt field")
    if identical:
        out.append(f"identical responses with different scores: {first(identical)}; the target then prefers one "
                   "of two equal texts, which no policy can learn; deduplicate or fix the scores")
    if not dimensions_given and records:
        scored: dict[str, list[str]] = {}  # dimension -> ids of the records that score it
        for record in records:
            for name, values in record["scores"].items():
                if any(v is not None for v in values):
                    scored.setdefault(name, []).append(record["id"])
        most = max(map(len, scored.values()), default=0)
        for name, ids in scored.items():
            if len(ids) < RARE_DIMENSION_SHARE * most:
                close = difflib.get_close_matches(name, [d for d in scored if d != name], n=1)
                guess = f" (a misspelling of {close[0]!r}?)" if close else ""
                out.append(f"dimension {name!r} is scored by only {first(ids)}, of {len(records)} (the most scored "
                           f"one by {most}){guess}, yet it is trained on as a dimension of its own; set "
                           "`dimensions` to the intended names to reject records that use others")
    return out


def _fatal(
    report: LoadReport, strict: bool, format: str, detected: bool, first
) -> DataValidationError | None:
    """The error to raise when rejections are fatal: any in strict mode, or when no record is left."""
    if strict and report.rejections:
        shown = "\n".join(f"  {r}" for r in report.rejections[:20])
        more = f"\n  ... and {len(report.rejections) - 20} more" if len(report.rejections) > 20 else ""
        return DataValidationError(
            f"{len(report.rejections)} invalid record(s) in {report.source} (strict mode; fix them, or drop "
            f"--strict to skip and count them):\n{shown}{more}",
            report.rejections,
        )
    if report.records:
        return None
    hint = ""
    if not detected and isinstance(first, Mapping):
        try:
            hint = f" The first record looks like format {detect_format(first)!r}, not {format!r}."
        except DataSourceError:
            pass
    return DataValidationError(
        f"no valid listwise record in {report.source}.{hint}\n{report.summary()}", report.rejections
    )


def load_listwise(
    path_or_name: str | os.PathLike,
    format: str = "auto",
    *,
    dimensions: Sequence[str] | None = None,
    strict: bool = False,
    seed: int = 0,
    split: str = "train",
    return_report: bool = False,
    keep_in_memory: bool = False,
    cache_dir: str | os.PathLike | None = None,
    **format_options,
):
    """Load any docs/spec.md §2 input as validated listwise records.

    Args:
        path_or_name: a local ``.jsonl``/``.json`` (optionally ``.gz``) or ``.parquet`` file, a local dataset
            folder, or a Hugging Face Hub dataset name (which needs a network).
        format: ``"auto"`` (detected from the first record and logged) or a key of ``FORMATS``.
        dimensions: the expected dimension names, in order; a record scoring any other dimension is
            rejected, and a listed dimension a record lacks is all-missing there. Default: every dimension
            in the data, in order of first appearance.
        strict: any rejected record raises :class:`DataValidationError`; otherwise rejected records are
            skipped, counted by reason and logged. No valid record at all always raises.
        seed: seeds random tie-breaking (pairwise ``group_by_prompt``).
        split: the split of a hub dataset or folder.
        return_report: also return the :class:`LoadReport`.
        keep_in_memory: keep the Arrow table in memory instead of writing it under ``cache_dir`` (default:
            the ``datasets`` cache), where ``Dataset.map`` results (tokenisation) are then cached.
        **format_options: the format's options (see ``lambda_dpo.data.converters``).

    Returns:
        ``Dataset`` with columns ``id: str``, ``prompt: [{"role", "content"}]``, ``system: str``,
        ``responses: [str]``, ``scores: {dimension: [float | None]}`` — and the report if ``return_report``.
    """
    source = open_source(path_or_name, split)
    seen, first = _peek_first_object(source.rows)
    detected = format == "auto"
    format = _resolve_format(source.label, format, first, seen)
    allowed = _check_options(format, format_options)
    if "seed" in allowed:
        format_options["seed"] = seed
    selector = next((o for o in ("aspects", "score_fields") if o in allowed), None)
    hint = f", or pick the data's dimensions with the format option {selector}=[...]" if selector else ""

    report = LoadReport(source=source.label, format=format, format_detected=detected)
    records, locations = [], {}
    try:
        for position, item in FORMATS[format](_counted(chain(seen, source.rows), report), **format_options):
            try:
                if isinstance(item, RecordError):
                    raise item
                _accept(item, dimensions, locations, hint)
            except RecordError as err:
                report.rejections.append(
                    Rejection(source.label, position, err.field, err.reason, err.kind, source.unit)
                )
                continue
            locations[item["id"]] = f"{source.label}:{position}"
            records.append(item)
    except DataSourceError as err:  # a problem with the whole input found mid-way (e.g. a broken JSON array)
        if str(err).startswith(source.label):
            raise
        raise DataSourceError(f"{source.label}: {err}") from None

    names = (
        list(dimensions)
        if dimensions is not None
        else list(dict.fromkeys(d for r in records for d in r["scores"]))
    )
    for record in records:  # every record gets every dimension, so the Arrow struct is the same for all
        record["scores"] = {
            name: record["scores"].get(name) or [None] * len(record["responses"]) for name in names
        }
    report.records, report.dimensions = len(records), names
    if records:
        report.unscored_dimensions = [
            n for n in names if all(v is None for r in records for v in r["scores"][n])
        ]
        report.warnings = data_warnings(records, locations, dimensions_given=dimensions is not None)
    error = _fatal(report, strict, format, detected, first)
    if error is not None:
        raise error
    (logger.warning if report.rejections or report.unscored_dimensions or report.warnings else logger.info)(
        "%s", report.summary()
    )

    from datasets import Dataset

    dataset = Dataset.from_list(records, features=listwise_features(names))
    if not keep_in_memory:
        dataset = _on_disk(dataset, cache_dir)
    return (dataset, report) if return_report else dataset


def _on_disk(dataset, cache_dir):
    """The dataset saved under its content fingerprint (reused if already there) and memory-mapped back, so
    that later ``Dataset.map`` calls cache their results next to it."""
    import datasets

    root = Path(cache_dir or datasets.config.HF_DATASETS_CACHE) / "lambda_dpo_listwise" / dataset._fingerprint
    if not (root / "state.json").exists():
        shutil.rmtree(root, ignore_errors=True)  # a damaged copy (files removed by hand); write it afresh
        partial = root.with_name(f"{root.name}.tmp{os.getpid()}")
        dataset.save_to_disk(str(partial))
        try:
            os.replace(partial, root)  # atomic: readers never see a half-written copy
        except OSError:  # another process saved the same content first
            shutil.rmtree(partial, ignore_errors=True)
    return datasets.load_from_disk(str(root))
