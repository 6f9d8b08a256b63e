"""Prefix sharing: the shared forward gives the unshared log-probs and gradients (fp32, 1e-5) on Llama and GPT-2
shapes, with and without LoRA and gradient checkpointing, and a training run's losses match step for step."""

from __future__ import annotations

import pytest
import torch
from _tiny import gpt2_tokenizer, tiny_gpt2, tiny_llama
from test_trainer import config, write_records

from lambda_dpo.conditioning import widest_lambda_line
from lambda_dpo.data import load_listwise
from lambda_dpo.logprobs import build_sequences, sequence_logps, unwrap_model
from lambda_dpo.logprobs.prefix_sharing import (
    build_shared_rows,
    shared_attention_mask,
    shared_prefix_logps,
    sharing_pays,
    sharing_works,
)
from lambda_dpo.trainer import LambdaDPOTrainer


def _batch(seed=1, vocab=100):
    g = torch.Generator().manual_seed(seed)
    prompts = [torch.randint(5, vocab, (n,), generator=g).tolist() for n in (7, 12, 3)]
    responses = [[torch.randint(5, vocab, (n,), generator=g).tolist() for n in ks]
                 for ks in ((4, 9, 2), (5, 5), (8, 1, 3, 6))]  # k varies: 3, 2, 4
    return prompts, responses


def _both(model, prompts, responses, reduction):
    """(plain log-probs, plain grads, shared log-probs, shared grads)."""
    flat_prompts = [p for p, rs in zip(prompts, responses) for _ in rs]
    seq = build_sequences(flat_prompts, [r for rs in responses for r in rs], 0)
    out = []
    for run in ("plain", "shared"):
        model.zero_grad()
        if run == "plain":
            logps = sequence_logps(model, seq["input_ids"], seq["attention_mask"], seq["response_mask"],
                                   reduction=reduction).logps
        else:
            logps = shared_prefix_logps(model, prompts, responses, 0, reduction=reduction).logps
        (logps * torch.linspace(0.5, 1.5, len(logps))).sum().backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        out += [logps.detach(), grads]
    return out


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("variant", ["plain", "lora", "checkpointing"])
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_shared_logps_and_gradients_equal_the_unshared_path(arch, attention, variant, reduction):
    model = (tiny_llama if arch == "llama" else tiny_gpt2)(100).eval()  # eval: dropout off (GPT-2 has some)
    model.config._attn_implementation = attention
    if variant == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    if variant == "checkpointing":
        model.gradient_checkpointing_enable()
        model.train()  # checkpointing is only active in train mode; with dropout off both forwards are exact
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    plain, plain_grads, shared, shared_grads = _both(model, *_batch(), reduction)
    if attention == "sdpa":  # the segment attention did the shared forward
        assert unwrap_model(model).config._attn_implementation == "lambda_dpo_prefix"
    assert torch.allclose(plain, shared, atol=1e-5, rtol=0), (plain - shared).abs().max()
    assert len(plain_grads) == len(shared_grads) > 0
    for a, b in zip(plain_grads, shared_grads):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4), (a - b).abs().max()


