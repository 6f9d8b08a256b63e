"""Evaluation metrics (docs/spec.md §4): rank correlations, NDCG, ranking accuracy, Pareto front, hypervolume, KL, win rate.

Pure functions on 1-D/2-D arrays. Inputs may be lists, numpy arrays or CPU/GPU torch tensors (converted with
``.detach().cpu()``); outputs are Python floats or numpy arrays. "Undefined" results (a constant side of a
correlation, a list with no ordered pair) are NaN, never an exception, so that averages can skip them with
``np.nanmean``; malformed inputs (shape mismatch, NaN/inf values) raise ``ValueError``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import scipy.stats


def as_numpy(values, name: str = "values", dtype=np.float64) -> np.ndarray:
    """``values`` (list, numpy array or torch tensor) as a numpy array of ``dtype``."""
    if hasattr(values, "detach"):  # a torch tensor; avoid importing torch here
        values = values.detach().cpu()
        values = values.float().numpy() if dtype is not bool else values.bool().numpy()
    try:
        return np.asarray(values, dtype=dtype)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be numeric array-like, got {type(values).__name__}: {error}") from None


def _pair(x, y, names: tuple[str, str] = ("x", "y")) -> tuple[np.ndarray, np.ndarray]:
    x, y = as_numpy(x, names[0]).ravel(), as_numpy(y, names[1]).ravel()
    if x.shape != y.shape:
        raise ValueError(f"{names[0]} and {names[1]} must have the same length, got {x.size} and {y.size}")
    for name, values in zip(names, (x, y)):
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise ValueError(
                f"{name} has non-finite value {values[bad[0]]} at index {bad[0]} ({bad.size} in all); "
                "drop or mask those entries first"
            )
    return x, y


def _constant(values: np.ndarray) -> bool:
    return values.size < 2 or bool(np.all(values == values[0]))


def spearman(x, y) -> float:
    """Spearman's rank correlation ρ: the Pearson correlation of the ranks of ``x`` and ``y`` (shape ``[n]``).

    Ties get their average rank. NaN when either side is constant (or n < 2): its ranks have no variance, so
    ρ is undefined (e.g. a λ that never varies, or a score that never moves).
    """
    x, y = _pair(x, y)
    if _constant(x) or _constant(y):
        return math.nan
    return float(scipy.stats.spearmanr(x, y).statistic)


def kendall_tau(x, y) -> float:
    """Kendall's τ-b: ``(C − D) / sqrt((n0 − n1)(n0 − n2))`` over the ``n0 = n(n−1)/2`` pairs of ``[n]`` inputs.

    C / D count concordant / discordant pairs; n1, n2 count pairs tied in x, in y (τ-b's tie correction, so a
    perfect ranking with ties still reaches 1). NaN when either side is constant (or n < 2).
    """
    x, y = _pair(x, y)
    if _constant(x) or _constant(y):
        return math.nan
    return float(scipy.stats.kendalltau(x, y, variant="b").statistic)


def ndcg_at_k(scores_pred, relevance_true, k: int | None = None, gain: str = "linear") -> float:
    """Normalised discounted cumulative gain of the order that ``scores_pred`` (``[n]``) puts on the items.

    ``DCG@k = Σ_{r=1..k} g(item at rank r) / log2(r + 1)``, ``NDCG@k = DCG@k / IDCG@k`` where IDCG orders the items
    by ``relevance_true`` itself. ``k=None`` uses all n items.

    Gains: ``gain="linear"`` (default) uses the relevance as given, ``g = rel``, which suits target probabilities
    p*[d] (they already are a softmax of the scores); ``gain="exponential"`` uses ``g = 2^rel − 1`` (the web-search
    convention, for integer ratings). Relevances must be ≥ 0. Items tied in ``scores_pred`` share the average
    gain of their tie group at each of the ranks the group occupies (so ties are neither rewarded nor punished
    by an arbitrary tie-break). NaN when every gain is 0 (nothing to rank).
    """
    pred, rel = _pair(scores_pred, relevance_true, ("scores_pred", "relevance_true"))
    if np.any(rel < 0):
        raise ValueError(
            f"relevance_true must be ≥ 0 for NDCG, got {rel.min()}; pass target probabilities or shift the scores"
        )
    if gain == "linear":
        gains = rel
    elif gain == "exponential":
        gains = np.exp2(rel) - 1.0
    else:
        raise ValueError(f"gain must be 'linear' or 'exponential', got {gain!r}")
    n = gains.size
    k = n if k is None else int(k)
    if k < 1:
        raise ValueError(f"k must be ≥ 1 (or None for the whole list), got {k}")
    discounts = 1.0 / np.log2(np.arange(2, n + 2))
    discounts[min(k, n) :] = 0.0
    ideal = float(np.sort(gains)[::-1] @ discounts)
    if ideal == 0.0:
        return math.nan
    order = np.argsort(-pred, kind="stable")
    sorted_pred, sorted_gains = pred[order], gains[order]
    # Replace each gain by its tie group's mean: groups are runs of equal predicted scores.
    _, group_start, group_size = np.unique(-sorted_pred, return_index=True, return_counts=True)
    group_of_rank = np.repeat(np.arange(group_start.size), group_size)
    group_mean = np.add.reduceat(sorted_gains, group_start) / group_size
    return float(group_mean[group_of_rank] @ discounts) / ideal


def ranking_accuracy(pred, target) -> float:
    """Fraction of the pairs that ``target`` (``[n]``) orders strictly which ``pred`` (``[n]``) orders the same way.

    ``acc = Σ_{i,j: t_i > t_j} ([p_i > p_j] + ½[p_i = p_j]) / #{i,j: t_i > t_j}``. Pairs tied in the target carry
    no order and are skipped; pairs tied in ``pred`` count ½ (a coin flip), so a model whose rewards are all equal
    (e.g. policy = reference at step 0) scores 0.5, the chance level. NaN when the target orders no pair.
    """
    pred, target = _pair(pred, target, ("pred", "target"))
    target_gt = target[:, None] > target[None, :]
    num_pairs = int(target_gt.sum())
    if num_pairs == 0:
        return math.nan
    agree = (pred[:, None] > pred[None, :]) + 0.5 * (pred[:, None] == pred[None, :])
    return float((agree * target_gt).sum() / num_pairs)


def per_list(metric, pred, target, mask=None, **kwargs) -> np.ndarray:
    """Apply a list metric (``ranking_accuracy``, ``kendall_tau``, ``ndcg_at_k``, ``spearman``) row by row.

    ``pred``, ``target``: ``[B, k]``; ``mask``: optional bool ``[B, k]``, False = padding slot or unscored response
    (left out of that row). Returns ``[B]`` float, NaN where the metric is undefined for the row.
    """
    pred, target = as_numpy(pred, "pred"), as_numpy(target, "target")
    if pred.ndim != 2 or pred.shape != target.shape:
        raise ValueError(f"pred and target must both be [B, k], got {pred.shape} and {target.shape}")
    mask = np.ones(pred.shape, bool) if mask is None else as_numpy(mask, "mask", bool)
    if mask.shape != pred.shape:
        raise ValueError(f"mask must be [B, k] = {pred.shape}, got {mask.shape}")
    return np.array([metric(p[m], t[m], **kwargs) for p, t, m in zip(pred, target, mask)], dtype=np.float64)


def ranking_report(
    rewards,
    target_probs,
    dimensions: Sequence[str],
    response_mask=None,
    dimension_mask=None,
    ndcg_k: int | None = None,
) -> dict[str, dict[str, float]]:
    """Per-dimension ranking quality of implicit rewards against the targets (docs/spec.md §4, first item).

    Args:
        rewards: ``[B, k]`` implicit rewards ``β(ℓ_θ − ℓ_ref)`` (or any score to rank responses by).
        target_probs: ``[B, m, k]`` from :func:`lambda_dpo.targets.target_probs_from_scores`.
        dimensions: the m dimension names, in ``target_probs`` order.
        response_mask: bool ``[B, k]``, False = padding slot. Responses with target probability 0 are treated as
            unscored for that dimension (missing scores get p* = 0, and a softmax never gives an exact 0 unless
            score gaps exceed ~100 τ).
        dimension_mask: bool ``[B, m]``, False = no signal for that dimension in that list (row skipped).
        ndcg_k: cut-off of NDCG (None = whole list).

    Returns:
        ``{dimension: {"ranking_accuracy", "kendall_tau", "ndcg", "num_lists"}}``: means over the lists where the
        metric is defined (NaN if none).
    """
    rewards, target_probs = as_numpy(rewards, "rewards"), as_numpy(target_probs, "target_probs")
    if rewards.ndim != 2 or target_probs.ndim != 3 or target_probs.shape[::2] != rewards.shape:
        raise ValueError(
            f"rewards must be [B, k] and target_probs [B, m, k]; got {rewards.shape}, {target_probs.shape}"
        )
    batch, m, k = target_probs.shape
    if len(dimensions) != m:
        raise ValueError(
            f"target_probs has m={m} dimensions but {len(dimensions)} names were given: {list(dimensions)}"
        )
    response_mask = (
        np.ones((batch, k), bool) if response_mask is None else as_numpy(response_mask, "response_mask", bool)
    )
    dimension_mask = (
        np.ones((batch, m), bool)
        if dimension_mask is None
        else as_numpy(dimension_mask, "dimension_mask", bool)
    )
    report = {}
    for d, name in enumerate(dimensions):
        rows = dimension_mask[:, d]
        targets = target_probs[rows, d]
        mask = response_mask[rows] & (targets > 0)
        values = {
            "ranking_accuracy": per_list(ranking_accuracy, rewards[rows], targets, mask),
            "kendall_tau": per_list(kendall_tau, rewards[rows], targets, mask),
            "ndcg": per_list(ndcg_at_k, rewards[rows], targets, mask, k=ndcg_k),
        }
        report[name] = {key: _nanmean(v) for key, v in values.items()}
        report[name]["num_lists"] = int(rows.sum())
    return report


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def length_bias(logps, lengths) -> float:
    """Length bias (docs/spec.md §4): Spearman ρ between responses' log-probabilities ``[n]`` and their lengths ``[n]``."""
    return spearman(logps, lengths)


