"""``lambda-dpo convert INPUT -o OUT.jsonl``: any docs/spec.md §2 input → native listwise JSONL, with a summary table.

The summary shows records in/out, the distribution of k, a histogram of each dimension's scores, how many
scores are missing (masked) per dimension, and rejections by reason with the first few (file:line: field).
The output is written to a temporary file next to OUT and moved into place, so OUT is never half-written.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

from lambda_dpo.atomic import write_jsonl
from lambda_dpo.data.converters import FORMATS
from lambda_dpo.data.records import DataError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "input", help="a .jsonl/.json(.gz)/.parquet file, a dataset folder, or a hub dataset name"
    )
    parser.add_argument("-o", "--output", required=True, help="the listwise JSONL file to write")
    parser.add_argument(
        "--format",
        default="auto",
        choices=["auto", *FORMATS],
        help="input format (default: detected from the first record)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="fail if any record is invalid (listing them) instead of skipping and counting them",
    )
    parser.add_argument(
        "--dimensions", help="comma-separated expected dimension names, in order; others are rejected"
    )
    parser.add_argument("--split", default="train", help="split of a hub dataset (default: train)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for random tie-breaking (pairwise grouping)"
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a format option, repeatable; VALUE is JSON or a plain string, "
        "e.g. --option group_by_prompt=true --option 'score_fields=[\"helpfulness\"]'",
    )
    parser.add_argument("--examples", type=int, default=5, help="how many rejections to list (default: 5)")


def _parse_options(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise DataError(f"--option {pair!r}: expected KEY=VALUE, e.g. --option group_by_prompt=true")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


def _histogram(values: list[float], bins: int = 5) -> str:
    if not values:
        return "-"
    counts = Counter(values)
    if len(counts) <= 10:
        return "  ".join(f"{value:g}:{count}" for value, count in sorted(counts.items()))
    low, high = min(values), max(values)
    width = (high - low) / bins
    binned = Counter(min(int((v - low) / width), bins - 1) for v in values)
    return "  ".join(f"[{low + b * width:.3g},{low + (b + 1) * width:.3g}):{binned[b]}" for b in range(bins))


def summary_table(dataset, report) -> str:
    """The convert summary: records, k distribution, per-dimension histogram and masked counts, rejections."""
    ks = Counter(len(responses) for responses in dataset["responses"])
    lines = [
        report.summary(max_examples=0),
        "",
        f"records in (rows read): {report.rows_read}    records out: {len(dataset)}    "
        f"rejected: {len(report.rejections)}",
        "k (responses per prompt): " + "  ".join(f"{k}:{n}" for k, n in sorted(ks.items())),
        "",
    ]
    lines.append(f"{'dimension':<24}{'scores':>8}{'masked':>8}  histogram (value:count)")
    all_scores = dataset["scores"]
    for name in report.dimensions:
        values = [v for scores in all_scores for v in scores[name]]
        present = [v for v in values if v is not None]
        lines.append(f"{name:<24}{len(values):>8}{len(values) - len(present):>8}  {_histogram(present)}")
    return "\n".join(lines)


def _native(record: dict) -> dict:
    """A dataset row as native listwise JSON: a single user message is written as a plain prompt string."""
    prompt = record["prompt"]
    if len(prompt) == 1 and prompt[0]["role"] == "user":
        prompt = prompt[0]["content"]
    out = {"id": record["id"], "prompt": prompt, "responses": record["responses"], "scores": record["scores"]}
    if record["system"]:
        out["system"] = record["system"]
    return out


def run(args: argparse.Namespace) -> int:
    from lambda_dpo.data.loading import load_listwise, long_lists_warning

    try:
        dimensions = [d.strip() for d in args.dimensions.split(",") if d.strip()] if args.dimensions else None
        dataset, report = load_listwise(
            args.input,
            args.format,
            dimensions=dimensions,
            strict=args.strict,
            seed=args.seed,
            split=args.split,
            return_report=True,
            keep_in_memory=True,
            **_parse_options(args.option),
        )
    except DataError as err:
        print(f"lambda-dpo convert: error: {err}", file=sys.stderr)
        return 2
    output = Path(args.output)
    write_jsonl(output, (_native(record) for record in dataset))
    print(summary_table(dataset, report))
    if report.rejections:
        print(f"\nfirst rejections ({len(report.rejections)} in all):")
        for rejection in report.rejections[: args.examples]:
            print(f"  {rejection}")
    print(f"\nwrote {len(dataset)} listwise records to {output}")
    warning = long_lists_warning(dataset)
    if warning:
        print(f"lambda-dpo convert: warning: {warning}", file=sys.stderr)
    return 0
