"""λ schedules: the training distribution P(λ) over the simplex Δ^m (SPEC §1, "λ schedules").

Every schedule draws ``sample(n) -> Tensor[n, m]`` (float32, rows ≥ 0 summing to 1) from a private
``torch.Generator`` seeded by ``seed``, so draws do not depend on (or disturb) the global RNG and a run resumed
from a checkpoint continues the exact same sequence.

Checkpointing: ``state_dict()`` is a dict of str / int / float / lists plus one uint8 tensor (the generator
state). Store it with ``torch.save``; it loads with ``torch.load(path, weights_only=True)``. It is not JSON.

Schedules are looked up by name in ``SCHEDULES``; ``make_schedule(name, dimensions, seed, **options)`` builds one
and turns unknown names, unknown options and bad option values into ``ValueError`` messages naming the choices.
The trainer calls ``update(step, signals)`` with held-out per-dimension metrics; fixed distributions ignore it,
an adaptive (``learned``) schedule overrides it.
"""

from __future__ import annotations

import inspect
import itertools
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch

from lambda_dpo.conditioning import parse_lambda

SIMPLEX_ATOL = 1e-6


class LambdaSchedule:
    """Base class: holds the dimensions and the private generator; subclasses implement ``_draw``."""

    name: ClassVar[str] = ""

    def __init__(self, dimensions: Sequence[str], seed: int = 0):
        dimensions = list(dimensions)
        if not dimensions:
            raise ValueError(f"λ schedule {self.name!r} needs at least one dimension, got none")
        duplicates = sorted({d for d in dimensions if dimensions.count(d) > 1})
        if duplicates:
            raise ValueError(
                f"λ schedule {self.name!r}: dimension names must be unique, repeated: {duplicates}"
            )
        self.dimensions = dimensions
        self.seed = int(seed)
        self.num_sampled = 0
        self.generator = torch.Generator().manual_seed(self.seed)

    @property
    def num_dimensions(self) -> int:
        return len(self.dimensions)

    def sample(self, n: int) -> torch.Tensor:
        """``n`` λ vectors, float32 ``[n, m]``, each row on the simplex."""
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
            raise ValueError(f"sample(n) needs an integer n >= 0, got {n!r}")
        lambdas = self._draw(int(n)).to(torch.float64)
        self.num_sampled += int(n)
        # Normalising in float64 then casting keeps |Σλ − 1| within float32 rounding (~6e-8).
        return (lambdas / lambdas.sum(-1, keepdim=True)).to(torch.float32)

    def _draw(self, n: int) -> torch.Tensor:
        """``[n, m]`` non-negative rows with positive sums (any float dtype); ``sample`` normalises them."""
        raise NotImplementedError

    def update(self, step: int, signals: Mapping[str, torch.Tensor]) -> None:
        """Hook called by the trainer with held-out per-dimension metrics (each ``Tensor[m]``).

        Fixed distributions ignore it; a learned schedule adapts P(λ) here.
        """

    def options(self) -> dict[str, Any]:
        """The resolved options (JSON-friendly), for logging and the checkpoint."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the same sequence of draws (see the module docstring for the format)."""
        return {
            "name": self.name,
            "dimensions": list(self.dimensions),
            "seed": self.seed,
            "options": self.options(),
            "num_sampled": self.num_sampled,
            "generator_state": self.generator.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state``; it must come from a schedule of the same name and dimensions.

        Options are taken from this object (the current config), not from ``state``.
        """
        missing = [key for key in ("name", "dimensions", "generator_state") if key not in state]
        if missing:
            raise ValueError(
                f"λ schedule state is missing {missing}; was it written by LambdaSchedule.state_dict()?"
            )
        if state["name"] != self.name or list(state["dimensions"]) != self.dimensions:
            raise ValueError(
                f"λ schedule state is for {state['name']!r} over {list(state['dimensions'])}, but this run uses "
                f"{self.name!r} over {self.dimensions}; resume with the same lambda_schedule and dimensions"
            )
        self.generator.set_state(torch.as_tensor(state["generator_state"], dtype=torch.uint8))
        self.num_sampled = int(state.get("num_sampled", 0))

    def describe(self) -> str:
        options = "".join(f", {key}={value}" for key, value in self.options().items())
        return f"{self.name}(dimensions={self.dimensions}{options}, seed={self.seed})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}:{self.describe()}"


SCHEDULES: dict[str, type[LambdaSchedule]] = {}


def register(cls: type[LambdaSchedule]) -> type[LambdaSchedule]:
    """Class decorator: make ``cls`` available to ``make_schedule`` under ``cls.name``."""
    SCHEDULES[cls.name] = cls
    return cls


def _per_dimension(
    value: Any, dimensions: list[str], schedule: str, option: str, unlisted: float | None = None
) -> list[float]:
    """A scalar, a list in dimension order, or a mapping name → value, as one float per dimension.

    In a mapping, unlisted dimensions get ``unlisted`` (an error when it is None).
    """
    where = f"λ schedule {schedule!r}, option {option!r}"
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        values = [float(value)] * len(dimensions)
    elif isinstance(value, Mapping):
        unknown = [name for name in value if name not in dimensions]
        absent = [name for name in dimensions if name not in value]
        if unknown:
            raise ValueError(f"{where}: unknown dimension(s) {unknown}; known dimensions: {dimensions}")
        if absent and unlisted is None:
            raise ValueError(
                f"{where}: no value for dimension(s) {absent}; give one for each of {dimensions}"
            )
        values = [float(value.get(name, unlisted)) for name in dimensions]
    elif isinstance(value, Sequence | torch.Tensor) and not isinstance(value, str):
        values = [float(v) for v in (value.tolist() if isinstance(value, torch.Tensor) else value)]
        if len(values) != len(dimensions):
            raise ValueError(
                f"{where}: got {len(values)} values {values} but there are {len(dimensions)} dimensions "
                f"{dimensions}; give one value per dimension, in that order, or a mapping name → value"
            )
    else:
        raise ValueError(f"{where}: expected a number, a list or a mapping name → value, got {value!r}")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{where}: values must be finite, got {values}")
    return values


@register
class FixedSchedule(LambdaSchedule):
    """Always the same λ (no steering). ``weights``: mapping, list in dimension order, or "a=0.5,b=0.5";
    default uniform 1/m."""

    name = "fixed"

    def __init__(
        self, dimensions, seed=0, weights: Mapping[str, float] | Sequence[float] | str | None = None
    ):
        super().__init__(dimensions, seed)
        if weights is None:
            values = [1.0 / self.num_dimensions] * self.num_dimensions
        elif isinstance(weights, str):
            parsed = parse_lambda(weights, self.dimensions)
            values = [parsed[name] for name in self.dimensions]
        else:
            values = _per_dimension(weights, self.dimensions, self.name, "weights", unlisted=0.0)
        if min(values) < 0 or abs(sum(values) - 1.0) > SIMPLEX_ATOL:
            raise ValueError(
                f"λ schedule 'fixed': weights {dict(zip(self.dimensions, values))} are not on the simplex "
                f"(each must be >= 0 and they must sum to 1, they sum to {sum(values):.6g}); fix the weights"
            )
        self.weights = values

    def _draw(self, n):
        return torch.tensor(self.weights, dtype=torch.float64).expand(n, -1)

    def options(self):
        return {"weights": dict(zip(self.dimensions, self.weights))}


@register
class UnimodalSchedule(LambdaSchedule):
    """One-hot λ: each prompt aligns with a single dimension, drawn with probabilities ``probs``
    (non-negative weights per dimension, normalised; default uniform). The paper's baseline."""

    name = "unimodal"

    def __init__(self, dimensions, seed=0, probs: Mapping[str, float] | Sequence[float] | None = None):
        super().__init__(dimensions, seed)
        values = [1.0] * self.num_dimensions
        if probs is not None:
            values = _per_dimension(probs, self.dimensions, self.name, "probs", unlisted=0.0)
        if min(values) < 0 or sum(values) <= 0:
            raise ValueError(
                f"λ schedule 'unimodal': probs {values} must be >= 0 with a positive sum (one weight per "
                f"dimension of {self.dimensions})"
            )
        self.probs = [v / sum(values) for v in values]

    def _draw(self, n):
        probs = torch.tensor(self.probs, dtype=torch.float64)
        if n == 0:  # torch.multinomial refuses to draw zero samples
            return torch.zeros(0, self.num_dimensions, dtype=torch.float64)
        chosen = torch.multinomial(probs, n, replacement=True, generator=self.generator)
        return torch.nn.functional.one_hot(chosen, self.num_dimensions).to(torch.float64)

    def options(self):
        return {"probs": dict(zip(self.dimensions, self.probs))}


@register
class DirichletSchedule(LambdaSchedule):
    """λ ~ Dirichlet(α). ``alpha``: one positive number for every dimension, or one per dimension
    (list or mapping). Small α concentrates near the corners, large α near the centre; mean α / Σα."""

    name = "dirichlet"

    def __init__(self, dimensions, seed=0, *, alpha: float | Sequence[float] | Mapping[str, float]):
        super().__init__(dimensions, seed)
        values = _per_dimension(alpha, self.dimensions, self.name, "alpha")
        if min(values) <= 0:
            raise ValueError(f"λ schedule {self.name!r}: every alpha must be > 0, got {values}")
        self.alpha = values

    def _draw(self, n):
        # float64 so that small α does not underflow every coordinate of a row to 0.
        concentration = torch.tensor(self.alpha, dtype=torch.float64).expand(n, -1).contiguous()
        # torch.distributions.Dirichlet calls this same kernel but cannot take a private generator.
        return torch._sample_dirichlet(concentration, generator=self.generator)

    def options(self):
        return {"alpha": self.alpha}


@register
class UniformSchedule(DirichletSchedule):
    """λ uniform on the simplex, i.e. Dirichlet(1, …, 1) (the paper's "random" variant)."""

    name = "uniform"

    def __init__(self, dimensions, seed=0):
        super().__init__(dimensions, seed, alpha=1.0)

    def options(self):
        return {}


@register
class GaussianSchedule(LambdaSchedule):
    """z ~ N(μ, σ² I), λ = softmax(z): smooth, non-uniform emphasis. ``mu``: number or one per dimension
    (default 0; a larger μ_d favours dimension d); ``sigma`` > 0 (default 1; larger = spikier λ)."""

    name = "gaussian"

    def __init__(
        self, dimensions, seed=0, mu: float | Sequence[float] | Mapping[str, float] = 0.0, sigma: float = 1.0
    ):
        super().__init__(dimensions, seed)
        self.mu = _per_dimension(mu, self.dimensions, self.name, "mu")
        if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real) or not 0 < sigma < math.inf:
            raise ValueError(f"λ schedule 'gaussian': sigma must be a finite number > 0, got {sigma!r}")
        self.sigma = float(sigma)

    def _draw(self, n):
        noise = torch.randn(n, self.num_dimensions, generator=self.generator, dtype=torch.float64)
        return torch.softmax(torch.tensor(self.mu, dtype=torch.float64) + self.sigma * noise, dim=-1)

    def options(self):
        return {"mu": self.mu, "sigma": self.sigma}


