"""λ schedules: the training distribution P(λ) over the simplex Δ^m (docs/spec.md §1, "λ schedules").

Every schedule draws ``sample(n) -> Tensor[n, m]`` (float32, rows ≥ 0 summing to 1) from a private
``torch.Generator`` seeded by ``seed``, so draws do not depend on (or disturb) the global RNG and a run resumed
from a checkpoint continues the exact same sequence.

Checkpointing: ``state_dict()`` is a dict of str / int / float / lists plus tensors (the generator state; the
``learned`` schedule's logits). Store it with ``torch.save``; it loads with ``torch.load(path, weights_only=True)``.
It is not JSON.

Schedules are looked up by name in ``SCHEDULES``; ``make_schedule(name, dimensions, seed, **options)`` builds one
and turns unknown names, unknown options and bad option values into ``ValueError`` messages naming the choices.
The trainer calls ``update(step, signals)`` with held-out per-dimension metrics; fixed distributions ignore it,
the adaptive ``learned`` schedule moves P(λ) toward the dimensions where the conditioned policy lags.
``stats()`` gives floats to log (empty for fixed distributions).

Length (about 570 lines): one registry, so one file; the ``learned`` schedule (its lattice, update rule,
exploration floor and state) is half of it and shares the base class's sampling and checkpoint contract.
"""

from __future__ import annotations

import inspect
import itertools
import math
import numbers
import warnings
from collections.abc import Callable, Mapping, Sequence
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

    def stats(self) -> dict[str, float]:
        """Scalars describing the current P(λ), for the training log; fixed distributions have none."""
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
    (non-negative weights per dimension, normalised; default uniform). The paper's baseline.

    ``uniform_fraction`` u ∈ [0, 1] (default 0): each draw is instead uniform on the simplex with probability u, so
    training also sees the mixed λ between the vertices (one-hot λ alone teaches the conditioning fastest, but never
    shows the policy a mixture)."""

    name = "unimodal"

    def __init__(self, dimensions, seed=0, probs: Mapping[str, float] | Sequence[float] | None = None,
                 uniform_fraction: float = 0.0):
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
        self.uniform_fraction = _real_option(
            uniform_fraction, self.name, "uniform_fraction", lambda v: 0 <= v <= 1, "in [0, 1]"
        )

    def _draw(self, n):
        probs = torch.tensor(self.probs, dtype=torch.float64)
        if n == 0:  # torch.multinomial refuses to draw zero samples
            return torch.zeros(0, self.num_dimensions, dtype=torch.float64)
        chosen = torch.multinomial(probs, n, replacement=True, generator=self.generator)
        lambdas = torch.nn.functional.one_hot(chosen, self.num_dimensions).to(torch.float64)
        if self.uniform_fraction > 0:  # (u = 0 draws nothing more: the one-hot stream stays as it always was)
            mixed = torch.rand(n, generator=self.generator, dtype=torch.float64) < self.uniform_fraction
            # Uniform on the simplex: normalised i.i.d. Exp(1) draws (= Dirichlet(1, …, 1)).
            uniform = -torch.log1p(-torch.rand(n, self.num_dimensions, generator=self.generator, dtype=torch.float64))
            lambdas = torch.where(mixed[:, None], uniform / uniform.sum(-1, keepdim=True), lambdas)
        return lambdas

    def options(self):
        return {"probs": dict(zip(self.dimensions, self.probs)), "uniform_fraction": self.uniform_fraction}


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


# A lattice this large would make every sample() and update() slow; nobody needs finer than ~1e5 cells.
MAX_GRID_POINTS = 100_000


def _real_option(
    value: Any, schedule: str, option: str, ok: Callable[[float], bool], requirement: str
) -> float:
    """``value`` as a float when it is a real number (not a bool) for which ``ok`` holds, else a ValueError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not ok(float(value)):
        raise ValueError(f"λ schedule {schedule!r}: {option} must be {requirement}, got {value!r}")
    return float(value)


