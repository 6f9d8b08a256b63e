"""The `lambda-dpo` command line: this dispatcher and one thin module per subcommand (``lambda_dpo.cli.<name>``).

Each subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int``: it parses flags, calls the
library and prints; the work itself lives in the library modules it names. Modules are imported only when their
subcommand runs, so ``lambda-dpo --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys

DEBUG_ENV = "LAMBDA_DPO_DEBUG"  # set to 1: unexpected errors print their full traceback

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "convert": ("lambda_dpo.cli.convert", "convert any supported preference format to listwise JSONL, with a report"),
    "sft": ("lambda_dpo.cli.sft", "supervised warm-up on the responses (the paper's Finetuned-Base step)"),
    "train": ("lambda_dpo.cli.train", "train with λ-DPO (or a baseline loss) from a YAML config"),
    "generate": ("lambda_dpo.cli.generate", "generate from a trained model, steered by one or several λ"),
    "eval": ("lambda_dpo.cli.eval", "evaluate a trained model: ranking, KL, length bias, controllability"),
    "playground": ("lambda_dpo.cli.playground", "a local web page (Gradio) to steer a trained model by λ in the browser"),
    "export": ("lambda_dpo.cli.export", "merge a conditioning: lora model at one fixed λ into a plain model directory"),
    "demo": ("lambda_dpo.cli.demo", "the built-in end-to-end run: train a tiny model and show that λ steers it"),
}


def _available() -> dict[str, tuple[str, str]]:
    found = {}
    for name, (module, help_text) in SUBCOMMANDS.items():
        try:
            if importlib.util.find_spec(module) is not None:
                found[name] = (module, help_text)
        except ModuleNotFoundError:  # its parent package does not exist (yet)
            pass
    return found


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, tuple[str, str]]]:
    from lambda_dpo import __version__

    parser = argparse.ArgumentParser(
        prog="lambda-dpo",
        description="Align a causal LM with several preference dimensions at once (λ-weighted listwise DPO) "
        "and steer it at inference time by choosing λ.",
    )
    parser.add_argument("--version", action="version", version=f"lambda-dpo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    available = _available()
    for name, (_, help_text) in available.items():
        # Sub-parsers are filled lazily in main(); here they only carry their help line.
        sub.add_parser(name, help=help_text, add_help=False)
    return parser, available


def accept_both_spellings(parser: argparse.ArgumentParser) -> None:
    """Let every ``--long-option`` also be written ``--long_option`` (and the reverse), as `train`'s
    HfArgumentParser already allows, so that no subcommand surprises a user with the other spelling.

    argparse has no alias hook for options declared elsewhere; its option-string table (``_option_string_actions``,
    shared with argument groups) is what parsing looks options up in, so the aliases go there (help shows one name).
    """
    table = parser._option_string_actions
    for option, action in list(table.items()):
        if not option.startswith("--"):
            continue
        for alias in ("--" + option[2:].replace("-", "_"), "--" + option[2:].replace("_", "-")):
            table.setdefault(alias, action)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser, available = build_parser()
    if not argv or argv[0] not in available:
        args = parser.parse_args(argv)  # prints help / version / an error naming the valid commands
        parser.print_help()
        return 0 if args.command is None and not argv else 2
    name = argv[0]
    module = importlib.import_module(available[name][0])
    sub_parser = argparse.ArgumentParser(prog=f"lambda-dpo {name}", description=available[name][1])
    module.add_arguments(sub_parser)
    accept_both_spellings(sub_parser)
    rest = argv[1:]
    if getattr(module, "CONFIG_THEN_OVERRIDES", False) and rest and rest[0].startswith("--") and rest[0] not in (
            "--help", "--help-fields"):
        # `lambda-dpo train --model_name_or_path m …` without a YAML: argparse would read the first override as an
        # unknown option of its own; an empty config slot hands every --key value to the overrides instead.
        rest = ["", *rest]
    args = sub_parser.parse_args(rest)
    from lambda_dpo.data.records import DataError

    try:
        return int(module.run(args) or 0)
    except DataError as e:  # bad input: the message names file, line and field; a traceback adds nothing
        print(f"lambda-dpo {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # not a user's mistake we foresaw: one line, the traceback only on request
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
            raise
        message = " ".join(str(e).split()) or "(no message)"
        print(f"lambda-dpo {name}: unexpected {type(e).__name__}: {message} (set {DEBUG_ENV}=1 for the traceback, "
              "and please report it)", file=sys.stderr)
        return 1