# Named in SPEC §1 but not implemented yet: asking for them must fail loudly, never fall back to another schedule.
PLANNED_SCHEDULES = ("learned",)


def make_schedule(name: str, dimensions: Sequence[str], seed: int = 0, **options: Any) -> LambdaSchedule:
    """Build the λ schedule ``name`` over ``dimensions``; ``options`` are the schedule's own keyword options.

    Raises ``ValueError`` for an unknown name, an unknown or missing option, or a bad option value, and
    ``NotImplementedError`` for a schedule SPEC names that is not implemented yet.
    """
    available = ", ".join(sorted(SCHEDULES))
    if name in PLANNED_SCHEDULES and name not in SCHEDULES:
        raise NotImplementedError(
            f"λ schedule {name!r} is not implemented yet; choose one of: {available} (lambda_schedule)"
        )
    if name not in SCHEDULES:
        raise ValueError(f"unknown λ schedule {name!r}; choose one of: {available} (lambda_schedule)")
    cls = SCHEDULES[name]
    params = {
        key: p
        for key, p in inspect.signature(cls.__init__).parameters.items()
        if key not in ("self", "dimensions", "seed")
    }
    accepted = ", ".join(params) or "none"
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise ValueError(f"λ schedule {name!r} has no option(s) {unknown}; its options: {accepted}")
    missing = [
        key for key, p in params.items() if p.default is inspect.Parameter.empty and key not in options
    ]
    if missing:
        raise ValueError(f"λ schedule {name!r} needs the option(s) {missing}. {inspect.getdoc(cls)}")
    return cls(dimensions, seed=seed, **options)


def simplex_grid(m: int, n: int) -> torch.Tensor:
    """Every λ on Δ^m whose entries are multiples of 1/n: float32 ``[C(n+m-1, m-1), m]``.

    Stars and bars: each choice of m-1 bar positions among n+m-1 slots splits n into m counts; λ = counts / n.
    E.g. ``simplex_grid(3, 2)`` has 6 rows: the 3 corners and the 3 edge midpoints.
    """
    if m < 1 or n < 1:
        raise ValueError(f"simplex_grid(m, n) needs m >= 1 dimensions and n >= 1 steps, got m={m}, n={n}")
    rows = []
    for bars in itertools.combinations(range(n + m - 1), m - 1):
        edges = (-1, *bars, n + m - 1)
        rows.append([edges[i + 1] - edges[i] - 1 for i in range(m)])
    return torch.tensor(rows, dtype=torch.float64).div(n).to(torch.float32)
