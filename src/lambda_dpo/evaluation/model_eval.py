"""Evaluating trained models (docs/spec.md §4): the pieces ``lambda-dpo eval`` puts together.

- :class:`EvalModel`: a causal LM with its tokenizer and λ-conditioning metadata (a trained λ-DPO directory, a plain
  Hugging Face model, or the LoRA base of an adapter directory with its adapters disabled).
- Held-out lists: per-response log-probabilities of the policy under a chosen λ and of the (unconditioned)
  reference, computed exactly as the trainer does (same prompt rendering, same :mod:`lambda_dpo.logprobs`), turned
  into implicit rewards ``r = β (ℓ_θ − ℓ_ref)``, ranking metrics, the held-out log-ratio and length bias.

Sampled responses (the KL, generation for controllability and win rates) are :mod:`.sampling`; the cost of each
phase is :mod:`.performance`; the sections put together, :mod:`.run`.

Every log-probability here is the **sum** over response tokens; the mean reduction is ``sum / num_tokens``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lambda_dpo import reliance
from lambda_dpo.conditioning import DEFAULT_TEMPLATE, conditioned_prompt_ids
from lambda_dpo.evaluation.metrics import kl_estimate, length_bias, ranking_report, spearman
from lambda_dpo.model_dir import METADATA_FILE
from lambda_dpo.targets import mix_targets, scores_to_tensor, target_probs_from_scores

MIXED = "λ-mixed"  # the pseudo-dimension of the λ-mixed target Σ_d λ_d p*[d] in ranking reports


# ------------------------------------------------------------------------------------------------ models
@dataclass
class EvalModel:
    """A model under evaluation.

    ``metadata`` is the model's ``lambda_dpo.json`` (``dimensions``, ``conditioning_template``,
    ``condition_on_lambda``, ``training``) or, for a plain model, the same keys with ``condition_on_lambda=False``.
    ``adapter_disabled`` runs ``model`` with its PEFT adapters off: the LoRA base, used as the reference.
    """

    label: str
    path: str
    model: torch.nn.Module
    tokenizer: Any
    metadata: dict[str, Any]
    adapter_disabled: bool = False

    @property
    def dimensions(self) -> list[str]:
        return list(self.metadata["dimensions"])

    @property
    def conditioned(self) -> bool:
        """Whether λ goes into the prompt as a text line (λ-adapter models get λ through :meth:`steered`)."""
        from lambda_dpo.generation import text_conditioned

        return text_conditioned(self.metadata)

    def steered(self, lambdas: Mapping[str, float] | None):
        """A context in which the model's λ-adapters (``conditioning: lora``) run under ``lambdas``; a no-op for
        text-conditioned and plain models."""
        from lambda_dpo.lambda_adapters import lambdas_set

        on = self.metadata.get("condition_on_lambda", True) and not self.adapter_disabled
        return lambdas_set(self.model, dict(lambdas) if on and lambdas is not None else None)

    @property
    def training(self) -> dict[str, Any]:
        return self.metadata.get("training") or {}

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """The model as it is meant to run (adapters off for an adapter-disabled reference)."""
        from lambda_dpo.logprobs.batched import adapters_disabled

        with adapters_disabled(self.model, self.adapter_disabled):
            yield


def plain_metadata(dimensions: Sequence[str]) -> dict[str, Any]:
    """Metadata of a model that was not trained with λ conditioning: it sees no λ line."""
    return {"dimensions": list(dimensions), "conditioning_template": DEFAULT_TEMPLATE,
            "condition_on_lambda": False, "training": {}}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_eval_model(path: str, label: str, dimensions: Sequence[str] | None = None, device: str | None = None,
                    tokenizer=None) -> EvalModel:
    """Load a λ-DPO model directory (with ``lambda_dpo.json``) or a plain causal LM directory.

    A plain model gets :func:`plain_metadata` over ``dimensions``; ``tokenizer`` replaces the directory's own
    (the reference must read exactly the tokens the policy was trained on).
    """
    from lambda_dpo.data import ensure_chat_template
    from lambda_dpo.generation import load_model
    from lambda_dpo.model_dir import load_pretrained

    device = device or default_device()
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"{label} model directory {path!r} does not exist; evaluation runs offline, so pass a local directory"
        )
    try:
        if os.path.exists(os.path.join(path, METADATA_FILE)):
            model, own_tokenizer, metadata = load_model(path, device=device)
        else:
            if dimensions is None:
                raise ValueError(f"{path} has no {METADATA_FILE}; the dimensions to evaluate must be given")
            own_tokenizer, model = load_pretrained(path, setting=f"--{label}", tokenizer=tokenizer is None)
            model = model.to(device).eval()
            metadata = plain_metadata(dimensions)
    except OSError as error:
        raise OSError(f"could not load the {label} model from {path}: {error}") from None
    tokenizer = ensure_chat_template(tokenizer if tokenizer is not None else own_tokenizer)
    return EvalModel(label, path, model, tokenizer, metadata)


def load_reference(policy: EvalModel, path: str | None = None, device: str | None = None) -> EvalModel:
    """The reference π_ref of ``policy``: ``path`` if given; else, for a LoRA adapter directory (or a run trained
    with ``reference: adapter-disabled``), the base model with the adapters disabled; else the training
    settings' ``reference_model`` or ``model_name_or_path``. It always reads the policy's tokenizer."""
    training = policy.training
    has_adapters = bool(getattr(policy.model, "_hf_peft_config_loaded", False))
    if path is None and (has_adapters or training.get("reference") == "adapter-disabled"):
        if not has_adapters:
            raise ValueError(
                f"{policy.path} was trained with reference: adapter-disabled but has no LoRA adapters loaded "
                "(merged weights?); pass the base model with --reference DIR"
            )
        return EvalModel("reference", policy.path, policy.model, policy.tokenizer,
                         plain_metadata(policy.dimensions), adapter_disabled=True)
    source = "--reference"
    if path is None:
        source = "training.reference_model" if training.get("reference_model") else "training.model_name_or_path"
        path = training.get("reference_model") or training.get("model_name_or_path")
    if not path:
        raise ValueError(
            f"no reference model for {policy.path}: its {METADATA_FILE} names neither training.reference_model nor "
            "training.model_name_or_path; pass --reference DIR"
        )
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"reference model {path!r} (from {source} in {os.path.join(policy.path, METADATA_FILE)}) is not a "
            "local directory and evaluation runs offline; pass --reference DIR"
        )
    reference = load_eval_model(path, "reference", policy.dimensions, device, tokenizer=policy.tokenizer)
    reference.metadata = plain_metadata(policy.dimensions)
    vocabulary = reference.model.get_input_embeddings().num_embeddings
    if vocabulary < len(policy.tokenizer):
        raise ValueError(
            f"the reference {path} has {vocabulary} token embeddings but the policy's tokenizer has "
            f"{len(policy.tokenizer)} tokens; the reference must be the model the policy was trained from"
        )
    return reference


def same_vocabulary(a, b) -> bool:
    """Whether two tokenizers map every token to the same id (log-probs of one's ids are valid for the other)."""
    return a is b or a.get_vocab() == b.get_vocab()


# ------------------------------------------------------------------------------------------------ held-out lists
@dataclass
class Heldout:
    """Held-out listwise records tokenised for one tokenizer, with their targets as padded arrays.

    ``target_probs [B, m, k]`` (p*[d] = softmax(s[d]/τ) over scored responses), ``dimension_mask [B, m]``,
    ``response_mask [B, k]`` (False = padding slot of a shorter list), ``num_tokens [B, k]`` (response tokens).
    """

    dataset: Any  # datasets.Dataset with prompt, system, prompt_input_ids, response_input_ids
    dimensions: list[str]
    target_probs: np.ndarray
    dimension_mask: np.ndarray
    response_mask: np.ndarray
    num_tokens: np.ndarray


def prepare_heldout(dataset, tokenizer, dimensions: Sequence[str], *, tau: float = 1.0, max_length: int = 1024,
                    max_prompt_length: int | None = None, score_scale: Sequence[float] | None = None) -> Heldout:
    """Tokenise listwise records (:func:`lambda_dpo.data.tokenize_listwise`) and build their targets,
    softmax(s[d] / (τ · score_scale[d])) (``score_scale``: the per-dimension ranges of ``tau_scale: range``; None
    = 1), exactly as the trainer builds them."""
    from lambda_dpo.data import tokenize_listwise

    tokenized = tokenize_listwise(dataset, tokenizer, max_length=max_length, max_prompt_length=max_prompt_length)
    responses = tokenized["response_input_ids"]
    k = max(len(rs) for rs in responses)
    response_mask = np.array([[j < len(rs) for j in range(k)] for rs in responses])
    num_tokens = np.array([[len(rs[j]) if j < len(rs) else 0 for j in range(k)] for rs in responses])
    scores = torch.stack([scores_to_tensor(s or {}, dimensions, k) for s in tokenized["scores"]])
    target_probs, dimension_mask = target_probs_from_scores(scores, tau, torch.from_numpy(response_mask),
                                                            score_scale)
    return Heldout(tokenized, list(dimensions), target_probs.numpy(), dimension_mask.numpy(), response_mask,
                   num_tokens)


def prompt_ids(model: EvalModel, messages, system: str | None, lambdas: Mapping[str, float] | None,
               max_prompt_tokens: int | None = None) -> list[int]:
    """The prompt's token ids as ``model`` sees it: for a λ-conditioned model the λ line goes first in the system
    message (exactly as the trainer renders it); an unconditioned model (or ``lambdas=None``) sees the prompt alone."""
    return conditioned_prompt_ids(model.tokenizer, messages, system, lambdas if model.conditioned else None,
                                  model.dimensions, model.metadata["conditioning_template"], max_prompt_tokens)


def response_logps(model: EvalModel, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[Sequence[int]]],
                   *, batch_size: int = 8, chunk_size: int | None = 128, progress: bool = False) -> list[list[float]]:
    """Summed log-probs ``[row][j]`` of the responses ``responses[row][j]`` after ``prompts[row]`` (no grad), by
    the pass the reference cache uses, :func:`lambda_dpo.logprobs.batched.batched_logps` (length-sorted batches,
    one forward per sequence), whatever the model's role."""
    from lambda_dpo.logprobs.batched import TokenRows, batched_logps

    if not prompts:
        return []
    return batched_logps(
        model.model, TokenRows(prompts, responses), pad_token_id=model.tokenizer.pad_token_id, reduction="sum",
        batch_size=batch_size, chunk_size=chunk_size, adapter_disabled=model.adapter_disabled,
        show_progress=progress, what=f"{model.label} log-prob",
    )