def win_rate(policy_scores, reference_scores) -> tuple[float, float]:
    """Win rate of the policy over the reference on paired prompts, judged by a scorer: ``(mean, stderr)``.

    ``w_i = 1`` if ``policy_scores[i] > reference_scores[i]``, ``½`` on a tie, 0 otherwise (both ``[n]``);
    returns ``mean(w)`` and its standard error ``std(w, ddof=1) / sqrt(n)`` (NaN when n < 2).
    """
    policy, reference = _pair(policy_scores, reference_scores, ("policy_scores", "reference_scores"))
    if policy.size == 0:
        raise ValueError("win_rate needs at least one scored pair")
    wins = (policy > reference) + 0.5 * (policy == reference)
    return float(wins.mean()), _stderr(wins)


def _stderr(values: np.ndarray) -> float:
    return float(values.std(ddof=1) / math.sqrt(values.size)) if values.size >= 2 else math.nan


def kl_estimate(policy_token_logps, reference_token_logps, mask) -> tuple[float, float]:
    """Monte Carlo estimate of KL(π_θ ‖ π_ref) from responses sampled from π_θ: ``(mean, stderr)``.

    Args:
        policy_token_logps: ``[N, T]`` log π_θ(y_t | x, y_<t) of the tokens of N responses **sampled from π_θ**.
        reference_token_logps: ``[N, T]`` log π_ref(y_t | x, y_<t) of the same tokens.
        mask: bool ``[N, T]``, True on response tokens (False on prompt and padding).

    Per response, ``k_n = Σ_t mask · (log π_θ − log π_ref)`` is an unbiased single-sample estimate of the
    sequence-level ``KL(π_θ(·|x) ‖ π_ref(·|x)) = E_{y~π_θ}[log π_θ(y|x) − log π_ref(y|x)]``. Returns the mean of
    ``k_n`` over the N responses and its standard error ``std(k, ddof=1) / sqrt(N)`` (NaN when N < 2). Single
    estimates can be negative; only the mean converges to the (non-negative) KL. Units: nats per response.
    """
    policy = as_numpy(policy_token_logps, "policy_token_logps")
    reference = as_numpy(reference_token_logps, "reference_token_logps")
    mask = as_numpy(mask, "mask", bool)
    if policy.ndim != 2 or policy.shape != reference.shape or policy.shape != mask.shape:
        raise ValueError(
            "policy_token_logps, reference_token_logps and mask must all be [N, T]; "
            f"got {policy.shape}, {reference.shape}, {mask.shape}"
        )
    if policy.shape[0] == 0:
        raise ValueError("kl_estimate needs at least one sampled response (N = 0)")
    log_ratio = np.where(mask, policy - reference, 0.0)
    if not np.all(np.isfinite(log_ratio)):
        n, t = np.argwhere(~np.isfinite(log_ratio))[0]
        raise ValueError(f"non-finite log-probability at response {n}, token {t} inside the mask")
    per_sequence = log_ratio.sum(axis=1)
    return float(per_sequence.mean()), _stderr(per_sequence)


