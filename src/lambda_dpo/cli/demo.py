"""`lambda-dpo demo [--quick] [--world W]`: the built-in end-to-end run (:mod:`lambda_dpo.demo.pipeline`)."""

from __future__ import annotations

import argparse
import sys

from lambda_dpo.demo.pipeline import DEMO_DIR_DEFAULT


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default=DEMO_DIR_DEFAULT, help=f"run directory (default: {DEMO_DIR_DEFAULT})")
    parser.add_argument("--quick", action="store_true", help="a reduced run (about 3 minutes on 2 CPU cores)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: half the cores, which keeps its speed while other jobs share "
                             "them; benchmarks/bench_threads.py)")
    parser.add_argument("--world", default="demo", choices=["demo", "support", "travel"],
                        help="which procedural world to run on (docs/worlds.md; default: the demo's own)")


def run(args: argparse.Namespace) -> int:
    if args.threads is not None and args.threads < 1:
        print(f"lambda-dpo demo: --threads must be ≥ 1, got {args.threads}", file=sys.stderr)
        return 2
    from lambda_dpo.demo.pipeline import run_demo

    run_demo(args.out, quick=args.quick, seed=args.seed, world=args.world, threads=args.threads)
    return 0
