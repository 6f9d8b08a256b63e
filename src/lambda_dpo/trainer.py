"""`LambdaDPOTrainer`: λ-DPO on top of `transformers.Trainer` (its settings: `lambda_dpo.config.LambdaDPOConfig`,
re-exported here; its callbacks: `lambda_dpo.callbacks`; its batches: `lambda_dpo.batching`; its checkpoint files:
`lambda_dpo.checkpoints`; multi-process fixes: `lambda_dpo.distributed`; the model dir's `lambda_dpo.json`:
`lambda_dpo.model_dir`).

Data flow of one step (docs/design.md): the collator pads B listwise rows; the step samples λ per prompt from the
schedule, renders the λ-conditioned prompt (docs/spec.md §1), flattens B prompts × k responses into sequences, forwards each
sequence through the policy exactly once, and hands `[B, k]` log-probs, as one `losses.ListwiseInputs`, to a pure objective from `losses.py`. Reference
log-probs are precomputed once (unconditioned prompt) and travel with the batch.

λ is sampled in the training step, not in the DataLoader's collator: accelerate prefetches one batch ahead, so a
schedule drawn in the collator would be one draw ahead of the checkpointed state and a resumed run would see
different λ than an uninterrupted one.

Several processes (`accelerate launch`, `torchrun`): the Trainer's accelerator shards the batches (each process its
own records), DDP / FSDP / DeepSpeed sync the gradients, and the parts that are ours are made collective here: the
reference pass is split across the processes and gathered (`logprobs.reference_cache`), step and evaluation
metrics are summed over the processes, the model, metrics and metadata are written by the main process and the λ
schedule's state (one stream per process) by every process. Training batches are grouped by length by default.

Length (about 570 lines): what remains here are the `Trainer` overrides themselves (the step, evaluate, the save,
checkpoint and resume hooks, the accelerator set-up) and the glue between them; each concern they call into has
its own module (the list above, plus `losses`, `logprobs`, `heldout_tally`, `conditioning`, `lambda_adapters`).
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections import defaultdict
from typing import Any

import torch
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from lambda_dpo.batching import ListwiseCollator, SeededLengthGroupedSampler, padded_length
from lambda_dpo.callbacks import (
    DivergenceCallback,
    MetricsFileCallback,
    RelianceWarningCallback,
    ScheduleUpdateCallback,
)
from lambda_dpo.checkpoints import (
    SCHEDULE_STATE_FILE,
    atomic_torch_save,
    complete_checkpoints,
    load_schedule_state,
)
from lambda_dpo.conditioning import check_prompt_budget, conditioned_prompt_ids
from lambda_dpo.config import LambdaDPOConfig
from lambda_dpo.distributed import all_processes_agree, check_full_weights, enable_fsdp_on_cpu
from lambda_dpo.heldout_tally import HeldoutTally
from lambda_dpo.lambda_adapters import (
    ADAPTERS_FILE,
    add_lambda_adapters,
    get_adapters,
    save_adapters,
    set_lambdas,
)
from lambda_dpo.lambda_adapters import ATTRIBUTE as ADAPTER_ATTRIBUTE
from lambda_dpo.lambdas import make_schedule
from lambda_dpo.logprobs import build_sequences, sequence_logps
from lambda_dpo.logprobs.prefix_sharing import (
    shared_and_plain_tokens,
    shared_prefix_logps,
    sharing_pays,
    sharing_works,
)
from lambda_dpo.losses import OBJECTIVES, ListwiseInputs, per_dimension_metrics, target_nll_loss
from lambda_dpo.model_dir import load_pretrained, write_metadata
from lambda_dpo.targets import score_ranges, target_probs_from_scores

logger = logging.getLogger(__name__)

class LambdaDPOTrainer(Trainer):
    """A `transformers.Trainer` that optimises the λ-weighted listwise DPO loss (or a baseline from `losses.py`).

    Args:
        model: the policy (a `PreTrainedModel`, or a `PeftModel` when `args.use_lora`).
        args: a `LambdaDPOConfig`.
        train_dataset / eval_dataset: listwise datasets from `lambda_dpo.data.load_listwise` (tokenised here if
            they have no `prompt_input_ids` column).
        processing_class: the tokenizer.
        ref_model: the reference model for `reference: model` (default: loaded from `args.reference_model` or
            `args.model_name_or_path`); it is only kept in memory when `precompute_reference` is False.
    """

    def __init__(self, model, args: LambdaDPOConfig, train_dataset=None, eval_dataset=None, processing_class=None,
                 ref_model=None, callbacks=None, **kwargs):
        from lambda_dpo.data import dataset_dimensions, ensure_chat_template

        if processing_class is None:
            raise ValueError("LambdaDPOTrainer needs the tokenizer: pass processing_class=tokenizer")
        tokenizer = ensure_chat_template(processing_class)
        self.dimensions = list(args.dimensions or dataset_dimensions(train_dataset))
        if not self.dimensions:
            raise ValueError("no preference dimensions: set `dimensions` or give data with `scores`")
        args.dimensions = self.dimensions
        if args.condition_on_lambda and args.conditioning == "lora" and get_adapters(model) is None:
            add_lambda_adapters(model, self.dimensions, rank=args.conditioning_rank, alpha=args.conditioning_alpha,
                                target_modules=args.conditioning_target_modules)
        self.ref_model = None
        self.score_scale = score_ranges(train_dataset, self.dimensions) if args.tau_scale == "range" else None
        # Settings that depend on the data are checked before the (long) tokenising and reference passes.
        # One λ stream per process (seed + rank): the processes train on different records, under different λ.
        self.schedule = make_schedule(args.lambda_schedule, self.dimensions, seed=args.seed + args.process_index,
                                      **(args.lambda_schedule_kwargs or {}))
        if args.condition_on_lambda and args.conditioning == "text":
            for dataset in (train_dataset, eval_dataset):
                if dataset is not None:
                    check_prompt_budget(dataset, tokenizer, self.dimensions, args.conditioning_template,
                                        args.max_prompt_length)
        train_dataset = self._prepare_dataset(train_dataset, tokenizer, args)
        eval_dataset = self._prepare_dataset(eval_dataset, tokenizer, args) if eval_dataset is not None else None
        self._metric_names = ["kl_proxy", "pad_fraction", *(
            f"{kind}/{name}" for name in self.dimensions for kind in ("loss", "accuracy", "margin", "lambda"))]
        self._metric_sums: dict[str, float] = defaultdict(float)
        self._metric_counts: dict[str, float] = defaultdict(float)
        self._tokens_since_log = 0
        self._logged_prefix_sharing = False
        self._time_of_last_log = time.perf_counter()

        if args.reference != "none":
            train_dataset, eval_dataset = self._attach_reference(model, ref_model, tokenizer, args,
                                                                 train_dataset, eval_dataset)
        callbacks = [*(callbacks or []), MetricsFileCallback(), DivergenceCallback(),
                     ScheduleUpdateCallback(self.schedule, self.dimensions), RelianceWarningCallback()]
        super().__init__(model=model, args=args, data_collator=ListwiseCollator(self.dimensions),
                         train_dataset=train_dataset, eval_dataset=eval_dataset, processing_class=tokenizer,
                         callbacks=callbacks, **kwargs)
        # compute_loss returns a per-step mean, so the Trainer must scale it for gradient accumulation itself.
        self.model_accepts_loss_kwargs = False
        self._check_sharded_setup()
        if self.ref_model is not None:
            self.ref_model.to(self.args.device)

    def create_accelerator_and_postprocess(self) -> None:
        super().create_accelerator_and_postprocess()
        if enable_fsdp_on_cpu(self.accelerator):
            self.is_fsdp_enabled = True

    def _check_sharded_setup(self) -> None:
        """Fail before training on settings that cannot work when the model is sharded (DeepSpeed ZeRO-3, FSDP)."""
        if not self._sharded:
            return
        where = "FSDP" if self.is_fsdp_enabled else "DeepSpeed ZeRO-3"
        if self.ref_model is not None:
            raise ValueError(
                f"precompute_reference=false with a separate reference model is not supported under {where}: that "
                "model would need a sharded engine of its own. Keep precompute_reference: true (the default; the "
                "reference log-probs are computed once, before the policy is sharded) or, with use_lora: true, use "
                "reference: adapter-disabled"
            )
        if self.args.merge_lora:
            raise ValueError(
                f"merge_lora=true is not supported under {where}: the weights are sharded when the model is saved. "
                "Train with merge_lora: false, then merge the saved adapter in one process: "
                "PeftModel.from_pretrained(base_model, adapter_dir).merge_and_unload().save_pretrained(out_dir)"
            )
        fsdp = self.accelerator.state.fsdp_plugin if self.is_fsdp_enabled else None
        if (fsdp is not None and getattr(fsdp, "fsdp_version", 1) == 1 and self.args.use_lora
                and not fsdp.use_orig_params):
            raise ValueError(
                "use_lora=true under FSDP version 1 needs fsdp_use_orig_params: true in the accelerate config "
                "(frozen base weights and trainable adapters share FSDP's flat parameters otherwise); or use "
                "fsdp_version: 2 (configs/accelerate/fsdp.yaml)"
            )

    # ---------------------------------------------------------------- data and reference
    def _prepare_dataset(self, dataset, tokenizer, args):
        """Tokenise (if needed) and add the `length` column that length-grouped batching sorts by."""
        from lambda_dpo.data import tokenize_listwise
        from lambda_dpo.logprobs.batched import sequence_lengths

        if dataset is None:
            return None
        # The main process tokenises first: a disk-backed dataset's result is then cached once and read by the rest.
        with args.main_process_first(desc="tokenising listwise records"):
            if "prompt_input_ids" not in dataset.column_names:
                dataset = tokenize_listwise(dataset, tokenizer, max_length=args.max_length,
                                            max_prompt_length=args.max_prompt_length)
        if args.length_column_name in dataset.column_names:
            dataset = dataset.remove_columns(args.length_column_name)
        return dataset.add_column(args.length_column_name, [padded_length(row) for row in sequence_lengths(dataset)])

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if self.args.train_sampling_strategy != "group_by_length" or dataset is None:
            return super()._get_train_sampler(train_dataset)
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return SeededLengthGroupedSampler(self.args.train_batch_size * self.args.gradient_accumulation_steps,
                                          lengths=dataset[self.args.length_column_name], seed=seed)

    def _attach_reference(self, model, ref_model, tokenizer, args, train_dataset, eval_dataset):
        """The reference (``ref_model``, the LoRA base, or loaded from the settings) and its log-probs as a column
        of both datasets (:func:`~lambda_dpo.logprobs.reference_cache.attach_reference_logps`); kept in memory as
        ``self.ref_model`` only when ``precompute_reference`` is false."""
        from lambda_dpo.logprobs.reference_cache import attach_reference_logps

        adapter_disabled = args.reference == "adapter-disabled"
        if adapter_disabled:
            ref_model = model
        elif ref_model is None:
            path = args.reference_model or args.model_name_or_path
            if path is None:
                raise ValueError("reference=model needs ref_model=…, reference_model or model_name_or_path")
            setting = "reference_model" if args.reference_model else "model_name_or_path"
            _, ref_model = load_pretrained(path, setting=setting, dtype=model.dtype, tokenizer=False)
        if not args.precompute_reference:
            self.ref_model = None if adapter_disabled else ref_model.eval().requires_grad_(False)
            return train_dataset, eval_dataset
        check_full_weights(ref_model)
        return attach_reference_logps(ref_model, tokenizer, [train_dataset, eval_dataset], args, adapter_disabled)

    # ---------------------------------------------------------------- the step
    def _policy_prompts(self, inputs, lambdas: torch.Tensor) -> list[list[int]]:
        """Prompt token ids the policy sees: the λ line goes into the system message (docs/spec.md §1)."""
        args = self.args
        if not args.condition_on_lambda or args.conditioning != "text":
            return inputs["prompt_input_ids"]
        return [
            conditioned_prompt_ids(self.processing_class, messages, system, lam, self.dimensions,
                                   args.conditioning_template, args.max_prompt_length)
            # one device-to-host copy for the whole batch, not one per row
            for messages, system, lam in zip(inputs["prompt"], inputs["system"], lambdas.tolist())
        ]

    def _listwise_logps(self, model, prompts: list[list[int]], responses: list[list[list[int]]],
                        response_mask: torch.Tensor, grad: bool,
                        lambdas: torch.Tensor | None = None) -> tuple[torch.Tensor, int, tuple[int, int]]:
        """Log-probs ``[B, k_max]`` (0 at padding) of the B × k responses, in one forward: B rows with shared prompts
        (:mod:`lambda_dpo.logprobs.prefix_sharing`) or B·k sequences; also the tokens the data holds (each response with its
        prompt) and ``(real tokens, positions)`` actually forwarded (positions = real + padding).
        ``lambdas [B, m]`` drive the λ-adapters of a ``conditioning: lora`` policy (each response under its
        prompt's λ)."""
        pad = self.processing_class.pad_token_id
        device = response_mask.device
        # Tokens the data holds (every response with its own prompt): what tokens/s counts, shared or not.
        num_tokens = sum(len(p) * len(rs) + sum(map(len, rs)) for p, rs in zip(prompts, responses))
        if self._prefix_sharing(model, prompts, responses, lambdas):
            if lambdas is not None:  # one row per prompt: each row under its prompt's λ
                set_lambdas(model, lambdas)
            with torch.set_grad_enabled(grad):
                flat = shared_prefix_logps(model, prompts, responses, pad, reduction=self.args.logprob_reduction,
                                           chunk_size=self.args.logprob_chunk_size, checkpoint=grad,
                                           device=device).logps
            rows = [len(p) + sum(map(len, rs)) for p, rs in zip(prompts, responses)]
            logps = torch.zeros(response_mask.shape, dtype=flat.dtype, device=device)
            return logps.masked_scatter(response_mask, flat), num_tokens, (sum(rows), len(rows) * max(rows))
        if lambdas is not None:
            counts = torch.tensor([len(rs) for rs in responses], device=lambdas.device)
            # Left set after the forward: a gradient-checkpointed backward recomputes it under the same λ.
            set_lambdas(model, lambdas.repeat_interleave(counts, dim=0))
        flat_prompts = [p for p, rs in zip(prompts, responses) for _ in rs]
        flat_responses = [r for rs in responses for r in rs]
        seq = build_sequences(flat_prompts, flat_responses, pad)
        forwarded = (num_tokens, seq["attention_mask"].numel())
        seq = {k: v.to(device) for k, v in seq.items()}
        with torch.set_grad_enabled(grad):
            flat = sequence_logps(model, seq["input_ids"], seq["attention_mask"], seq["response_mask"],
                                  reduction=self.args.logprob_reduction, chunk_size=self.args.logprob_chunk_size,
                                  checkpoint=grad).logps
        logps = torch.zeros(response_mask.shape, dtype=flat.dtype, device=device)
        logps = logps.masked_scatter(response_mask, flat)
        return logps, num_tokens, forwarded

    def _prefix_sharing(self, model, prompts, responses, lambdas) -> bool:
        """Whether this batch forwards shared prompts (``prefix_sharing``; the choice is logged once)."""
        setting = self.args.prefix_sharing
        if setting == "false" or (setting == "auto" and not self._all_processes_agree(
                sharing_pays(model, prompts, responses))):
            return False
        works = sharing_works(model, prompts, responses, self.processing_class.pad_token_id,
                              self.args.logprob_reduction, lambdas)
        if setting == "true" and not works:
            raise ValueError("prefix_sharing=true, but this model's shared forward does not reproduce its plain one "
                             "(see the warning above); set prefix_sharing: auto or false")
        if works and not self._logged_prefix_sharing:
            self._logged_prefix_sharing = True
            shared, plain = shared_and_plain_tokens(prompts, responses)
            logger.info("prefix sharing on (prefix_sharing=%s): each prompt is forwarded once for its responses; "
                        "the first batch forwards %d tokens instead of %d", setting, shared, plain)
        return works

    def _all_processes_agree(self, wanted: bool) -> bool:
        """``wanted`` on every process when the policy is sharded (all processes must run the same forwards: the
        shared layout, whose first use runs a one-time check, only if all want it); else this process's own."""
        if not self._sharded or self.accelerator.num_processes == 1:
            return wanted
        return all_processes_agree(wanted, self.args.device)

    @property
    def _sharded(self) -> bool:
        """The policy's weights are partitioned across processes (DeepSpeed ZeRO-3 or FSDP)."""
        plugin = self.accelerator.state.deepspeed_plugin if self.is_deepspeed_enabled else None
        return (plugin is not None and plugin.zero_stage == 3) or self.is_fsdp_enabled

    def _reference_logps(self, inputs, response_mask) -> torch.Tensor:
        if self.args.reference == "none":
            return torch.zeros(response_mask.shape, device=response_mask.device)
        if "reference_logps" in inputs:
            return inputs["reference_logps"].to(response_mask.device)
        model = self.ref_model if self.ref_model is not None else self.model
        if self.args.reference == "adapter-disabled":
            with self.accelerator.unwrap_model(model).disable_adapter():
                return self._listwise_logps(model, inputs["prompt_input_ids"], inputs["response_input_ids"],
                                            response_mask, grad=False)[0]
        return self._listwise_logps(model, inputs["prompt_input_ids"], inputs["response_input_ids"],
                                    response_mask, grad=False)[0]

    def _targets(self, inputs) -> tuple[torch.Tensor, torch.Tensor]:
        """``(target_probs [B, m, k], dimension_mask [B, m])`` of a batch: softmax(s/τ) per dimension."""
        return target_probs_from_scores(inputs["scores"], self.args.tau, inputs["response_mask"], self.score_scale)

    def _sample_lambdas(self, batch_size: int) -> torch.Tensor:
        if self.args.lambda_sampling == "batch":
            return self.schedule.sample(1).expand(batch_size, -1)
        return self.schedule.sample(batch_size)

    def lambda_loss(self, model, inputs, lambdas: torch.Tensor, grad: bool = True):
        """Loss (mean over prompts with signal) and detached per-dimension metrics of one batch under ``lambdas``."""
        response_mask = inputs["response_mask"]
        lambdas = lambdas.to(response_mask.device)
        adapter_lambdas = lambdas if self.args.condition_on_lambda and self.args.conditioning == "lora" else None
        policy, num_tokens, (real, positions) = self._listwise_logps(
            model, self._policy_prompts(inputs, lambdas), inputs["response_input_ids"], response_mask, grad,
            adapter_lambdas)
        reference = self._reference_logps(inputs, response_mask)
        target_probs, dimension_mask = self._targets(inputs)
        objective = ListwiseInputs.build(policy, reference, target_probs, lambdas, self.args.beta, response_mask,
                                         dimension_mask, caller=f"loss {self.args.loss!r}")
        options = {"weighting": self.args.pairwise_weighting} if self.args.loss == "pairwise" else {}
        per_prompt = OBJECTIVES[self.args.loss](objective, **options)
        if self.args.nll_weight > 0:
            token_logps = policy  # the NLL anchor is per token: a summed log-prob is divided by its length
            if self.args.logprob_reduction == "sum":
                token_logps = policy / inputs["response_lengths"].to(policy.device, policy.dtype).clamp_min(1)
            per_prompt = per_prompt + self.args.nll_weight * target_nll_loss(
                token_logps, objective.mixed_target, response_mask, best_only=self.args.loss == "dpo")
        has_signal = objective.has_signal
        loss = per_prompt.sum() / has_signal.sum().clamp_min(1)
        with torch.no_grad():
            metrics = per_dimension_metrics(objective)
            rows = ("loss", "prompt_count", "accuracy", "count", "margin")
            packed = torch.stack([metrics[key].float() for key in rows] + [lambdas.float().mean(0)])  # [6, m]
            kl_proxy = (policy - reference)[response_mask].mean().reshape(1)
            num_prompts = has_signal.sum().reshape(1)
            # One host transfer per step: a `.item()` per metric would stall the GPU queue 3m+3 times.
            values = torch.cat([packed.flatten(), kl_proxy.float(), num_prompts.float()]).tolist()
        m = len(self.dimensions)
        table = [values[i * m:(i + 1) * m] for i in range(len(rows) + 1)]
        # (mean, count) pairs, plus plain counts: `tokens` (real tokens) and `prompts` (prompts with signal).
        stats = {"kl_proxy": (values[-2], 1), "pad_fraction": (1 - real / positions, positions),
                 "tokens": num_tokens, "prompts": int(values[-1]), "policy_logps": policy.detach()}
        for d, name in enumerate(self.dimensions):
            stats[f"loss/{name}"] = (table[0][d], table[1][d])
            stats[f"accuracy/{name}"] = (table[2][d], table[3][d])
            stats[f"margin/{name}"] = (table[4][d], table[3][d])
            stats[f"lambda/{name}"] = (table[5][d], 1)
        return loss, stats

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        lambdas = self._sample_lambdas(inputs["response_mask"].shape[0])
        loss, stats = self.lambda_loss(model, inputs, lambdas)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite loss ({loss.item()}) at step {self.state.global_step + 1}; record ids in this batch: "
                f"{inputs['id']}. Check those records' scores, lower the learning rate, or use logprob_reduction=mean."
            )
        self._accumulate(stats)
        return (loss, {}) if return_outputs else loss

    def _accumulate(self, stats: dict[str, Any]) -> None:
        self._tokens_since_log += stats["tokens"]
        for key in self._metric_names:
            value, count = stats[key]
            if count > 0 and math.isfinite(value):
                self._metric_sums[key] += value * count
                self._metric_counts[key] += count

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log: add the step metrics gathered since the last one
            logs.update(self._pop_step_metrics())
            # This process's schedule (one λ stream per process): entropy, most likely λ, … of an adaptive one.
            logs.update(self.schedule.stats())
        super().log(logs, start_time)

    def _pop_step_metrics(self) -> dict[str, float]:
        """Step metrics since the last training log, over all processes: ``Σ value·count / Σ count`` per metric
        (the Trainer's own `loss` is already averaged over processes), and `tokens_per_second` of all processes
        together. A collective: the Trainer calls `log` on every process at the same steps."""
        names, now = self._metric_names, time.perf_counter()
        elapsed = (now - self._time_of_last_log) / self.accelerator.num_processes  # summed: the mean wall time
        local = [*(self._metric_sums[k] for k in names), *(self._metric_counts[k] for k in names),
                 self._tokens_since_log, elapsed]
        device = self.args.device if self.accelerator.num_processes > 1 else "cpu"
        total = self.accelerator.reduce(torch.tensor(local, dtype=torch.float64, device=device), "sum").tolist()
        sums, counts = total[:len(names)], total[len(names):2 * len(names)]
        metrics = {name: value / count for name, value, count in zip(names, sums, counts) if count > 0}
        metrics["tokens_per_second"] = total[-2] / max(total[-1], 1e-9)
        self._time_of_last_log, self._tokens_since_log = now, 0
        self._metric_sums.clear()
        self._metric_counts.clear()
        return metrics

    # ---------------------------------------------------------------- evaluation
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Per-dimension held-out metrics of the λ-conditioned policy: for each dimension d, the policy is
        conditioned on the one-hot λ = e_d and scored on d (loss, ranking accuracy, margin); `eval_loss` is the
        λ-DPO loss at the centre of the simplex. With several processes each scores its share of the records and
        the sums are reduced, so every process gets (and the learned schedule sees) the same numbers.

        λ-reliance (`lambda_dpo.reliance`) comes from the same forwards: ``eval_lambda_reliance/<d>`` = (mean over
        d' ≠ d of the loss on d's target with the policy conditioned on e_d') − (the loss on d's target conditioned
        on e_d), i.e. how much worse d is served when the policy is told another λ (≈ 0: λ is ignored);
        ``eval_lambda_reliance_relative/<d>`` = that gap over the targets' own (scale-free: 1 = as λ-dependent as
        the targets); ``eval_lambda_reliance`` and ``…_relative`` are their means over dimensions;
        ``eval_lambda_logp_shift`` = mean |ℓ_θ(y | x, e_d) − ℓ_θ(y | x, e_d')| over responses and pairs d < d', in
        the configured reduction (nats per response for sum, per token for mean)."""
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError("evaluate() needs an eval_dataset")
        model = self.model
        was_training = model.training
        model.eval()
        m = len(self.dimensions)
        probes = {"centre": torch.full((m,), 1.0 / m)} | {d: torch.eye(m)[i] for i, d in enumerate(self.dimensions)}
        tally = HeldoutTally(self.dimensions)
        for inputs in self.get_eval_dataloader(dataset):
            inputs = self._without_repeated_rows(self._prepare_inputs(inputs))
            batch_size = inputs["response_mask"].shape[0]
            vertex_logps = []
            for probe, lam in probes.items():
                loss, stats = self.lambda_loss(model, inputs, lam.expand(batch_size, -1), grad=False)
                if probe == "centre":
                    tally.add_centre(loss.item(), stats["prompts"])
                else:
                    vertex_logps.append(stats["policy_logps"])
                    tally.add_vertex(probe, stats)
            tally.add_targets(*self._targets(inputs))
            tally.add_logp_shift(vertex_logps, inputs["response_mask"] & torch.isfinite(inputs["scores"]).any(1))
        model.train(was_training)
        device = self.args.device if self.accelerator.num_processes > 1 else "cpu"
        total = self.accelerator.reduce(tally.as_tensor(device), "sum").tolist()
        metrics = tally.metrics(total, metric_key_prefix)
        self.log(metrics)
        # The learned schedule's update and the λ-reliance warning: ScheduleUpdateCallback, RelianceWarningCallback.
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _without_repeated_rows(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """Blank the scores of the rows accelerate repeated to give every process equally many full batches
        (`even_batches`): they carry no signal then and count in no metric, yet are still forwarded, so every
        process runs the same forwards (ZeRO-3 / FSDP gather weights collectively in them). A collective."""
        if self.accelerator.num_processes == 1:
            return inputs
        scores = inputs["scores"]
        batch_size = scores.shape[0]
        # gather_for_metrics drops the repeats of the last batches: what survives is the real rows, process-major.
        real = self.accelerator.gather_for_metrics(torch.ones(batch_size, device=scores.device)).numel()
        keep = torch.arange(batch_size, device=scores.device) < real - self.accelerator.process_index * batch_size
        return {**inputs, "scores": scores.masked_fill(~keep[:, None, None], math.nan)}

    # ---------------------------------------------------------------- saving and resuming
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        output_dir = output_dir or self.args.output_dir
        if get_adapters(self.model) is not None:
            # The base weights keep their own names and file (AutoModelForCausalLM loads them as a plain model);
            # the λ-adapters go to lambda_adapters.safetensors, which generation and evaluation attach again.
            state_dict = self.model.state_dict() if state_dict is None else state_dict
            state_dict = {k: v for k, v in state_dict.items() if not k.startswith(f"{ADAPTER_ATTRIBUTE}.")}
            os.makedirs(output_dir, exist_ok=True)
            save_adapters(self.model, output_dir)
        super()._save(output_dir, state_dict)
        self._write_model_dir_files(output_dir, self.model)

    def _write_model_dir_files(self, output_dir: str, model) -> None:
        """`lambda_dpo.json` and the model card (`README.md`, with the last held-out metrics) of a saved model."""
        from lambda_dpo.model_card import write_card

        ranges = None if self.score_scale is None else dict(zip(self.dimensions, self.score_scale.tolist()))
        metadata = write_metadata(output_dir, self.dimensions, self.args, model, score_ranges=ranges)
        evaluations = [entry for entry in self.state.log_history if "eval_loss" in entry]
        write_card(output_dir, metadata, evaluations[-1] if evaluations else None,
                   self.args.hub_model_id if self.args.push_to_hub else None)

    def create_model_card(self, *args, **kwargs) -> None:
        """`push_to_hub` writes the Trainer's generic card here: ours (how to steer the model) replaces it."""
        if self.is_world_process_zero():
            self._write_model_dir_files(self.args.output_dir, self.model)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        adapters = get_adapters(model if model is not None else self.model)
        if adapters is not None:
            from safetensors.torch import load_file

            path = os.path.join(resume_from_checkpoint, ADAPTERS_FILE)
            if not os.path.exists(path):
                raise ValueError(f"{resume_from_checkpoint} has no {ADAPTERS_FILE}: it was not written by a "
                                 "conditioning: lora run, so it cannot resume one")
            adapters.load_state_dict(load_file(path))

    def _save_checkpoint(self, model, trial) -> None:
        """A checkpoint that cannot be resumed is never left as the latest one: non-finite weights stop the run
        before anything is written; the λ-schedule state goes in first and the Trainer's `trainer_state.json`
        last, so a folder is complete exactly when that file parses (:func:`complete_checkpoints`); a write that
        fails (a full disk) removes its partial folder and says what happened."""
        step = self.state.global_step
        bad = [name for name, p in self.accelerator.unwrap_model(model).named_parameters()
               if p.is_floating_point() and not torch.isfinite(p).all()]
        if bad:
            raise FloatingPointError(
                f"non-finite weights at step {step} ({len(bad)} tensors, e.g. {bad[0]!r}): checkpoint-{step} was not "
                "written, so the latest checkpoint is still a finite one. Lower the learning rate or beta")
        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{step}")
        try:
            os.makedirs(folder, exist_ok=True)
            atomic_torch_save(self.schedule.state_dict(),
                              os.path.join(folder, SCHEDULE_STATE_FILE.format(rank=self.args.process_index)))
            super()._save_checkpoint(model, trial)
        except (OSError, RuntimeError) as e:
            if self.args.should_save:
                shutil.rmtree(folder, ignore_errors=True)
            full = "No space left" in str(e) or "unexpected pos" in str(e) or getattr(e, "errno", None) == 28
            why = "no space left on device" if full else f"{type(e).__name__}: {str(e).splitlines()[0]}"
            raise OSError(f"could not write checkpoint-{step} to {folder} ({why}); the partial folder was removed "
                          "and the latest complete checkpoint is kept. Free space or set output_dir elsewhere, then "
                          "resume with --resume_from_checkpoint true") from None

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        if resume_from_checkpoint is True:
            complete = complete_checkpoints(self.args.output_dir)
            if not complete:
                raise ValueError(f"resume_from_checkpoint=True but {self.args.output_dir} has no complete "
                                 "checkpoint-* folder")
            resume_from_checkpoint = complete[-1]
            logger.warning("resuming from %s, the last complete checkpoint in %s", resume_from_checkpoint,
                           self.args.output_dir)
        if resume_from_checkpoint:
            path = os.path.join(resume_from_checkpoint, SCHEDULE_STATE_FILE.format(rank=self.args.process_index))
            if os.path.exists(path):
                self.schedule.load_state_dict(load_schedule_state(path))
            else:
                logger.warning("%s has no %s: the λ schedule restarts from its seed, so the λ drawn after the "
                               "resume differ from an uninterrupted run's", resume_from_checkpoint,
                               os.path.basename(path))
        return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def save_final(self, output_dir: str | None = None, merge: bool | None = None) -> str:
        """Save the trained model for use: HF model dir (safetensors), tokenizer, `lambda_dpo.json`; LoRA adapters
        are saved as an adapter, or merged into the base weights when ``merge`` (default `args.merge_lora`)."""
        output_dir = output_dir or self.args.output_dir
        merge = self.args.merge_lora if merge is None else merge
        model = self.accelerator.unwrap_model(self.model)
        if merge and hasattr(model, "merge_and_unload"):
            merged = model.merge_and_unload()  # on every process, so that they all keep the same model
            if self.args.should_save:
                merged.save_pretrained(output_dir)
                self.processing_class.save_pretrained(output_dir)
                self._write_model_dir_files(output_dir, merged)
            self.model = merged
            self.accelerator.wait_for_everyone()
        else:
            self.save_model(output_dir)
        return output_dir
