"""`lambda-dpo sft`: the supervised warm-up on listwise responses (response-only loss, Trainer, YAML CLI)."""

from __future__ import annotations

import math

import pytest
import torch
import yaml

from lambda_dpo.demo.tiny import make_tiny_llama, train_tokenizer
from lambda_dpo.demo.world import make_world, vocabulary_texts
from lambda_dpo.sft import (
    as_listwise_dataset,
    parse_config,
    run_sft,
    select_responses,
    sft_examples,
    sft_trainer,
)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(vocabulary_texts())


@pytest.fixture(scope="module")
def world():
    return make_world(seed=0, num_train=200, num_heldout=16, k=4)


def tiny(tokenizer):
    return make_tiny_llama(tokenizer, hidden=64, layers=2, heads=4, seed=0)


def test_select_responses():
    scores = {"a": [0.1, 0.9, None, 0.5], "b": [1.0, 0.0, 0.7, float("nan")]}
    assert select_responses(scores, 4) == [0, 1, 2, 3]
    assert select_responses(scores, 4, top_k=2, rank_by="a") == [1, 3]  # missing scores are never chosen
    assert select_responses(scores, 4, top_k=9, rank_by="a") == [0, 1, 3]
    assert select_responses(scores, 4, top_k=1) == [2]  # mean of the scores a response has: 0.55, 0.45, 0.7, 0.5
    with pytest.raises(ValueError, match="rank_by='c' is not a dimension"):
        select_responses(scores, 4, top_k=1, rank_by="c")


def test_examples_mask_the_prompt_and_end_with_eos(tokenizer, world):
    from lambda_dpo.data import tokenize_listwise

    listwise = as_listwise_dataset(world[0][:5])
    examples = sft_examples(tokenize_listwise(listwise, tokenizer, max_length=128))
    assert len(examples) == 5 * 4
    for n, example in enumerate(examples):
        record, response = world[0][n // 4], world[0][n // 4]["responses"][n % 4]
        ids, labels = example["input_ids"], example["labels"]
        prompt_length = next(i for i, label in enumerate(labels) if label != -100)
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": record["prompt"]}],
                                               add_generation_prompt=True, tokenize=False)
        assert tokenizer.decode(ids[:prompt_length]) == prompt
        assert labels[prompt_length:] == ids[prompt_length:]
        assert tokenizer.decode(labels[prompt_length:]) == response + tokenizer.eos_token
    top = sft_examples(tokenize_listwise(listwise, tokenizer, max_length=128), top_k=1, rank_by="detailed")
    assert len(top) == 5


def test_in_memory_records_are_validated(tokenizer):
    bad = [{"prompt": "Describe Mars.", "responses": ["only one"], "scores": {"concise": [1.0]}}]
    with pytest.raises(ValueError, match="record #0"):
        as_listwise_dataset(bad)


@pytest.mark.slow
def test_sft_lowers_the_response_loss_on_heldout_prompts(tmp_path, tokenizer, world):
    from transformers import TrainingArguments

    args = TrainingArguments(output_dir=str(tmp_path), max_steps=30, per_device_train_batch_size=8, learning_rate=1e-2,
                             warmup_steps=3, save_strategy="no", logging_steps=10, disable_tqdm=True, seed=0)
    trainer = sft_trainer(tiny(tokenizer), tokenizer, world[0], args, eval_data=world[1], max_length=128)
    before = trainer.evaluate()["eval_loss"]
    trainer.train()
    after = trainer.evaluate()["eval_loss"]
    assert math.isclose(before, math.log(len(tokenizer)), rel_tol=0.1)  # an untrained model is near uniform
    assert after < 0.5 * before, (before, after)


def test_run_sft_saves_a_loadable_model_dir(tokenizer, world, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = run_sft(tiny(tokenizer), tokenizer, world[0][:20], str(tmp_path), max_steps=2,
                    per_device_train_batch_size=4, disable_tqdm=True)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "tokenizer.json").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    for a, b in zip(model.state_dict().values(), reloaded.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert AutoTokenizer.from_pretrained(tmp_path).chat_template == tokenizer.chat_template


def _config(tmp_path, **fields):
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(fields))
    return str(path)