@register
class LearnedSchedule(LambdaSchedule):
    """Adaptive P(λ): a mixture over a simplex lattice whose weights follow where the conditioned policy lags.

    Distribution. ``grid``: every λ whose entries are multiples of 1/``grid_size`` (``simplex_grid``; N points, e.g.
    15 for m = 3 and grid_size 4). Logits θ ∈ R^N start at 0 (uniform); weights w = softmax(θ); sampling
    probabilities with an exploration floor ε: ``p = (1 − ε)·w + ε/N``. A draw picks grid point c with probability
    p_c, then jitters it: λ ~ Dirichlet(1 + κ·c), whose mode is exactly c (κ = ``concentration``, larger = closer
    to c; None = λ = c), so training also sees λ between lattice points.

    Update. ``update(step, signals)`` gets the held-out per-dimension metrics of the policy conditioned on the
    one-hot λ = e_d (each ``Tensor[m]``) and turns them into a centred lag per dimension:

    - ``signal="loss"`` (default): g_d = loss_d / mean(loss) − 1, the relative excess listwise loss (loss ≥ 0 and
      its scale depends on k and τ, hence relative);
    - ``signal="accuracy"``: g_d = mean(acc) − acc_d, the ranking-accuracy shortfall (already on a [0, 1] scale).

    The preferred signal falls back to the other when it is absent or all NaN. A dimension whose value is
    non-finite (NaN: no held-out pair) gets g_d = 0, no evidence either way, and is left out of the mean. The lag of
    grid point c is ``c · g`` (the probes measure only the corners, so lag is interpolated linearly), and

        θ ← (1 − η)·θ + η·(grid · g) / T        (η = ``learning_rate`` ∈ (0, 1], T = ``temperature`` > 0)

    Why: under steady signals θ converges to (grid · g) / T, i.e. w ∝ exp(c · g / T), which puts the most mass
    on the λ that weight the lagging dimensions, so training spends its steps there until they catch up (then
    g → 0 and w relaxes back toward uniform). η < 1 averages noisy held-out estimates and forgets stale ones as the
    policy changes; T sets how sharply mass concentrates (a lag gap of T between two dimensions makes their
    corners' weights differ by a factor e). The floor ε/N keeps every region sampled however lopsided w gets,
    so a dimension that is ahead now is still trained (and not forgotten).

    Caveat: the listwise loss cannot go below the target's entropy, so a dimension with many ties looks like it
    lags forever under ``signal="loss"``; use ``signal="accuracy"`` for such data.

    Options (defaults): grid_size 4, exploration ε ∈ [0, 1] 0.2, learning_rate η 0.5, temperature T 0.1,
    concentration κ > 0 or None 50, signal "loss" | "accuracy" "loss". ``state_dict`` holds θ, the update count
    and the generator, so a resumed run continues the same distribution and the same draws.
    """

    name = "learned"
    SIGNALS: ClassVar[tuple[str, ...]] = ("loss", "accuracy")

    def __init__(
        self,
        dimensions,
        seed=0,
        grid_size: int = 4,
        exploration: float = 0.2,
        learning_rate: float = 0.5,
        temperature: float = 0.1,
        concentration: float | None = 50.0,
        signal: str = "loss",
    ):
        super().__init__(dimensions, seed)
        m = self.num_dimensions
        if isinstance(grid_size, bool) or not isinstance(grid_size, numbers.Integral) or grid_size < 1:
            raise ValueError(
                f"λ schedule 'learned': grid_size must be an integer >= 1 (lattice step 1/grid_size), got {grid_size!r}"
            )
        num_points = math.comb(int(grid_size) + m - 1, m - 1)
        if num_points > MAX_GRID_POINTS:
            raise ValueError(
                f"λ schedule 'learned': grid_size={grid_size} over {m} dimensions gives {num_points} grid points "
                f"(limit {MAX_GRID_POINTS}); choose a smaller grid_size"
            )
        self.grid_size = int(grid_size)
        self.exploration = _real_option(
            exploration, self.name, "exploration", lambda v: 0 <= v <= 1, "in [0, 1]"
        )
        self.learning_rate = _real_option(
            learning_rate, self.name, "learning_rate", lambda v: 0 < v <= 1, "in (0, 1]"
        )
        self.temperature = _real_option(
            temperature, self.name, "temperature", lambda v: 0 < v < math.inf, "a finite number > 0"
        )
        self.concentration = None
        if concentration is not None:
            self.concentration = _real_option(
                concentration,
                self.name,
                "concentration",
                lambda v: 0 < v < math.inf,
                "a finite number > 0 (or None for no jitter)",
            )
        if signal not in self.SIGNALS:
            raise ValueError(
                f"λ schedule 'learned': signal must be one of {list(self.SIGNALS)}, got {signal!r}"
            )
        self.signal = signal
        self.grid = simplex_grid(m, self.grid_size).to(torch.float64)  # [N, m]
        self.logits = torch.zeros(num_points, dtype=torch.float64)  # θ: [N]
        self.num_updates = 0
        self.last_update_step = -1

    def probabilities(self) -> torch.Tensor:
        """Sampling probability of each grid point, float64 ``[N]``: ``p = (1 − ε)·softmax(θ) + ε/N``."""
        return (1 - self.exploration) * torch.softmax(self.logits, 0) + self.exploration / len(self.grid)

    def _draw(self, n):
        if n == 0:  # torch.multinomial refuses to draw zero samples
            return torch.zeros(0, self.num_dimensions, dtype=torch.float64)
        chosen = torch.multinomial(self.probabilities(), n, replacement=True, generator=self.generator)
        centres = self.grid[chosen]  # [n, m]
        if self.concentration is None:
            return centres
        return torch._sample_dirichlet(1 + self.concentration * centres, generator=self.generator)

    def _signal_values(self, key: str, value: Any) -> torch.Tensor:
        """``signals[key]`` as float64 ``[m]`` on the CPU, checked for shape and range (non-finite = missing)."""
        where = f"λ schedule 'learned': update() signal {key!r}"
        try:
            values = torch.as_tensor(value).detach().to("cpu", torch.float64)
        except (TypeError, ValueError, RuntimeError) as error:
            raise ValueError(f"{where} must be a Tensor[m] of numbers, got {value!r} ({error})") from error
        if values.shape != (self.num_dimensions,):
            raise ValueError(
                f"{where} has shape {tuple(values.shape)}, expected ({self.num_dimensions},): one value per "
                f"dimension of {self.dimensions}, in that order"
            )
        high = 1.0 if key == "accuracy" else math.inf
        bad = {
            d: v for d, v in zip(self.dimensions, values.tolist()) if math.isfinite(v) and not 0 <= v <= high
        }
        if bad:
            expected = "in [0, 1]" if key == "accuracy" else ">= 0 (a listwise cross-entropy)"
            raise ValueError(f"{where} must be {expected}; out of range: {bad}")
        return values

    def lag(self, signals: Mapping[str, Any]) -> tuple[str, torch.Tensor] | None:
        """The centred per-dimension lag g (float64 ``[m]``, see the class docstring) and the signal it came from;
        None when every value of every available signal is non-finite."""
        keys = [key for key in (self.signal, *self.SIGNALS) if key in signals]
        if not keys:
            raise ValueError(
                f"λ schedule 'learned': update() needs held-out per-dimension 'loss' or 'accuracy' (a Tensor[m] "
                f"over {self.dimensions}); got keys {sorted(signals)}"
            )
        for key in dict.fromkeys(keys):
            values = self._signal_values(key, signals[key])
            known = torch.isfinite(values)
            if not known.any():
                continue
            mean = values[known].mean()
            if key == "loss":
                gap = values / mean - 1 if mean > 0 else torch.zeros_like(values)
            else:
                gap = mean - values
            return key, torch.where(known, gap, 0.0)
        return None

    def update(self, step: int, signals: Mapping[str, Any]) -> None:
        """θ ← (1 − η)·θ + η·(grid · g) / T with g = ``lag(signals)``; skipped (with a warning) if g is unknown."""
        found = self.lag(signals)
        if found is None:
            warnings.warn(
                f"λ schedule 'learned': at step {step} every held-out 'loss' and 'accuracy' value is missing (NaN: "
                f"no dimension has a held-out pair), so P(λ) is unchanged; check the eval_dataset's scores",
                stacklevel=2,
            )
            return
        grid_lag = self.grid @ found[1]  # [N]: c · g for every grid point c
        eta = self.learning_rate
        self.logits = (1 - eta) * self.logits + eta * grid_lag / self.temperature
        self.num_updates += 1
        self.last_update_step = int(step)

    def stats(self) -> dict[str, float]:
        """Entropy of p (nats, and divided by log N: 1 = uniform), the most likely grid point (per dimension) and
        its probability, and the number of updates so far."""
        probs = self.probabilities()
        entropy = torch.special.entr(probs).sum().item()
        top = int(probs.argmax())
        stats = {
            "lambda_schedule/entropy": entropy,
            "lambda_schedule/entropy_normalised": entropy / math.log(len(probs)) if len(probs) > 1 else 1.0,
            "lambda_schedule/top_probability": probs[top].item(),
            "lambda_schedule/updates": float(self.num_updates),
        }
        stats |= {f"lambda_schedule/top/{d}": v for d, v in zip(self.dimensions, self.grid[top].tolist())}
        return stats

    def options(self):
        return {
            "grid_size": self.grid_size,
            "exploration": self.exploration,
            "learning_rate": self.learning_rate,
            "temperature": self.temperature,
            "concentration": self.concentration,
            "signal": self.signal,
        }

    def state_dict(self):
        return super().state_dict() | {
            "logits": self.logits.clone(),
            "num_updates": self.num_updates,
            "last_update_step": self.last_update_step,
        }

    def load_state_dict(self, state):
        if "logits" not in state:
            raise ValueError(
                "λ schedule 'learned': the state has no 'logits'; was it written by a learned schedule?"
            )
        logits = torch.as_tensor(state["logits"]).to(torch.float64).clone()
        if logits.shape != self.logits.shape:
            raise ValueError(
                f"λ schedule 'learned': the state has {logits.numel()} grid weights but grid_size={self.grid_size} "
                f"over {self.num_dimensions} dimensions has {len(self.grid)}; resume with the grid_size of the run "
                f"that wrote it"
            )
        super().load_state_dict(state)
        self.logits = logits
        self.num_updates = int(state.get("num_updates", 0))
        self.last_update_step = int(state.get("last_update_step", -1))


def make_schedule(name: str, dimensions: Sequence[str], seed: int = 0, **options: Any) -> LambdaSchedule:
    """Build the λ schedule ``name`` over ``dimensions``; ``options`` are the schedule's own keyword options.

    Raises ``ValueError`` for an unknown name, an unknown or missing option, or a bad option value.
    """
    available = ", ".join(sorted(SCHEDULES))
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
