"""Per-sequence response log-probabilities without the full ``[N, T, V]`` logits (docs/spec.md §1, "Efficiency contract").

For sequence n with response positions R_n (tokens whose log-prob counts)::

    ℓ_sum(n)  = Σ_{t ∈ R_n} log softmax(W h[n, t-1])[x[n, t]]       h = final hidden states, W = output head
    ℓ_mean(n) = ℓ_sum(n) / |R_n|

The naive route, ``log_softmax(model(x).logits.float())``, holds N·T·V floats (8 × 1024 × 151,936 fp32 is 5 GB)
plus as much again for the log-softmax and its gradient. Here the model's backbone runs once, only the hidden
states of positions that predict a response token are kept, and the output head + fp32 log-softmax + gather run
over chunks of ``chunk_size`` of those positions, inside the model's forward (``_forward_capturing_hidden`` says
why). When gradients are needed each chunk is wrapped in ``torch.utils.checkpoint`` so that autograd stores the
chunk's ``[chunk, H]`` input, not its ``[chunk, V]`` logits: peak extra memory is one chunk of logits, at the
price of running the head twice.

Why hand-written: transformers' ``logits_to_keep`` still materialises ``[positions, V]`` at once, TRL's
``selective_log_softmax`` starts from full logits, and the fused kernels (Liger, Cut Cross-Entropy) return a
token-averaged loss for whole batches rather than per-sequence log-prob sums, with their own model patches.

How the model is called: always through its *top-level* forward (whatever wraps it: DDP, a PeftModel, a DeepSpeed
engine), with an empty ``logits_to_keep`` so the model itself computes no logits; a forward hook on the unwrapped
backbone applies the head to the final hidden states on the way. Calling the wrapper matters: DDP prepares its
gradient all-reduce in its own ``forward``, and calling the unwrapped module would silently skip the sync. The head
is applied as a module call, so ZeRO-3 gathers its weights through its usual module hooks (every process making as
many calls; docs/distributed.md has the rules for sharded models). Final-logit operations
known from configs (Cohere's ``logit_scale``, Granite's ``logits_scaling``, Gemma's ``final_logit_softcapping``) are
applied after the head. Once per model, a no-grad forward of one sequence with ``logits_to_keep=1`` checks that
head + those operations reproduce the model's own logits; a model that does something else falls back (with a
one-time warning) to the plain forward + chunked fp32 log-softmax: same values, full-logits memory.

Memory note: the head's weight gradient ``[V, H]`` is accumulated by autograd across chunks, so backward briefly
holds two of them (the running sum and one chunk's contribution).
"""

from __future__ import annotations

import inspect
import logging
import weakref
from collections.abc import Callable, Sequence
from functools import partial
from typing import NamedTuple

import torch
from torch.utils.checkpoint import checkpoint as activation_checkpoint

logger = logging.getLogger(__name__)

# Per model instance: True once the split (backbone + chunked head) was verified against the model's own logits,
# False when it must use the plain forward. Weak keys: forgetting a model must not keep it alive.
_SPLIT_VERIFIED: weakref.WeakKeyDictionary[torch.nn.Module, bool] = weakref.WeakKeyDictionary()
_WARNED_FALLBACK: set[str] = set()


REDUCTIONS = ("mean", "sum")  # how a response's token log-probs become ℓ (`logprob_reduction`)


