"""λ-reliance: how much a λ-conditioned policy's implicit rewards depend on λ (docs/spec.md §1).

Let ``L[p][d]`` be dimension d's held-out listwise loss −Σ_i p*[d]_i log softmax(r)_i with the policy told the
one-hot λ = e_p. Per dimension:

    gap_d      = mean_{p ≠ d} L[p][d] − L[d][d]              nats; ≈ 0 when the policy ignores λ for d
    ideal_d    = mean_{p ≠ d} CE(p*[d], p*[p]) − H(p*[d])     the gap of a policy that *is* the target at every λ
    relative_d = gap_d / ideal_d                              scale-free: 0 = ignores λ, 1 = as λ-dependent as the
                                                              targets themselves (it can exceed 1)

``gap_d`` depends on β and on how much the dimensions disagree in the data (two dimensions that rank alike need no
λ at all), so a fixed threshold on it would fit one setting only; ``ideal_d`` is computed from the targets alone
(rewards ≡ log p*[p] + const reach exactly CE(p*[d], p*[p])), which makes ``relative_d`` comparable across β,
reductions, τ and datasets. A dimension whose ideal gap is ~0 (the data give λ nothing to do there) has no
relative reliance.
"""

from __future__ import annotations

import torch

IDEAL_GAP_MIN = 1e-3  # nats: below this the targets barely depend on λ for a dimension
RELATIVE_MIN = 0.1  # relative λ-reliance below which a dimension cannot be steered (measured: failing 0.006–0.06,
                    # steering 0.27–0.45; README "λ-reliance")


def target_cross_entropy(target_probs: torch.Tensor, dimension_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums and counts over prompts of CE(p*[d], p*[p]) = −Σ_i p*[d]_i log p*[p]_i, ``[m (p), m (d)]`` each.

    ``target_probs`` ``[B, m, k]`` (rows of masked dimensions are 0), ``dimension_mask`` ``[B, m]``; a prompt counts
    for (p, d) when both dimensions carry signal. Probabilities are floored at 1e-6 so that a response one
    dimension did not score costs a bounded 13.8 nats instead of infinity.
    """
    log_q = target_probs.clamp_min(1e-6).log()  # [B, m, k]
    cross = -torch.einsum("bdk,bpk->bpd", target_probs, log_q)  # [B, p, d]
    both = dimension_mask[:, :, None] & dimension_mask[:, None, :]  # [B, p, d]
    return (cross * both).sum(0), both.sum(0).to(cross.dtype)


def per_dimension(matrix: dict[tuple[str, str], float], dimensions: list[str]) -> dict[str, float]:
    """``mean_{p ≠ d} matrix[p, d] − matrix[d, d]`` for every dimension d with all entries (none with m = 1)."""
    gaps = {}
    for d in dimensions:
        own = matrix.get((d, d))
        others = [matrix.get((p, d)) for p in dimensions if p != d]
        if own is None or not others or any(v is None for v in others):
            continue
        gaps[d] = sum(others) / len(others) - own
    return gaps


def relative(gaps: dict[str, float], ideal: dict[str, float]) -> dict[str, float]:
    """``gap_d / ideal_d`` where the ideal gap is meaningful (≥ :data:`IDEAL_GAP_MIN`)."""
    return {d: gaps[d] / ideal[d] for d in gaps if d in ideal and ideal[d] >= IDEAL_GAP_MIN}
