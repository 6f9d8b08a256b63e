"""λ-weighted listwise DPO and its baselines as pure functions (docs/spec.md §1, §3).

Every loss is written once, on :class:`ListwiseInputs`: the rewards, the λ-mixed target and the masks of one
batch, validated and computed once (the trainer builds them once per step and hands the same object to the loss,
the NLL anchor and the metrics). ``LOSSES`` holds the public functions with the stable tensor signature of
docs/spec.md §5, ``listwise_loss(policy_logps, reference_logps, target_probs, lambdas, beta, response_mask=None,
dimension_mask=None) -> [B]``, each a thin wrapper that builds the inputs and calls its objective. Shapes, for B
prompts, k response slots and m preference dimensions:

    policy_logps, reference_logps   [B, k]      ℓ_θ(y_i | x, λ), ℓ_ref(y_i | x)
    target_probs                    [B, m, k]   p*[d] (see :mod:`lambda_dpo.targets`)
    lambdas                         [B, m]      λ on the simplex
    response_mask                   bool [B, k] False = padding slot of a shorter list (default: all True)
    dimension_mask                  bool [B, m] False = no signal (default: dimensions whose target row has mass)

Shared conventions:
- Implicit rewards ``r_i = β (ℓ_θ(y_i) − ℓ_ref(y_i))``; the mixed target ``q = Σ_d λ'_d p*[d]`` with λ'
  renormalised over the unmasked dimensions of each prompt (:func:`lambda_dpo.targets.mix_targets`).
- Padding slots are removed before anything else: their rewards are replaced by 0 (so NaN/inf filler values are
  harmless and their gradient is exactly 0) and their target mass by 0.
- Response i is preferred to j (``i ≻ j``) when ``q_i > q_j + TIE_TOLERANCE``, so float round-off in the λ-mix
  never invents a preference. Unscored responses (real, target 0) rank below every scored one, exactly as the
  listwise loss treats them (target 0, still in the softmax denominator).
- A prompt with no preference (all-zero mixed target, or all real responses tied) has loss 0 and no gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lambda_dpo.targets import mix_targets

TIE_TOLERANCE = 1e-6
PAIR_WEIGHTINGS = ("data", "gap", "uniform")


def _check_shapes(caller: str, policy_logps: torch.Tensor, first: str = "policy_logps",
                  **tensors: torch.Tensor | None) -> None:
    """Raise one error naming the argument whose shape does not match ``policy_logps [B, k]`` (named ``first``)."""
    if policy_logps.dim() != 2:
        raise ValueError(
            f"{caller}: {first} must be [B, k] (prompts × responses), got shape {tuple(policy_logps.shape)}"
        )
    batch, k = policy_logps.shape
    target_probs = tensors.get("target_probs")
    # m stays open (None) when target_probs itself is malformed; that error is then the one reported.
    m = target_probs.shape[1] if target_probs is not None and target_probs.dim() == 3 else None
    expected = {"reference_logps": (batch, k), "response_mask": (batch, k), "target_probs": (batch, None, k),
                "dimension_mask": (batch, m), "lambdas": (batch, m), "mixed_target": (batch, k)}
    for arg, tensor in tensors.items():
        if tensor is None:
            continue
        shape = expected[arg]
        ok = tensor.dim() == len(shape) and all(s is None or s == t for s, t in zip(shape, tensor.shape))
        if not ok:
            want = "[" + ", ".join("m" if s is None else str(s) for s in shape) + "]"
            raise ValueError(
                f"{caller}: {arg} has shape {tuple(tensor.shape)}, expected {want} to match {first} "
                f"{tuple(policy_logps.shape)} (B={batch} prompts, k={k} response slots); "
                "targets are [B, m, k] and λ / dimension masks [B, m]"
            )


@dataclass(frozen=True)
class ListwiseInputs:
    """What every objective reads, for one batch; build it with :meth:`build`.

    Attributes:
        rewards: ``[B, k]`` implicit rewards β(ℓ_θ − ℓ_ref); 0 at padding slots.
        mixed_target: ``[B, k]`` the λ-mixed target q; 0 at padding slots. None when built without λ
            (:func:`per_dimension_metrics` needs no mix).
        target_probs: ``[B, m, k]`` the per-dimension targets p*[d], as given.
        response_mask: bool ``[B, k]``, True = a real response.
        dimension_mask: bool ``[B, m]``, True = the dimension has signal for that prompt.
    """

    rewards: torch.Tensor
    mixed_target: torch.Tensor | None
    target_probs: torch.Tensor
    response_mask: torch.Tensor
    dimension_mask: torch.Tensor

    @classmethod
    def build(
        cls,
        policy_logps: torch.Tensor,
        reference_logps: torch.Tensor,
        target_probs: torch.Tensor,
        lambdas: torch.Tensor | None,
        beta: float,
        response_mask: torch.Tensor | None = None,
        dimension_mask: torch.Tensor | None = None,
        caller: str = "ListwiseInputs",
    ) -> ListwiseInputs:
        """Validate the shapes (errors name ``caller`` and the argument) and compute rewards and the mixed target
        once. Arguments as in the module docstring; ``lambdas=None`` leaves ``mixed_target`` None."""
        _check_shapes(caller, policy_logps, reference_logps=reference_logps, response_mask=response_mask,
                      target_probs=target_probs, dimension_mask=dimension_mask, lambdas=lambdas)
        if not beta > 0:
            raise ValueError(f"{caller}: beta must be > 0 (0.1 is typical), got {beta}")
        real = torch.ones_like(policy_logps, dtype=torch.bool) if response_mask is None else response_mask.bool()
        dimension_mask = (target_probs.sum(-1) > 0) if dimension_mask is None else dimension_mask.bool()
        zero = torch.zeros((), dtype=policy_logps.dtype, device=policy_logps.device)
        rewards = torch.where(real, beta * (policy_logps - reference_logps), zero)
        mixed = None
        if lambdas is not None:
            mixed = mix_targets(target_probs, lambdas.to(target_probs.dtype), dimension_mask)
            mixed = torch.where(real, mixed, torch.zeros_like(mixed))
        return cls(rewards, mixed, target_probs, real, dimension_mask)

    @property
    def has_signal(self) -> torch.Tensor:
        """bool ``[B]``: the prompts whose mixed target has mass (the others have loss 0)."""
        return self.mixed("has_signal").sum(-1) > 0

    def mixed(self, objective: str) -> torch.Tensor:
        """``mixed_target``, or an error naming ``objective`` when the inputs were built without λ."""
        if self.mixed_target is None:
            raise ValueError(f"{objective} needs λ: build its ListwiseInputs with lambdas")
        return self.mixed_target


def _masked_log_softmax(rewards: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """``log softmax(r)`` over the real slots of each row ``[B, k]``; 0 (not -inf) at padding slots.

    Returning 0 at padding keeps ``target * log_prob`` free of ``0 · -inf = NaN``.
    """
    logits = rewards.masked_fill(~real, -math.inf)
    # A row without any real slot (an all-padding prompt) would be NaN; give it finite logits, it is zeroed below.
    logits = torch.where(real.any(-1, keepdim=True), logits, torch.zeros_like(logits))
    return torch.where(real, torch.log_softmax(logits, dim=-1), torch.zeros_like(logits))


def _preference_pairs(mixed_target: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """bool ``[B, k, k]``: ``[b, i, j]`` is True when real responses i ≻ j under ``mixed_target [B, k]``."""
    both_real = real.unsqueeze(-1) & real.unsqueeze(-2)
    return both_real & (mixed_target.unsqueeze(-1) > mixed_target.unsqueeze(-2) + TIE_TOLERANCE)


def _weighted_pair_loss(rewards: torch.Tensor, pair_weights: torch.Tensor) -> torch.Tensor:
    """``Σ_ij w_ij · (−log σ(r_i − r_j)) / Σ_ij w_ij`` per prompt ``[B]``; 0 where ``Σ w = 0``.

    Args: rewards ``[B, k]``; pair_weights ``[B, k, k]``, zero outside the preference pairs.
    """
    pair_nll = -F.logsigmoid(rewards.unsqueeze(-1) - rewards.unsqueeze(-2))
    total_weight = pair_weights.sum((-2, -1))
    # where() rather than multiply: zero-weight pairs must not leak inf/NaN into the sum.
    weighted = torch.where(pair_weights > 0, pair_weights * pair_nll, torch.zeros_like(pair_nll))
    return weighted.sum((-2, -1)) / total_weight.clamp_min(torch.finfo(total_weight.dtype).tiny)


def _tied_top(mixed: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """``[B, k]`` bool: the real responses within ``TIE_TOLERANCE`` of the highest mixed target of their list."""
    top = mixed.masked_fill(~real, -math.inf).amax(-1, keepdim=True)
    return real & (mixed >= top - TIE_TOLERANCE)


# ------------------------------------------------------------------------ the objectives, on ListwiseInputs


def listwise(inputs: ListwiseInputs) -> torch.Tensor:
    """λ-weighted listwise DPO loss (docs/spec.md §1; arXiv:2506.19780, eq. "Lambda-weighted Listwise DPO").

        L_λ = − Σ_i q_i · log softmax(r)_i,   q = Σ_d λ'_d p*[d],   r_i = β (ℓ_θ(y_i) − ℓ_ref(y_i))

    = ``Σ_d λ'_d L_d``. The softmax runs over the real responses of each prompt, including unscored ones (target 0).
    With k = 2 and a one-hot target this is DPO's ``−log σ(r_1 − r_2)``.

    Returns:
        ``[B]`` per-prompt loss; 0 (and no gradient) for a prompt whose mixed target is all zero.
    """
    return -(inputs.mixed("listwise") * _masked_log_softmax(inputs.rewards, inputs.response_mask)).sum(-1)


def best_worst_dpo(inputs: ListwiseInputs) -> torch.Tensor:
    """The ``dpo`` baseline of docs/spec.md §1: :func:`dpo_loss` on the best vs the worst real response under the
    mixed target.

        L = −log σ(r_best − r_worst),   best = argmax_i q_i,  worst = argmin_i q_i  (over real responses)

    Ties: when several responses share the top (or bottom) mixed target, the loss is the mean of the DPO loss
    over every (tied best, tied worst) pair, so it does not depend on the input order of tied responses.
    Returns ``[B]``; 0 where every real response is tied (no preference).
    """
    mixed, real = inputs.mixed("best_worst_dpo"), inputs.response_mask
    is_best, is_worst = _tied_top(mixed, real), _tied_top(-mixed, real)
    pairs = _preference_pairs(mixed, real) & is_best.unsqueeze(-1) & is_worst.unsqueeze(-2)
    return _weighted_pair_loss(inputs.rewards, pairs.to(inputs.rewards.dtype))


def pairwise(inputs: ListwiseInputs, pair_weights: torch.Tensor | None = None, weighting: str = "gap") -> torch.Tensor:
    """Confidence-weighted pairwise DPO over all ordered pairs i ≻ j (q_i > q_j) of each list:

        L = Σ_{i≻j} w_ij · (−log σ(r_i − r_j)) / Σ_{i≻j} w_ij

    Args:
        pair_weights: ``[B, k, k]`` in [0, 1], the confidence of "i ≻ j" (e.g. annotator agreement); used with
            ``weighting="data"``, only on pairs the mixed target orders.
        weighting: ``"data"`` (``pair_weights``), ``"gap"`` (``w_ij = (q_i − q_j) / max_{i≻j}(q_i − q_j)``:
            the widest gap of a prompt weighs 1; the scale cancels in the ratio, it only keeps w in [0, 1]),
            or ``"uniform"`` (w = 1).

    Returns:
        ``[B]``; with k = 2, a one-hot target and any weighting this is :func:`dpo_loss`. 0 where no pair exists.
    """
    if weighting not in PAIR_WEIGHTINGS:
        raise ValueError(f"pairwise_loss: weighting={weighting!r} is not one of {PAIR_WEIGHTINGS}")
    if (weighting == "data") != (pair_weights is not None):
        raise ValueError(
            "pairwise_loss: pair_weights and weighting='data' go together; got "
            f"weighting={weighting!r} with pair_weights {'given' if pair_weights is not None else 'missing'}"
        )
    rewards, mixed = inputs.rewards, inputs.mixed("pairwise")
    pairs = _preference_pairs(mixed, inputs.response_mask)
    if weighting == "uniform":
        weights = pairs.to(rewards.dtype)
    elif weighting == "gap":
        gaps = torch.where(
            pairs, mixed.unsqueeze(-1) - mixed.unsqueeze(-2), torch.zeros_like(pairs, dtype=mixed.dtype)
        )
        widest = gaps.amax((-2, -1), keepdim=True).clamp_min(TIE_TOLERANCE)
        weights = (gaps / widest).to(rewards.dtype)
    else:
        batch, k = rewards.shape
        if tuple(pair_weights.shape) != (batch, k, k):
            raise ValueError(
                f"pairwise_loss: pair_weights has shape {tuple(pair_weights.shape)}, expected [B, k, k] = "
                f"[{batch}, {k}, {k}] (pair_weights[b, i, j] = confidence that response i beats response j)"
            )
        in_pairs = pair_weights[pairs]
        if in_pairs.numel() and not bool(((in_pairs >= 0) & (in_pairs <= 1)).all()):
            bad = in_pairs[~((in_pairs >= 0) & (in_pairs <= 1))][0].item()
            raise ValueError(f"pairwise_loss: pair_weights must lie in [0, 1] (a confidence), found {bad}")
        weights = torch.where(pairs, pair_weights, torch.zeros_like(pair_weights)).to(rewards.dtype)
    return _weighted_pair_loss(rewards, weights)


def plackett_luce(inputs: ListwiseInputs) -> torch.Tensor:
    """Negative log Plackett–Luce likelihood of the ranking by descending mixed target q (DPO-PL, Rafailov
    et al. 2023, App. A.3):

        L = − Σ_{i : some j ranks below i}  ( r_i − log Σ_{j : q_j ≤ q_i} exp r_j )

    Ties use Breslow's rule (Cox partial likelihood): every member of a tied group is scored against all responses
    not ranked strictly above it, the other tied members included. The result does not depend on the input order
    of tied responses, and reduces to exact Plackett–Luce for a strict order. The bottom group (nothing ranked below
    it) contributes nothing, just as the last position of a strict ranking contributes log 1 = 0; so k = 2 with a
    strict order is :func:`dpo_loss`, and a prompt whose real responses all tie has loss 0. Returns ``[B]``.
    """
    rewards, real = inputs.rewards, inputs.response_mask
    pairs = _preference_pairs(inputs.mixed("plackett_luce"), real)
    ranked_above_some = pairs.any(-1)
    not_strictly_above = real.unsqueeze(-1) & real.unsqueeze(-2) & ~pairs.transpose(-2, -1)
    # The diagonal keeps every row's logsumexp finite (padding rows included); those rows are masked out below.
    risk_set = not_strictly_above | torch.eye(rewards.shape[-1], dtype=torch.bool, device=rewards.device)
    log_normaliser = torch.logsumexp(rewards.unsqueeze(-2).masked_fill(~risk_set, -math.inf), dim=-1)
    stage_log_probs = torch.where(ranked_above_some, rewards - log_normaliser, torch.zeros_like(rewards))
    return -stage_log_probs.sum(-1)


Objective = Callable[..., torch.Tensor]
OBJECTIVES: dict[str, Objective] = {
    "listwise": listwise,
    "dpo": best_worst_dpo,
    "pairwise": pairwise,
    "plackett_luce": plackett_luce,
}


# ------------------------------------------------------------------- the public tensor signature (spec §5)

LossFn = Callable[..., torch.Tensor]


def _with_tensor_signature(objective: Objective, name: str) -> LossFn:
    """``objective`` behind the stable signature of docs/spec.md §5: build the inputs, then call it (loss-specific
    options, such as ``pairwise``'s ``weighting``, pass through as keywords)."""

    def loss(
        policy_logps: torch.Tensor,
        reference_logps: torch.Tensor,
        target_probs: torch.Tensor,
        lambdas: torch.Tensor,
        beta: float,
        response_mask: torch.Tensor | None = None,
        dimension_mask: torch.Tensor | None = None,
        **options,
    ) -> torch.Tensor:
        inputs = ListwiseInputs.build(policy_logps, reference_logps, target_probs, lambdas, beta, response_mask,
                                      dimension_mask, caller=name)
        return objective(inputs, **options)

    loss.__name__ = loss.__qualname__ = name
    loss.__doc__ = (f"{name}(policy_logps, reference_logps, target_probs, lambdas, beta, response_mask=None, "
                    f"dimension_mask=None, **options) -> [B]: :func:`{objective.__name__}` on the inputs these "
                    f"tensors give (shapes: the module docstring).\n\n{objective.__doc__}")
    return loss


listwise_loss = _with_tensor_signature(listwise, "listwise_loss")
best_worst_dpo_loss = _with_tensor_signature(best_worst_dpo, "best_worst_dpo_loss")
pairwise_loss = _with_tensor_signature(pairwise, "pairwise_loss")
plackett_luce_loss = _with_tensor_signature(plackett_luce, "plackett_luce_loss")
LOSSES: dict[str, LossFn] = {
    "listwise": listwise_loss,
    "dpo": best_worst_dpo_loss,
    "pairwise": pairwise_loss,
    "plackett_luce": plackett_luce_loss,
}


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    reference_chosen_logps: torch.Tensor,
    reference_rejected_logps: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """DPO sigmoid loss (Rafailov et al. 2023, eq. 7), all arguments ``[B]``:

        L = −log σ(β ((ℓ_θ(y_c) − ℓ_ref(y_c)) − (ℓ_θ(y_r) − ℓ_ref(y_r))))

    Returns ``[B]``; uses ``logsigmoid`` so large margins neither overflow nor underflow.
    """
    if not beta > 0:
        raise ValueError(f"dpo_loss: beta must be > 0 (0.1 is typical), got {beta}")
    chosen = policy_chosen_logps - reference_chosen_logps
    rejected = policy_rejected_logps - reference_rejected_logps
    return -F.logsigmoid(beta * (chosen - rejected))


# ------------------------------------------------------------------------------- anchor and metrics


def target_nll_loss(
    policy_token_logps: torch.Tensor,
    mixed_target: torch.Tensor,
    response_mask: torch.Tensor | None = None,
    best_only: bool = False,
) -> torch.Tensor:
    """Target-weighted negative log-likelihood, the optional anchor added to any loss as ``nll_weight · L_nll``:

        L_nll = − Σ_i q_i · ℓ̄_θ(y_i | x, λ),   q = Σ_d λ'_d p*[d]  (``ListwiseInputs.mixed_target``)

    with ``policy_token_logps [B, k]`` the policy's *mean per-token* log-probability of each response
    (ℓ̄ = ℓ / |y|) and ``mixed_target [B, k]`` (0 at padding). It is the listwise form of RPO's NLL term (Pang et al.
    2024, TRL's ``rpo_alpha``), which puts weight on the chosen response: here every response is weighted by how
    much λ's mixed target prefers it. Why: the preference losses see only *differences* of log-ratios, so they can
    lower every response's likelihood at once and push probability mass onto text that is in none of the lists;
    this term keeps the policy's mass on the responses λ prefers. Per-token, so long and short responses weigh by
    their target alone.

    ``best_only=True`` is RPO's own term for the pairwise ``dpo`` baseline, which sees only the best and the worst
    response: L_nll = −mean over the tied best responses (argmax_i q_i) of ℓ̄_θ, so that the baseline's anchor does not
    hand it the ranking of the middle responses that its loss ignores. With k = 2 and a one-hot target both forms
    are the NLL of the chosen response.

    Returns ``[B]``; 0 for a prompt whose mixed target is all zero. Padding slots contribute nothing.
    """
    _check_shapes("target_nll_loss", policy_token_logps, "policy_token_logps", mixed_target=mixed_target, response_mask=response_mask)
    real = torch.ones_like(policy_token_logps, dtype=torch.bool) if response_mask is None else response_mask.bool()
    mixed = torch.where(real, mixed_target, torch.zeros_like(mixed_target))
    if best_only:
        is_best = _tied_top(mixed, real) & (mixed > 0)
        mixed = is_best.to(mixed.dtype) / is_best.sum(-1, keepdim=True).clamp_min(1)
    zero = torch.zeros((), dtype=policy_token_logps.dtype, device=policy_token_logps.device)
    return -(mixed * torch.where(real, policy_token_logps, zero)).sum(-1)


@torch.no_grad()
def per_dimension_metrics(inputs: ListwiseInputs) -> dict[str, torch.Tensor]:
    """Per-dimension training signals of the implicit reward, each a detached ``[m]`` tensor.

    - ``"loss"``: the single-dimension listwise loss ``L_d = −Σ_i p*[d]_i log softmax(r)_i``, mean over the
      prompts where d is unmasked; ``"prompt_count"`` is that number of prompts.
    - ``"accuracy"``: among real pairs with ``p*[d]_i > p*[d]_j`` (+ TIE_TOLERANCE), the fraction with
      ``r_i > r_j`` (a reward tie counts as wrong, as in TRL); ``"margin"``: the mean ``r_i − r_j`` over those pairs;
      ``"count"``: that number of pairs.

    Means come with counts so batches aggregate exactly: ``Σ mean·count / Σ count`` (skip entries with count 0).
    Means are NaN where a dimension has no signal in the batch (count 0). λ is not used (``mixed_target`` may be None).
    """
    rewards, real, dimension_mask = inputs.rewards, inputs.response_mask, inputs.dimension_mask
    targets = torch.where(real.unsqueeze(-2), inputs.target_probs, torch.zeros_like(inputs.target_probs))
    log_probs = _masked_log_softmax(rewards, real).unsqueeze(-2)  # [B, 1, k]
    per_prompt_loss = -(targets * log_probs).sum(-1)  # [B, m]
    used = dimension_mask.to(rewards.dtype)
    prompt_count = used.sum(0)

    pairs = _preference_pairs(targets, real.unsqueeze(-2)) & dimension_mask[..., None, None]  # [B, m, k, k]
    margins = (rewards.unsqueeze(-1) - rewards.unsqueeze(-2)).unsqueeze(1)  # [B, 1, k, k]
    pair_count = pairs.sum((0, 2, 3)).to(rewards.dtype)
    correct = (pairs & (margins > 0)).sum((0, 2, 3)).to(rewards.dtype)
    margin_sum = torch.where(pairs, margins, torch.zeros_like(margins)).sum((0, 2, 3))

    def mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, math.nan))

    return {
        "loss": mean((per_prompt_loss * used).sum(0), prompt_count),
        "accuracy": mean(correct, pair_count),
        "margin": mean(margin_sum, pair_count),
        "count": pair_count,
        "prompt_count": prompt_count,
    }
