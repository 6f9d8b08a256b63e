"""`LambdaDPOConfig`: every λ-DPO setting, on top of `transformers.TrainingArguments` (docs/spec.md §3).

One dataclass, read by `lambda-dpo train` (YAML + `--key value` through `HfArgumentParser`) and by
`LambdaDPOTrainer`. `__post_init__` rejects a bad value in one line that names the field; the names a choice may
take are read from the modules that own them (`losses.LOSSES`, `lambdas.SCHEDULES`, `logprobs.sequence.REDUCTIONS`).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

from transformers import TrainingArguments

from lambda_dpo import distributed, reliance
from lambda_dpo.conditioning import DEFAULT_TEMPLATE
from lambda_dpo.lambdas import SCHEDULES
from lambda_dpo.logprobs.sequence import REDUCTIONS
from lambda_dpo.losses import LOSSES

logger = logging.getLogger("lambda_dpo.trainer")  # the trainer's logger: its messages keep their source name

CHOICES = {
    "prefix_sharing": ("auto", "true", "false"),
    "loss": tuple(LOSSES),
    "lambda_schedule": tuple(SCHEDULES),
    "logprob_reduction": REDUCTIONS,
    "reference": ("model", "adapter-disabled", "none"),
    "lambda_sampling": ("prompt", "batch"),
    "pairwise_weighting": ("gap", "uniform"),
    "conditioning": ("text", "lora"),
    "tau_scale": ("absolute", "range"),
}


@dataclass
class ModelDataArguments:
    """The settings `lambda-dpo sft` and `lambda-dpo train` share (model, data, lengths, λ line, threads), declared
    once: both `SFTArguments` and `LambdaDPOConfig` extend this."""

    model_name_or_path: str | None = field(default=None, metadata={"help": "Model to train: a local directory or a hub name."})
    dataset: str | None = field(default=None, metadata={"help": "Training data: any docs/spec.md §2 input (file or hub name)."})
    dataset_format: str = field(default="auto", metadata={"help": "Input format of `dataset` (auto detects it)."})
    eval_dataset: str | None = field(default=None, metadata={"help": "Optional held-out data, same formats."})
    strict: bool = field(default=False, metadata={"help": "Make any rejected record a fatal error."})
    max_length: int = field(default=1024, metadata={"help": "Max tokens of prompt + response."})
    max_prompt_length: int | None = field(
        default=None, metadata={"help": "Max prompt tokens incl. the λ line (default: max_length // 2); longer "
                                        "prompts keep their end."}
    )
    conditioning_template: str = field(
        default=DEFAULT_TEMPLATE, metadata={"help": "Template of the λ line; must contain {weights}."}
    )
    torch_threads: int | None = field(default=None, metadata={"help": "torch CPU threads of this process (default: torch's choice, one per core). On a shared machine 1 thread can be several times faster than 2 while other jobs run: benchmarks/bench_threads.py."})

    def check_model_data(self) -> None:
        """Reject a bad shared value in one line that names the field."""
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"torch_threads must be ≥ 1, got {self.torch_threads}")
        if "{weights}" not in self.conditioning_template:
            raise ValueError(f"conditioning_template {self.conditioning_template!r} must contain {{weights}}")
        try:
            self.conditioning_template.format(weights="a=1.00")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"conditioning_template {self.conditioning_template!r} has a field other than "
                             f"{{weights}} ({type(e).__name__}: {e}); write literal braces as {{{{ and }}}}") from None


@dataclass
class LambdaDPOConfig(TrainingArguments, ModelDataArguments):
    """Every λ-DPO knob, on top of `transformers.TrainingArguments` (so `output_dir`, `learning_rate`,
    `per_device_train_batch_size`, `max_steps`, `seed`, … keep their usual names and meanings)."""

    dataset_options: dict | str | None = field(
        default=None,
        metadata={"help": 'Options of the input format as JSON, e.g. {"group_field": "prompt_id", "max_responses": 8} '
                          "for rated rows (lambda_dpo.data.converters)."},
    )
    dimensions: list[str] | None = field(
        default=None, metadata={"help": "Preference dimensions, in order (default: the data's dimensions)."}
    )
    loss: str = field(default="listwise", metadata={"help": "listwise | dpo | pairwise | plackett_luce"})
    pairwise_weighting: str = field(
        default="gap", metadata={"help": "Pair confidence for loss=pairwise: gap (of the mixed target) | uniform. "
                                       "Per-pair weights from data go through losses.pairwise_loss directly."}
    )
    lambda_schedule: str = field(
        default="uniform", metadata={"help": "fixed | unimodal | uniform | dirichlet | gaussian | learned"}
    )
    lambda_schedule_kwargs: dict | str | None = field(
        default=None,
        metadata={"help": 'Options of the schedule as JSON, e.g. {"weights": "helpfulness=0.5,honesty=0.5"} '
                  'for fixed, {"alpha": 0.5} for dirichlet, {"mu": 0.0, "sigma": 1.0} for gaussian.'},
    )
    lambda_sampling: str = field(default="prompt", metadata={"help": "Draw λ per prompt or once per batch."})
    condition_on_lambda: bool = field(
        default=True,
        metadata={"help": "Show λ to the policy in the system message (needed for steering; false = a control)."},
    )
    conditioning: str = field(
        default="text",
        metadata={"help": "How the policy sees λ: text (a line in the system message; any serving stack can steer "
                          "it) | lora (λ-mixed per-dimension low-rank adapters, lambda_dpo.lambda_adapters; "
                          "merge into plain weights for a fixed λ with `lambda-dpo export`)."},
    )
    conditioning_rank: int = field(default=8, metadata={"help": "conditioning=lora: rank r of each dimension's adapter."})
    conditioning_alpha: float | None = field(
        default=None, metadata={"help": "conditioning=lora: the deltas are scaled by alpha / rank (default alpha = rank)."}
    )
    conditioning_target_modules: list[str] | None = field(
        default=None, metadata={"help": "conditioning=lora: linear layers to adapt (default: all but the output head)."}
    )
    lambda_reliance_check: float = field(
        default=0.3,
        metadata={"help": "Fraction of max_steps after which an evaluation whose relative λ-reliance "
                          "(eval_lambda_reliance_relative/<d>) is still below lambda_reliance_min for some dimension "
                          "warns that the policy ignores λ there (0 = never warn)."},
    )
    lambda_reliance_min: float = field(
        default=reliance.RELATIVE_MIN,
        metadata={"help": "Relative λ-reliance (the share of the targets' own dependence on λ that the policy shows, "
                          "lambda_dpo.reliance) below which a λ-conditioned run warns, per dimension."},
    )
    beta: float = field(default=0.1, metadata={"help": "β: scale of the implicit reward β·(ℓ_θ − ℓ_ref)."})
    tau: float = field(default=1.0, metadata={"help": "τ: temperature of the targets softmax(s/τ)."})
    tau_scale: str = field(
        default="absolute",
        metadata={"help": "absolute: τ in the scores' own units | range: τ relative to each dimension's score range "
                          "in the training data (τ_d = τ·(max − min)), so one τ fits 0–1, 1–5 or 0–100 ratings."},
    )
    logprob_reduction: str = field(default="mean", metadata={"help": "Reduce response-token log-probs: mean | sum"})
    nll_weight: float = field(
        default=0.0,
        metadata={"help": "α ≥ 0: add α · target-weighted per-token NLL of the responses (losses.target_nll_loss, "
                          "the listwise form of RPO / TRL's rpo_alpha) to keep the policy's mass on the responses "
                          "λ prefers; with loss dpo, RPO's NLL of the best response. 0 = the pure λ-DPO loss."},
    )
    reference: str = field(
        default="model",
        metadata={"help": "model (a frozen copy) | adapter-disabled (LoRA base) | none (reference-free)"},
    )
    reference_model: str | None = field(
        default=None, metadata={"help": "Reference model path (default: model_name_or_path)."}
    )
    precompute_reference: bool = field(
        default=True, metadata={"help": "Compute reference log-probs once before training (cached on disk)."}
    )
    reference_cache_dir: str | None = field(
        default=None, metadata={"help": "Where reference log-probs are cached (default: <output_dir>/reference_cache)."}
    )
    logprob_chunk_size: int = field(
        default=128, metadata={"help": "Positions per lm_head chunk when computing log-probs (memory vs speed)."}
    )
    prefix_sharing: str = field(
        default="auto",
        metadata={"help": "Forward each prompt once for all k of its responses (one row [prompt, r_1, …, r_k]; same "
                          "log-probs). auto: for a batch whose estimated cost (linear layers per position, attention "
                          "per pair, the head per response token) is at most 90% of the plain layout's, where the "
                          "model's attention is SDPA or eager (checked once); true: always (an error where it "
                          "cannot); false: never.",
                  "choices": ["auto", "true", "false"]},
    )
    use_lora: bool = field(default=False, metadata={"help": "Train LoRA adapters (peft) instead of all weights."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    lora_dropout: float = field(default=0.0, metadata={"help": "LoRA dropout."})
    lora_target_modules: list[str] | None = field(
        default=None, metadata={"help": "Modules to adapt (default: all linear layers)."}
    )
    merge_lora: bool = field(default=False, metadata={"help": "Save merged weights instead of the adapter."})
    remove_unused_columns: bool = field(default=False, metadata={"help": "Must stay False for λ-DPO."})
    train_sampling_strategy: str = field(
        default="group_by_length",
        metadata={"help": "group_by_length (default: batches of records of similar padded length, less padding; "
                          "benchmarks/bench_padding.py) | random | sequential | batch_rebalance",
                  "choices": ["random", "sequential", "group_by_length", "batch_rebalance"]},
    )

    _VALID_DICT_FIELDS = [*TrainingArguments._VALID_DICT_FIELDS, "lambda_schedule_kwargs", "dataset_options"]

    def __post_init__(self):
        # accelerate would let each process train alone on all the data here (lambda_dpo.distributed).
        if not self.use_cpu and distributed.launched_without_accelerator():
            how = "FSDP2" if distributed.fsdp_launched_without_accelerator() else "DDP"
            logger.warning("%s processes launched on a machine without GPUs: training on the CPU, %s over gloo "
                           "(use_cpu=true)", os.environ["WORLD_SIZE"], how)
            self.use_cpu = True
        if self.ddp_backend is None and distributed.deepspeed_launched_without_accelerator():
            self.ddp_backend = "gloo"
        # Our JSON fields first: TrainingArguments' own parsing of them would fail without naming the field.
        for name in ("lambda_schedule_kwargs", "dataset_options"):
            value = getattr(self, name)
            if isinstance(value, str):
                try:
                    setattr(self, name, json.loads(value) if value.strip() else {})
                except json.JSONDecodeError as e:
                    raise ValueError(f"{name}={value!r} is not valid JSON ({e.msg} at character {e.pos}); write it "
                                     'as a JSON object, e.g. {"key": 1}') from None
            if getattr(self, name) is not None and not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name} must be a JSON object (a mapping), got {getattr(self, name)!r}")
        self.check_model_data()
        for name in ("per_device_train_batch_size", "per_device_eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.dimensions is not None and len(set(self.dimensions)) != len(self.dimensions):
            repeated = sorted({d for d in self.dimensions if self.dimensions.count(d) > 1})
            raise ValueError(f"dimensions lists {repeated} more than once; give each dimension once")
        super().__post_init__()
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not one of {list(allowed)}")
        for name in ("beta", "tau"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {name}={value}")
        if not self.nll_weight >= 0:
            raise ValueError(f"nll_weight must be >= 0 (0 disables the NLL anchor), got {self.nll_weight}")
        if self.conditioning == "lora" and self.use_lora:
            raise ValueError("conditioning=lora with use_lora=true is not supported: the λ-adapters are already "
                             "low-rank adapters; train them on the full model (use_lora: false) or use "
                             "conditioning: text with peft LoRA")
        if self.reference == "adapter-disabled" and not self.use_lora:
            raise ValueError("reference=adapter-disabled needs use_lora=true (the reference is the LoRA base model)")
        if self.max_prompt_length is None:
            self.max_prompt_length = self.max_length // 2
        self.remove_unused_columns = False

    def lambda_dpo_settings(self) -> dict[str, Any]:
        """The λ-DPO part of the config (what `lambda_dpo.json` records next to the model)."""
        base = {f.name for f in TrainingArguments.__dataclass_fields__.values()}
        return {k: v for k, v in asdict(self).items() if k not in base and not k.startswith("_")}
