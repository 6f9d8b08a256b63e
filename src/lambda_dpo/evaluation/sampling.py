"""Evaluation on sampled responses (docs/spec.md §4): KL(π_θ(·|x, λ) ‖ π_ref(·|x)) by Monte Carlo over exact
samples of the policy, and responses generated through :func:`lambda_dpo.generation.sample_responses` (the path of
``lambda-dpo generate``) for controllability and win rates, scored by a judge."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lambda_dpo.evaluation.metrics import kl_estimate, win_rate
from lambda_dpo.evaluation.model_eval import EvalModel, prompt_ids, response_logps


@dataclass
class GenerationPrompt:
    """A single-turn prompt for generation: the user text and the record's own system text (may be empty)."""

    text: str
    system: str = ""

    @property
    def messages(self) -> list[dict[str, str]]:
        return [{"role": "user", "content": self.text}]


def generation_prompts(dataset, limit: int) -> tuple[list[GenerationPrompt], int]:
    """Up to ``limit`` distinct single-turn prompts of a listwise dataset, and how many multi-turn ones were
    skipped (generation, scorers and win rates take one user message)."""
    prompts, seen, skipped = [], set(), 0
    for messages, system in zip(dataset["prompt"], dataset["system"]):
        if len(messages) != 1 or messages[0]["role"] != "user":
            skipped += 1
            continue
        key = (messages[0]["content"], system or "")
        if key not in seen and len(prompts) < limit:
            seen.add(key)
            prompts.append(GenerationPrompt(*key))
    return prompts, skipped


def sample_response_ids(model: EvalModel, prompts: Sequence[Sequence[int]], num_samples: int, *,
                        max_new_tokens: int, batch_size: int = 8, seed: int = 0) -> list[list[int]]:
    """Exact samples ``y ~ π(·|prompt)``: ``num_samples`` token-id lists per prompt (prompt-major), each cut after
    its end-of-sequence token (kept: it is a response token) or at ``max_new_tokens``.

    Pure ancestral sampling (temperature 1, no top-k / top-p): a Monte Carlo KL needs samples of π itself. Token
    ids are kept as sampled, never decoded and re-encoded, which could change them.
    """
    from lambda_dpo.generation import generate_ids

    rows = [list(p) for p in prompts for _ in range(num_samples)]
    eos = model.tokenizer.eos_token_id
    torch.manual_seed(seed)
    samples = []
    with model.active():
        for start in range(0, len(rows), batch_size):
            new_ids = generate_ids(
                model.model, rows[start : start + batch_size], pad_token_id=model.tokenizer.pad_token_id,
                eos_token_id=eos, max_new_tokens=max_new_tokens, do_sample=True, temperature=1.0, top_k=0,
                top_p=1.0, min_p=None, typical_p=1.0, repetition_penalty=1.0,
            )
            samples += [row[: row.index(eos) + 1] if eos in row else row for row in new_ids]
    return samples


def sampled_kl(policy: EvalModel, reference: EvalModel, prompts: Sequence[GenerationPrompt],
               lambdas: Mapping[str, float] | None, *, num_samples: int, max_new_tokens: int,
               max_prompt_length: int | None = None, batch_size: int = 8, chunk_size: int | None = 128,
               seed: int = 0) -> dict[str, float]:
    """KL(π_θ(·|x, λ) ‖ π_ref(·|x)) in nats per response, by Monte Carlo over exact samples of the policy.

    For each prompt, ``num_samples`` responses are sampled from the λ-conditioned policy; ``k = ℓ_θ(y|x,λ) −
    ℓ_ref(y|x)`` (summed over tokens) is an unbiased single-sample estimate of the KL, and
    :func:`metrics.kl_estimate` gives the mean and its standard error. The reference sees the unconditioned
    prompt, as in training. Needs both models to share the tokenizer's vocabulary.
    """
    policy_prompts = [prompt_ids(policy, p.messages, p.system, lambdas, max_prompt_length) for p in prompts]
    reference_prompts = [prompt_ids(reference, p.messages, p.system, None, max_prompt_length) for p in prompts]
    repeat = [i for i in range(len(prompts)) for _ in range(num_samples)]
    kwargs = {"batch_size": batch_size, "chunk_size": chunk_size}
    with policy.steered(lambdas):
        samples = sample_response_ids(policy, policy_prompts, num_samples, max_new_tokens=max_new_tokens,
                                      batch_size=batch_size, seed=seed)
        policy_logps = response_logps(policy, [policy_prompts[i] for i in repeat], [[s] for s in samples],
                                      **kwargs)
    reference_logps = response_logps(reference, [reference_prompts[i] for i in repeat], [[s] for s in samples],
                                     **kwargs)
    policy_logps, reference_logps = np.array(policy_logps), np.array(reference_logps)  # [N, 1]
    mean, stderr = kl_estimate(policy_logps, reference_logps, np.ones_like(policy_logps, dtype=bool))
    lengths = [len(s) for s in samples]
    return {"mean": mean, "stderr": stderr, "num_samples": len(samples),
            "mean_response_tokens": float(np.mean(lengths)), "tokens": int(sum(lengths))}


