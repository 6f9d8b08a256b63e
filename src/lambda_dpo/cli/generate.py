"""`lambda-dpo generate PROMPT --model DIR --lambda a=0.7,b=0.3 [--lambda …]`: one column of responses per λ
(:func:`lambda_dpo.generation.generate`)."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import textwrap

from lambda_dpo.conditioning import as_lambda, render_lambda
from lambda_dpo.model_dir import lambda_dpo_dir_problem


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="the user prompt")
    parser.add_argument("--model", required=True, help="a model directory written by `lambda-dpo train`")
    parser.add_argument("--lambda", dest="lambdas", action="append", required=True, metavar="NAME=W,…",
                        help="preference weights, e.g. helpfulness=0.7,honesty=0.3 (repeat to compare several)")
    parser.add_argument("--normalize", action="store_true", help="rescale λ to sum to 1 instead of rejecting it")
    parser.add_argument("--system", default=None, help="extra system text after the λ line")
    parser.add_argument("--num-samples", type=int, default=1, help="responses per λ")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--greedy", action="store_true", help="greedy decoding instead of sampling")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="cpu, cuda, … (default: cuda when available)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of columns")


def format_side_by_side(headers: list[str], columns: list[list[str]], width: int | None = None) -> str:
    """Lay out one column of texts per λ, wrapped to the terminal width."""
    width = width or shutil.get_terminal_size((120, 20)).columns
    col = max(20, (width - 3 * (len(headers) - 1)) // len(headers))
    blocks = []
    for h, texts in zip(headers, columns):
        lines = textwrap.wrap(h, col) + ["-" * col]
        for i, t in enumerate(texts):
            if i:
                lines.append("")
            lines.extend(textwrap.wrap(t, col) or ["(empty)"])
        blocks.append(lines)
    height = max(len(b) for b in blocks)
    rows = [" | ".join(b[i].ljust(col) if i < len(b) else " " * col for b in blocks).rstrip() for i in range(height)]
    return "\n".join(rows)


def _check_arguments(args: argparse.Namespace) -> str | None:
    """The first command-line mistake, said in one line (None when there is none)."""
    if not args.prompt.strip():
        return "the prompt is empty; give the text to answer"
    for name, value in (("--num-samples", args.num_samples), ("--max-new-tokens", args.max_new_tokens)):
        if value < 1:
            return f"{name} must be ≥ 1, got {value}"
    if not args.greedy and not args.temperature > 0:
        return f"--temperature must be > 0 when sampling, got {args.temperature} (use --greedy for greedy decoding)"
    if not 0 < args.top_p <= 1:
        return f"--top-p must be in (0, 1], got {args.top_p}"
    return lambda_dpo_dir_problem(args.model)


def run(args: argparse.Namespace) -> int:
    from lambda_dpo.generation import generate, load_model

    problem = _check_arguments(args)
    if problem:
        print(f"lambda-dpo generate: {problem}", file=sys.stderr)
        return 2
    try:
        model, tokenizer, metadata = load_model(args.model, device=args.device)
    except (OSError, ValueError) as e:
        print(f"lambda-dpo generate: cannot load --model {args.model}: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    try:
        parsed = [as_lambda(text, metadata["dimensions"], args.normalize) for text in args.lambdas]
    except ValueError as e:
        raise SystemExit(f"lambda-dpo generate: {e}") from None
    outputs = generate(None, args.prompt, parsed, model=model, tokenizer=tokenizer, metadata=metadata,
                       system=args.system, num_return_sequences=args.num_samples,
                       max_new_tokens=args.max_new_tokens, do_sample=not args.greedy,
                       temperature=args.temperature, top_p=args.top_p, seed=args.seed)
    headers = [render_lambda(p, metadata["dimensions"], "λ: {weights}") for p in parsed]
    if args.json:
        print(json.dumps([{"lambda": p, "responses": o} for p, o in zip(parsed, outputs)], indent=2))
    else:
        print(format_side_by_side(headers, outputs))
    return 0
