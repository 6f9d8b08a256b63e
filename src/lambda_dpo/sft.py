"""Supervised warm-up on the responses of listwise records (docs/spec.md §3 ``sft``; the paper's "Finetuned-Base").

Every response of a record (or the ``top_k`` best by one dimension) becomes one example: the chat-templated prompt
(no λ line: the warm-up is unconditioned) followed by the response and its end-of-turn token. The loss is the usual
next-token cross-entropy on the response tokens only: prompt positions carry the label -100. Tokenisation is the
data module's (:func:`lambda_dpo.data.tokenize_listwise`), so SFT and λ-DPO see identical prompt and response ids;
training is a plain ``transformers.Trainer`` with ``DataCollatorForSeq2Seq`` (it pads labels with -100).

    lambda-dpo sft sft.yaml --max_steps 300

where ``sft.yaml`` holds :class:`SFTArguments` and ``TrainingArguments`` fields (``model_name_or_path``,
``dataset``, ``output_dir``, ``learning_rate``, …). The result is a Hugging Face model directory (safetensors) with
its tokenizer, ready to be the policy and the reference of ``lambda-dpo train``.
"""

from __future__ import annotations

import copy
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from lambda_dpo.conditioning import DEFAULT_TEMPLATE
from lambda_dpo.config import ModelDataArguments

logger = logging.getLogger("lambda_dpo")


@dataclass
class SFTArguments(ModelDataArguments):
    """The fields of an ``sft`` config beyond the shared ones (:class:`~lambda_dpo.config.ModelDataArguments`: model,
    data, lengths, λ line template, threads); the rest are ``transformers.TrainingArguments`` fields."""

    top_k: int = field(
        default=0, metadata={"help": "Train on the top_k responses of each record by `rank_by` (0 = every response)."}
    )
    rank_by: str | None = field(
        default=None,
        metadata={"help": "Dimension that ranks responses for top_k (default: the mean of a response's scores)."},
    )
    lambda_line_fraction: float = field(
        default=0.0,
        metadata={"help": "Share of records whose system message starts with a random λ line (uniform on the "
                          "simplex, unrelated to the responses), before `lambda-dpo train` with conditioning: text. "
                          "The warm-up then knows the line's format while λ means nothing yet, so λ-DPO starts "
                          "from rewards ≈ 0 (the demo uses 0.5). 0 = no λ lines."},
    )

    def __post_init__(self):
        self.check_model_data()
        if self.top_k < 0:
            raise ValueError(f"top_k must be ≥ 0 (0 = every response), got {self.top_k}")
        if not 0.0 <= self.lambda_line_fraction <= 1.0:
            raise ValueError(f"lambda_line_fraction must be in [0, 1], got {self.lambda_line_fraction}")


def select_responses(scores: Mapping[str, Sequence[float | None]], k: int, top_k: int = 0,
                     rank_by: str | None = None) -> list[int]:
    """Indices of the responses to train on, in their original order.

    ``top_k = 0`` keeps all ``k``. Otherwise the ``top_k`` highest by ``scores[rank_by]`` (or, with ``rank_by``
    None, by the mean of each response's non-missing scores); a response without a score there is never chosen,
    and ties keep the earlier response.
    """
    if top_k == 0:
        return list(range(k))
    if rank_by is not None:
        if rank_by not in scores:
            raise ValueError(f"rank_by={rank_by!r} is not a dimension of the data; its dimensions: {list(scores)}")
        keys = [scores[rank_by][i] if i < len(scores[rank_by]) else None for i in range(k)]
    else:
        keys = []
        for i in range(k):
            values = [v[i] for v in scores.values() if i < len(v) and v[i] is not None and not math.isnan(v[i])]
            keys.append(sum(values) / len(values) if values else None)
    scored = [i for i in range(k) if keys[i] is not None and not math.isnan(keys[i])]
    best = sorted(scored, key=lambda i: -keys[i])[:top_k]
    return sorted(best)


