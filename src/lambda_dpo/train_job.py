"""The job of `lambda-dpo train` as library functions: a `LambdaDPOConfig` from YAML + overrides
(:func:`parse_config`), the policy it names (:func:`load_policy`), and load data → train → evaluate → save
(:func:`train_from_config`). The command line itself is :mod:`lambda_dpo.cli.train`.
"""

from __future__ import annotations

import logging

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
