"""``lambda-dpo convert INPUT -o OUT.jsonl``: any docs/spec.md §2 input → native listwise JSONL, with a summary
table (:func:`lambda_dpo.data.summary.summary_table`). OUT is written atomically, never half-written."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

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


def run(args: argparse.Namespace) -> int:
    from lambda_dpo.atomic import write_jsonl
    from lambda_dpo.data.loading import load_listwise, long_lists_warning
    from lambda_dpo.data.summary import native_record, summary_table

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
    write_jsonl(output, (native_record(record) for record in dataset))
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