def test_rows_masks_and_positions():
    packed = build_shared_rows([[1, 2, 3]], [[[4, 5], [6]]], pad_token_id=0)
    assert packed["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 3, 4, 3]]  # every response restarts after the prompt
    assert packed["segments"].tolist() == [[0, 0, 0, 1, 1, 2]]
    # response 1's first token (6, at column 5) is predicted from the prompt's last position (2), not from 5
    assert list(zip(packed["cols"].tolist(), packed["labels"].tolist())) == [(2, 4), (3, 5), (2, 6)]
    mask = shared_attention_mask(packed["segments"])[0, 0].int().tolist()
    assert mask[5] == [1, 1, 1, 0, 0, 1]  # the second response sees the prompt and itself, not the first response
    assert mask[4] == [1, 1, 1, 1, 1, 0]
    padded = shared_attention_mask(build_shared_rows([[1], [2, 3]], [[[4]], [[5], [6]]], 0)["segments"])
    assert padded[0, 0].diagonal().all()  # padding attends itself: no all-masked (NaN) row
    assert sharing_pays(None, [[1] * 100], [[[2] * 10] * 4]) and not sharing_pays(None, [[1]], [[[2] * 50] * 4])


def test_a_model_whose_attention_takes_no_dense_mask_falls_back_with_a_warning(caplog, monkeypatch):
    import lambda_dpo.logprobs.prefix_sharing

    monkeypatch.setattr(lambda_dpo.logprobs.prefix_sharing, "_WARNED", set())  # warned once per class and process
    model = tiny_llama(100).eval()
    model.config._attn_implementation = "flash_attention_2"
    assert not sharing_works(model, *_batch(), 0, "mean")
    assert any("prefix sharing is off for LlamaForCausalLM" in r.message for r in caplog.records)


def _run(tmp_path, sharing, name, **extra):
    tokenizer = gpt2_tokenizer()
    data = load_listwise(str(write_records(tmp_path / "d.jsonl", n=8, k=4)))
    args = config(tmp_path, output_dir=str(tmp_path / name), max_steps=20, per_device_train_batch_size=2,
                  prefix_sharing=sharing, reference_cache_dir=str(tmp_path / f"cache-{name}"), **extra)
    policy, reference = tiny_llama(len(tokenizer), seed=0), tiny_llama(len(tokenizer), seed=1)
    trainer = LambdaDPOTrainer(policy, args, train_dataset=data, processing_class=tokenizer, ref_model=reference)
    return trainer, policy


@pytest.mark.parametrize("conditioning", ["text", "lora"])
def test_training_losses_are_identical_for_20_steps_and_prompts_are_forwarded_once(tmp_path, conditioning):
    losses, references = {}, {}
    for sharing in ("false", "true"):
        trainer, policy = _run(tmp_path, sharing, f"{conditioning}-{sharing}", conditioning=conditioning,
                               logprob_reduction="sum", nll_weight=1.0)
        references[sharing] = torch.tensor(trainer.train_dataset["reference_logps"])
        shapes = []
        policy.get_input_embeddings().register_forward_hook(lambda m, a, o, seen=shapes: seen.append(tuple(a[0].shape)))
        trainer.train()
        losses[sharing] = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        if sharing == "true":
            rows = trainer.train_dataset
            longest = max(len(p) + sum(map(len, rs)) for p, rs in zip(rows["prompt_input_ids"],
                                                                       rows["response_input_ids"]))
            # 1: logprobs' split check; 8 then 2: the one-time sharing check (plain, shared); then every training
            # forward holds B = 2 rows, [prompt, r_1, …, r_4]: each prompt token once per step, not k = 4 times
            assert [s[0] for s in shapes] == [1, 8] + [2] * 21, shapes
            if conditioning == "text":  # the policy's prompts carry the λ line (in a system message) too
                line = widest_lambda_line(trainer.processing_class, trainer.dimensions)
                longest += len(trainer.processing_class(line)["input_ids"]) + 8  # + the system turn's template
            assert all(s[1] <= longest for s in shapes[2:]), (shapes, longest)
    assert len(losses["true"]) == 20
    assert torch.allclose(torch.tensor(losses["true"]), torch.tensor(losses["false"]), atol=1e-5, rtol=1e-5), losses
    assert torch.allclose(references["true"], references["false"], atol=1e-5)


def test_segment_attention_equals_sdpa_with_the_dense_shared_mask():
    """The attention op alone, with grouped KV heads: real positions equal SDPA under the dense shared mask, values
    and gradients."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from lambda_dpo.logprobs.segment_attention import PrefixLayout, segment_attention_forward

    prompts, responses = _batch()
    packed = build_shared_rows(prompts, responses, 0)
    B, L = packed["input_ids"].shape
    layout = PrefixLayout.build([len(p) for p in prompts], [[len(r) for r in rs] for rs in responses], L)

    class Module(torch.nn.Module):
        is_causal, num_key_value_groups = True, 2

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, h, L, 8, generator=g, requires_grad=True) for h in (4, 2, 2))
    real = packed["segments"] >= 0
    outputs, grads = [], []
    for run in ("segment", "dense"):
        if run == "segment":
            out, _ = segment_attention_forward(Module(), q, k, v, None, scaling=0.3, prefix_layout=layout)
        else:
            out, _ = sdpa_attention_forward(Module(), q, k, v, shared_attention_mask(packed["segments"]), scaling=0.3)
        assert out.shape == (B, L, 4, 8)
        outputs.append(out[real])
        grads.append(torch.autograd.grad(out[real].sum(), (q, k, v)))
    assert torch.allclose(*outputs, atol=1e-6)
    for a, b in zip(*grads):
        assert torch.allclose(a, b, atol=1e-5)


def test_an_sdpa_model_is_switched_to_the_segment_attention_and_its_plain_forwards_do_not_change():
    from lambda_dpo.logprobs.segment_attention import IMPLEMENTATION

    model = tiny_llama(100).eval()
    ids = torch.randint(5, 100, (2, 9), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding: a real mask goes through the masks SDPA gets
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
        shared_prefix_logps(model, *_batch(), 0)
        assert model.config._attn_implementation == IMPLEMENTATION
        after = model(input_ids=ids, attention_mask=mask).logits
        generated = model.generate(ids[:1], max_new_tokens=4, do_sample=False)
    assert torch.equal(before, after)
    model.config._attn_implementation = "sdpa"
    with torch.no_grad():
        assert torch.equal(generated, model.generate(ids[:1], max_new_tokens=4, do_sample=False))


def test_attention_the_shared_rows_do_not_implement_falls_back_with_a_warning(caplog, monkeypatch):
    """A sliding window (Mistral) is not implemented by the segment attention: sharing is off, with the reason."""
    from transformers import MistralConfig, MistralForCausalLM

    import lambda_dpo.logprobs.prefix_sharing

    monkeypatch.setattr(lambda_dpo.logprobs.prefix_sharing, "_WARNED", set())
    torch.manual_seed(0)
    model = MistralForCausalLM(MistralConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, sliding_window=4)).eval()
    assert not sharing_works(model, *_batch(), 0, "mean")
    assert any("does not implement it" in r.message and "sliding_window" in r.message for r in caplog.records)
