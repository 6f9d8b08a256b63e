"""`lambda-dpo train CONFIG.yaml [--key value …]`: λ-DPO (or a baseline) from a YAML config.

The YAML keys are `LambdaDPOConfig` fields; command-line options override them (both go through
`transformers.HfArgumentParser`, so types, choices and help texts are the same everywhere).

Runs as one process or several (`accelerate launch …`, `torchrun …`, see the README): every process runs this
module; reports and messages come from the main process only.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile

logger = logging.getLogger("lambda_dpo")


def parse_config(config_path: str | None, overrides: list[str]):
    """A `LambdaDPOConfig` from a YAML file plus command-line overrides (overrides win)."""
    from lambda_dpo.config import LambdaDPOConfig
    from lambda_dpo.config_io import parse_yaml_config

    (config,) = parse_yaml_config("train", (LambdaDPOConfig,), config_path, overrides)
    return config


def load_policy(config):
    """Tokenizer and policy (with LoRA adapters when `use_lora`) for a config."""
    from lambda_dpo.model_dir import ModelLoadError, load_pretrained, torch_dtype

    if not config.model_name_or_path:
        raise SystemExit("lambda-dpo train: set model_name_or_path (a local model directory or a hub name)")
    try:
        tokenizer, model = load_pretrained(config.model_name_or_path, dtype=torch_dtype(config.bf16, config.fp16))
    except ModelLoadError as e:
        raise SystemExit(f"lambda-dpo train: {e}") from None
    if config.use_lora:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=config.lora_target_modules or "all-linear", task_type="CAUSAL_LM")
        import torch

        # Seeded: every process draws the same adapter weights (ZeRO-3 / FSDP assemble the model from each process's
        # shard, and DDP's broadcast of process 0's copy then changes nothing), and a rerun draws them again.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = get_peft_model(model, lora)
    return tokenizer, model


def train_from_config(config):
    """Load data and model, train, save; returns the trainer (its `state.log_history` has the metrics)."""
    from lambda_dpo.data import load_listwise, long_lists_warning
    from lambda_dpo.trainer import LambdaDPOTrainer

    datasets = {}
    for split, path in (("train", config.dataset), ("eval", config.eval_dataset)):
        if path is None:
            continue
        # The main process first: a hub dataset is downloaded (and cached) once, not by every process at once.
        with config.main_process_first(desc=f"loading the {split} data"):
            ds, report = load_listwise(path, format=config.dataset_format, dimensions=config.dimensions,
                                       strict=config.strict, seed=config.seed, return_report=True,
                                       **(config.dataset_options or {}))
        if config.should_log:
            logger.warning("%s data %s: %s", split, path, report.summary())
            warning = long_lists_warning(ds)
            if warning:
                logger.warning("%s data %s: %s", split, path, warning)
        datasets[split] = ds
    if "train" not in datasets:
        raise SystemExit("lambda-dpo train: set `dataset` (a listwise file or any docs/spec.md §2 input)")
    tokenizer, model = load_policy(config)
    try:
        trainer = LambdaDPOTrainer(model=model, args=config, train_dataset=datasets["train"],
                                   eval_dataset=datasets.get("eval"), processing_class=tokenizer)
    except ValueError as e:  # a setting that does not fit the data or the model: the message names it
        raise SystemExit(f"lambda-dpo train: {e}") from None
    resume = config.resume_from_checkpoint
    # `resume_from_checkpoint: true` (YAML or --resume_from_checkpoint true) = the last checkpoint in output_dir
    trainer.train(resume_from_checkpoint=True if str(resume).lower() == "true" else resume)
    if config.eval_dataset:  # before saving, so that the model card carries the final held-out metrics
        trainer.evaluate()
    trainer.save_final()
    return trainer


CONFIG_THEN_OVERRIDES = True  # `lambda-dpo <cmd> [CONFIG.yaml] [--key value …]` (lambda_dpo.cli)


def check_output_dir(path: str) -> None:
    """Create ``path`` (the run's output_dir) and prove it writable now, not at the first checkpoint."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        raise SystemExit(f"lambda-dpo train: output_dir={path!r} is not a writable folder ({e.strerror}); "
                         "choose another output_dir") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", help="YAML file of LambdaDPOConfig fields (see configs/)")
    parser.add_argument("overrides", nargs=argparse.REMAINDER,
                        help="--key value pairs overriding the YAML (e.g. --beta 0.2 --max_steps 100); "
                             "`lambda-dpo train --help-fields` lists every field")
    parser.add_argument("--help-fields", action="store_true", help="list every config field with its help")


def run(args: argparse.Namespace) -> int:
    if args.help_fields:
        from transformers import HfArgumentParser

        from lambda_dpo.config import LambdaDPOConfig

        HfArgumentParser(LambdaDPOConfig).print_help()
        return 0
    # No YAML: lambda_dpo.cli hands every --key value to `overrides` (CONFIG_THEN_OVERRIDES)
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
