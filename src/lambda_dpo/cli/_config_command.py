"""The shape `lambda-dpo train` and `lambda-dpo sft` share: ``lambda-dpo <cmd> [CONFIG.yaml] [--key value …]``.

The YAML holds dataclass fields and the ``--key value`` overrides win (:mod:`lambda_dpo.config_io`);
``--help-fields`` lists every field with its help.
"""

from __future__ import annotations

import argparse

CONFIG_THEN_OVERRIDES = True  # read by lambda_dpo.cli.main: a first `--key` goes to the overrides, not to argparse


def add_config_arguments(parser: argparse.ArgumentParser, config_help: str, example: str) -> None:
    parser.add_argument("config", nargs="?", help=config_help)
    parser.add_argument("overrides", nargs=argparse.REMAINDER,
                        help=f"--key value pairs overriding the YAML (e.g. {example}); --help-fields lists every field")
    parser.add_argument("--help-fields", action="store_true", help="list every config field with its help")


def print_fields(*classes) -> int:
    """Print every field of the config dataclasses with its help (``--help-fields``); returns exit status 0."""
    from transformers import HfArgumentParser

    HfArgumentParser(classes).print_help()
    return 0
