"""LambdaDPOTrainer: the step, the reference, resume, saving, and a real learning run (tiny models, no network)."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from _tiny import DATA, gpt2_tokenizer, tiny_llama
from transformers import AutoModelForCausalLM

from lambda_dpo.data import load_listwise
from lambda_dpo.trainer import LambdaDPOConfig, LambdaDPOTrainer

DIMS = ["helpfulness", "honesty", "brevity", "safety"]


def write_records(path, n=8, k=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
    with open(path, "w") as f:
        for i in range(n):
            responses = [" ".join(words[(i + j + r) % len(words)] for r in range(3 + j)) for j in range(k)]
            scores = {d: torch.randint(0, 5, (k,), generator=g).tolist() for d in DIMS}
            f.write(
                json.dumps(
                    {
                        "id": f"r{i}",
                        "prompt": f"question {i} about {words[i % 8]}?",
                        "responses": responses,
                        "scores": scores,
                    }
                )
                + "\n"
            )
    return path


def config(tmp_path, **overrides):
    base = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=2,
        max_steps=4,
        learning_rate=1e-3,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        max_length=160,
        dataloader_num_workers=0,
        disable_tqdm=True,
        reference_cache_dir=str(tmp_path / "cache"),
    )
    base.update(overrides)
    return LambdaDPOConfig(**base)


@pytest.fixture(scope="module")
def tokenizer():
    return gpt2_tokenizer()


def losses_of(trainer):
    return [h["loss"] for h in trainer.state.log_history if "loss" in h and "eval_loss" not in h]


def count_sequences(module):
    """Counts sequences entering `module` (the input embedding: called once per forward)."""
    seen = []
    module.register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[0]))
    return seen


def test_each_response_forwarded_once_per_step_and_reference_not_called(tmp_path, tokenizer):
    data = load_listwise(str(write_records(tmp_path / "d.jsonl", n=4, k=4)))
    policy, reference = tiny_llama(len(tokenizer), seed=0), tiny_llama(len(tokenizer), seed=1)
    args = config(tmp_path, max_steps=2, per_device_train_batch_size=2, prefix_sharing="false")
    trainer = LambdaDPOTrainer(
        policy, args, train_dataset=data, processing_class=tokenizer, ref_model=reference
    )
    assert "reference_logps" in trainer.train_dataset.column_names
    policy_seen = count_sequences(policy.get_input_embeddings())
    reference_seen = count_sequences(reference.get_input_embeddings())
    trainer.train()
    # (the unshared path) m = 4 dimensions, B = 2 prompts × k = 4 responses: 8 sequences, once, per step; the leading 1 is
    # logprobs' one-time check (one sequence, no grad) that its backbone/head split reproduces the model's logits
    assert policy_seen == [1, 8, 8]
    assert reference_seen == []


def test_reference_every_step_matches_precomputed(tmp_path, tokenizer):
    data = load_listwise(str(write_records(tmp_path / "d.jsonl", n=4, k=3)))
    runs = {}
    for precompute in (True, False):
        policy, reference = tiny_llama(len(tokenizer), seed=0), tiny_llama(len(tokenizer), seed=1)
        args = config(
            tmp_path,
            max_steps=3,
            precompute_reference=precompute,
            output_dir=str(tmp_path / f"o{precompute}"),
        )
        trainer = LambdaDPOTrainer(
            policy, args, train_dataset=data, processing_class=tokenizer, ref_model=reference
        )
        trainer.train()
        runs[precompute] = losses_of(trainer)
    assert runs[True] == pytest.approx(runs[False], abs=1e-5)


def test_resume_gives_identical_losses(tmp_path, tokenizer):
    data = load_listwise(str(write_records(tmp_path / "d.jsonl", n=8, k=3)))

    def make(out, max_steps):
        args = config(
            tmp_path,
            output_dir=str(out),
            max_steps=max_steps,
            save_strategy="steps",
            save_steps=3,
            lambda_schedule="dirichlet",
            lambda_schedule_kwargs={"alpha": 0.5},
        )
        return LambdaDPOTrainer(
            tiny_llama(len(tokenizer), seed=0),
            args,
            train_dataset=data,
            processing_class=tokenizer,
            ref_model=tiny_llama(len(tokenizer), seed=1),
        )

    straight = make(tmp_path / "straight", 6)
    straight.train()
    # a run interrupted after step 3: a fresh trainer resumes from its checkpoint and does steps 4..6
    shutil.copytree(tmp_path / "straight" / "checkpoint-3", tmp_path / "resumed" / "checkpoint-3")
    resumed = make(tmp_path / "resumed", 6)
    resumed.train(resume_from_checkpoint=True)
    assert [h["step"] for h in resumed.state.log_history if "loss" in h][-3:] == [4, 5, 6]
    assert losses_of(resumed)[-3:] == pytest.approx(losses_of(straight)[-3:], abs=1e-6)
    # and the λ draws really continue: a fresh schedule (no restored state) gives other losses
    (tmp_path / "resumed" / "checkpoint-3" / "lambda_schedule_rank0.pt").unlink()
    shutil.rmtree(tmp_path / "resumed" / "checkpoint-6")
    fresh = make(tmp_path / "resumed", 6)
    fresh.train(resume_from_checkpoint=str(tmp_path / "resumed" / "checkpoint-3"))
    assert losses_of(fresh)[-3:] != pytest.approx(losses_of(straight)[-3:], abs=1e-6)


def test_lora_adapter_disabled_reference_gives_ln_k_at_step_zero(tmp_path, tokenizer):
    from peft import LoraConfig, get_peft_model

    data = load_listwise(str(write_records(tmp_path / "d.jsonl", n=4, k=4)))
    # all-equal scores → uniform targets; rewards are 0 at step 0 only if the reference is really the LoRA base
    data = data.map(lambda r: {"scores": {d: [3.0] * 4 for d in DIMS}})
    model = get_peft_model(tiny_llama(len(tokenizer)), LoraConfig(r=4, target_modules="all-linear"))
    # sum reduction and a large β: responses of different lengths get very different log-probs, so any leak of the
    # policy's log-probs into the rewards moves the loss far from ln k
    strict = dict(max_steps=1, use_lora=True, condition_on_lambda=False, logprob_reduction="sum", beta=10.0)
    args = config(tmp_path, reference="adapter-disabled", **strict)
    trainer = LambdaDPOTrainer(model, args, train_dataset=data, processing_class=tokenizer)
    batch = trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))
    loss, _ = trainer.lambda_loss(trainer.model, batch, torch.full((2, 4), 0.25))
    assert loss.item() == pytest.approx(math.log(4), abs=1e-6)
    # the same check with `reference: none` is off by the policy's log-probs, so the test can tell the two apart
    args_none = config(tmp_path, reference="none", **strict)
    trainer_none = LambdaDPOTrainer(model, args_none, train_dataset=data, processing_class=tokenizer)
    batch_none = trainer_none._prepare_inputs(next(iter(trainer_none.get_train_dataloader())))
    assert "reference_logps" not in batch_none
    loss_none, _ = trainer_none.lambda_loss(trainer_none.model, batch_none, torch.full((2, 4), 0.25))
    assert abs(loss_none.item() - math.log(4)) > 0.1


def test_non_finite_loss_names_step_and_records(tmp_path, tokenizer):
    data = load_listwise(str(write_records(tmp_path / "d.jsonl", n=2, k=2)))
    model = tiny_llama(len(tokenizer))
    trainer = LambdaDPOTrainer(
        model, config(tmp_path, max_steps=1, reference="none"), train_dataset=data, processing_class=tokenizer
    )
    with torch.no_grad():
        model.get_input_embeddings().weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"step 1.*r0"):
        trainer.train()


def test_config_validates_choices(tmp_path):
    with pytest.raises(ValueError, match="loss='dop'"):
        config(tmp_path, loss="dop")
    with pytest.raises(ValueError, match="adapter-disabled needs use_lora"):
        config(tmp_path, reference="adapter-disabled")


def test_yaml_config_and_overrides(tmp_path):
    from lambda_dpo.train_job import parse_config

    path = tmp_path / "c.yaml"
    path.write_text(
        f"output_dir: {tmp_path}/o\nbeta: 0.3\nmax_steps: 7\ndimensions: [a, b]\nuse_cpu: true\n"
        "lambda_schedule: gaussian\nlambda_schedule_kwargs: {sigma: 2.0}\n"
    )
    cfg = parse_config(str(path), ["--beta", "0.2"])
    assert (cfg.beta, cfg.max_steps, cfg.dimensions) == (0.2, 7, ["a", "b"])
    assert cfg.lambda_schedule_kwargs == {"sigma": 2.0}
    path.write_text("bta: 0.3\n")
    with pytest.raises(SystemExit, match="unknown key"):
        parse_config(str(path), [])


@pytest.mark.slow
def test_learns_on_helpsteer2_and_saved_model_steers(tmp_path, tokenizer):
    from lambda_dpo import generate

    data = load_listwise(str(DATA / "helpsteer2" / "train_sample.jsonl"), format="helpsteer2").select(
        range(16)
    )
    dims = ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]
    args = config(
        tmp_path,
        max_steps=40,
        per_device_train_batch_size=4,
        learning_rate=3e-3,
        beta=1.0,
        max_length=160,
        max_prompt_length=80,
        reference="model",
        dimensions=dims,
        lambda_schedule="uniform",
        save_strategy="no",
    )
    policy = tiny_llama(len(tokenizer), seed=0)
    trainer = LambdaDPOTrainer(
        policy,
        args,
        train_dataset=data,
        processing_class=tokenizer,
        ref_model=tiny_llama(len(tokenizer), seed=0),
    )
    before = trainer.evaluate(trainer.train_dataset)
    trainer.train()
    after = trainer.evaluate(trainer.train_dataset)
    losses = losses_of(trainer)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    assert after["eval_accuracy_mean"] >= 0.85 > before["eval_accuracy_mean"] + 0.2
    out = trainer.save_final(str(tmp_path / "model"))
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert sum(p.numel() for p in reloaded.parameters()) == sum(p.numel() for p in policy.parameters())
    texts = generate(
        out,
        "How do I bake bread?",
        ["helpfulness=1", "verbosity=0.5,coherence=0.5"],
        max_new_tokens=8,
        seed=0,
    )
    assert len(texts) == 2 and all(len(t) == 1 and isinstance(t[0], str) for t in texts)


@pytest.mark.parametrize(("reduction", "loss"), [("sum", "listwise"), ("mean", "listwise"), ("sum", "dpo")])
def test_nll_weight_adds_the_target_weighted_per_token_nll(tmp_path, tokenizer, reduction, loss):
    from lambda_dpo.losses import target_nll_loss
    from lambda_dpo.targets import mix_targets, target_probs_from_scores

    data = load_listwise(str(write_records(tmp_path / "d.jsonl", n=4, k=4)))
    policy, reference = tiny_llama(len(tokenizer), seed=0), tiny_llama(len(tokenizer), seed=1)
    losses = {}
    for alpha in (0.0, 2.0):
        args = config(tmp_path, nll_weight=alpha, logprob_reduction=reduction, loss=loss,
                      output_dir=str(tmp_path / f"o{alpha}"))
        trainer = LambdaDPOTrainer(policy, args, train_dataset=data, processing_class=tokenizer, ref_model=reference)
        batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
        lambdas = torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.0, 1.0, 0.0, 0.0], [0.25] * 4, [0.0, 0.0, 0.5, 0.5]])
        losses[alpha], _ = trainer.lambda_loss(policy, batch, lambdas, grad=False)
    # By hand: the policy's summed log-prob of each response over its token count, weighted by the mixed target
    # (the pairwise `dpo` baseline: RPO's NLL of the best response only).
    flat = trainer._listwise_logps(policy, trainer._policy_prompts(batch, lambdas), batch["response_input_ids"],
                                   batch["response_mask"], grad=False)[0]
    lengths = torch.tensor([[len(r) for r in rs] for rs in batch["response_input_ids"]], dtype=flat.dtype)
    per_token = flat / lengths if reduction == "sum" else flat
    targets, dimension_mask = target_probs_from_scores(batch["scores"], 1.0, batch["response_mask"])
    mixed = mix_targets(targets, lambdas, dimension_mask)
    nll = target_nll_loss(per_token, mixed, batch["response_mask"], best_only=loss == "dpo").mean()
    assert nll > 0
    assert (losses[2.0] - losses[0.0]).item() == pytest.approx(2.0 * nll.item(), rel=1e-4)


def test_a_step_mixes_the_targets_once(tmp_path, tokenizer, monkeypatch):
    """The loss, the NLL anchor and the metrics read one ListwiseInputs: λ mixes the targets once per step."""
    import lambda_dpo.losses as losses
    import lambda_dpo.targets as targets

    calls = []
    monkeypatch.setattr(losses, "mix_targets", lambda *a, **kw: calls.append(1) or targets.mix_targets(*a, **kw))
    data = load_listwise(str(write_records(tmp_path / "d.jsonl", n=4, k=4)))
    policy = tiny_llama(len(tokenizer), seed=0)
    args = config(tmp_path, nll_weight=1.0, loss="listwise")
    trainer = LambdaDPOTrainer(policy, args, train_dataset=data, processing_class=tokenizer,
                               ref_model=tiny_llama(len(tokenizer), seed=1))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    trainer.lambda_loss(policy, batch, torch.full((4, 4), 0.25), grad=False)
    assert len(calls) == 1


def test_nll_weight_must_not_be_negative(tmp_path):
    with pytest.raises(ValueError, match="nll_weight must be >= 0"):
        config(tmp_path, nll_weight=-0.5)


def test_tau_scale_range_makes_tau_relative_to_each_dimensions_score_range(tmp_path, tokenizer):
    from lambda_dpo.targets import score_ranges

    path = write_records(tmp_path / "r.jsonl", n=6)
    data = load_listwise(str(path), format="listwise")
    ranges = score_ranges(data, DIMS)
    by_hand = []
    for d in DIMS:
        values = [v for s in data["scores"] for v in s[d]]
        by_hand.append(max(values) - min(values))
    assert ranges.tolist() == pytest.approx(by_hand)

    def first_loss(name, **overrides):
        trainer = LambdaDPOTrainer(tiny_llama(len(tokenizer)), config(tmp_path, output_dir=str(tmp_path / name),
                                   max_steps=1, **overrides), train_dataset=data, processing_class=tokenizer,
                                   ref_model=tiny_llama(len(tokenizer), seed=1))
        trainer.train()
        return trainer.state.log_history[0]["loss"]

    # range-relative τ = absolute τ_d = τ·range_d; with equal ranges that is absolute τ·range
    assert len(set(by_hand)) == 1
    assert first_loss("rel", tau_scale="range", tau=0.5) == pytest.approx(
        first_loss("abs", tau=0.5 * by_hand[0]), abs=1e-6)
