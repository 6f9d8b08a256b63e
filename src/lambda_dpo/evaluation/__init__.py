"""Evaluation (docs/spec.md §4): ranking metrics, KL, length bias, win rate, controllability with Pareto/hypervolume.

Plots live in :mod:`lambda_dpo.evaluation.plots` (imported on demand: it loads matplotlib).
"""

from lambda_dpo.evaluation.controllability import (
    ControllabilityResult,
    evaluate_controllability,
    lambda_grid,
    shared_hypervolumes,
)
from lambda_dpo.evaluation.metrics import (
    default_reference_point,
    hypervolume,
    kendall_tau,
    kl_estimate,
    length_bias,
    ndcg_at_k,
    pareto_front,
    per_list,
    ranking_accuracy,
    ranking_report,
    spearman,
    win_rate,
)

__all__ = [
    "ControllabilityResult",
    "default_reference_point",
    "evaluate_controllability",
    "hypervolume",
    "kendall_tau",
    "kl_estimate",
    "lambda_grid",
    "length_bias",
    "ndcg_at_k",
    "pareto_front",
    "per_list",
    "ranking_accuracy",
    "ranking_report",
    "shared_hypervolumes",
    "spearman",
    "win_rate",
]