def heldout_logps(model: EvalModel, heldout: Heldout, lambdas: Mapping[str, float] | None, *,
                  max_prompt_length: int | None = None, batch_size: int = 8, chunk_size: int | None = 128,
                  progress: bool = False) -> np.ndarray:
    """Summed log-probs ``[B, k]`` (NaN at padding) of every held-out response under ``model`` given λ."""
    data = heldout.dataset
    if model.conditioned and lambdas is not None:
        prompts = [prompt_ids(model, messages, system, lambdas, max_prompt_length)
                   for messages, system in zip(data["prompt"], data["system"])]
    else:
        prompts = data["prompt_input_ids"]
    with model.steered(lambdas):
        rows = response_logps(model, prompts, data["response_input_ids"], batch_size=batch_size,
                              chunk_size=chunk_size, progress=progress)
    out = np.full(heldout.response_mask.shape, np.nan)
    for b, row in enumerate(rows):
        out[b, : len(row)] = row
    return out


def implicit_rewards(policy_logps: np.ndarray, reference_logps: np.ndarray | None, num_tokens: np.ndarray,
                     beta: float, reduction: str) -> np.ndarray:
    """``r = β (ℓ_θ − ℓ_ref)`` ``[B, k]`` from summed log-probs; ``reduction="mean"`` divides each by its token
    count (as the trainer's ``logprob_reduction``); ``reference_logps=None`` is the reference-free ``ℓ_ref = 0``."""
    from lambda_dpo.logprobs.sequence import check_reduction

    check_reduction(reduction)
    delta = policy_logps - (0.0 if reference_logps is None else reference_logps)
    if reduction == "mean":
        delta = delta / np.maximum(num_tokens, 1)
    return beta * delta


