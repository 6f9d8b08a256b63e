"""`lambda-dpo train` and `lambda-dpo generate` end to end on a tiny model saved to disk (no network)."""

from __future__ import annotations

import json

import pytest
from _tiny import DATA, gpt2_tokenizer, tiny_llama
from transformers import AutoModelForCausalLM

from lambda_dpo.cli import main


@pytest.fixture(scope="module")
def base_model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("base")
    tokenizer = gpt2_tokenizer()
    tiny_llama(len(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_config(tmp_path, base_model_dir, **extra):
    config = {
        "model_name_or_path": str(base_model_dir),
        "dataset": str(DATA / "helpsteer2" / "train_sample.jsonl"),
        "dataset_format": "helpsteer2",
        "output_dir": str(tmp_path / "run"),
        "max_steps": 2,
        "per_device_train_batch_size": 2,
        "max_length": 160,
        "max_prompt_length": 80,
        "logging_steps": 1,
        "save_strategy": "no",
        "use_cpu": True,
        "report_to": "none",
        "disable_tqdm": True,
        **extra,
    }
    path = tmp_path / "config.yaml"
    import yaml

    path.write_text(yaml.safe_dump(config))
    return path


def test_help_lists_subcommands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for name in ("convert", "train", "generate"):
        assert name in out


def test_train_then_generate_side_by_side(tmp_path, base_model_dir, capsys):
    config = write_config(tmp_path, base_model_dir)
    assert main(["train", str(config), "--beta", "0.2"]) == 0
    run = tmp_path / "run"
    metadata = json.loads((run / "lambda_dpo.json").read_text())
    assert metadata["dimensions"] == ["helpfulness", "correctness", "coherence", "complexity", "verbosity"]
    assert metadata["training"]["beta"] == 0.2
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in lines if "loss" in entry] == [1, 2]
    assert "accuracy/helpfulness" in lines[0]
    AutoModelForCausalLM.from_pretrained(run)
    capsys.readouterr()
    assert main(["generate", "--model", str(run), "--lambda", "helpfulness=1", "--lambda",
                 "verbosity=0.5,coherence=0.5", "--max-new-tokens", "5", "--json", "How do I bake bread?"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [o["lambda"]["helpfulness"] for o in out] == [1.0, 0.0]
    assert all(len(o["responses"]) == 1 for o in out)


def test_metrics_file_holds_one_run_and_a_resume_continues_it(tmp_path, base_model_dir):
    config = write_config(tmp_path, base_model_dir, max_steps=4, save_strategy="steps", save_steps=2)
    metrics = tmp_path / "run" / "metrics.jsonl"

    def logged_steps():
        entries = [json.loads(line) for line in metrics.read_text().splitlines()]
        return [entry["step"] for entry in entries if "loss" in entry]

    for _ in range(2):  # a second fresh run into the same directory replaces the first one's log
        assert main(["train", str(config)]) == 0
        assert logged_steps() == [1, 2, 3, 4]
    # Resuming at step 2 keeps the entries up to step 2 and logs steps 3 and 4 again, once.
    assert main(["train", str(config), "--resume_from_checkpoint", str(tmp_path / "run" / "checkpoint-2")]) == 0
    assert logged_steps() == [1, 2, 3, 4]


def test_generate_rejects_bad_lambda(tmp_path, base_model_dir):
    config = write_config(tmp_path, base_model_dir, max_steps=1)
    assert main(["train", str(config)]) == 0
    with pytest.raises(SystemExit, match="unknown dimension 'kindness'.*known dimensions"):
        main(["generate", "--model", str(tmp_path / "run"), "--lambda", "kindness=1", "hi"])


def test_lora_adapter_and_merged_save_reload(tmp_path, base_model_dir):
    config = write_config(tmp_path, base_model_dir, use_lora=True, reference="adapter-disabled", lora_r=4)
    assert main(["train", str(config)]) == 0
    adapter_dir = tmp_path / "run"
    assert (adapter_dir / "adapter_config.json").exists() and (adapter_dir / "lambda_dpo.json").exists()
    adapted = AutoModelForCausalLM.from_pretrained(adapter_dir)  # through transformers' peft integration
    assert main(["train", str(config), "--merge_lora", "true", "--output_dir", str(tmp_path / "merged")]) == 0
    merged_dir = tmp_path / "merged"
    assert not (merged_dir / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    base = AutoModelForCausalLM.from_pretrained(base_model_dir)
    assert sum(p.numel() for p in merged.parameters()) == sum(p.numel() for p in base.parameters())
    assert adapted is not None


def test_train_reports_bad_data_without_traceback(tmp_path, base_model_dir, capsys):
    config = write_config(tmp_path, base_model_dir, dataset=str(tmp_path / "nope.jsonl"))
    assert main(["train", str(config)]) == 2
    assert "nope.jsonl: no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "p", "responses": ["a", "b"], "scores": {"x": [1, 2]}}\n{"prompt": "p2", "responses": ["a"]\n')
    config = write_config(tmp_path, base_model_dir, dataset=str(bad), dataset_format="listwise", strict=True)
    assert main(["train", str(config)]) == 2
    assert f"{bad}:2" in capsys.readouterr().err


def test_every_subcommand_accepts_both_option_spellings():
    import argparse
    import importlib

    from lambda_dpo.cli import SUBCOMMANDS, accept_both_spellings

    parser = argparse.ArgumentParser()
    importlib.import_module(SUBCOMMANDS["generate"][0]).add_arguments(parser)
    accept_both_spellings(parser)
    for spelling in ("--max-new-tokens", "--max_new_tokens"):
        args = parser.parse_args(["hi", "--model", "m", "--lambda", "a=1", spelling, "7", "--top_p", "0.5"])
        assert args.max_new_tokens == 7 and args.top_p == 0.5
    for module, _ in SUBCOMMANDS.values():  # in every subcommand, both spellings name the same option
        parser = argparse.ArgumentParser()
        importlib.import_module(module).add_arguments(parser)
        accept_both_spellings(parser)
        table = parser._option_string_actions
        for option, action in table.items():
            if option.startswith("--"):
                assert table["--" + option[2:].replace("-", "_")] is action
                assert table["--" + option[2:].replace("_", "-")] is action
