"""Chunked per-sequence log-probs (lambda_dpo.logprobs) against the naive full log-softmax."""

from __future__ import annotations

import logging

import pytest
import torch
from transformers import (
    CohereConfig,
    CohereForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    GraniteConfig,
    GraniteForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
)

from lambda_dpo.logprobs import build_sequences, sequence_logps

VOCAB = 101
DECODER = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
)


def make_model(kind: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**DECODER))
    elif kind == "llama_tied":
        model = LlamaForCausalLM(LlamaConfig(**DECODER, tie_word_embeddings=True))
    elif kind == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64))
    elif kind == "gemma2_softcap":  # a small cap so that it changes the tiny model's logits noticeably
        model = Gemma2ForCausalLM(Gemma2Config(**DECODER, head_dim=8, final_logit_softcapping=0.3))
    elif kind == "cohere_logit_scale":
        model = CohereForCausalLM(CohereConfig(**DECODER, logit_scale=4.0))
    elif kind == "granite_logits_scaling":
        model = GraniteForCausalLM(GraniteConfig(**DECODER, logits_scaling=0.1))
    else:
        raise ValueError(kind)
    return model.eval()  # no dropout: the naive and chunked forwards must see the same network


def make_batch(seed: int = 0) -> dict[str, torch.Tensor]:
    """4 sequences of different prompt/response lengths (padding in 3 of them); 20 response tokens in all."""
    generator = torch.Generator().manual_seed(seed)
    prompt_lengths, response_lengths = [3, 5, 1, 4], [6, 2, 9, 3]
    prompts = [torch.randint(1, VOCAB, (n,), generator=generator).tolist() for n in prompt_lengths]
    responses = [torch.randint(1, VOCAB, (n,), generator=generator).tolist() for n in response_lengths]
    return build_sequences(prompts, responses, pad_token_id=0)