def _flatten(batch: dict, top_k: int, rank_by: str | None) -> dict:
    out = {"input_ids": [], "labels": []}
    for prompt_ids, response_ids, scores in zip(
        batch["prompt_input_ids"], batch["response_input_ids"], batch["scores"]
    ):
        for i in select_responses(scores, len(response_ids), top_k, rank_by):
            if response_ids[i]:
                out["input_ids"].append(prompt_ids + response_ids[i])
                out["labels"].append([-100] * len(prompt_ids) + response_ids[i])
    return out


def sft_examples(tokenized, top_k: int = 0, rank_by: str | None = None):
    """A tokenised listwise ``Dataset`` (from ``tokenize_listwise``) → one row per chosen response with
    ``input_ids = prompt_ids + response_ids`` and ``labels = [-100] * len(prompt_ids) + response_ids``."""
    return tokenized.map(
        _flatten,
        batched=True,
        remove_columns=tokenized.column_names,
        fn_kwargs={"top_k": top_k, "rank_by": rank_by},
        desc="Building SFT examples",
    )


def with_random_lambda_lines(dataset, fraction: float, seed: int = 0, template: str = DEFAULT_TEMPLATE,
                             dimensions: Sequence[str] | None = None):
    """A copy of a listwise ``dataset`` in which an evenly spread ``fraction`` of the records (for 0.5: every other
    one) gets a random λ line (uniform on the simplex, seeded) before its own system text.

    SFT on this teaches the model the conditioning *format* while λ carries no information about the responses,
    so after the warm-up π(y | x, λ) ≈ π(y | x) = π_ref(y | x): λ-DPO then starts from rewards ≈ 0 rather than
    from the random offsets an unseen system line would cause, and learns what λ means from the preferences."""
    from lambda_dpo.conditioning import render_lambda, with_conditioning
    from lambda_dpo.data import dataset_dimensions
    from lambda_dpo.lambdas import make_schedule

    if fraction <= 0:
        return dataset
    dimensions = list(dimensions or dataset_dimensions(dataset))
    lambdas = make_schedule("uniform", dimensions, seed=seed).sample(len(dataset))
    systems = dataset["system"] if "system" in dataset.column_names else [None] * len(dataset)
    lines = [
        with_conditioning(system, render_lambda(lam, dimensions, template))
        if math.floor(i * fraction) != math.floor((i - 1) * fraction) else (system or "")
        for i, (lam, system) in enumerate(zip(lambdas, systems))
    ]
    if "system" in dataset.column_names:
        dataset = dataset.remove_columns("system")
    return dataset.add_column("system", lines)


def as_listwise_dataset(data, *, dataset_format: str = "auto", strict: bool = False, seed: int = 0):
    """Listwise records as a ``datasets.Dataset``: from a path or hub name (:func:`lambda_dpo.data.load_listwise`),
    an already loaded ``Dataset``, or a list of native listwise dicts (validated like a JSONL file's lines)."""
    from datasets import Dataset

    from lambda_dpo.data import load_listwise

    if isinstance(data, Dataset):
        return data
    if isinstance(data, (str, os.PathLike)):
        dataset, report = load_listwise(data, format=dataset_format, strict=strict, seed=seed, return_report=True)
        logger.info("%s", report.summary())
        return dataset
    from lambda_dpo.data import listwise_features
    from lambda_dpo.data.converters import from_listwise

    records = []
    for index, item in from_listwise(enumerate(data)):
        if isinstance(item, Exception):
            raise ValueError(f"listwise record #{index} (0-based) is invalid: {item}") from None
        item["id"] = item["id"] if item["id"] is not None else str(index)
        records.append(item)
    if not records:
        raise ValueError("no listwise records to train on: the list is empty")
    dimensions = list(dict.fromkeys(name for record in records for name in record["scores"]))
    for record in records:
        k = len(record["responses"])
        record["scores"] = {name: record["scores"].get(name) or [None] * k for name in dimensions}
    return Dataset.from_list(records, features=listwise_features(dimensions))


