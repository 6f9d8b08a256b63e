"""`lambda-dpo playground --model DIR`: serve the Gradio page of :mod:`lambda_dpo.playground` on this machine."""

from __future__ import annotations

import argparse
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a model directory written by `lambda-dpo train`")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on (default 7860)")
    parser.add_argument("--device", default=None, help="cpu, cuda, … (default: cuda when available)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="weights dtype (default: as saved)")


def _check_arguments(args: argparse.Namespace) -> str | None:
    from lambda_dpo.model_dir import lambda_dpo_dir_problem

    problem = lambda_dpo_dir_problem(args.model)
    if problem:
        return problem
    if not 0 < args.port < 65536:
        return f"--port must be in 1…65535, got {args.port}"
    return None


def run(args: argparse.Namespace) -> int:
    problem = _check_arguments(args)
    if problem:
        print(f"lambda-dpo playground: {problem}", file=sys.stderr)
        return 2
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # never phone home
    try:
        import gradio as gr
    except ImportError:
        print("lambda-dpo playground: Gradio is not installed; pip install 'lambda-dpo[playground]'", file=sys.stderr)
        return 2
    from lambda_dpo.generation import load_model
    from lambda_dpo.playground import build_app

    try:
        model, tokenizer, metadata = load_model(args.model, device=args.device, dtype=args.dtype)
    except (OSError, ValueError) as e:  # no tokenizer, unreadable weights, a bad lambda_dpo.json
        print(f"lambda-dpo playground: cannot load --model {args.model}: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    app = build_app(model, tokenizer, metadata, args.model)
    theme = gr.themes.Soft(primary_hue="indigo")
    print(f"lambda-dpo playground: serving {args.model} on http://{args.host}:{args.port} (Ctrl+C stops it)",
          flush=True)
    try:
        app.queue().launch(server_name=args.host, server_port=args.port, share=False, ssr_mode=False, quiet=True,
                           footer_links=[], theme=theme)
    except OSError as e:  # the port is taken
        print(f"lambda-dpo playground: cannot serve on {args.host}:{args.port} ({e}); choose another --port",
              file=sys.stderr)
        return 2
    return 0
