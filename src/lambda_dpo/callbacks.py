"""Trainer callbacks of `LambdaDPOTrainer`: the metrics file and the divergence warnings."""

from __future__ import annotations

import json
import logging
import math
import os

from transformers import TrainerCallback

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
        with open(f"{path}.tmp", "w") as f:
            f.writelines(kept)
        os.replace(f"{path}.tmp", path)

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
