"""Batches of listwise records: the collator that pads B rows (k may differ per row), the seeded length-grouped
sampler every process draws the same order from, and the padding measures the step logs."""

from __future__ import annotations

import math
from typing import Any

import torch
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices


class ListwiseCollator:
    """Pads B tokenised listwise rows (k may differ per row) into a batch.

    Returns tensors ``scores [B, m, k_max]`` (NaN = missing or padding), ``response_mask [B, k_max]``,
    ``response_lengths [B, k_max]`` (response tokens; 0 at padding),
    ``reference_logps [B, k_max]`` (when precomputed) and the per-row python lists the step needs to render the
    λ-conditioned prompt (`prompt`, `system`, `prompt_input_ids`, `response_input_ids`, `id`).
    """

    def __init__(self, dimensions: list[str]):
        self.dimensions = list(dimensions)

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        k_max = max(len(r["response_input_ids"]) for r in rows)
        batch_size, m = len(rows), len(self.dimensions)
        scores = torch.full((batch_size, m, k_max), math.nan)
        response_mask = torch.zeros(batch_size, k_max, dtype=torch.bool)
        response_lengths = torch.zeros(batch_size, k_max, dtype=torch.long)
        for b, row in enumerate(rows):
            k = len(row["response_input_ids"])
            response_mask[b, :k] = True
            response_lengths[b, :k] = torch.tensor([len(r) for r in row["response_input_ids"]])
            for d, name in enumerate(self.dimensions):
                values = (row["scores"] or {}).get(name) or []
                scores[b, d, : len(values)] = torch.tensor([math.nan if v is None else v for v in values])
        batch = {
            "scores": scores,
            "response_mask": response_mask,
            "response_lengths": response_lengths,
            "id": [row["id"] for row in rows],
            "prompt": [row["prompt"] for row in rows],
            "system": [row.get("system") or "" for row in rows],
            "prompt_input_ids": [row["prompt_input_ids"] for row in rows],
            "response_input_ids": [row["response_input_ids"] for row in rows],
        }
        if "reference_logps" in rows[0]:
            reference = torch.zeros(batch_size, k_max)
            for b, row in enumerate(rows):
                reference[b, : len(row["reference_logps"])] = torch.tensor(row["reference_logps"])
            batch["reference_logps"] = reference
        return batch


class SeededLengthGroupedSampler(LengthGroupedSampler):
    """transformers' `LengthGroupedSampler` (random mega-batches of up to 50 batches, each sorted by length, the
    longest record first) with a shuffle that depends only on ``(seed, epoch)``.

    Why: with several processes accelerate hands batch i of this order to process i mod n, so every process must
    draw the same order. The stock sampler without a generator draws from each process's global torch RNG, which
    accelerate does not synchronise. The Trainer calls `set_epoch` at every epoch (a resumed run too), so a resumed
    run sees the same order as an uninterrupted one.
    """

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=list(lengths))
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


def padded_length(sequence_lengths: list[int]) -> int:
    """The length a record's k sequences are padded to on their own: ``max_j (|prompt| + |response_j|)``.

    A batch of records is padded to the largest of these, so grouping records by it is what cuts padding (the
    `length` column that `train_sampling_strategy: group_by_length` sorts by).
    """
    return max(sequence_lengths, default=0)


def pad_fraction(attention_mask: torch.Tensor) -> float:
    """Padding share of a padded batch: ``1 − Σ mask / (N·T)`` for ``attention_mask`` ``[N, T]`` (1 = real token)."""
    return 1.0 - attention_mask.sum().item() / max(attention_mask.numel(), 1)
