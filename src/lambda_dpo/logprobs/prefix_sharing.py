"""Prefix sharing: the k responses of a prompt in one row, the prompt forwarded once (docs/design.md, "Prefix sharing").

A listwise batch holds B prompts with k_b responses each. The plain path forwards Σ k_b sequences
``[prompt_b ‖ r_bi]``, so every prompt token goes through the model k_b times. Here each prompt is one row::

    [ prompt_b | r_b1 | r_b2 | … | r_bk ]          positions 0…P−1 | P…P+|r_b1|−1 | P…P+|r_b2|−1 | …

with an attention mask in which every response token sees the prompt and the earlier tokens of its own response
only, and position ids that restart at P for every response. Each response's hidden states are then exactly those
of ``[prompt_b ‖ r_bi]`` (attention is permutation-invariant over the keys it may see, and rotary/learned position
embeddings see the same positions), so its log-prob is too: the first response token is predicted from the last
prompt position (shared), every later one from the previous token of its own response.

How the attention keeps to that pattern depends on the model's attention implementation:

- SDPA (transformers' default): the model is switched to the segment attention
  (:mod:`lambda_dpo.logprobs.segment_attention`), which is SDPA itself for every other forward and, given the
  rows' layout, computes each prompt's causal attention once and each response's attention over its prompt and
  itself only: the unshared layout's attention, less the repeated prompts.
- eager: a dense additive ``[B, 1, L, L]`` mask (0 / dtype min), which transformers passes through unchanged
  (``masking_utils``: "if the mask is already 4D, simply return as-is"); the attention then computes all L² pairs
  of a row, L = P + Σ r.
- anything else (flash-attention, flex): not shared.

Once per model, a no-grad check compares the shared log-probs of the first batch with the plain path's; a model
whose attention does something the shared rows do not reproduce (sliding windows, sinks, …) falls back, with a
one-time warning.

Memory: the masks cost B·P² + N·R·(P + R) bytes (B·L² with the dense mask); the logits are never materialised
(the output head runs over chunks of the predicting positions, as in :mod:`lambda_dpo.logprobs.sequence`).

When it pays: sharing saves the linear work of the repeated prompts and costs some gathering; with short prompts
and few responses the two are close (and with a dense mask the L² attention can cost more than it saves).
``prefix_sharing: auto`` decides per batch by :func:`estimated_cost_ratio` (benchmarks/bench_prefix.py measures
both layouts).
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from functools import partial

import torch

from lambda_dpo.logprobs.segment_attention import (
    IMPLEMENTATION,
    PrefixLayout,
    SegmentAttentionUnsupported,
    use_segment_attention,
)
from lambda_dpo.logprobs.sequence import (
    SequenceLogps,
    build_sequences,
    predicted_logps,
    sequence_logps,
    unwrap_model,
)

logger = logging.getLogger(__name__)

# implementations prefix sharing runs on: SDPA (switched to the segment attention) and eager (a dense 4-D mask)
SHARED_ATTENTION = ("sdpa", "eager", IMPLEMENTATION)
_SHARING_VERIFIED: weakref.WeakKeyDictionary[torch.nn.Module, bool] = weakref.WeakKeyDictionary()
_WARNED: set[str] = set()


def build_shared_rows(
    prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[Sequence[int]]], pad_token_id: int
) -> dict[str, torch.Tensor]:
    """One row per prompt, ``[prompt, r_1, …, r_k]``, right-padded to the longest row.

    Returns:
        ``input_ids`` long ``[B, L]``; ``position_ids`` long ``[B, L]`` (restarting at the prompt's length for every
        response, 0 at padding); ``segments`` long ``[B, L]`` (0 = prompt, i + 1 = response i, −1 = padding);
        ``rows``, ``cols``, ``labels`` long ``[R]``: for every response token (in flat response order) the row and
        position that predict it and the token itself; ``sequence`` long ``[R]``: its flat response index;
        ``num_tokens`` long ``[N]`` (N = Σ k_b): response lengths.
    """
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"build_shared_rows got {len(prompt_ids)} prompts but {len(response_ids)} response lists")
    lengths = []
    for b, (prompt, responses) in enumerate(zip(prompt_ids, response_ids)):
        if len(prompt) == 0 or any(len(r) == 0 for r in responses):
            raise ValueError(f"prompt {b} or one of its responses is empty; a response log-prob needs both")
        lengths.append(len(prompt) + sum(len(r) for r in responses))
    shape = (len(lengths), max(lengths, default=0))
    input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    position_ids = torch.zeros(shape, dtype=torch.long)
    segments = torch.full(shape, -1, dtype=torch.long)
    rows, cols, labels, sequence, num_tokens = [], [], [], [], []
    n = 0
    for b, (prompt, responses) in enumerate(zip(prompt_ids, response_ids)):
        p = len(prompt)
        input_ids[b, :p] = torch.tensor(prompt, dtype=torch.long)
        position_ids[b, :p] = torch.arange(p)
        segments[b, :p] = 0
        start = p
        for i, response in enumerate(responses):
            r = len(response)
            input_ids[b, start:start + r] = torch.tensor(response, dtype=torch.long)
            position_ids[b, start:start + r] = torch.arange(p, p + r)
            segments[b, start:start + r] = i + 1
            # token j of the response is predicted at the previous position: the prompt's last for j = 0
            rows.extend([b] * r)
            cols.extend([p - 1, *range(start, start + r - 1)])
            labels.extend(response)
            sequence.extend([n] * r)
            num_tokens.append(r)
            start += r
            n += 1
    as_long = partial(torch.tensor, dtype=torch.long)
    return {"input_ids": input_ids, "position_ids": position_ids, "segments": segments, "rows": as_long(rows),
            "cols": as_long(cols), "labels": as_long(labels), "sequence": as_long(sequence),
            "num_tokens": as_long(num_tokens)}


def shared_attention_mask(segments: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``[B, 1, L, L]``: query q may attend key k ≤ q when k is a prompt token or in q's own response; padding
    attends itself only (a row with no key would be NaN). Boolean (True = attend) when ``dtype`` is None, else
    additive (0 or the dtype's minimum)."""
    L = segments.shape[1]
    query, key = segments[:, :, None], segments[:, None, :]
    causal = torch.ones(L, L, dtype=torch.bool, device=segments.device).tril()
    allowed = causal & (key >= 0) & (query >= 0) & ((key == 0) | (key == query))
    allowed |= torch.eye(L, dtype=torch.bool, device=segments.device)
    allowed = allowed[:, None]
    if dtype is None:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=segments.device).masked_fill(
        ~allowed, torch.finfo(dtype).min)


