"""What `LambdaDPOTrainer.evaluate` adds up over held-out batches, and the metrics it becomes once the sums of all
processes are reduced (docs/spec.md §1, "Training signals" and λ-reliance).

Per batch the policy is scored under the λ-DPO loss at the centre of the simplex and under each one-hot λ = e_p;
the tally keeps sums and counts (so batches and processes aggregate exactly, ``Σ mean·count / Σ count``) of:

- ``loss``: the centre's λ-DPO loss; ``loss|accuracy|margin/<d>``: dimension d scored under its own e_d;
- ``cross/<p>/<d>``: d's loss under e_p, and ``ideal/<p>/<d>``: the targets' own CE(p*[d], p*[p]) − H terms,
  the two matrices of :mod:`lambda_dpo.reliance`;
- ``logp_shift``: |ℓ_θ(y | x, e_p) − ℓ_θ(y | x, e_q)| over responses and pairs p < q.
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch

from lambda_dpo import reliance


class HeldoutTally:
    """Sums and counts of one evaluation on this process; :meth:`as_tensor` → all-reduce → :meth:`metrics`."""

    def __init__(self, dimensions: list[str]):
        self.dimensions = list(dimensions)
        m = len(self.dimensions)
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, float] = defaultdict(float)
        self.ideal_sums, self.ideal_counts = torch.zeros(m, m), torch.zeros(m, m)

    def add(self, key: str, value: float, count: float) -> None:
        """A mean over ``count`` items (skipped when there are none or it is not finite)."""
        if count > 0 and math.isfinite(value):
            self.sums[key] += value * count
            self.counts[key] += count

    def add_centre(self, loss: float, prompts: int) -> None:
        """The λ-DPO loss at the centre of the simplex over ``prompts`` prompts (a non-finite loss is kept: it
        shows in ``eval_loss``)."""
        self.sums["loss"] += loss * prompts
        self.counts["loss"] += prompts

    def add_vertex(self, probe: str, stats: dict) -> None:
        """The step metrics (``LambdaDPOTrainer.lambda_loss``'s stats) of a batch with the policy told λ = e_probe."""
        for key in ("loss", "accuracy", "margin"):
            self.add(f"{key}/{probe}", *stats[f"{key}/{probe}"])
        for d in self.dimensions:  # d's target under the λ of `probe`: the reliance matrix
            self.add(f"cross/{probe}/{d}", *stats[f"loss/{d}"])

    def add_targets(self, target_probs: torch.Tensor, dimension_mask: torch.Tensor) -> None:
        """The batch's targets ``[B, m, k]``: how much they themselves depend on λ (the ideal gap)."""
        batch_sums, batch_counts = reliance.target_cross_entropy(target_probs.float(), dimension_mask)
        self.ideal_sums += batch_sums.cpu()
        self.ideal_counts += batch_counts.cpu()

    def add_logp_shift(self, vertex_logps: list[torch.Tensor], real: torch.Tensor) -> None:
        """``vertex_logps[p]`` ``[B, k]``: the policy's log-probs told e_p; ``real`` bool ``[B, k]``: scored slots."""
        for i in range(len(vertex_logps)):
            for j in range(i + 1, len(vertex_logps)):
                shift = (vertex_logps[i] - vertex_logps[j]).abs()[real]
                self.sums["logp_shift"] += shift.sum().item()
                self.counts["logp_shift"] += shift.numel()

    def _names(self) -> list[str]:
        dims = self.dimensions
        return ["loss", *(f"{key}/{d}" for d in dims for key in ("loss", "accuracy", "margin")),
                *(f"cross/{p}/{d}" for p in dims for d in dims), *(f"ideal/{p}/{d}" for p in dims for d in dims),
                "logp_shift"]

    def as_tensor(self, device) -> torch.Tensor:
        """Every sum, then every count, as one float64 tensor: what the processes all-reduce (one collective)."""
        for i, p in enumerate(self.dimensions):
            for j, d in enumerate(self.dimensions):
                self.sums[f"ideal/{p}/{d}"] = self.ideal_sums[i, j].item()
                self.counts[f"ideal/{p}/{d}"] = self.ideal_counts[i, j].item()
        names = self._names()
        return torch.tensor([*(self.sums[k] for k in names), *(self.counts[k] for k in names)], dtype=torch.float64,
                            device=device)

    def metrics(self, total: list[float], prefix: str = "eval") -> dict[str, float]:
        """The logged metrics from the reduced :meth:`as_tensor`: means, λ-reliance (``<prefix>_lambda_reliance
        [/d]``, ``…_relative[/d]``, ``…_lambda_logp_shift``) and the worst and mean per-dimension accuracy."""
        names = self._names()
        means = {name: total[i] / total[len(names) + i] for i, name in enumerate(names) if total[len(names) + i] > 0}

        def matrix(kind: str) -> dict[tuple[str, str], float]:  # "kind/p/d" -> {(p, d): value}
            return {(p, d): means.pop(f"{kind}/{p}/{d}") for p in self.dimensions for d in self.dimensions
                    if f"{kind}/{p}/{d}" in means}

        gaps = reliance.per_dimension(matrix("cross"), self.dimensions)
        relative = reliance.relative(gaps, reliance.per_dimension(matrix("ideal"), self.dimensions))
        if "logp_shift" in means:
            means["lambda_logp_shift"] = means.pop("logp_shift")
        for name, values in (("lambda_reliance", gaps), ("lambda_reliance_relative", relative)):
            for d, value in values.items():
                means[f"{name}/{d}"] = value
            if values:
                means[name] = sum(values.values()) / len(values)
        accuracies = [v for k, v in means.items() if k.startswith("accuracy/")]
        if accuracies:
            means["accuracy_worst"] = min(accuracies)
            means["accuracy_mean"] = sum(accuracies) / len(accuracies)
        return {f"{prefix}_{name}": value for name, value in means.items()}
