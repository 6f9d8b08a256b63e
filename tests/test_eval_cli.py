"""`lambda-dpo eval` and its pieces on a tiny λ-DPO model trained in the test (demo-world data, GPT-2 tokenizer)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from _tiny import DATA, gpt2_tokenizer, tiny_llama

from lambda_dpo.cli import main
from lambda_dpo.data import load_listwise
from lambda_dpo.demo.world import DIMENSIONS, write_world
from lambda_dpo.evaluation import model_eval as me
from lambda_dpo.evaluation import sampling
from lambda_dpo.evaluation.report import load_results, render_markdown
from lambda_dpo.losses import listwise_loss
from lambda_dpo.targets import mix_targets
from lambda_dpo.trainer import LambdaDPOConfig, LambdaDPOTrainer

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A λ-DPO model trained 2 steps from a saved tiny base (the reference), its trainer, and held-out data."""
    root = tmp_path_factory.mktemp("eval")
    train_path, heldout_path = write_world(str(root / "data"), num_train=8, num_heldout=4, k=3)
    tokenizer = gpt2_tokenizer()
    base = tiny_llama(len(tokenizer), seed=0)
    base.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    args = LambdaDPOConfig(
        output_dir=str(root / "train"), model_name_or_path=str(root / "base"), per_device_train_batch_size=4,
        per_device_eval_batch_size=4, max_steps=2, learning_rate=1e-2, max_length=128, save_strategy="no",
        report_to="none", use_cpu=True, disable_tqdm=True, seed=0, reference_cache_dir=str(root / "cache"),
    )
    trainer = LambdaDPOTrainer(tiny_llama(len(tokenizer), seed=0), args, train_dataset=load_listwise(train_path),
                               eval_dataset=load_listwise(heldout_path), processing_class=tokenizer)
    trainer.train()
    trainer.save_final(str(root / "model"))
    return {"root": root, "model": str(root / "model"), "base": str(root / "base"), "heldout": heldout_path,
            "trainer": trainer}


def test_heldout_logps_reproduce_the_training_loss(trained):
    """Evaluation renders λ and computes log-probs exactly as training does: the listwise loss built from eval's
    log-probs equals the trainer's own loss on the same held-out batch and λ."""
    policy = me.load_eval_model(trained["model"], "model", device="cpu")
    reference = me.load_reference(policy)
    assert reference.path == trained["base"] and not reference.conditioned
    heldout = me.prepare_heldout(load_listwise(trained["heldout"]), policy.tokenizer, DIMENSIONS, max_length=128)
    lambdas = {"concise": 0.2, "detailed": 0.5, "polite": 0.3}
    policy_logps = me.heldout_logps(policy, heldout, lambdas, max_prompt_length=64)
    reference_logps = me.heldout_logps(reference, heldout, None)
    tokens = np.maximum(heldout.num_tokens, 1)  # logprob_reduction: mean
    weights = torch.tensor([list(lambdas.values())] * 4)
    mask = torch.from_numpy(heldout.response_mask)
    target_probs = torch.from_numpy(heldout.target_probs)
    ours = listwise_loss(torch.from_numpy(np.nan_to_num(policy_logps / tokens)).float(),
                         torch.from_numpy(np.nan_to_num(reference_logps / tokens)).float(),
                         target_probs, weights, 0.1, response_mask=mask,
                         dimension_mask=torch.from_numpy(heldout.dimension_mask))
    has_signal = mix_targets(target_probs, weights, torch.from_numpy(heldout.dimension_mask)).sum(-1) > 0

    trainer = trained["trainer"]
    batch = trainer._prepare_inputs(next(iter(trainer.get_eval_dataloader())))
    theirs, _ = trainer.lambda_loss(trainer.model, batch, weights, grad=False)
    assert (ours.sum() / has_signal.sum()).item() == pytest.approx(theirs.item(), abs=1e-5)


