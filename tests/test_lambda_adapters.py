"""λ-mixed adapters (conditioning: lora): the formula, per-sequence λ, save → reload, the fixed-λ merge, and the
trainer's λ-reliance diagnostic on a steering and a λ-ignoring model."""

from __future__ import annotations

import json
import math

import pytest
import torch
from _tiny import gpt2_tokenizer, tiny_gpt2, tiny_llama
from test_trainer import config, write_records

from lambda_dpo.data import load_listwise
from lambda_dpo.lambda_adapters import (
    add_lambda_adapters,
    get_adapters,
    lambdas_set,
    merge_lambda,
    set_lambdas,
)
from lambda_dpo.reliance import per_dimension, relative, target_cross_entropy
from lambda_dpo.trainer import LambdaDPOTrainer

DIMS = ["a", "b", "c"]


def _randomised(model, seed=1):
    """Give the zero-initialised up-projections random values, so each dimension's delta is non-zero."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in get_adapters(model).up.values():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


@pytest.fixture(params=["llama", "gpt2"])
def model(request):
    base = tiny_llama(64) if request.param == "llama" else tiny_gpt2(64)
    add_lambda_adapters(base, DIMS, rank=2, alpha=4)
    return _randomised(base.eval())


def test_fresh_adapters_leave_the_model_unchanged():
    base = tiny_llama(64).eval()
    ids = torch.randint(0, 64, (2, 7))
    before = base(ids).logits
    add_lambda_adapters(base, DIMS, rank=4)
    set_lambdas(base, [0.2, 0.3, 0.5])
    torch.testing.assert_close(base(ids).logits, before)


def test_delta_is_the_lambda_weighted_sum_of_per_dimension_low_rank_updates():
    base = tiny_llama(64).eval()
    adapters = add_lambda_adapters(base, DIMS, rank=2, alpha=4, target_modules=["q_proj"])
    _randomised(base)
    name = adapters.target_names[0]
    key = name.replace(".", "__")
    x = torch.randn(2, 5, 32)
    lam = torch.tensor([[1.0, 0.0, 0.0], [0.2, 0.3, 0.5]])
    set_lambdas(base, lam)
    got = adapters.delta(name, x)
    down, up = adapters.down[key], adapters.up[key]
    for n in range(2):  # by hand: (α/r) Σ_d λ_d B_d A_d x, A_d = rows d·r … (d+1)·r of `down`
        want = sum(lam[n, d] * (x[n] @ down[d * 2:(d + 1) * 2].T) @ up[:, d * 2:(d + 1) * 2].T for d in range(3))
        torch.testing.assert_close(got[n], want * 2.0)


def test_lambda_changes_the_output_and_rows_are_independent(model):
    ids = torch.randint(0, 64, (1, 6))
    outputs = []
    for lam in ([1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]):
        with lambdas_set(model, lam):
            outputs.append(model(ids).logits)
    assert (outputs[0] - outputs[1]).abs().max() > 1e-3
    assert (outputs[1] - outputs[2]).abs().max() > 1e-3
    with lambdas_set(model, [[1.0, 0, 0], [0, 1.0, 0]]):  # per-sequence λ in one batch
        both = model(ids.expand(2, -1)).logits
    torch.testing.assert_close(both[0], outputs[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both[1], outputs[1][0], atol=1e-5, rtol=1e-5)


def test_forward_without_lambda_is_a_clear_error(model):
    with pytest.raises(RuntimeError, match="no λ was set"):
        model(torch.randint(0, 64, (1, 4)))


def test_merged_fixed_lambda_model_equals_the_mixed_model(model):
    ids = torch.randint(0, 64, (2, 9))
    lam = [0.6, 0.1, 0.3]
    with lambdas_set(model, lam):
        mixed = model(ids).logits
    plain = merge_lambda(model, lam)
    assert get_adapters(plain) is None and not any("lambda_adapters" in k for k in plain.state_dict())
    torch.testing.assert_close(plain(ids).logits, mixed, atol=1e-5, rtol=1e-5)


def _train(tmp_path, tokenizer, name, **overrides):
    data = load_listwise(str(write_records(tmp_path / f"{name}.jsonl", n=8)), format="listwise")
    policy = tiny_llama(len(tokenizer))
    args = config(tmp_path, output_dir=str(tmp_path / name), dimensions=["helpfulness", "honesty"],
                  **overrides)
    trainer = LambdaDPOTrainer(policy, args, train_dataset=data, eval_dataset=data, processing_class=tokenizer,
                               ref_model=tiny_llama(len(tokenizer)))
    return trainer


def test_trainer_with_lora_conditioning_saves_reloads_and_generates_the_same(tmp_path):
    from lambda_dpo.generation import generate, load_model

    tokenizer = gpt2_tokenizer()
    trainer = _train(tmp_path, tokenizer, "lora", conditioning="lora", conditioning_rank=2, max_steps=3,
                     learning_rate=1e-2)
    trainer.train()
    out = trainer.save_final()
    metadata = json.load(open(f"{out}/lambda_dpo.json"))
    assert metadata["conditioning"] == "lora" and metadata["lambda_adapters"]["rank"] == 2
    from safetensors.torch import load_file

    assert not any("lambda_adapters" in k for k in load_file(f"{out}/model.safetensors"))
    model, tok, meta = load_model(out, device="cpu")
    assert get_adapters(model) is not None
    trained = trainer.model.eval()
    ids = torch.tensor([tok.encode("hello there")])
    for lam in ([1.0, 0.0], [0.0, 1.0]):
        with lambdas_set(trained, lam), lambdas_set(model, lam):
            torch.testing.assert_close(model(ids).logits, trained(ids).logits)
    texts = generate(None, "hello", ["helpfulness=1", "honesty=1"], model=model, tokenizer=tok, metadata=meta,
                     do_sample=False, max_new_tokens=5)
    assert len(texts) == 2


def test_resume_of_a_lora_conditioned_run_gives_identical_losses(tmp_path):
    tokenizer = gpt2_tokenizer()
    common = dict(conditioning="lora", conditioning_rank=2, max_steps=4, learning_rate=1e-2, save_strategy="steps",
                  save_steps=2)
    full = _train(tmp_path, tokenizer, "full", **common)
    full.train()
    losses = [e["loss"] for e in full.state.log_history if "loss" in e]
    resumed = _train(tmp_path, tokenizer, "full", **common)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))
    again = [e["loss"] for e in resumed.state.log_history if "loss" in e]
    assert again[-2:] == pytest.approx(losses[-2:], abs=1e-6)


def test_lambda_reliance_from_the_cross_loss_matrix_and_the_targets_own():
    cross = {("a", "a"): 0.5, ("b", "a"): 0.9, ("a", "b"): 1.0, ("b", "b"): 0.4}  # (told, scored on)
    gaps = per_dimension(cross, ["a", "b"])
    assert gaps == pytest.approx({"a": 0.9 - 0.5, "b": 1.0 - 0.4})
    assert per_dimension({("a", "a"): 1.0}, ["a"]) == {}
    # The ideal gap by hand: targets p*[a] = (0.8, 0.2), p*[b] = (0.3, 0.7) on one prompt
    targets = torch.tensor([[[0.8, 0.2], [0.3, 0.7]]])
    sums, counts = target_cross_entropy(targets, torch.tensor([[True, True]]))
    ce = lambda p, q: -sum(pi * math.log(qi) for pi, qi in zip(p, q))  # noqa: E731
    assert sums[1, 0].item() == pytest.approx(ce([0.8, 0.2], [0.3, 0.7]))  # scored on a, told b
    assert sums[0, 0].item() == pytest.approx(ce([0.8, 0.2], [0.8, 0.2]))  # H(p*[a])
    assert counts.tolist() == [[1.0, 1.0], [1.0, 1.0]]
    ideal = per_dimension({(p, d): sums[i, j].item() for i, p in enumerate("ab") for j, d in enumerate("ab")},
                          ["a", "b"])
    assert relative(gaps, ideal)["a"] == pytest.approx(0.4 / (ce([0.8, 0.2], [0.3, 0.7]) - ce([0.8, 0.2], [0.8, 0.2])))
    assert relative({"a": 0.3}, {"a": 0.0}) == {}  # the data give λ nothing to do: no relative reliance


def test_reliance_is_zero_for_an_unconditioned_policy_and_positive_once_lambda_is_used(tmp_path, caplog):
    tokenizer = gpt2_tokenizer()
    ignoring = _train(tmp_path, tokenizer, "ignore", condition_on_lambda=False, lambda_schedule="unimodal",
                      max_steps=2, lambda_reliance_check=0.5)
    with caplog.at_level("WARNING", logger="lambda_dpo.trainer"):
        ignoring.train()
        metrics = ignoring.evaluate()
    assert metrics["eval_lambda_reliance"] == pytest.approx(0.0, abs=1e-9)
    assert metrics["eval_lambda_logp_shift"] == pytest.approx(0.0, abs=1e-9)
    assert not any("ignores λ" in r.message for r in caplog.records)  # not meant to be steerable: no warning

    text = _train(tmp_path, tokenizer, "text_fresh", lambda_schedule="unimodal", max_steps=2,
                  lambda_reliance_check=0.5, lambda_reliance_min=10.0)
    with caplog.at_level("WARNING", logger="lambda_dpo.trainer"):
        text.train()
        text.evaluate()
    assert any("ignores λ" in r.message and "conditioning: lora" in r.message for r in caplog.records)

    steering = _train(tmp_path, tokenizer, "steer", conditioning="lora", conditioning_rank=4,
                      lambda_schedule="unimodal", max_steps=40, learning_rate=3e-2, beta=1.0, tau=2.0)
    steering.train()
    metrics = steering.evaluate()
    assert metrics["eval_lambda_logp_shift"] > 0.1
    assert metrics["eval_lambda_reliance"] > 0.02
    assert all(metrics[f"eval_lambda_reliance_relative/{d}"] > 0.1 for d in ("helpfulness", "honesty"))


def test_export_cli_writes_a_plain_model_equal_to_the_mixed_one_at_that_lambda(tmp_path):
    from transformers import AutoModelForCausalLM

    from lambda_dpo.cli import main
    from lambda_dpo.generation import load_model

    tokenizer = gpt2_tokenizer()
    trainer = _train(tmp_path, tokenizer, "lora", conditioning="lora", conditioning_rank=2, max_steps=3,
                     learning_rate=1e-2)
    trainer.train()
    out = trainer.save_final()
    assert main(["export", "--model", out, "--lambda", "helpfulness=0.25,honesty=0.75",
                 "--out", str(tmp_path / "fixed")]) == 0
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "fixed").eval()
    mixed, _, _ = load_model(out, device="cpu")
    ids = torch.tensor([tokenizer.encode("a question about honesty")])
    with lambdas_set(mixed, {"helpfulness": 0.25, "honesty": 0.75}):
        torch.testing.assert_close(plain(ids).logits, mixed(ids).logits, atol=1e-5, rtol=1e-5)
    assert json.load(open(tmp_path / "fixed" / "lambda_dpo.json"))["condition_on_lambda"] is False
    text = _train(tmp_path, tokenizer, "text", max_steps=1)
    text.train()
    assert main(["export", "--model", text.save_final(), "--lambda", "helpfulness=1",
                 "--out", str(tmp_path / "no")]) == 2


def test_eval_cli_reports_lambda_reliance_of_a_lora_conditioned_model(tmp_path):
    from lambda_dpo.cli import main

    tokenizer = gpt2_tokenizer()
    trainer = _train(tmp_path, tokenizer, "lora", conditioning="lora", conditioning_rank=4,
                     lambda_schedule="unimodal", max_steps=20, learning_rate=3e-2, beta=1.0, tau=0.5)
    trainer.train()
    out = trainer.save_final()
    reference = tmp_path / "reference"
    tiny_llama(len(tokenizer)).save_pretrained(reference)
    tokenizer.save_pretrained(reference)
    assert main(["eval", "--model", out, "--reference", str(reference), "--data", str(tmp_path / "lora.jsonl"),
                 "--grid", "0", "--kl-samples", "0", "--out", str(tmp_path / "eval"), "--no-progress"]) == 0
    results = json.load(open(tmp_path / "eval" / "eval.json"))
    report = results["lambda_reliance"]["model"]
    assert report["reliance"] > 0.02 and report["logp_shift"] > 0.1
    trained_metrics = trainer.evaluate()
    assert report["reliance"] == pytest.approx(trained_metrics["eval_lambda_reliance"], rel=0.05)
    assert report["relative"] == pytest.approx(trained_metrics["eval_lambda_reliance_relative"], rel=0.05)
    assert "λ-reliance" in open(tmp_path / "eval" / "eval.md").read()


@pytest.mark.parametrize("conditioning", ["text", "lora"])
def test_saved_model_dir_has_a_model_card_that_says_how_to_steer_it(tmp_path, conditioning):
    tokenizer = gpt2_tokenizer()
    trainer = _train(tmp_path, tokenizer, conditioning, conditioning=conditioning, max_steps=1)
    trainer.train()
    trainer.evaluate()
    out = trainer.save_final()
    card = open(f"{out}/README.md").read()
    front, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    assert "library_name: transformers" in front and "- lambda-dpo" in front and "- dpo" in front
    assert "1. `helpfulness`" in body and "2. `honesty`" in body and f"lambda-dpo playground --model {out}" in body
    assert "ranking accuracy, helpfulness" in body and "λ-reliance" in body
    if conditioning == "text":  # the exact system line, for transformers and for an OpenAI-compatible server
        assert "Preference weights: helpfulness=0.50 honesty=0.50" in body and "v1/chat/completions" in body
    else:
        assert "lambda-dpo export" in body and "vllm serve" in body
    trainer.create_model_card()  # what push_to_hub calls: our card, not the Trainer's generic one
    assert "How to steer it" in open(f"{out}/README.md").read()
