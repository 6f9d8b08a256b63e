"""Attention for prefix-shared rows that computes only the (query, key) pairs a response may see.

A shared row ``[prompt | r_1 | … | r_k]`` (:mod:`lambda_dpo.logprobs.prefix_sharing`) must let every response see
the prompt and its own earlier tokens only. Through transformers' SDPA path that takes a dense ``[B, 1, L, L]`` mask,
and the kernel then computes all L² pairs of the row, L = P + Σ r: with short prompts and many responses that is
more attention than the k unshared sequences' k·(P + r)² and sharing loses (benchmarks/bench_prefix.py).

Here the attention of one layer runs as two ordinary SDPA calls:

- the prompts, ``[B, H, P, P]`` causal;
- the responses, each gathered with its prompt's keys: queries ``[N, H, R, D]`` against keys ``[N, H, P + R, D]``
  (its prompt, then its own tokens, causal),

and the outputs are gathered back into row order. That is the unshared layout's attention less the repeated
prompts, so the saving of sharing (linear work on each prompt once) is no longer paid back in attention.

Why by hand: transformers has no attention for this layout. FlexAttention block masks express it, but on CPU they
compile per shape (every batch of variable lengths), and reusing the prompt's KV cache expanded k ways does not
survive gradient checkpointing (transformers turns the cache off). This is an attention function registered in
transformers' ``AttentionInterface`` under :data:`IMPLEMENTATION`: it receives the row's layout as a forward
keyword (``prefix_layout``), which transformers hands down to every attention call, also in a checkpointed
layer's recomputation. Without that keyword it *is* transformers' SDPA attention (the same function, the same
arguments), so a model switched to it (:func:`use_segment_attention`) behaves exactly as before everywhere else:
plain training forwards, evaluation, generation with a KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

IMPLEMENTATION = "lambda_dpo_prefix"


class SegmentAttentionUnsupported(RuntimeError):
    """The model's attention uses a feature this layout does not implement (sliding windows, soft-capping, sinks, a
    position bias, non-causal attention); prefix sharing then falls back to the plain layout."""


@dataclass
class PrefixLayout:
    """Where each prompt and response sits in the shared rows, and the two attention masks (the same in every layer).

    B rows, N responses (flat order), P the longest prompt, R the longest response, L the row length:

    - ``response_row [N]``, ``response_cols [N, R]``: the row and columns of response n's tokens (padding repeats
      its last column);
    - ``prompt_mask [B, 1, P, P]``: causal, real prompt keys only;
    - ``response_mask [N, 1, R, P + R]``: its prompt's real tokens, then its own tokens causally;
    - ``gather_back [B, L]``: for every row position, its index in the prompts' outputs ``[B·P]`` followed by the
      responses' ``[N·R]`` (0 at padding, whose output nothing reads).
    """

    response_row: torch.Tensor
    response_cols: torch.Tensor
    prompt_mask: torch.Tensor
    response_mask: torch.Tensor
    gather_back: torch.Tensor

    @classmethod
    def build(cls, prompt_lengths: list[int], response_lengths: list[list[int]], row_length: int) -> PrefixLayout:
        B, N = len(prompt_lengths), sum(map(len, response_lengths))
        P = max(prompt_lengths)
        R = max((r for rs in response_lengths for r in rs), default=1)
        prompt_len = torch.tensor(prompt_lengths)
        prompt_valid = torch.arange(P)[None, :] < prompt_len[:, None]  # [B, P]
        rows = torch.tensor([b for b, rs in enumerate(response_lengths) for _ in rs], dtype=torch.long)
        lengths = torch.tensor([r for rs in response_lengths for r in rs], dtype=torch.long)
        starts = torch.tensor([prompt_lengths[b] + sum(rs[:i]) for b, rs in enumerate(response_lengths)
                               for i in range(len(rs))], dtype=torch.long)
        offsets = torch.arange(R)[None, :]
        response_valid = offsets < lengths[:, None]  # [N, R]
        response_cols = starts[:, None] + torch.minimum(offsets, lengths[:, None] - 1)
        causal_p = torch.ones(P, P, dtype=torch.bool).tril()
        causal_r = torch.ones(R, R, dtype=torch.bool).tril()
        prompt_mask = (causal_p[None] & prompt_valid[:, None, :])[:, None]
        response_mask = torch.cat([prompt_valid[rows][:, None, :].expand(N, R, P),
                                   causal_r[None] & response_valid[:, None, :]], dim=-1)[:, None]
        gather_back = torch.zeros(B, row_length, dtype=torch.long)
        for b, p in enumerate(prompt_lengths):
            gather_back[b, :p] = b * P + torch.arange(p)
        token_slot = B * P + torch.arange(N)[:, None] * R + offsets  # [N, R]
        gather_back[rows[:, None].expand(N, R)[response_valid], response_cols[response_valid]] = \
            token_slot[response_valid]
        return cls(rows, response_cols, prompt_mask, response_mask, gather_back)

    def to(self, device: torch.device | str) -> PrefixLayout:
        return PrefixLayout(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def segment_attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0,
                              scaling: float | None = None, prefix_layout: PrefixLayout | None = None, **kwargs):
    """transformers' attention signature: ``query [B, H, L, D]``, ``key``/``value [B, H_kv, L, D]`` → output
    ``[B, L, H, D]`` and no weights. With ``prefix_layout`` the shared-row attention of the module docstring (the
    ``attention_mask`` is then ignored: the layout holds the masks); without it, transformers' SDPA attention."""
    if prefix_layout is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    unsupported = [name for name in ("sliding_window", "softcap", "s_aux", "position_bias", "cache")
                   if kwargs.get(name) is not None]
    if getattr(module, "sinks", None) is not None:
        unsupported.append("sinks")
    if not getattr(module, "is_causal", True) or kwargs.get("is_causal") is False:
        unsupported.append("non-causal attention")
    if unsupported:
        raise SegmentAttentionUnsupported(f"{type(module).__name__} uses {', '.join(unsupported)}")
    layout = prefix_layout
    groups = query.shape[1] // key.shape[1]
    key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    P = layout.prompt_mask.shape[-1]
    sdpa = torch.nn.functional.scaled_dot_product_attention
    # Copies, not views: SDPA keeps its inputs for the backward, and a view would keep the whole row's states alive
    prompt_q, prompt_k, prompt_v = (states[:, :, :P].contiguous() for states in (query, key, value))
    prompt_out = sdpa(prompt_q, prompt_k, prompt_v, attn_mask=layout.prompt_mask, dropout_p=dropout, scale=scaling)

    def per_response(states: torch.Tensor) -> torch.Tensor:  # [B, H, L, D] → [N, H, R, D]
        return states.transpose(1, 2)[layout.response_row[:, None], layout.response_cols].transpose(1, 2)

    keys = torch.cat([prompt_k[layout.response_row], per_response(key)], dim=2)
    values = torch.cat([prompt_v[layout.response_row], per_response(value)], dim=2)
    response_out = sdpa(per_response(query), keys, values, attn_mask=layout.response_mask, dropout_p=dropout,
                        scale=scaling)
    heads, dim = query.shape[1], query.shape[-1]
    flat = torch.cat([prompt_out.transpose(1, 2).reshape(-1, heads, dim),
                      response_out.transpose(1, 2).reshape(-1, heads, dim)])
    return flat[layout.gather_back], None


AttentionInterface.register(IMPLEMENTATION, segment_attention_forward)
AttentionMaskInterface.register(IMPLEMENTATION, sdpa_mask)  # plain forwards get the masks SDPA gets


def use_segment_attention(hf_model: torch.nn.Module) -> bool:
    """Switch a model on transformers' SDPA attention to :data:`IMPLEMENTATION` (for good: it is SDPA unless a
    forward passes ``prefix_layout``, and a checkpointed layer recomputed in the backward must find it still set).
    Returns whether the model now uses it; other implementations are left alone."""
    config = getattr(hf_model, "config", None)
    current = getattr(config, "_attn_implementation", None)
    if current == IMPLEMENTATION:
        return True
    if current != "sdpa" or not hasattr(hf_model, "set_attn_implementation"):
        return False
    hf_model.set_attn_implementation(IMPLEMENTATION)
    return hf_model.config._attn_implementation == IMPLEMENTATION