def test_lora_adapter_dir_reference_is_the_base_with_adapters_disabled(trained, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from lambda_dpo.trainer import write_metadata

    tokenizer = gpt2_tokenizer()
    base = AutoModelForCausalLM.from_pretrained(trained["base"])
    adapted = get_peft_model(base, LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False))
    adapted.save_pretrained(tmp_path / "adapter")
    tokenizer.save_pretrained(tmp_path / "adapter")
    write_metadata(str(tmp_path / "adapter"), DIMENSIONS, LambdaDPOConfig(
        output_dir=str(tmp_path), use_lora=True, reference="adapter-disabled", model_name_or_path=trained["base"]))

    policy = me.load_eval_model(str(tmp_path / "adapter"), "model", device="cpu")
    reference = me.load_reference(policy)
    assert reference.adapter_disabled and reference.model is policy.model
    heldout = me.prepare_heldout(load_listwise(trained["heldout"]), tokenizer, DIMENSIONS, max_length=128)
    base_logps = me.heldout_logps(me.load_reference(policy, trained["base"]), heldout, None)
    np.testing.assert_allclose(me.heldout_logps(reference, heldout, None), base_logps, atol=1e-5)
    assert np.nanmax(np.abs(me.heldout_logps(policy, heldout, None) - base_logps)) > 1e-3  # adapters on


def test_ranking_report_of_oracle_and_tied_rewards(trained):
    """The pipeline's use of the ranking metrics: rewards equal to the scores rank perfectly; all-equal rewards
    (policy = reference) sit at chance; the λ-mixed target of a one-hot λ is that dimension's target."""
    tokenizer = gpt2_tokenizer()
    heldout = me.prepare_heldout(load_listwise(trained["heldout"]), tokenizer, DIMENSIONS, max_length=128)
    scores = np.array([row["detailed"] for row in heldout.dataset["scores"]])  # [B = 4, k = 3]
    report = me.ranking_at_lambda(scores, heldout, {"detailed": 1.0})
    assert report["detailed"]["ranking_accuracy"] == 1.0 and report["detailed"]["kendall_tau"] == pytest.approx(1.0)
    assert report["detailed"]["ndcg"] == pytest.approx(1.0)
    assert report[me.MIXED] == report["detailed"]
    tied = me.ranking_at_lambda(np.zeros_like(scores), heldout, {"concise": 0.5, "polite": 0.5})
    assert all(tied[d]["ranking_accuracy"] == 0.5 for d in [*DIMENSIONS, me.MIXED])
    assert report["concise"]["num_lists"] == 4


def test_kl_is_zero_against_itself_and_positive_after_training(tmp_path):
    tokenizer = gpt2_tokenizer()
    reference = me.EvalModel("reference", "-", tiny_llama(len(tokenizer), seed=3), tokenizer,
                             me.plain_metadata(DIMENSIONS))
    prompts = [sampling.GenerationPrompt("Tell me about Mars."), sampling.GenerationPrompt("How do I make tea?")]
    settings = {"num_samples": 4, "max_new_tokens": 8, "seed": 0}
    same = sampling.sampled_kl(reference, reference, prompts, None, **settings)
    assert same["mean"] == 0.0 and same["stderr"] == 0.0 and same["num_samples"] == 8

    policy_model = tiny_llama(len(tokenizer), seed=3)
    optimizer = torch.optim.Adam(policy_model.parameters(), lr=0.1)
    conversation = [{"role": "user", "content": "Tell me about Mars."},
                    {"role": "assistant", "content": "Of course! It is a planet. Take care!"}]
    text = tokenizer(tokenizer.apply_chat_template(conversation, tokenize=False), return_tensors="pt")["input_ids"]
    for _ in range(3):  # a few steps of maximum likelihood concentrate π_θ, far from the near-uniform π_ref
        optimizer.zero_grad()
        policy_model(input_ids=text, labels=text).loss.backward()
        optimizer.step()
    policy = me.EvalModel("model", "-", policy_model.eval(), tokenizer, me.plain_metadata(DIMENSIONS))
    moved = sampling.sampled_kl(policy, reference, prompts, None, **settings)
    assert moved["mean"] > 3 * moved["stderr"] > 0
    assert 1 <= moved["mean_response_tokens"] <= 8