@dataclass
class GenerationSettings:
    """How responses are generated for controllability and win rates (passed to ``generation.generate``)."""

    num_samples: int = 1
    max_new_tokens: int = 64
    do_sample: bool = True
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 0


def generate_responses(model: EvalModel, prompts: Sequence[GenerationPrompt], lambdas: Mapping[str, float],
                       settings: GenerationSettings, seed_offset: int = 0) -> list[list[str]]:
    """``[P][S]`` responses of ``model`` under λ (ignored by an unconditioned model) through
    :func:`lambda_dpo.generation.sample_responses`, the path of ``lambda-dpo generate``: one batch per distinct
    system text, seeded with ``seed + seed_offset`` so runs repeat."""
    from lambda_dpo.generation import sample_responses

    out: list[list[str] | None] = [None] * len(prompts)
    by_system: dict[str, list[int]] = {}
    for p, prompt in enumerate(prompts):
        by_system.setdefault(prompt.system, []).append(p)
    with model.active():
        for system, indices in by_system.items():
            texts = sample_responses(
                model.model, model.tokenizer, model.metadata, [prompts[p].text for p in indices], dict(lambdas),
                settings.num_samples, system=system or None, max_new_tokens=settings.max_new_tokens,
                do_sample=settings.do_sample, temperature=settings.temperature, top_p=settings.top_p,
                seed=settings.seed + seed_offset,
            )
            for p, samples in zip(indices, texts):
                out[p] = samples
    return out


def score_responses(scorer, prompts: Sequence[GenerationPrompt], responses: Sequence[Sequence[str]],
                    dimensions: Sequence[str]) -> np.ndarray:
    """Scores ``[P, S, m]`` of ``responses [P][S]`` on ``dimensions`` by ``scorer`` (one batched call)."""
    flat_prompts = [p.text for p, samples in zip(prompts, responses) for _ in samples]
    flat = [r for samples in responses for r in samples]
    scored = scorer.score_batch(flat_prompts, flat)
    missing = sorted({d for s in scored for d in dimensions if d not in s})
    if missing:
        raise ValueError(
            f"the scorer ({getattr(scorer, 'description', scorer)}) returned no score for {missing}; it must "
            f"score every dimension of the model {list(dimensions)}"
        )
    values = np.array([[s[d] for d in dimensions] for s in scored], dtype=float)
    return values.reshape(len(prompts), -1, len(dimensions))


def win_rate_report(scores: np.ndarray, other_scores: np.ndarray, lambdas: Mapping[str, float],
                    dimensions: Sequence[str]) -> dict[str, Any]:
    """Win rate of responses scored ``scores [P, S, m]`` over paired responses ``other_scores [P, S, m]``.

    Judged on the λ-weighted score ``Σ_d λ_d s_d`` (``lambda_weighted``) and on each dimension alone; a tie counts
    ½ (:func:`metrics.win_rate`). Returns ``{"lambda_weighted": {mean, stderr}, "per_dimension": {d: {…}}, "n"}``.
    """
    weights = np.array([float(lambdas.get(d, 0.0)) for d in dimensions])
    a, b = scores.reshape(-1, len(dimensions)), other_scores.reshape(-1, len(dimensions))

    def pack(x, y):
        mean, stderr = win_rate(x, y)
        return {"mean": mean, "stderr": stderr}

    return {
        "lambda_weighted": pack(a @ weights, b @ weights),
        "per_dimension": {d: pack(a[:, i], b[:, i]) for i, d in enumerate(dimensions)},
        "n": int(a.shape[0]),
    }