def test_parse_config_overrides_win_and_errors_say_what_to_fix(tmp_path):
    path = _config(tmp_path, model_name_or_path="m", dataset="d.jsonl", output_dir="out", max_steps=1000, top_k=2,
                   learning_rate=1e-3)
    sft_args, training_args = parse_config(path, ["--max_steps", "3", "--rank_by", "polite"])
    assert (training_args.max_steps, training_args.learning_rate, training_args.output_dir) == (3, 1e-3, "out")
    assert (sft_args.top_k, sft_args.rank_by, sft_args.dataset) == (2, "polite", "d.jsonl")
    with pytest.raises(SystemExit, match=r"unknown key\(s\) \['lernrate'\]"):
        parse_config(_config(tmp_path, output_dir="o", lernrate=1), [])
    with pytest.raises(SystemExit, match="set output_dir"):
        parse_config(_config(tmp_path, dataset="d.jsonl"), [])


def test_cli_fine_tunes_and_saves(tokenizer, tmp_path, capsys):
    from lambda_dpo.cli import main
    from lambda_dpo.demo.world import write_world

    base = tmp_path / "base"
    tiny(tokenizer).save_pretrained(base)
    tokenizer.save_pretrained(base)
    train_path, heldout_path = write_world(str(tmp_path / "data"), num_train=20, num_heldout=4)
    config = _config(tmp_path, model_name_or_path=str(base), dataset=train_path, eval_dataset=heldout_path,
                     output_dir=str(tmp_path / "sft"), max_steps=1000, per_device_train_batch_size=4,
                     max_length=128, report_to="none", disable_tqdm=True)
    assert main(["sft", config, "--max_steps", "2", "--logging_steps", "1", "--save_strategy", "no"]) == 0
    out = capsys.readouterr().out
    assert "saved the fine-tuned model" in out and "held-out loss on response tokens" in out
    assert (tmp_path / "sft" / "model.safetensors").exists()
    assert main(["sft", config, "--dataset", str(tmp_path / "missing.jsonl"), "--max_steps", "1"]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    assert main(["sft", config, "--model_name_or_path", str(tmp_path / "nowhere"), "--max_steps", "1"]) == 2
    assert "nowhere': no such folder, and it is not a Hugging Face Hub name" in capsys.readouterr().err


def test_lambda_line_warm_up_puts_a_random_lambda_line_on_the_given_share_of_records():
    from lambda_dpo.conditioning import parse_lambda
    from lambda_dpo.sft import SFTArguments, as_listwise_dataset, with_random_lambda_lines

    records = [{"prompt": f"q{i}", "responses": ["a", "b"], "scores": {"x": [1, 0], "y": [0, 1]},
                "system": "Be kind." if i == 3 else None} for i in range(8)]
    data = as_listwise_dataset(records)
    half = with_random_lambda_lines(data, 0.5, seed=0)
    lines = half["system"]
    assert [bool(line and line.startswith("Preference weights:")) for line in lines] == [True, False] * 4
    assert lines[3] == "Be kind."  # a record's own system text is kept
    for line in lines[::2]:  # each line parses back to a λ on the simplex
        weights = parse_lambda(line.split(": ", 1)[1].split("\n")[0], ["x", "y"])
        assert abs(sum(weights.values()) - 1) < 1e-6
    assert len({line for line in lines[::2]}) == 4  # random λ, not one constant line
    quarter = with_random_lambda_lines(data, 0.25, seed=0)["system"]
    assert sum(bool(line and line.startswith("Preference")) for line in quarter) == 2
    assert with_random_lambda_lines(data, 0.0) is data
    with pytest.raises(ValueError, match="lambda_line_fraction"):
        SFTArguments(lambda_line_fraction=1.5)
