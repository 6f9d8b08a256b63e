"""`lambda-dpo export --model DIR --lambda a=0.7,b=0.3 --out OUT`: a λ-adapter model folded at one λ into a plain
model directory (:func:`lambda_dpo.export.export_fixed_lambda`)."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a model directory trained with conditioning: lora")
    parser.add_argument("--lambda", dest="lambdas", required=True, metavar="NAME=W,…",
                        help="the fixed preference weights, e.g. helpfulness=0.7,honesty=0.3")
    parser.add_argument("--out", required=True, help="where to write the plain model directory")
    parser.add_argument("--normalize", action="store_true", help="rescale λ to sum to 1 instead of rejecting it")


def run(args: argparse.Namespace) -> int:
    from lambda_dpo.export import export_fixed_lambda

    try:
        weights = export_fixed_lambda(args.model, args.lambdas, args.out, args.normalize)
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"lambda-dpo export: {e}", file=sys.stderr)
        return 2
    shown = " ".join(f"{k}={v:.2f}" for k, v in weights.items())
    print(f"wrote a plain model at λ = {shown} to {args.out} (loads with AutoModelForCausalLM; no λ line needed)")
    return 0
