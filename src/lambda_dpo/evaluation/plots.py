"""Controllability plots: mean score against λ_d, and Pareto fronts of pairs of dimensions.

Figures are built with ``matplotlib.figure.Figure`` and its Agg canvas, never pyplot: no global figure state, no
window, safe in threads and on headless machines. PNGs are written atomically (temporary file in the same
directory, then ``os.replace``), so a crashed run never leaves a truncated image behind.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from lambda_dpo.atomic import atomic_write
from lambda_dpo.evaluation.controllability import ControllabilityResult, shared_hypervolumes
from lambda_dpo.evaluation.metrics import pareto_front


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically (parent directories are created)."""
    path = Path(path)
    with atomic_write(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=120, bbox_inches="tight")
    return path


def _dimensions(results: Mapping[str, ControllabilityResult]) -> list[str]:
    if not results:
        raise ValueError("nothing to plot: results is empty; pass {label: ControllabilityResult}")
    dims = {tuple(r.dimensions) for r in results.values()}
    if len(dims) != 1:
        raise ValueError(
            f"all results must share the same dimensions to be plotted together, got {sorted(dims)}"
        )
    return list(dims.pop())


def plot_score_vs_lambda(results: Mapping[str, ControllabilityResult], path: str | os.PathLike) -> Path:
    """One panel per dimension d: mean score_d (± std) at each grid point against λ_d, one series per model.

    The line joins the average of the grid-point means that share a λ_d value (several grid points share λ_d
    when m ≥ 3); the markers show every grid point. A rising line is a model that follows λ_d. The legend gives
    each model's Spearman ρ(λ_d, score_d) over responses.
    """
    dimensions = _dimensions(results)
    fig = Figure(figsize=(4.2 * len(dimensions), 3.6), layout="constrained")
    axes = fig.subplots(1, len(dimensions), squeeze=False)[0]
    for (label, result), color in zip(results.items(), itertools.cycle(_COLORS)):
        lambdas = result.lambda_matrix()
        for i, (ax, d) in enumerate(zip(axes, dimensions)):
            x, y, err = lambdas[:, i], result.mean_scores[:, i], result.std_scores[:, i]
            ax.errorbar(x, y, yerr=err, fmt="o", color=color, alpha=0.45, markersize=4, capsize=2)
            levels = np.unique(x)
            rho = result.spearman_rows[d]
            ax.plot(
                levels, [y[x == v].mean() for v in levels], "-", color=color, label=f"{label} (ρ = {rho:.2f})"
            )
    for ax, d in zip(axes, dimensions):
        ax.set_title(d)
        ax.set_xlabel(f"λ[{d}]")
        ax.set_ylabel(f"mean {d} score")
        ax.legend(title="Spearman ρ over responses", fontsize="small", title_fontsize="small")
    return save_figure(fig, path)


def _draw_pareto(ax, results: Mapping[str, ControllabilityResult], dims: tuple[str, str]) -> None:
    _, volumes = shared_hypervolumes(results)
    for (label, result), color in zip(results.items(), itertools.cycle(_COLORS)):
        i, j = (result.dimensions.index(d) for d in dims)
        points = result.mean_scores[:, [i, j]]
        ax.scatter(points[:, 0], points[:, 1], color=color, alpha=0.5, s=18)
        # The front of the projection onto (a, b): what this panel can show (the m-D front projects onto more).
        front = points[pareto_front(points)]
        front = front[np.argsort(front[:, 0])]
        # "pre": over (x_{i-1}, x_i] the dominated region reaches up to y_i; the line passes only attained corners.
        label_hv = f"{label} (HV {volumes[label]:.3g})"
        ax.step(front[:, 0], front[:, 1], where="pre", color=color, label=label_hv)
        ax.scatter(front[:, 0], front[:, 1], color=color, edgecolor="black", s=30, zorder=3)
    ax.set_xlabel(f"mean {dims[0]} score")
    ax.set_ylabel(f"mean {dims[1]} score")
    ax.legend(fontsize="small")


def plot_pareto(
    results: Mapping[str, ControllabilityResult], path: str | os.PathLike, dims: Sequence[str] | None = None
) -> Path:
    """Mean score vectors of the grid and each model's Pareto front for one pair of dimensions ``dims``.

    ``dims`` defaults to the first two dimensions. The front drawn is that of the 2-D projection; the legend's
    hypervolume (HV) is the m-dimensional one, measured for every model from the same reference point
    (:func:`~lambda_dpo.evaluation.controllability.shared_hypervolumes`) so that the numbers compare.
    """
    dimensions = _dimensions(results)
    dims = tuple(dims) if dims is not None else tuple(dimensions[:2])
    _check_pair(dims, dimensions)
    fig = Figure(figsize=(5, 4.2), layout="constrained")
    _draw_pareto(fig.subplots(), results, dims)
    return save_figure(fig, path)


