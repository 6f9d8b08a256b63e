"""Checkpoint files that are ours: which `checkpoint-<step>` folders a run can resume from, and the λ schedule's
state (one file per process), written atomically and read back without unpickling code."""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any

import torch
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from lambda_dpo.atomic import atomic_path

logger = logging.getLogger(__name__)

SCHEDULE_STATE_FILE = "lambda_schedule_rank{rank}.pt"


def complete_checkpoints(output_dir: str) -> list[str]:
    """The ``checkpoint-<step>`` folders of ``output_dir`` that a run can resume from, oldest first.

    A folder counts when its ``trainer_state.json`` (the Trainer writes it after the weights, optimizer and RNG
    states; we write the λ-schedule state before them) parses: one cut short by a kill or a full disk does not,
    and is skipped with a warning, so resume falls back to the previous complete one."""
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = re.fullmatch(rf"{PREFIX_CHECKPOINT_DIR}-(\d+)", name)
        if not match or not os.path.isdir(os.path.join(output_dir, name)):
            continue
        try:
            with open(os.path.join(output_dir, name, "trainer_state.json")) as f:
                json.load(f)
        except (OSError, ValueError):
            logger.warning("%s is incomplete (no readable trainer_state.json: the run was stopped while writing it); "
                           "skipped", os.path.join(output_dir, name))
            continue
        found.append((int(match.group(1)), os.path.join(output_dir, name)))
    return [path for _, path in sorted(found)]


def load_schedule_state(path: str) -> dict[str, Any]:
    """The λ schedule's state from a checkpoint: tensors and plain Python only (``weights_only=True``), so a crafted
    checkpoint cannot run code when a run resumes from it."""
    try:
        return torch.load(path, weights_only=True)
    except Exception as e:  # the unpickler refuses anything but tensors and plain containers
        raise ValueError(f"{path}: not a λ schedule state written by lambda-dpo ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); delete the file to restart the schedule "
                         "from its seed") from None


def atomic_torch_save(obj, path: str) -> None:
    with atomic_path(path) as temporary:
        torch.save(obj, temporary)