def sft_trainer(model, tokenizer, train_data, args, *, eval_data=None, top_k: int = 0, rank_by: str | None = None,
                max_length: int = 1024, max_prompt_length: int | None = None, dataset_format: str = "auto",
                strict: bool = False, lambda_line_fraction: float = 0.0,
                conditioning_template: str = DEFAULT_TEMPLATE):
    """A ``transformers.Trainer`` for the warm-up, its datasets already tokenised and flattened.

    ``train_data`` / ``eval_data``: anything :func:`as_listwise_dataset` accepts; ``args``: ``TrainingArguments``;
    ``lambda_line_fraction``: see :func:`with_random_lambda_lines` (training data only).
    """
    from transformers import DataCollatorForSeq2Seq, Trainer

    from lambda_dpo.data import ensure_chat_template, tokenize_listwise

    ensure_chat_template(tokenizer)

    def examples(data, fraction=0.0):
        listwise = as_listwise_dataset(data, dataset_format=dataset_format, strict=strict, seed=args.seed)
        listwise = with_random_lambda_lines(listwise, fraction, seed=args.seed, template=conditioning_template)
        tokenized = tokenize_listwise(listwise, tokenizer, max_length=max_length, max_prompt_length=max_prompt_length)
        return sft_examples(tokenized, top_k, rank_by)

    train_examples = examples(train_data, lambda_line_fraction)
    if len(train_examples) == 0:
        raise ValueError(f"no SFT example left (top_k={top_k}, rank_by={rank_by!r} selected no scored response)")
    # Right padding for training whatever the tokenizer's setting (generation may want left padding); a copy, so
    # the tokenizer saved with the model keeps the user's choice.
    collator_tokenizer = copy.copy(tokenizer)
    collator_tokenizer.padding_side = "right"
    return Trainer(
        model=model,
        args=args,
        train_dataset=train_examples,
        eval_dataset=examples(eval_data) if eval_data is not None else None,
        data_collator=DataCollatorForSeq2Seq(collator_tokenizer, label_pad_token_id=-100),
        processing_class=tokenizer,
    )


def run_sft(model, tokenizer, records_or_dataset, output_dir: str, *, eval_data=None, top_k: int = 0,
            rank_by: str | None = None, max_length: int = 1024, max_prompt_length: int | None = None,
            lambda_line_fraction: float = 0.0, **training_args):
    """Fine-tune ``model`` on the responses of listwise records, save it (safetensors) with its tokenizer to
    ``output_dir``, and return it.

    ``records_or_dataset``: a path, a hub name, a listwise ``Dataset`` or a list of native listwise dicts.
    ``training_args``: ``transformers.TrainingArguments`` fields (``max_steps``, ``learning_rate``, …);
    checkpoints are not written unless ``save_strategy`` asks for them.
    """
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=output_dir, **{"save_strategy": "no", **training_args})
    trainer = sft_trainer(model, tokenizer, records_or_dataset, args, eval_data=eval_data, top_k=top_k,
                          rank_by=rank_by, max_length=max_length, max_prompt_length=max_prompt_length,
                          lambda_line_fraction=lambda_line_fraction)
    trainer.train()
    trainer.save_model(output_dir)
    return trainer.model


def parse_config(config_path: str | None, overrides: Sequence[str]):
    """``(SFTArguments, TrainingArguments)`` from a YAML file and ``--key value`` overrides (overrides win)."""
    from transformers import TrainingArguments

    from lambda_dpo.config_io import parse_yaml_config

    given_output = any(o.split("=")[0] in ("--output_dir", "--output-dir") for o in overrides)
    if not given_output and config_path:
        import yaml

        try:
            with open(config_path) as f:
                given_output = "output_dir" in (yaml.safe_load(f) or {})
        except (OSError, yaml.YAMLError, TypeError):
            pass  # parse_yaml_config reports the file's problem
    sft_args, training_args = parse_yaml_config("sft", (SFTArguments, TrainingArguments), config_path, overrides)
    if not given_output:
        raise SystemExit("lambda-dpo sft: set output_dir (in the YAML or as --output_dir DIR)")
    return sft_args, training_args