def attention_implementation(model: torch.nn.Module) -> str | None:
    """The model's attention implementation (``config._attn_implementation``: "sdpa", "eager", …)."""
    config = getattr(unwrap_model(model), "config", None)
    return getattr(config, "_attn_implementation", None)


def shared_prefix_logps(
    model: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[Sequence[int]]],
    pad_token_id: int,
    *,
    reduction: str = "mean",
    chunk_size: int | None = 128,
    checkpoint: bool = True,
    device: torch.device | str | None = None,
) -> SequenceLogps:
    """ℓ(n) for every response n (flat order: prompt by prompt, response by response), each prompt forwarded once.

    Same values and gradients as :func:`lambda_dpo.logprobs.sequence_logps` over ``[prompt_b ‖ r_bi]`` (see the
    module docstring); ``model`` is called through its top-level forward with ``position_ids`` and either the rows'
    layout (SDPA models: :mod:`lambda_dpo.logprobs.segment_attention`) or the dense 4-D mask (eager attention).
    """
    hf_model = unwrap_model(model)
    segment = use_segment_attention(hf_model)
    implementation = attention_implementation(model)
    if not segment and implementation not in SHARED_ATTENTION:
        raise ValueError(f"prefix sharing needs SDPA or eager attention; "
                         f"this model uses {implementation!r}: set prefix_sharing: false, or load it with "
                         "attn_implementation='sdpa'")
    device = device if device is not None else next(model.parameters()).device
    packed = {k: v.to(device) for k, v in build_shared_rows(prompt_ids, response_ids, pad_token_id).items()}
    padding_mask = (packed["segments"] >= 0).long()
    model_kwargs = {"position_ids": packed["position_ids"]}
    if segment:
        layout = PrefixLayout.build([len(p) for p in prompt_ids], [[len(r) for r in rs] for rs in response_ids],
                                    packed["input_ids"].shape[1])
        model_kwargs["prefix_layout"] = layout.to(device)
        # a 4-D mask is passed through as given (the attention reads the layout instead); a 2-D one would make
        # transformers build a dense [B, 1, L, L] mask nothing reads
        attention_mask = padding_mask[:, None, None, :].bool()
    else:
        dtype = None if implementation == "sdpa" else next(model.parameters()).dtype
        attention_mask = shared_attention_mask(packed["segments"], dtype)
    return predicted_logps(model, packed["input_ids"], attention_mask, packed["rows"], packed["cols"],
                           packed["labels"], packed["sequence"], packed["num_tokens"], model_kwargs=model_kwargs,
                           padding_mask=padding_mask, reduction=reduction, chunk_size=chunk_size,
                           checkpoint=checkpoint)


AUTO_MAX_COST = 0.9  # auto shares a batch whose estimated cost is at most this share of the plain layout's


def shared_and_plain_tokens(prompt_ids, response_ids) -> tuple[int, int]:
    """Positions a batch forwards (real + padding): shared rows ``B × max(P + Σ r)`` and plain sequences
    ``N × max(P + r)``."""
    rows = [len(p) + sum(map(len, rs)) for p, rs in zip(prompt_ids, response_ids)]
    sequences = [len(p) + len(r) for p, rs in zip(prompt_ids, response_ids) for r in rs]
    return len(rows) * max(rows, default=0), len(sequences) * max(sequences, default=0)


