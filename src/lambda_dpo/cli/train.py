"""`lambda-dpo train CONFIG.yaml [--key value …]`: λ-DPO (or a baseline) from a YAML config.

The YAML keys are `LambdaDPOConfig` fields; command-line options override them. Runs as one process or several
(`accelerate launch … -m lambda_dpo.cli train …`, `torchrun …`, see the README): every process runs this module;
reports and messages come from the main process only. The job itself is :mod:`lambda_dpo.train_job`.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile

from lambda_dpo.cli._config_command import CONFIG_THEN_OVERRIDES, add_config_arguments, print_fields

__all__ = ["CONFIG_THEN_OVERRIDES", "add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "YAML file of LambdaDPOConfig fields (see configs/)", "--beta 0.2 --max_steps 100")


def check_output_dir(path: str) -> None:
    """Create ``path`` (the run's output_dir) and prove it writable now, not at the first checkpoint."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        raise SystemExit(f"lambda-dpo train: output_dir={path!r} is not a writable folder ({e.strerror}); "
                         "choose another output_dir") from None


def run(args: argparse.Namespace) -> int:
    from lambda_dpo.train_job import parse_config, train_from_config

    if args.help_fields:
        from lambda_dpo.config import LambdaDPOConfig

        return print_fields(LambdaDPOConfig)
    config = parse_config(args.config or None, list(args.overrides))
    # Under a multi-process launcher only the main process reports; the others keep warnings and errors.
    logging.basicConfig(level=logging.INFO if config.should_log else logging.WARNING, stream=sys.stderr,
                        format="%(message)s")
    check_output_dir(config.output_dir)
    if config.torch_threads:
        import torch

        torch.set_num_threads(config.torch_threads)
    trainer = train_from_config(config)
    if config.should_log:
        print(f"saved the trained model to {config.output_dir}")
        last = [h for h in trainer.state.log_history if "loss" in h]
        if last:
            print(f"final training loss {last[-1]['loss']:.4f} at step {last[-1]['step']}")
    return 0