def check_reduction(reduction: str) -> None:
    """One error for a reduction that is not one of :data:`REDUCTIONS`, naming the setting."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"logprob_reduction must be one of {list(REDUCTIONS)}, got {reduction!r}")


class SequenceLogps(NamedTuple):
    """What :func:`sequence_logps` returns.

    logps: float32 ``[N]``, ℓ(n) reduced over the response tokens by ``sum`` or ``mean``.
    num_tokens: long ``[N]``, |R_n|, the number of response tokens of each sequence (e.g. for length statistics).
    """

    logps: torch.Tensor
    num_tokens: torch.Tensor


def build_sequences(
    prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], pad_token_id: int
) -> dict[str, torch.Tensor]:
    """Concatenate prompt + response per sequence and right-pad to the longest.

    Args:
        prompt_ids: N token lists (the rendered prompt, e.g. chat template with the generation prompt).
        response_ids: N token lists (the response tokens whose log-prob counts).
        pad_token_id: id written into padding positions (masked out, never scored).

    Returns:
        ``input_ids`` long ``[N, T]``, ``attention_mask`` long ``[N, T]`` (1 = real token), ``response_mask``
        bool ``[N, T]``: True at response tokens, whose log-prob is predicted from position t-1.
    """
    if len(prompt_ids) != len(response_ids):
        raise ValueError(
            f"build_sequences got {len(prompt_ids)} prompts but {len(response_ids)} responses; "
            "pass one prompt per response (repeat the prompt for each of its k responses)"
        )
    for n, (prompt, response) in enumerate(zip(prompt_ids, response_ids)):
        if len(prompt) == 0 or len(response) == 0:
            part = "prompt" if len(prompt) == 0 else "response"
            raise ValueError(
                f"sequence {n} has an empty {part}: a response token needs at least one token before it, and "
                "an empty response has no log-prob; check the tokenisation / truncation of that example"
            )
    lengths = [len(p) + len(r) for p, r in zip(prompt_ids, response_ids)]
    shape = (len(lengths), max(lengths, default=0))
    input_ids = torch.full(shape, pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros(shape, dtype=torch.long)
    response_mask = torch.zeros(shape, dtype=torch.bool)
    for n, (prompt, response) in enumerate(zip(prompt_ids, response_ids)):
        input_ids[n, : lengths[n]] = torch.tensor([*prompt, *response], dtype=torch.long)
        attention_mask[n, : lengths[n]] = 1
        response_mask[n, len(prompt) : lengths[n]] = True
    return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}


def sequence_logps(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    reduction: str = "mean",
    chunk_size: int | None = 128,
    checkpoint: bool = True,
) -> SequenceLogps:
    """ℓ(n), the log-probability of each sequence's response tokens, reduced by ``sum`` or ``mean``.

    Args:
        model: a causal LM, as the caller holds it: plain, a ``PeftModel``, or wrapped by accelerate (DDP, …).
        input_ids: long ``[N, T]``; attention_mask: ``[N, T]`` (1 = real token); response_mask: bool ``[N, T]``
            (True where token t counts; see :func:`build_sequences`).
        reduction: ``"sum"`` (DPO's theory) or ``"mean"`` over each sequence's response tokens.
        chunk_size: positions per output-head call; None = all response positions in one call.
        checkpoint: recompute each chunk's logits in backward instead of storing them (only when grad is on).

    Returns:
        :class:`SequenceLogps` ``(logps float32 [N], num_tokens long [N])``. ``logps`` equals the naive
        ``log_softmax(model(...).logits.float()).gather(...)`` reduced the same way (value and gradient).
    """
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of positions or None, got {chunk_size}")
    response_mask = response_mask.bool()
    _check_masks(input_ids, attention_mask, response_mask)
    # Token t is predicted at position t-1: rows/cols index the *predicting* positions.
    rows, cols = response_mask[:, 1:].nonzero(as_tuple=True)
    return predicted_logps(model, input_ids, attention_mask, rows, cols, input_ids[rows, cols + 1], rows,
                           response_mask.sum(dim=1), reduction=reduction, chunk_size=chunk_size,
                           checkpoint=checkpoint)


def predicted_logps(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    labels: torch.Tensor,
    sequence: torch.Tensor,
    num_tokens: torch.Tensor,
    *,
    model_kwargs: dict | None = None,
    padding_mask: torch.Tensor | None = None,
    reduction: str = "mean",
    chunk_size: int | None = 128,
    checkpoint: bool = True,
) -> SequenceLogps:
    """The engine under :func:`sequence_logps` and prefix sharing (:mod:`lambda_dpo.logprobs.prefix_sharing`): one forward of
    ``input_ids [N', T]``, then log p(``labels[j]``) read from position ``(rows[j], cols[j])`` (the one that
    predicts it) and summed into sequence ``sequence[j]`` of ``num_tokens.shape[0]``; ``mean`` divides by
    ``num_tokens``. ``attention_mask`` is ``[N', T]``, or a 4-D ``[N', 1, T, T]`` mask together with
    ``padding_mask [N', T]`` (1 = real token); ``model_kwargs`` (``position_ids``, a prefix layout) go to the
    model's forward.
    """
    check_reduction(reduction)
    parts = _split(model)
    real = attention_mask if padding_mask is None else padding_mask  # the split check runs with a [N', T] mask
    if parts is not None and _split_verified(model, parts, input_ids, real):
        _, backbone, head, transform = parts
        # No logits from the model itself: an empty index keeps zero positions.
        keep_none = torch.zeros(0, dtype=torch.long, device=input_ids.device)

        def chunked_head(hidden: torch.Tensor) -> torch.Tensor:
            frozen_copy = _zero3_frozen_head_copy(head)
            token_fn = partial(_token_logps, head=frozen_copy or head, transform=transform)
            num_chunks = None if frozen_copy else _agreed_num_chunks(head, rows.shape[0], chunk_size, hidden.device)
            return _chunked(token_fn, hidden[rows, cols], labels, chunk_size, checkpoint, num_chunks)

        token_logps, _ = _forward_capturing_hidden(model, backbone, input_ids, attention_mask, keep_none,
                                                   model_kwargs, on_hidden=chunked_head)
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                       **(model_kwargs or {})).logits
        token_fn = partial(_token_logps, head=None, transform=None)
        token_logps = _chunked(token_fn, logits[rows, cols], labels, chunk_size, checkpoint)
    return _reduce(token_logps, sequence, num_tokens, reduction)


def _check_masks(input_ids: torch.Tensor, attention_mask: torch.Tensor, response_mask: torch.Tensor) -> None:
    if input_ids.dim() != 2 or attention_mask.shape != input_ids.shape or response_mask.shape != input_ids.shape:
        raise ValueError(
            "input_ids, attention_mask and response_mask must all be [N, T]; got "
            f"{tuple(input_ids.shape)}, {tuple(attention_mask.shape)}, {tuple(response_mask.shape)}"
        )
    if response_mask[:, 0].any():
        bad = response_mask[:, 0].nonzero().flatten().tolist()
        raise ValueError(
            f"sequences {bad} have a response token at position 0, which nothing predicts; "
            "every sequence needs at least one prompt token before its response"
        )
    if (response_mask & (attention_mask == 0)).any():
        bad = (response_mask & (attention_mask == 0)).any(dim=1).nonzero().flatten().tolist()
        raise ValueError(f"sequences {bad} mark padding (attention_mask = 0) as response tokens; fix the masks")
    empty = (response_mask.sum(dim=1) == 0).nonzero().flatten().tolist()
    if empty:
        raise ValueError(
            f"sequences {empty} have no response tokens, so their log-prob is undefined; "
            "a response was probably truncated away: raise max_length or drop those examples"
        )


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model inside DDP / DeepSpeed / FSDP / torch.compile / PeftModel wrappers."""
    from accelerate.utils import extract_model_from_parallel

    model = extract_model_from_parallel(model)
    if hasattr(model, "get_base_model"):  # peft.PeftModel: LoRA layers are injected into the model it returns
        model = model.get_base_model()
    return model


def _split(model: torch.nn.Module):
    """``(hf_model, backbone, head, transform)``, or None when the model cannot be split generically.

    ``transform`` applies the final-logit operations that some architectures do after the head, read from the
    config: Cohere's ``logit_scale`` (multiply), Granite's ``logits_scaling`` (divide), Gemma's
    ``final_logit_softcapping`` (``c · tanh(z / c)``), in the order those models apply them.
    """
    hf_model = unwrap_model(model)
    get_head = getattr(hf_model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    backbone = getattr(hf_model, "base_model", hf_model)
    if head is None or backbone is hf_model:
        _warn_fallback(hf_model, "its backbone and output head could not be located")
        return None
    if "logits_to_keep" not in inspect.signature(hf_model.forward).parameters:
        # Its forward would compute the full logits anyway, the very thing this module avoids.
        _warn_fallback(hf_model, "its forward has no `logits_to_keep` argument")
        return None
    config = getattr(hf_model, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    scale = getattr(text_config, "logit_scale", None)
    divisor = getattr(text_config, "logits_scaling", None)
    softcap = getattr(text_config, "final_logit_softcapping", None)
    return hf_model, backbone, head, partial(_final_logit_transform, scale=scale, divisor=divisor, softcap=softcap)


def _final_logit_transform(logits: torch.Tensor, *, scale, divisor, softcap) -> torch.Tensor:
    if scale is not None:
        logits = logits * scale
    if divisor is not None:
        logits = logits / divisor
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def _forward_capturing_hidden(model, backbone, input_ids, attention_mask, logits_to_keep, model_kwargs=None,
                              on_hidden: Callable[[torch.Tensor], torch.Tensor] | None = None):
    """Run the top-level model; return ``on_hidden(h)`` of the backbone's final hidden states ``h [N, T, H]`` (``h``
    itself without ``on_hidden``) and the model's logits.

    ``on_hidden`` runs in a forward hook of the backbone, i.e. inside the top-level forward. That matters under
    FSDP2, where the output head belongs to a unit that is gathered for the root forward and whose gradients are
    reduced with it: applied after the forward had returned, the head's backward crashed in the second step."""
    results = []

    def on_backbone_output(module, args, output):
        hidden = output if isinstance(output, torch.Tensor) else output[0]
        if hidden.shape[:2] != input_ids.shape:
            raise ValueError(
                f"the backbone returned hidden states of shape {tuple(hidden.shape)} for input_ids of shape "
                f"{tuple(input_ids.shape)}; models that add positions (e.g. PEFT prompt tuning) are not supported"
            )
        results.append(hidden if on_hidden is None else on_hidden(hidden))

    handle = backbone.register_forward_hook(on_backbone_output)
    try:
        outputs = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                        logits_to_keep=logits_to_keep, **(model_kwargs or {}))
    finally:
        handle.remove()
    return results[-1], outputs.logits


def _split_verified(model, parts, input_ids, attention_mask) -> bool:
    """Whether head + transform on the captured hidden states reproduce the model's own logits.

    Checked once per model, on the last position of the first sequence, in a no-grad forward of that one
    sequence (so the training forward still runs exactly once: DDP allows one forward per backward). The check
    runs on forked RNG state: dropout in it must not shift the training run's random stream, or a run resumed from
    a checkpoint (which checks again, on a new model object) would not repeat the uninterrupted one.
    """
    from lambda_dpo.lambda_adapters import get_adapters, lambdas_set

    hf_model, backbone, head, transform = parts
    if hf_model not in _SPLIT_VERIFIED:
        device = input_ids.device
        accelerators = [device] if device.type != "cpu" else []
        adapters = get_adapters(model)  # λ-adapters: the one sequence runs under its own λ row
        first_lambda = adapters.lambdas[:1] if adapters is not None and adapters.lambdas is not None else None
        with (torch.no_grad(), torch.random.fork_rng(devices=accelerators, device_type=device.type),
              lambdas_set(model, first_lambda)):
            ours, logits = _forward_capturing_hidden(model, backbone, input_ids[:1], attention_mask[:1], 1,
                                                     on_hidden=lambda hidden: head(hidden[:, -1]))
            theirs = logits[:, -1].float()
        # Low precision: the model may apply its final-logit ops in bf16 where we use fp32.
        tol = 1e-3 if ours.dtype == torch.float32 else 2e-2
        ours = transform(ours.float())
        ok = torch.allclose(ours, theirs, rtol=tol, atol=tol * max(1.0, theirs.abs().max().item()))
        if not ok:
            diff = (ours - theirs).abs().max().item()
            _warn_fallback(hf_model, f"head(hidden) + known final-logit ops differ from its logits by {diff:.3g}")
        _SPLIT_VERIFIED[hf_model] = ok
    return _SPLIT_VERIFIED[hf_model]


def _warn_fallback(model: torch.nn.Module, why: str) -> None:
    name = type(model).__name__
    if name not in _WARNED_FALLBACK:
        _WARNED_FALLBACK.add(name)
        logger.warning(
            "sequence_logps: %s cannot be split into backbone + output head (%s); using the plain forward, "
            "which materialises the full [N, T, V] logits. Memory will be higher, values are the same.",
            name,
            why,
        )


def _token_logps(
    inputs: torch.Tensor, labels: torch.Tensor, *, head: torch.nn.Module | None, transform: Callable | None
) -> torch.Tensor:
    """log softmax(z)[label] = z[label] − logsumexp(z) in fp32, for ``inputs`` [c, H] (head given) or logits [c, V]."""
    logits = inputs if head is None else head(inputs)
    logits = logits.float()
    if transform is not None:
        logits = transform(logits)
    return logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def _agreed_num_chunks(head: torch.nn.Module, positions: int, chunk_size: int | None, device) -> int | None:
    """How many head calls every process makes when DeepSpeed ZeRO-3 partitions the head, else None.

    ZeRO-3 gathers a partitioned module's weights in a collective at each of its calls (and again for each
    checkpointed recomputation in backward), so all processes must call the head equally often, although their
    batches hold different numbers of response positions: each makes as many calls as the process that needs the
    most, with chunks of at most ``chunk_size`` positions (one all-reduce of one number per forward)."""
    if chunk_size is None or not torch.distributed.is_initialized():
        return None
    if not any(hasattr(parameter, "ds_id") for parameter in head.parameters()):
        return None
    count = torch.tensor([-(-positions // chunk_size)], device=device)
    torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MAX)
    return int(count.item())


def _zero3_frozen_head_copy(head: torch.nn.Module):
    """``F.linear`` with a full copy of the weights of a frozen output head that DeepSpeed ZeRO-3 partitions, else
    None. ZeRO-3 releases a frozen module's weight before the checkpointed recomputation in backward (the
    recomputed logits came from a ``[0]``-shaped weight), so a LoRA run gathers the head once per forward and
    applies the copy as a plain function: one collective per forward, one head-sized buffer until backward."""
    params = list(head.parameters())
    if (not params or not isinstance(head, torch.nn.Linear) or any(p.requires_grad for p in params)
            or not all(hasattr(p, "ds_id") for p in params)):
        return None
    import deepspeed

    with deepspeed.zero.GatheredParameters(params):
        weight = head.weight.detach().clone()
        bias = None if head.bias is None else head.bias.detach().clone()
    return partial(torch.nn.functional.linear, weight=weight, bias=bias)


def _chunked(token_fn, inputs: torch.Tensor, labels: torch.Tensor, chunk_size: int | None, checkpoint: bool,
             num_chunks: int | None = None):
    """``token_fn`` over chunks of ``inputs`` [R, ·] and ``labels`` [R] → token log-probs ``[R]``: chunks of
    ``chunk_size`` positions, or exactly ``num_chunks`` chunks of at most that size (some may be empty)."""
    if inputs.shape[0] == 0 and num_chunks is None:
        return inputs.new_zeros(0, dtype=torch.float32)
    size = inputs.shape[0] if chunk_size is None else chunk_size
    recompute = checkpoint and torch.is_grad_enabled() and inputs.requires_grad
    # split(), not slicing: one SplitBackward concatenates the chunk gradients instead of one zero-filled
    # [R, ·] gradient per chunk.
    if num_chunks is None:
        chunks = zip(inputs.split(size), labels.split(size))
    else:
        chunks = zip(inputs.tensor_split(num_chunks), labels.tensor_split(num_chunks))
    pieces = []
    for x, y in chunks:
        if recompute:
            pieces.append(activation_checkpoint(token_fn, x, y, use_reentrant=False))
        else:
            pieces.append(token_fn(x, y))
    return torch.cat(pieces)


def _reduce(token_logps: torch.Tensor, rows: torch.Tensor, num_tokens: torch.Tensor, reduction: str):
    """Sum token log-probs ``[R]`` into their sequences ``[N]``; divide by the token count for ``mean``."""
    sums = token_logps.new_zeros(num_tokens.shape[0]).index_add(0, rows, token_logps)
    logps = sums / num_tokens if reduction == "mean" else sums
    return SequenceLogps(logps=logps, num_tokens=num_tokens)


__all__ = ["SequenceLogps", "build_sequences", "predicted_logps", "sequence_logps", "unwrap_model"]