# --- Pareto front and hypervolume (maximisation: higher scores are better on every dimension) ---


def pareto_front(points, maximize: bool = True) -> np.ndarray:
    """Indices (ascending) of the non-dominated rows of ``points`` ``[n, m]``.

    With ``maximize=True``, ``a`` dominates ``b`` when ``a ≥ b`` on every dimension and ``a > b`` on at least one
    (``maximize=False``: ≤ and <). Duplicate points do not dominate each other, so all copies are kept.
    """
    points = as_numpy(points, "points")
    if points.ndim != 2:
        raise ValueError(f"points must be [n, m], got shape {points.shape}")
    if not maximize:
        points = -points
    geq = np.all(points[:, None, :] >= points[None, :, :], axis=-1)  # geq[a, b]: a ≥ b everywhere
    gt = np.any(points[:, None, :] > points[None, :, :], axis=-1)
    dominated = np.any(geq & gt, axis=0)
    return np.flatnonzero(~dominated)


def default_reference_point(*point_sets, margin: float = 0.1) -> np.ndarray:
    """The reference point that hypervolumes are measured from, shared by every compared model: ``[m]``.

    ``ref_d = min_d − margin · span_d`` over all points of all ``point_sets`` (each ``[n_i, m]``), with
    ``span_d = max_d − min_d`` (or 1 when every point has the same value on d). Every point then lies strictly
    above the reference, so each one (even the worst model's) contributes, and the numbers of models evaluated
    together are comparable. Hypervolumes computed against different references are not comparable.
    """
    if not point_sets:
        raise ValueError("default_reference_point needs at least one set of points")
    arrays = [as_numpy(p, "points") for p in point_sets]
    dims = {a.shape[-1] for a in arrays if a.ndim == 2}
    if len(dims) != 1 or any(a.ndim != 2 for a in arrays):
        raise ValueError(
            f"every point set must be [n, m] with the same m, got shapes {[a.shape for a in arrays]}"
        )
    stacked = np.concatenate(arrays, axis=0)
    if stacked.shape[0] == 0 or not np.all(np.isfinite(stacked)):
        raise ValueError("point sets must be non-empty and finite to define a reference point")
    low, high = stacked.min(axis=0), stacked.max(axis=0)
    span = np.where(high > low, high - low, 1.0)
    return low - margin * span