@pytest.mark.slow
def test_cli_end_to_end_with_baseline_scorer_and_lm_eval(trained, tmp_path):
    out = tmp_path / "report"
    rc = main([
        "eval", "--model", trained["model"], "--data", trained["heldout"], "--baseline", trained["base"],
        "--lambda", "concise=0.5,polite=0.5", "--scorer", "lambda_dpo.demo.world:scorer", "--grid", "1",
        "--num-prompts", "2", "--num-samples", "1", "--kl-samples", "2", "--max-new-tokens", "4", "--greedy",
        "--no-progress", "--out", str(out), "--lm-eval-tasks", "tiny_mc,tiny_gen",
        "--lm-eval-include-path", str(DATA / "lm_eval_tasks"), "--lm-eval-limit", "2",
    ])
    assert rc == 0
    results = json.loads((out / "eval.json").read_text())
    assert results["models"] == ["model", "baseline"] and results["reference"]["path"] == trained["base"]

    (ranking,) = results["ranking"]
    assert ranking["lambda"] == {"concise": 0.5, "detailed": 0.0, "polite": 0.5}
    model, baseline = ranking["models"]["model"], ranking["models"]["baseline"]
    assert set(model["per_dimension"]) == {*DIMENSIONS, me.MIXED}
    # The baseline is the reference itself: zero implicit rewards (chance-level ranking), zero log-ratio.
    assert all(v["ranking_accuracy"] == 0.5 for v in baseline["per_dimension"].values())
    assert baseline["heldout_log_ratio"]["mean"] == 0.0 and model["heldout_log_ratio"]["mean"] != 0.0
    assert -1 <= model["length_bias"]["logp_mean"] <= 1 and model["length_bias"]["logp_sum"] < 0

    (kl,) = results["kl"]
    assert kl["models"]["baseline"]["mean"] == 0.0 and kl["models"]["model"]["num_samples"] == 4

    control = results["controllability"]
    assert len(control["grid"]) == 4 and set(control["models"]) == {"model", "baseline"}
    assert set(control["shared_hypervolume"]) == {"model", "baseline"}
    pairs = results["win_rate"]["comparisons"][0]["pairs"]
    assert set(pairs) == {"model vs reference", "baseline vs reference", "model vs baseline"}
    # Greedy decoding of the same weights: the baseline's responses are the reference's, every pair ties.
    assert pairs["baseline vs reference"]["lambda_weighted"]["mean"] == 0.5

    lm = results["lm_eval"]["models"]
    assert set(lm) == {"model", "baseline"} and "acc" in lm["model"]["tasks"]["tiny_mc"]
    # λ (uniform by default) reaches the conditioned model only.
    assert lm["model"]["system_instruction"] == "Preference weights: concise=0.33 detailed=0.33 polite=0.33"
    assert lm["baseline"]["system_instruction"] is None
    perf = results["performance"]
    assert perf["peak_memory_bytes"] > 0 and perf["phases"]["held-out log-probs"]["responses"] > 0
    assert perf["phases"]["held-out log-probs"]["responses_per_s"] > 0

    markdown = (out / "eval.md").read_text()
    for heading in ("## Ranking", "## KL", "## Length bias", "## Controllability", "## Win rate",
                    "## Benchmarks", "## Cost of this evaluation"):
        assert heading in markdown
    assert "| tiny_mc | acc |" in markdown
    assert render_markdown(load_results(out / "eval.json")) == markdown  # the report rebuilds from eval.json
    assert set(results["plots"].values()) == {"ranking_accuracy.png", "length_bias.png", "kl.png", "win_rate.png",
                                              "controllability_score_vs_lambda.png", "controllability_pareto.png"}
    for name in results["plots"].values():
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_cli_errors_say_what_to_fix(trained, tmp_path, capsys):
    assert main(["eval", "--model", trained["model"], "--data", trained["heldout"], "--lambda", "kindness=1"]) == 2
    assert "unknown dimension 'kindness'" in capsys.readouterr().err
    orphan = tmp_path / "orphan"
    shutil.copytree(trained["model"], orphan)
    metadata = json.loads((orphan / "lambda_dpo.json").read_text())
    metadata["training"]["model_name_or_path"] = "someone/hub-model"
    (orphan / "lambda_dpo.json").write_text(json.dumps(metadata))
    assert main(["eval", "--model", str(orphan), "--data", trained["heldout"]]) == 2
    err = capsys.readouterr().err
    assert "'someone/hub-model' (from training.model_name_or_path" in err and "--reference DIR" in err


