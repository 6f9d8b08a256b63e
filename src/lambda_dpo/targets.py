"""Scores → per-dimension target distributions (docs/spec.md §1, "Targets").

For each prompt and dimension d, ``p*[d] = softmax(s[d] / τ)`` over the responses that dimension scored.
Missing scores (``None`` in records, NaN in tensors) get probability 0 — never "the worst score".
A dimension with fewer than two scored responses carries no signal for that prompt and is masked out.
Shorter lists are padded to the batch's k with a response mask; padding slots behave like missing scores.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch


def scores_to_tensor(
    scores: Mapping[str, Sequence[float | None]], dimensions: Sequence[str], k: int | None = None
) -> torch.Tensor:
    """One record's scores as a ``[m, k]`` float tensor, NaN where a score is missing.

    Dimensions absent from ``scores`` are all-missing; ``k`` (default: the longest score list) pads with NaN.
    """
    lengths = [len(v) for v in scores.values()]
    k = k if k is not None else max(lengths, default=0)
    out = torch.full((len(dimensions), k), math.nan, dtype=torch.float32)
    for d, name in enumerate(dimensions):
        for i, value in enumerate(scores.get(name) or ()):
            if value is not None:
                out[d, i] = float(value)
    return out


def target_probs_from_scores(
    scores: torch.Tensor, tau: float = 1.0, response_mask: torch.Tensor | None = None, score_scale=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-dimension target distributions over each list.

    Args:
        scores: ``[..., m, k]`` float; NaN marks a missing score.
        tau: softmax temperature τ > 0 (smaller = sharper targets).
        response_mask: optional bool ``[..., k]``; False marks a padding slot of a shorter list.
        score_scale: optional ``[m]`` (tensor or sequence): each dimension's unit of τ, i.e. τ_d = τ · scale_d
            (``tau_scale: range`` passes the training data's score ranges, :func:`score_ranges`).

    Returns:
        ``(target_probs [..., m, k], dimension_mask [..., m])``: ``target_probs[..., d, :] = softmax(s[d]/τ)``
        over scored responses, 0 elsewhere; rows of masked dimensions (fewer than 2 scored responses) are all 0
        and ``dimension_mask`` is False there.
    """
    if not (tau > 0 and math.isfinite(tau)):  # also catches NaN, which would make every target NaN
        raise ValueError(f"tau must be a finite number > 0 (the target softmax temperature), got {tau}")
    if score_scale is not None:  # τ_d = τ · scale_d: divide the scores instead
        scores = scores / torch.as_tensor(score_scale, dtype=scores.dtype, device=scores.device)[:, None]
    scored = ~torch.isnan(scores)
    if response_mask is not None:
        scored = scored & response_mask.unsqueeze(-2).bool()
    dimension_mask = scored.sum(-1) >= 2
    logits = torch.where(scored, scores / tau, torch.full_like(scores, -math.inf))
    # A row with no scored entry would be softmax(all -inf) = NaN; give it a harmless row, then zero it.
    logits = torch.where(dimension_mask.unsqueeze(-1) | scored, logits, torch.zeros_like(logits))
    probs = torch.softmax(logits, dim=-1)
    probs = torch.where(dimension_mask.unsqueeze(-1) & scored, probs, torch.zeros_like(probs))
    return probs, dimension_mask


def record_targets(
    scores: Mapping[str, Sequence[float | None]], dimensions: Sequence[str], tau: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``target_probs [m, k]`` and ``dimension_mask [m]`` of one record (see :func:`target_probs_from_scores`)."""
    return target_probs_from_scores(scores_to_tensor(scores, dimensions), tau)


def mix_targets(
    target_probs: torch.Tensor, lambdas: torch.Tensor, dimension_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """λ-mixed target ``Σ_d λ_d p*[d]`` with λ renormalised over the unmasked dimensions of each prompt.

    Args:
        target_probs: ``[B, m, k]``; lambdas: ``[B, m]``; dimension_mask: bool ``[B, m]``.

    Returns:
        ``[B, k]``. A prompt whose unmasked dimensions all have λ_d = 0 gets an all-zero row (no signal).
    """
    if dimension_mask is not None:
        lambdas = lambdas * dimension_mask.to(lambdas.dtype)
    total = lambdas.sum(-1, keepdim=True)
    weights = lambdas / torch.where(total > 0, total, torch.ones_like(total))
    return torch.einsum("bm,bmk->bk", weights, target_probs)


def score_ranges(dataset, dimensions: list[str]) -> torch.Tensor:
    """``max − min`` of each dimension's scores over ``dataset`` ``[m]`` (1 where a dimension has a single value):
    the unit of τ under ``tau_scale: range``."""
    low = {d: math.inf for d in dimensions}
    high = {d: -math.inf for d in dimensions}
    for scores in dataset["scores"]:
        for d in dimensions:
            values = [v for v in (scores or {}).get(d) or [] if v is not None and math.isfinite(v)]
            if values:
                low[d], high[d] = min(low[d], *values), max(high[d], *values)
    ranges = [high[d] - low[d] if high[d] > low[d] else 1.0 for d in dimensions]
    return torch.tensor(ranges, dtype=torch.float32)