def ranking_at_lambda(rewards: np.ndarray, heldout: Heldout, lambdas: Mapping[str, float],
                      ndcg_k: int | None = None) -> dict[str, dict[str, float]]:
    """Ranking accuracy, Kendall τ and NDCG@k of ``rewards [B, k]`` against every dimension's target and against
    the λ-mixed target ``Σ_d λ_d p*[d]`` (key :data:`MIXED`), via :func:`metrics.ranking_report`."""
    dims = heldout.dimensions
    batch = rewards.shape[0]
    weights = torch.tensor([[float(lambdas.get(d, 0.0)) for d in dims]] * batch)
    target_probs = torch.from_numpy(heldout.target_probs)
    dimension_mask = torch.from_numpy(heldout.dimension_mask)
    mixed = mix_targets(target_probs, weights.to(target_probs.dtype), dimension_mask)  # [B, k]
    # A mixed target ranks something only where at least two responses carry weight.
    mixed_mask = (mixed > 0).sum(-1) >= 2
    all_targets = torch.cat([target_probs, mixed.unsqueeze(1)], dim=1)
    all_masks = torch.cat([dimension_mask, mixed_mask.unsqueeze(1)], dim=1)
    return ranking_report(rewards, all_targets, [*dims, MIXED], heldout.response_mask, all_masks, ndcg_k)