def test_default_lambdas_are_one_hot():
    from lambda_dpo.evaluation.run import lambdas_to_evaluate

    assert lambdas_to_evaluate(None, ["a", "b"], False) == [{"a": 1.0, "b": 0.0}, {"a": 0.0, "b": 1.0}]
    assert lambdas_to_evaluate(["a=2,b=2"], ["a", "b"], True) == [{"a": 0.5, "b": 0.5}]


def test_cli_evaluates_a_plain_model_on_the_datas_or_the_given_dimensions(trained, tmp_path, capsys):
    """A plain Hugging Face model (here the SFT-like base) is evaluated unconditioned against --reference."""
    out = tmp_path / "plain"
    assert main(["eval", "--model", trained["base"], "--reference", trained["model"], "--data", trained["heldout"],
                 "--grid", "0", "--kl-samples", "0", "--no-progress", "--out", str(out)]) == 0
    results = json.loads((out / "eval.json").read_text())
    assert results["dimensions"] == ["concise", "detailed", "polite"]  # the held-out data's
    assert results["lambda_reliance"]["model"]["reliance"] == pytest.approx(0.0, abs=1e-9)  # it does not read λ
    assert main(["eval", "--model", trained["base"], "--reference", trained["model"], "--data", trained["heldout"],
                 "--dimensions", "polite", "--grid", "0", "--kl-samples", "0", "--no-progress",
                 "--out", str(out)]) == 0
    assert json.loads((out / "eval.json").read_text())["dimensions"] == ["polite"]
    capsys.readouterr()
    assert main(["eval", "--model", trained["base"], "--data", trained["heldout"], "--grid", "0"]) == 2
    assert "pass --reference DIR" in capsys.readouterr().err


def test_eval_builds_the_trainers_targets_under_tau_scale_range(trained, tmp_path):
    """With `tau_scale: range` the trainer records the training data's score ranges in lambda_dpo.json, and the
    evaluation builds its targets with them, so the held-out targets are the trainer's own (on 0–4 ratings)."""
    from lambda_dpo.demo.worlds import get_world
    from lambda_dpo.evaluation.run import EvalConfig, Evaluation

    world = get_world("support")
    train_path, heldout_path = world.write_world(str(tmp_path / "data"), seed=0, num_train=8, num_heldout=4)
    tokenizer = gpt2_tokenizer()
    args = LambdaDPOConfig(
        output_dir=str(tmp_path / "t"), model_name_or_path=trained["base"], tau=0.05, tau_scale="range",
        max_length=128, per_device_eval_batch_size=4, report_to="none", use_cpu=True, disable_tqdm=True,
        save_strategy="no", reference="none",
    )
    trainer = LambdaDPOTrainer(tiny_llama(len(tokenizer), seed=0), args, train_dataset=load_listwise(train_path),
                               eval_dataset=load_listwise(heldout_path), processing_class=tokenizer)
    assert trainer.score_scale.max().item() > 1  # Likert ratings: the scale matters
    trainer.save_final(str(tmp_path / "model"))
    recorded = json.loads((tmp_path / "model" / "lambda_dpo.json").read_text())["training"]["score_ranges"]
    assert recorded == dict(zip(trainer.dimensions, trainer.score_scale.tolist()))

    run = Evaluation(EvalConfig(model=str(tmp_path / "model"), data=heldout_path, device="cpu"))
    heldout = me.prepare_heldout(run.data, run.policy.tokenizer, run.dimensions, max_length=128, tau=0.05,
                                 score_scale=run.score_scale())
    batch = trainer._prepare_inputs(next(iter(trainer.get_eval_dataloader())))
    order = [list(heldout.dataset["id"]).index(record_id) for record_id in batch["id"]]
    theirs, _ = trainer._targets(batch)
    ours = torch.from_numpy(heldout.target_probs[order]).float()[..., :theirs.shape[-1]]
    torch.testing.assert_close(ours, theirs.float())
    assert not any("held-out data's score ranges" in note for note in run.notes)
