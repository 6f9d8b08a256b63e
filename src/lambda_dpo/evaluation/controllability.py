"""Controllability (docs/spec.md §4): does choosing λ move the measured behaviour where it was asked to go?

For every λ on a simplex grid, generate responses to a fixed set of prompts, score each response on every
dimension, then report per dimension the Spearman correlation between λ_d and score_d, and the Pareto front of the
grid's mean score vectors with its hypervolume. Model-agnostic: generation and scoring are callables, so the demo
and ``lambda-dpo eval`` (and a test with synthetic generators) share this one implementation.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from lambda_dpo.conditioning import as_lambda
from lambda_dpo.evaluation.metrics import default_reference_point, hypervolume, pareto_front, spearman

SampleFn = Callable[[list[str], dict[str, float], int], list[list[str]]]
ScoreFn = Callable[[str, str], Mapping[str, float]]


def lambda_grid(dimensions: Sequence[str], n: int = 3) -> list[dict[str, float]]:
    """λ vectors on the simplex lattice of step 1/n, plus the centre: ``[{dimension: λ_d}, ...]``.

    The lattice holds every ``λ = c / n`` with non-negative integers ``c`` summing to n: ``C(n+m−1, m−1)`` points,
    which include the m vertices (one-hot λ). The centre ``1/m`` is appended when the lattice lacks it (whenever
    m does not divide n). For m = 3: n = 2 gives the 3 vertices + 3 edge midpoints + centre = 7 points; the default
    n = 3 gives 10 points, centre included. m = 1 gives the single point ``{d: 1.0}``.
    """
    dimensions = list(dimensions)
    m = len(dimensions)
    if m == 0 or len(set(dimensions)) != m:
        raise ValueError(f"dimensions must be a non-empty list of distinct names, got {dimensions}")
    if int(n) != n or n < 1:
        raise ValueError(f"the grid resolution n must be a positive integer (λ step 1/n), got {n!r}")
    n = int(n)
    grid = []
    # Stars and bars: m − 1 bar positions among n + m − 1 slots give the m counts c_d ≥ 0 with Σ c_d = n.
    for bars in itertools.combinations(range(n + m - 1), m - 1):
        edges = (-1, *bars, n + m - 1)
        counts = [edges[d + 1] - edges[d] - 1 for d in range(m)]
        grid.append({name: count / n for name, count in zip(dimensions, counts)})
    if n % m:
        grid.append({name: 1.0 / m for name in dimensions})
    return grid


@dataclass
class ControllabilityResult:
    """Outcome of :func:`evaluate_controllability` over G grid points, P prompts, S samples, m dimensions.

    Spearman ρ(λ_d, score_d) is reported two ways:
    ``spearman_rows`` pairs λ_d with the score of every single response (G·P·S rows; λ_d is tied within a grid
    point, ties get average ranks). It is the stricter, more honest number: it counts how reliably one response
    follows λ, noise included. ``spearman_means`` pairs λ_d with the mean score of each grid point (G rows): it
    says whether the average behaviour is monotone in λ_d, and is easily ±1 on few grid points.
    The Pareto front and hypervolume (maximisation, see :func:`metrics.hypervolume`) use the mean score vectors.
    """

    dimensions: list[str]
    grid: list[dict[str, float]]
    scores: np.ndarray  # [G, P, S, m]: every response's score on every dimension
    reference_point: np.ndarray  # [m]: the hypervolume's reference point
    responses: list[list[list[str]]] | None = None  # [G][P][S], kept when asked for
    mean_scores: np.ndarray = field(init=False)  # [G, m]
    std_scores: np.ndarray = field(init=False)  # [G, m], population std (ddof=0) over the P·S responses
    spearman_rows: dict[str, float] = field(init=False)
    spearman_means: dict[str, float] = field(init=False)
    pareto_indices: list[int] = field(init=False)  # grid indices of the non-dominated mean score vectors
    hypervolume: float = field(init=False)

    def __post_init__(self):
        self.scores = np.asarray(self.scores, dtype=np.float64)
        self.reference_point = np.asarray(self.reference_point, dtype=np.float64)
        grid_count, prompts, samples, m = self.scores.shape
        lambdas = self.lambda_matrix()  # [G, m]
        self.mean_scores = self.scores.mean(axis=(1, 2))
        self.std_scores = self.scores.std(axis=(1, 2))
        row_lambdas = np.repeat(lambdas, prompts * samples, axis=0)  # [G·P·S, m], rows in scores' order
        row_scores = self.scores.reshape(-1, m)
        self.spearman_rows = {
            d: spearman(row_lambdas[:, i], row_scores[:, i]) for i, d in enumerate(self.dimensions)
        }
        self.spearman_means = {
            d: spearman(lambdas[:, i], self.mean_scores[:, i]) for i, d in enumerate(self.dimensions)
        }
        self.pareto_indices = [int(i) for i in pareto_front(self.mean_scores)]
        self.hypervolume = hypervolume(self.mean_scores, self.reference_point)

    def lambda_matrix(self) -> np.ndarray:
        """The grid as a ``[G, m]`` array in ``dimensions`` order."""
        return np.array(
            [[point.get(d, 0.0) for d in self.dimensions] for point in self.grid], dtype=np.float64
        )

    def hypervolume_at(self, reference_point) -> float:
        """Hypervolume of the mean score vectors against another reference point (to compare several models)."""
        return hypervolume(self.mean_scores, reference_point)

    def to_dict(self, include_scores: bool = True) -> dict:
        """JSON-serialisable summary (NaN → None). ``include_scores`` adds the raw ``[G, P, S, m]`` scores."""
        out = {
            "dimensions": list(self.dimensions),
            "grid": [dict(point) for point in self.grid],
            "num_prompts": int(self.scores.shape[1]),
            "num_samples": int(self.scores.shape[2]),
            "mean_scores": json_safe(self.mean_scores),
            "std_scores": json_safe(self.std_scores),
            "spearman_rows": json_safe(self.spearman_rows),
            "spearman_means": json_safe(self.spearman_means),
            "pareto_indices": list(self.pareto_indices),
            "reference_point": json_safe(self.reference_point),
            "hypervolume": json_safe(self.hypervolume),
        }
        if include_scores:
            out["scores"] = json_safe(self.scores)
        if self.responses is not None:
            out["responses"] = self.responses
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> ControllabilityResult:
        """Rebuild a result saved by :meth:`to_dict` (which must have included the scores)."""
        if "scores" not in data:
            raise ValueError(
                "this controllability summary has no 'scores'; save it with to_dict(include_scores=True)"
            )
        scores = np.array(data["scores"], dtype=np.float64)  # None (a NaN saved by to_dict) → NaN
        grid = [dict(point) for point in data["grid"]]
        return cls(
            list(data["dimensions"]),
            grid,
            scores,
            np.asarray(data["reference_point"], float),
            data.get("responses"),
        )

    def to_markdown(self, digits: int = 3) -> str:
        """A markdown table: one row per grid point (λ, mean ± std per dimension, Pareto mark), then ρ and HV."""
        header = ["λ", *(f"{d} (mean ± std)" for d in self.dimensions), "Pareto"]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        pareto = set(self.pareto_indices)
        for g, point in enumerate(self.grid):
            lam = " ".join(f"{d}={point.get(d, 0.0):.2f}" for d in self.dimensions)
            cells = [
                f"{self.mean_scores[g, i]:.{digits}f} ± {self.std_scores[g, i]:.{digits}f}"
                for i in range(len(self.dimensions))
            ]
            lines.append("| " + " | ".join([lam, *cells, "✓" if g in pareto else ""]) + " |")
        rho = ", ".join(
            f"{d}: {self.spearman_rows[d]:.{digits}f} (grid means {self.spearman_means[d]:.{digits}f})"
            for d in self.dimensions
        )
        ref = ", ".join(f"{v:.{digits}f}" for v in self.reference_point)
        lines += [
            "",
            f"Spearman ρ(λ_d, score_d) over responses: {rho}",
            f"Hypervolume of the mean scores: {self.hypervolume:.{digits}f} (reference point: {ref})",
        ]
        return "\n".join(lines)


def shared_hypervolumes(results: Mapping[str, ControllabilityResult]) -> tuple[np.ndarray, dict[str, float]]:
    """Hypervolumes of several models against one reference point, so that they can be compared.

    Returns ``(reference_point [m], {label: hypervolume})`` with the reference point
    :func:`default_reference_point` of all models' mean score vectors.
    """
    if not results:
        raise ValueError("shared_hypervolumes needs at least one result")
    reference_point = default_reference_point(*(r.mean_scores for r in results.values()))
    return reference_point, {label: r.hypervolume_at(reference_point) for label, r in results.items()}


def json_safe(value):
    """``value`` with numpy arrays and scalars as lists and floats, NaN as None: what json.dump writes."""
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float | np.floating):
        return None if math.isnan(value) else float(value)
    return value


def evaluate_controllability(
    sample_fn: SampleFn,
    score_fn: ScoreFn,
    prompts: Sequence[str],
    dimensions: Sequence[str],
    grid: Sequence[Mapping[str, float]] | None = None,
    num_samples: int = 1,
    reference_point=None,
    keep_responses: bool = False,
    progress: bool = True,
) -> ControllabilityResult:
    """Generate at every grid λ, score every response, and summarise (see :class:`ControllabilityResult`).

    Args:
        sample_fn: ``sample_fn(prompts, lambdas, num_samples) -> [P][S]`` responses (strings) to each prompt,
            generated under the weights ``lambdas`` (``{dimension: λ_d}``).
        score_fn: ``score_fn(prompt, response) -> {dimension: score}``, higher = better, one entry per dimension.
        prompts: the P prompts, the same at every grid point.
        dimensions: the m dimension names (the order of every array in the result).
        grid: λ points (default :func:`lambda_grid` ``(dimensions)``); each must lie on the simplex.
        num_samples: S responses per prompt and grid point.
        reference_point: ``[m]`` for the hypervolume; default :func:`default_reference_point` of this run's
            mean scores. Pass a shared one (or use ``hypervolume_at``) when comparing models.
        keep_responses: keep the generated text in the result (and its ``to_dict``).
        progress: show a tqdm bar over grid points.
    """
    dimensions, prompts = list(dimensions), list(prompts)
    if not prompts:
        raise ValueError("evaluate_controllability needs at least one prompt")
    if num_samples < 1:
        raise ValueError(f"num_samples must be ≥ 1, got {num_samples}")
    grid = lambda_grid(dimensions) if grid is None else [_check_lambda(point, dimensions) for point in grid]
    scores = np.empty((len(grid), len(prompts), num_samples, len(dimensions)))
    responses = []
    for g, point in enumerate(tqdm(grid, desc="controllability grid", unit="λ", disable=not progress)):
        generated = sample_fn(prompts, dict(point), num_samples)
        _check_generated(generated, len(prompts), num_samples, point)
        for p, (prompt, samples) in enumerate(zip(prompts, generated)):
            for s, response in enumerate(samples):
                scores[g, p, s] = _score(score_fn, prompt, response, dimensions)
        responses.append([list(samples) for samples in generated])
    if reference_point is None:
        reference_point = default_reference_point(scores.mean(axis=(1, 2)))
    return ControllabilityResult(
        dimensions, grid, scores, reference_point, responses if keep_responses else None
    )


def _check_lambda(point: Mapping[str, float], dimensions: list[str]) -> dict[str, float]:
    try:
        return as_lambda(point, dimensions)
    except ValueError as e:
        raise ValueError(f"grid point {dict(point)} is not on the simplex over {dimensions} ({e}); build the grid "
                         "with lambda_grid(dimensions, n)") from None


def _check_generated(generated, num_prompts: int, num_samples: int, point) -> None:
    def is_list(value) -> bool:
        return isinstance(value, Sequence) and not isinstance(value, str)

    if is_list(generated) and len(generated) == num_prompts:
        if all(is_list(samples) and len(samples) == num_samples for samples in generated):
            return
        got = [len(samples) if is_list(samples) else type(samples).__name__ for samples in generated]
    else:
        got = f"{len(generated)} items" if is_list(generated) else type(generated).__name__
    raise ValueError(
        f"sample_fn(prompts, {dict(point)}, {num_samples}) must return {num_prompts} lists (one per prompt) of "
        f"{num_samples} responses each; got {got}"
    )


def _score(score_fn: ScoreFn, prompt: str, response: str, dimensions: list[str]) -> list[float]:
    if not isinstance(response, str):
        raise ValueError(
            f"sample_fn must return strings, got {type(response).__name__} for prompt {prompt[:80]!r}"
        )
    scored = score_fn(prompt, response)
    missing = [d for d in dimensions if d not in scored]
    if missing:
        raise ValueError(
            f"score_fn returned {dict(scored)} with no score for {missing}; it must score every "
            f"dimension of {dimensions}"
        )
    values = [float(scored[d]) for d in dimensions]
    if not all(math.isfinite(v) for v in values):
        raise ValueError(
            f"score_fn returned a non-finite score {dict(scored)} for response {response[:80]!r}"
        )
    return values