def lambda_reliance_report(vertex_rewards: Sequence[np.ndarray], vertex_logps: Sequence[np.ndarray],
                           heldout: Heldout) -> dict[str, Any]:
    """How much the policy's implicit rewards depend on λ (docs/spec.md §1, λ-reliance), from its held-out rewards and
    log-probs at each one-hot λ = e_p (``vertex_*[p]``: ``[B, k]``, in ``heldout.dimensions`` order).

    ``matrix[p][d]`` is dimension d's listwise loss −Σ_i p*[d]_i log softmax(r)_i with the policy told e_p;
    ``per_dimension[d]`` = (mean over p ≠ d of matrix[p][d]) − matrix[d][d] (≈ 0: λ is ignored for d),
    ``relative_per_dimension[d]`` that gap over the targets' own (`lambda_dpo.reliance`; 1 = as λ-dependent as the
    targets), ``reliance`` / ``relative`` their means (what the trainer logs as ``eval_lambda_reliance…``);
    ``logp_shift`` = mean |ℓ(y | x, e_p) − ℓ(y | x, e_q)| over responses and pairs p < q, in nats per response
    (summed log-probs)."""
    dims, m = heldout.dimensions, len(heldout.dimensions)
    mask = heldout.response_mask
    matrix = np.full((m, m), np.nan)
    for p, rewards in enumerate(vertex_rewards):
        logits = np.where(mask, rewards, -np.inf)
        log_softmax = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
        log_softmax = np.where(mask, log_softmax, 0.0)
        for d in range(m):
            rows = heldout.dimension_mask[:, d]
            if rows.any():
                losses = -(heldout.target_probs[:, d, :] * log_softmax).sum(-1)
                matrix[p, d] = float(losses[rows].mean())
    as_dict = {(dims[p], dims[d]): float(matrix[p, d]) for p in range(m) for d in range(m) if np.isfinite(matrix[p, d])}
    gaps = reliance.per_dimension(as_dict, dims)
    ideal_sums, ideal_counts = reliance.target_cross_entropy(torch.from_numpy(heldout.target_probs).double(),
                                                             torch.from_numpy(heldout.dimension_mask))
    ideal = {(dims[p], dims[d]): float(ideal_sums[p, d] / ideal_counts[p, d])
             for p in range(m) for d in range(m) if ideal_counts[p, d] > 0}
    relative = reliance.relative(gaps, reliance.per_dimension(ideal, dims))
    shifts = [np.abs(vertex_logps[p] - vertex_logps[q])[mask] for p in range(m) for q in range(p + 1, m)]
    return {
        "reliance": float(np.mean(list(gaps.values()))) if gaps else None,
        "per_dimension": gaps,
        "relative": float(np.mean(list(relative.values()))) if relative else None,
        "relative_per_dimension": relative,
        "logp_shift": float(np.concatenate(shifts).mean()) if shifts else None,
        "matrix": {dims[p]: {dims[d]: float(matrix[p, d]) for d in range(m)} for p in range(m)},
    }


def heldout_log_ratio(policy_logps: np.ndarray, reference_logps: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """Mean and standard error of ``log π_θ(y|x,λ) − log π_ref(y|x)`` over the held-out responses.

    The responses come from the data, not from π_θ, so this is not an unbiased KL (it can be negative); it says
    how far the policy moved on the data it was trained to rank. Same arithmetic as :func:`metrics.kl_estimate`.
    """
    policy, reference = policy_logps[mask][:, None], reference_logps[mask][:, None]
    mean, stderr = kl_estimate(policy, reference, np.ones_like(policy, dtype=bool))
    return {"mean": mean, "stderr": stderr, "num_responses": int(mask.sum())}


def length_bias_report(logps: np.ndarray, num_tokens: np.ndarray, mask: np.ndarray,
                       rewards: np.ndarray | None = None) -> dict[str, float]:
    """Spearman ρ with the response length in tokens of: the per-token log-prob (``logp_mean``), the sequence
    log-prob (``logp_sum``, negative by construction: every token costs log-probability) and, when given, the
    implicit reward (``reward``: > 0 means longer responses are ranked higher)."""
    lengths = num_tokens[mask].astype(float)
    report = {
        "logp_mean": length_bias(logps[mask] / np.maximum(lengths, 1), lengths),
        "logp_sum": length_bias(logps[mask], lengths),
    }
    if rewards is not None:
        report["reward"] = spearman(rewards[mask], lengths)
    return report


__all__ = [
    "MIXED",
    "EvalModel",
    "Heldout",
    "heldout_log_ratio",
    "heldout_logps",
    "implicit_rewards",
    "length_bias_report",
    "load_eval_model",
    "load_reference",
    "plain_metadata",
    "prompt_ids",
    "ranking_at_lambda",
    "response_logps",
    "same_vocabulary",
]