def estimated_cost_ratio(model: torch.nn.Module | None, prompt_ids, response_ids) -> float:
    """Estimated forward+backward cost of the shared layout over the plain one, for this batch.

    In FLOPs: per layer, a position costs ≈ 2·(4h² + 3h·f) in its linear layers and each (query, key) pair the
    attention computes ≈ 4h (scores and the weighted sum); the output head ≈ 2h·V per response token, the same in
    both layouts. The plain layout computes N·T² pairs (T its longest sequence; padded batches take a dense mask).
    The shared one computes B·P² + N·R·(P + R) with the segment attention (SDPA models,
    :mod:`lambda_dpo.logprobs.segment_attention`) and B·L² with a dense 4-D mask (eager attention). Calibrated on
    benchmarks/bench_prefix.py (7M Llama, UltraFeedback-like and k = 8): estimated 0.84 / 0.82 where the step
    measured 0.91 / 0.89 of today's, hence :data:`AUTO_MAX_COST`."""
    hf_model = unwrap_model(model) if model is not None else None
    config = getattr(hf_model, "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None) or 1024
    ffn = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden
    layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None) or 1
    vocab = getattr(config, "vocab_size", None) or 0
    segment = attention_implementation(model) in (None, "sdpa", IMPLEMENTATION) if model is not None else True
    position, pair, head = 2 * (4 * hidden**2 + 3 * hidden * ffn), 4 * hidden, 2 * hidden * vocab
    prompts = [len(p) for p in prompt_ids]
    responses = [len(r) for rs in response_ids for r in rs]
    rows = [p + sum(map(len, rs)) for p, rs in zip(prompts, response_ids)]
    sequences = [p + len(r) for p, rs in zip(prompts, response_ids) for r in rs]
    B, N, P, R = len(rows), len(responses), max(prompts, default=0), max(responses, default=0)
    L, T = max(rows, default=0), max(sequences, default=0)
    shared_pairs = B * P**2 + N * R * (P + R) if segment else B * L**2
    shared = layers * (B * L * position + shared_pairs * pair)
    plain = layers * (N * T * position + N * T**2 * pair)
    return (shared + sum(responses) * head) / max(plain + sum(responses) * head, 1e-9)


def sharing_pays(model: torch.nn.Module | None, prompt_ids, response_ids, max_cost: float = AUTO_MAX_COST) -> bool:
    """Whether ``prefix_sharing: auto`` shares this batch (:func:`estimated_cost_ratio` ≤ ``max_cost``)."""
    return estimated_cost_ratio(model, prompt_ids, response_ids) <= max_cost


def sharing_works(model: torch.nn.Module, prompt_ids, response_ids, pad_token_id: int, reduction: str,
                  lambdas: torch.Tensor | None = None) -> bool:
    """Whether the shared forward reproduces the plain one, tried on (up to two prompts of) this batch once per
    model: no grad, dropout off, on forked RNG state (the training run's random stream does not move). ``lambdas
    [B, m]``: the λ rows of a λ-adapter model (one per prompt). A failure is warned about once."""
    from lambda_dpo.lambda_adapters import lambdas_set

    hf_model = unwrap_model(model)
    if hf_model in _SHARING_VERIFIED:
        return _SHARING_VERIFIED[hf_model]
    ok, why = False, ""
    if attention_implementation(model) not in SHARED_ATTENTION:
        why = f"its attention ({attention_implementation(model)!r}) is neither SDPA nor eager"
    else:
        device = next(model.parameters()).device
        prompts, responses = list(prompt_ids[:2]), [list(rs) for rs in response_ids[:2]]
        rows = None if lambdas is None else lambdas[:2]
        per_sequence = None if rows is None else rows.repeat_interleave(
            torch.tensor([len(rs) for rs in responses], device=rows.device), dim=0)
        flat_prompts = [p for p, rs in zip(prompts, responses) for _ in rs]
        seq = {k: v.to(device) for k, v in build_sequences(
            flat_prompts, [r for rs in responses for r in rs], pad_token_id).items()}
        accelerators = [device] if device.type != "cpu" else []
        training = hf_model.training
        with torch.no_grad(), torch.random.fork_rng(devices=accelerators, device_type=device.type):
            hf_model.eval()  # dropout would make the two forwards differ for another reason
            try:
                with lambdas_set(model, per_sequence):
                    plain = sequence_logps(model, seq["input_ids"], seq["attention_mask"], seq["response_mask"],
                                           reduction=reduction).logps
                with lambdas_set(model, rows):
                    shared = shared_prefix_logps(model, prompts, responses, pad_token_id, reduction=reduction,
                                                 device=device).logps
            except SegmentAttentionUnsupported as error:
                shared, why = None, f"the shared rows' attention does not implement it ({error})"
            finally:
                hf_model.train(training)
        if shared is not None:
            tol = 1e-4 if next(model.parameters()).dtype == torch.float32 else 3e-2
            diff = (plain - shared).abs().max().item()
            ok = diff <= tol * max(1.0, plain.abs().max().item())
            why = f"its shared log-probs differ from the plain ones by {diff:.3g}"
    if not ok and type(hf_model).__name__ not in _WARNED:
        _WARNED.add(type(hf_model).__name__)
        logger.warning("prefix sharing is off for %s: %s; every response is forwarded with its own copy of the "
                       "prompt (same values, more compute)", type(hf_model).__name__, why)
    _SHARING_VERIFIED[hf_model] = ok
    return ok
