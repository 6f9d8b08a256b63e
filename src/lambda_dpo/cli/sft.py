"""`lambda-dpo sft CONFIG.yaml [--key value …]`: the supervised warm-up (:mod:`lambda_dpo.sft`) from a YAML of
`SFTArguments` and `TrainingArguments` fields."""

from __future__ import annotations

import argparse
import logging
import sys

from lambda_dpo.cli._config_command import CONFIG_THEN_OVERRIDES, add_config_arguments, print_fields

__all__ = ["CONFIG_THEN_OVERRIDES", "add_arguments", "run"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser, "YAML file of SFTArguments and TrainingArguments fields",
                         "--max_steps 300 --learning_rate 1e-3")


def run(args: argparse.Namespace) -> int:
    from transformers import TrainingArguments

    from lambda_dpo.sft import SFTArguments, parse_config, sft_trainer

    if args.help_fields:
        return print_fields(SFTArguments, TrainingArguments)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    sft_args, training_args = parse_config(args.config or None, list(args.overrides))
    for name in ("model_name_or_path", "dataset"):
        if not getattr(sft_args, name):
            raise SystemExit(f"lambda-dpo sft: set {name} (in the YAML or as --{name} ...)")

    import torch

    from lambda_dpo.data import DataError
    from lambda_dpo.model_dir import ModelLoadError, load_pretrained, torch_dtype

    if sft_args.torch_threads:
        torch.set_num_threads(sft_args.torch_threads)
    try:
        tokenizer, model = load_pretrained(sft_args.model_name_or_path,
                                           dtype=torch_dtype(training_args.bf16, training_args.fp16))
    except ModelLoadError as err:
        print(f"lambda-dpo sft: {err}", file=sys.stderr)
        return 2
    try:
        trainer = sft_trainer(
            model, tokenizer, sft_args.dataset, training_args, eval_data=sft_args.eval_dataset,
            top_k=sft_args.top_k, rank_by=sft_args.rank_by, max_length=sft_args.max_length,
            max_prompt_length=sft_args.max_prompt_length, dataset_format=sft_args.dataset_format,
            strict=sft_args.strict, lambda_line_fraction=sft_args.lambda_line_fraction,
            conditioning_template=sft_args.conditioning_template,
        )
    except (DataError, ValueError) as err:
        print(f"lambda-dpo sft: {err}", file=sys.stderr)
        return 2
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    tail = f"; last logged training loss {losses[-1]:.4f}" if losses else ""
    print(f"saved the fine-tuned model and tokenizer to {training_args.output_dir}{tail}")
    if sft_args.eval_dataset:
        print(f"held-out loss on response tokens: {trainer.evaluate()['eval_loss']:.4f}")
    return 0