def plot_pareto_grid(results: Mapping[str, ControllabilityResult], path: str | os.PathLike) -> Path:
    """One Pareto panel (see :func:`plot_pareto`) per pair of dimensions, side by side (3 panels for m = 3)."""
    dimensions = _dimensions(results)
    pairs = list(itertools.combinations(dimensions, 2))
    if not pairs:
        raise ValueError(f"a Pareto plot needs at least two dimensions, got {dimensions}")
    columns = min(3, len(pairs))
    rows = -(-len(pairs) // columns)
    fig = Figure(figsize=(4.6 * columns, 4.0 * rows), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False).ravel()
    for ax, pair in zip(axes, pairs):
        _draw_pareto(ax, results, pair)
    for ax in axes[len(pairs) :]:
        ax.set_visible(False)
    return save_figure(fig, path)


def _check_pair(dims: tuple, dimensions: list[str]) -> None:
    if len(dims) != 2 or dims[0] == dims[1] or any(d not in dimensions for d in dims):
        raise ValueError(f"dims must name two different dimensions of {dimensions}, got {list(dims)}")


_COLORS = [
    "tab:blue",
    "tab:orange",
    "tab:green",
    "tab:red",
    "tab:purple",
    "tab:brown",
    "tab:pink",
    "tab:gray",
]


def plot_grouped_bars(
    values: Mapping[str, Mapping[str, tuple[float, float | None]]],
    path: str | os.PathLike,
    ylabel: str,
    title: str = "",
    baseline: float | None = None,
) -> Path:
    """Grouped bar chart: one group per category, one bar per series, ``values[series][category] = (value,
    error)`` with an error bar of ± error (None or NaN: no bar). ``baseline`` draws a dashed horizontal line
    (e.g. chance level 0.5). Missing or NaN values leave a gap."""
    if not values:
        raise ValueError("nothing to plot: values is empty; pass {series: {category: (value, error)}}")
    categories = list(dict.fromkeys(c for series in values.values() for c in series))
    width = 0.8 / len(values)
    fig = Figure(figsize=(max(4.5, 1.1 * len(categories) * max(1, len(values) / 2) + 1.5), 3.8), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(categories))
    for i, ((label, series), color) in enumerate(zip(values.items(), itertools.cycle(_COLORS))):
        heights = np.array([series.get(c, (np.nan, None))[0] for c in categories], dtype=float)
        errors = np.array([_or_nan(series.get(c, (np.nan, None))[1]) for c in categories], dtype=float)
        ax.bar(x + (i - (len(values) - 1) / 2) * width, np.nan_to_num(heights), width, color=color, label=label,
               yerr=np.where(np.isnan(errors), 0.0, errors), capsize=3)
    if baseline is not None:
        ax.axhline(baseline, color="gray", linestyle="--", linewidth=1)
    ax.set_xticks(x, categories, rotation=20 if max(map(len, categories)) > 12 else 0, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize="small")
    return save_figure(fig, path)


def _or_nan(value) -> float:
    return np.nan if value is None else float(value)


def plot_length_bias(points: Mapping[str, tuple[Sequence[float], Sequence[float]]], path: str | os.PathLike) -> Path:
    """Per-token log-probability of each held-out response against its length in tokens, one colour per model
    (``points[label] = (lengths, per_token_logps)``); the legend gives each model's Spearman ρ."""
    from lambda_dpo.evaluation.metrics import spearman

    if not points:
        raise ValueError("nothing to plot: points is empty; pass {label: (lengths, per_token_logps)}")
    fig = Figure(figsize=(5.2, 4.0), layout="constrained")
    ax = fig.subplots()
    for (label, (lengths, logps)), color in zip(points.items(), itertools.cycle(_COLORS)):
        lengths, logps = np.asarray(lengths, float), np.asarray(logps, float)
        rho = spearman(logps, lengths) if lengths.size >= 2 else float("nan")
        ax.scatter(lengths, logps, s=12, alpha=0.55, color=color, label=f"{label} (ρ = {rho:.2f})")
    ax.set_xlabel("response length (tokens)")
    ax.set_ylabel("per-token log-probability")
    ax.legend(fontsize="small", title="Spearman ρ(log-prob, length)", title_fontsize="small")
    return save_figure(fig, path)