def naive_logps(model, batch, reduction: str) -> torch.Tensor:
    """The textbook computation: full logits, fp32 log-softmax, gather, masked reduction."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    token_logps = logits.log_softmax(-1)[:, :-1].gather(-1, batch["input_ids"][:, 1:, None]).squeeze(-1)
    mask = batch["response_mask"][:, 1:]
    sums = (token_logps * mask).sum(1)
    return sums / mask.sum(1) if reduction == "mean" else sums


def value_and_grads(compute, model):
    """ℓ and d(Σ_n w_n ℓ_n)/dθ with unequal weights, so per-sequence mistakes cannot cancel out."""
    model.zero_grad()
    logps = compute()
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0])
    (logps * weights).sum().backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return logps.detach(), grads


def assert_matches_naive(model, batch, reduction, chunk_size, checkpoint=True):
    chunked, chunked_grads = value_and_grads(
        lambda: (
            sequence_logps(
                model, **batch, reduction=reduction, chunk_size=chunk_size, checkpoint=checkpoint
            ).logps
        ),
        model,
    )
    naive, naive_grads = value_and_grads(lambda: naive_logps(model, batch, reduction), model)
    torch.testing.assert_close(chunked, naive, atol=1e-5, rtol=0)
    assert chunked_grads.keys() == naive_grads.keys() and naive_grads
    for name in naive_grads:
        torch.testing.assert_close(chunked_grads[name], naive_grads[name], atol=1e-5, rtol=1e-5, msg=name)


def test_build_sequences_concatenates_and_right_pads():
    out = build_sequences([[5, 6], [7]], [[8], [9, 10, 11]], pad_token_id=0)
    assert out["input_ids"].tolist() == [[5, 6, 8, 0], [7, 9, 10, 11]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
    assert out["response_mask"].tolist() == [[False, False, True, False], [False, True, True, True]]
    assert out["input_ids"].dtype == torch.long and out["response_mask"].dtype == torch.bool


def test_build_sequences_rejects_bad_input():
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        build_sequences([[1], [2]], [[3]], pad_token_id=0)
    with pytest.raises(ValueError, match="sequence 1 has an empty response"):
        build_sequences([[1], [2]], [[3], []], pad_token_id=0)
    with pytest.raises(ValueError, match="sequence 0 has an empty prompt"):
        build_sequences([[]], [[3]], pad_token_id=0)


@pytest.mark.parametrize("chunk_size", [1, 3, 7, None])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("kind", ["llama", "llama_tied", "gpt2"])
def test_matches_naive_value_and_gradient(kind, reduction, chunk_size):
    assert_matches_naive(make_model(kind), make_batch(), reduction, chunk_size)


def test_matches_naive_without_checkpointing():
    assert_matches_naive(make_model("llama"), make_batch(), "mean", chunk_size=4, checkpoint=False)


@pytest.mark.parametrize("kind", ["gemma2_softcap", "cohere_logit_scale", "granite_logits_scaling"])
def test_final_logit_operations_are_applied(kind, caplog):
    model = make_model(kind)
    with caplog.at_level(logging.WARNING, logger="lambda_dpo.logprobs"):
        assert_matches_naive(model, make_batch(), "sum", chunk_size=3)
    assert "cannot be split" not in caplog.text  # the chunked path ran, not the fallback


def test_lora_wrapped_llama_matches_naive():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    # init_lora_weights=False: random A and B, so the adapters really change the outputs.
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "lm_head"], init_lora_weights=False
    )
    model = get_peft_model(make_model("llama"), config).eval()
    assert_matches_naive(model, make_batch(), "mean", chunk_size=3)
    _, grads = value_and_grads(lambda: sequence_logps(model, **make_batch()).logps, model)
    assert grads and all("lora_" in name for name in grads)  # only the adapters train


def test_no_grad_gives_the_same_values():
    model, batch = make_model("llama"), make_batch()
    with torch.no_grad():
        result = sequence_logps(model, **batch, reduction="sum", chunk_size=5)
        expected = naive_logps(model, batch, "sum")
    torch.testing.assert_close(result.logps, expected, atol=1e-5, rtol=0)
    assert not result.logps.requires_grad
    assert result.num_tokens.tolist() == [6, 2, 9, 3]


def test_first_call_does_not_shift_the_random_stream():
    """With dropout on, the one-time check of the split must not consume RNG, or resumed runs would diverge."""
    model, batch = make_model("gpt2").train(), make_batch()  # GPT-2's default dropout is 0.1
    torch.manual_seed(5)
    first = sequence_logps(model, **batch).logps  # runs the check
    torch.manual_seed(5)
    again = sequence_logps(model, **batch).logps  # already checked
    assert torch.equal(first, again)
    torch.manual_seed(6)
    assert not torch.equal(sequence_logps(model, **batch).logps, first)  # dropout really is active


@pytest.mark.parametrize("chunk_size", [1, 4])
def test_output_head_never_sees_more_than_chunk_size_positions(chunk_size):
    model, batch = make_model("llama"), make_batch()
    positions_per_call = []

    def record(module, args, output):
        positions_per_call.append(args[0].shape[:-1].numel())

    handle = model.get_output_embeddings().register_forward_hook(record)
    try:
        sequence_logps(model, **batch, chunk_size=chunk_size).logps.sum().backward()
    finally:
        handle.remove()
    n, t = batch["input_ids"].shape
    assert max(positions_per_call) <= chunk_size < n * t
    # Forward and the checkpoint's recomputation in backward: each response position twice; plus the one-time
    # check of the split (the model's own last logit and ours, one position each). Never the full N·T positions.
    assert sum(positions_per_call) == 2 * 20 + 2


class ScaledLogitsLlama(LlamaForCausalLM):
    """A model whose head does something the split does not know about (logits × 2.5 in forward)."""

    def forward(self, *args, **kwargs):
        outputs = super().forward(*args, **kwargs)
        outputs.logits = outputs.logits * 2.5
        return outputs


def test_unknown_head_operation_falls_back_with_a_warning(caplog):
    torch.manual_seed(0)
    model = ScaledLogitsLlama(LlamaConfig(**DECODER)).eval()
    with caplog.at_level(logging.WARNING, logger="lambda_dpo.logprobs"):
        assert_matches_naive(model, make_batch(), "mean", chunk_size=3)
        assert_matches_naive(model, make_batch(seed=1), "sum", chunk_size=None)
    warnings = [r for r in caplog.records if "ScaledLogitsLlama cannot be split" in r.getMessage()]
    assert len(warnings) == 1  # warned once, not on every call


def test_rejects_malformed_masks():
    model, batch = make_model("llama"), make_batch()
    with pytest.raises(ValueError, match=r"logprob_reduction must be one of \['mean', 'sum'\], got 'max'"):
        sequence_logps(model, **batch, reduction="max")
    response_at_start = batch["response_mask"].clone()
    response_at_start[2, 0] = True
    with pytest.raises(ValueError, match=r"sequences \[2\] have a response token at position 0"):
        sequence_logps(model, batch["input_ids"], batch["attention_mask"], response_at_start)
    on_padding = batch["response_mask"].clone()
    on_padding[1, -1] = True
    with pytest.raises(ValueError, match=r"sequences \[1\] mark padding"):
        sequence_logps(model, batch["input_ids"], batch["attention_mask"], on_padding)
    no_response = batch["response_mask"].clone()
    no_response[3] = False
    with pytest.raises(ValueError, match=r"sequences \[3\] have no response tokens"):
        sequence_logps(model, batch["input_ids"], batch["attention_mask"], no_response)