def hypervolume(points, reference_point) -> float:
    """Exact hypervolume (maximisation) of ``points`` ``[n, m]`` above ``reference_point`` ``[m]``.

    ``HV = vol(∪_i [ref, p_i])``: the measure of the region that some point dominates and that dominates the
    reference. Points not strictly above the reference on every dimension add nothing. Computed by slicing along
    the last dimension (Hypervolume by Slicing Objectives) down to an exact 2-D sweep; cost ~O(n^(m−1) log n),
    fine for the small fronts of a λ grid (n ≲ 50, m ≤ 5). A single point gives ``Π_d (p_d − ref_d)``.
    """
    points, ref = as_numpy(points, "points"), as_numpy(reference_point, "reference_point").ravel()
    if points.ndim != 2 or points.shape[1] != ref.size:
        raise ValueError(
            f"points must be [n, m] with m = len(reference_point) = {ref.size}, got {points.shape}"
        )
    if not (np.all(np.isfinite(points)) and np.all(np.isfinite(ref))):
        raise ValueError("points and reference_point must be finite")
    points = points[np.all(points > ref, axis=1)]
    if points.shape[0] == 0:
        return 0.0
    return float(_hv_above(points - ref))


def _hv_above(points: np.ndarray) -> float:
    """HV of positive ``points`` ``[n, m]`` above the origin."""
    points = points[pareto_front(points)]
    if points.shape[1] == 1:
        return float(points.max())
    if points.shape[1] == 2:
        # A 2-D front sorted by x ascending has y descending: a staircase of disjoint slabs.
        x, y = points[np.argsort(points[:, 0])].T
        widths = np.diff(np.concatenate(([0.0], x)))
        return float(widths @ y)
    # Slab between consecutive heights z_{i+1} < z_i on the last axis: every point at least as high covers it.
    order = np.argsort(-points[:, -1], kind="stable")
    points = points[order]
    heights = np.concatenate((points[:, -1], [0.0]))
    volume = 0.0
    for i in range(points.shape[0]):
        thickness = heights[i] - heights[i + 1]
        if thickness > 0:
            volume += thickness * _hv_above(points[: i + 1, :-1])
    return volume
