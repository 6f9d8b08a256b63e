"""Trainer callbacks of `LambdaDPOTrainer`: what happens after a log or an evaluation, one concern each (the
metrics file, the divergence warnings, the learned λ schedule's update, the λ-reliance warning)."""

from __future__ import annotations

import json
import logging
import math
import os

import torch
from transformers import TrainerCallback

from lambda_dpo.atomic import atomic_write
from lambda_dpo.lambdas import LambdaSchedule

logger = logging.getLogger("lambda_dpo.trainer")  # the trainer's logger: its messages keep their source name

class MetricsFileCallback(TrainerCallback):
    """Appends every log entry (training and evaluation) to `<output_dir>/metrics.jsonl` on the main process.

    A run starts the file afresh, so a second run into the same directory does not append to the first one's log;
    a run resumed from a checkpoint keeps the entries up to the checkpoint's step (later ones are logged again).
    """

    def on_train_begin(self, args, state, control, **kwargs):
        path = os.path.join(args.output_dir, "metrics.jsonl")
        if not state.is_world_process_zero or not os.path.exists(path):
            return
        with open(path) as f:
            kept = [line for line in f if state.global_step and json.loads(line)["step"] <= state.global_step]
        with atomic_write(path) as f:
            f.writelines(kept)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            os.makedirs(args.output_dir, exist_ok=True)
            with open(os.path.join(args.output_dir, "metrics.jsonl"), "a") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")


class DivergenceCallback(TrainerCallback):
    """Warns (once per kind, with the step) when a run diverges without producing a NaN: gradients that are exactly
    zero at several logs in a row (saturated: e.g. a learning rate so large that the weights blew up), a gradient
    norm above 1e4, or a training loss above 10× its first logged value (e.g. a huge beta)."""

    ZERO_LOGS = 3

    def __init__(self):
        self.first_loss: float | None = None
        self.zero_logs = 0
        self.warned: set[str] = set()

    def _warn(self, kind: str, message: str, *args) -> None:
        if kind not in self.warned:
            self.warned.add(kind)
            logger.warning(message, *args)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or "loss" not in logs:
            return
        loss, grad_norm, step = logs["loss"], logs.get("grad_norm"), state.global_step
        if self.first_loss is None and math.isfinite(loss):
            self.first_loss = loss
        if grad_norm is not None and math.isfinite(grad_norm):
            self.zero_logs = self.zero_logs + 1 if grad_norm == 0.0 else 0
            if self.zero_logs >= self.ZERO_LOGS:
                self._warn("zero", "training has stalled: the gradient norm is exactly 0 at %d logs in a row (step "
                           "%d), so the weights no longer change; the learning rate (%g) is probably far too large "
                           "and the model saturated. Lower it and restart", self.ZERO_LOGS, step, args.learning_rate)
            if grad_norm > 1e4:
                self._warn("explode", "the gradient norm is %.3g at step %d: training is diverging; lower the "
                           "learning rate (%g) or beta", grad_norm, step, args.learning_rate)
        if self.first_loss is not None and self.first_loss > 0 and loss > 10 * self.first_loss:
            self._warn("loss", "the training loss is %.4g at step %d, over 10× its first value %.4g: training is "
                       "diverging; lower the learning rate or beta", loss, step, self.first_loss)


class ScheduleUpdateCallback(TrainerCallback):
    """After each evaluation, hands the held-out per-dimension loss and ranking accuracy (``eval_loss/<d>``,
    ``eval_accuracy/<d>``, each ``Tensor[m]`` in ``dimensions`` order, NaN where missing) to ``schedule.update``:
    a learned schedule moves P(λ) toward the λ where the policy lags; fixed ones ignore it. Every process gets the
    same (reduced) metrics, so every process's schedule takes the same step."""

    def __init__(self, schedule: LambdaSchedule, dimensions: list[str]):
        self.schedule, self.dimensions = schedule, dimensions

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        metrics = metrics or {}
        self.schedule.update(state.global_step, {
            key: torch.tensor([metrics.get(f"eval_{key}/{d}", math.nan) for d in self.dimensions])
            for key in ("loss", "accuracy")
        })


class RelianceWarningCallback(TrainerCallback):
    """Warns once when a run meant to be steerable still has not learned to use λ for some dimension past
    `lambda_reliance_check` of its steps (``eval_lambda_reliance_relative/<d>`` below `lambda_reliance_min`): that
    failure is otherwise invisible until a full controllability evaluation. Per dimension, because a policy can
    follow λ on one dimension and ignore it on the others."""

    def __init__(self):
        self.warned = False

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        prefix = "eval_lambda_reliance_relative/"
        relative = {key[len(prefix):]: value for key, value in (metrics or {}).items() if key.startswith(prefix)}
        if (self.warned or not relative or not args.condition_on_lambda or args.lambda_reliance_check <= 0
                or args.max_steps <= 0 or state.global_step < args.lambda_reliance_check * args.max_steps):
            return
        weak = {d: share for d, share in relative.items() if share < args.lambda_reliance_min}
        if not weak:
            return
        self.warned = True
        hints = ("conditioning: lora (λ-mixed adapters: λ changes the weights, not only the prompt)"
                 if args.conditioning == "text" else "a larger conditioning_rank or learning_rate")
        logger.warning(
            "the policy ignores λ for %s: at step %d of %d, telling it λ = that dimension serves it hardly better "
            "than telling it another one (relative λ-reliance %s < lambda_reliance_min %.3g; 1 = as much as the "
            "targets depend on λ), so it will not be steerable there. Try %s; a one-hot-heavy schedule "
            "(lambda_schedule: unimodal, lambda_schedule_kwargs {\"uniform_fraction\": 0.3}); sharper targets "
            "(tau_scale: range with a small tau); or more steps",
            ", ".join(weak), state.global_step, args.max_steps,
            ", ".join(f"{d} {share:.3f}" for d, share in weak.items()), args.lambda_reliance_min, hints)
