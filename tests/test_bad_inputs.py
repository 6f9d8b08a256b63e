"""Bad settings end in one clear line that names the setting (exit code ≠ 0, no traceback): a table, one case per
class of mistake, so that none comes back. Bad records (one rejection per record, with file:line:field, the rest
kept) have their own table in test_data_validation.py."""

from __future__ import annotations

import pytest

from lambda_dpo.cli import main

BAD_TRAIN_SETTINGS = [  # (override, what the message must name)
    (["--beta", "0"], "beta must be a finite number > 0"),
    (["--beta", "-1"], "beta must be a finite number > 0"),
    (["--beta", "inf"], "beta must be a finite number > 0, got beta=inf"),
    (["--beta", "nan"], "beta must be a finite number > 0"),
    (["--tau", "0"], "tau must be a finite number > 0"),
    (["--tau", "nan"], "tau must be a finite number > 0"),
    (["--loss", "foo"], "loss='foo' is not one of"),
    (["--lambda_schedule", "random"], "lambda_schedule='random' is not one of"),
    (["--logprob_reduction", "max"], "logprob_reduction='max' is not one of"),
    (["--conditioning", "prefix"], "conditioning='prefix' is not one of"),
    (["--reference", "adapter-disabled"], "reference=adapter-disabled needs use_lora=true"),
    (["--nll_weight", "-1"], "nll_weight must be >= 0"),
    (["--per_device_train_batch_size", "0"], "per_device_train_batch_size must be ≥ 1"),
    (["--dimensions", "a", "b", "a"], "dimensions lists ['a'] more than once"),
    (["--lambda_schedule_kwargs", "{bad"], "lambda_schedule_kwargs='{bad' is not valid JSON"),
    (["--lambda_schedule_kwargs", "[1, 2]"], "lambda_schedule_kwargs must be a JSON object"),
    (["--conditioning_template", "W {weights} {user}"], "conditioning_template 'W {weights} {user}' has a field"),
    (["--conditioning_template", "no field"], "must contain {weights}"),
    (["--conditioning", "lora", "--use_lora", "true"], "conditioning=lora with use_lora=true is not supported"),
    (["--betaa", "0.2"], "unknown option --betaa; did you mean --beta?"),
    (["--lambda-schedul", "uniform"], "unknown option --lambda-schedul; did you mean --lambda_schedule?"),
]


@pytest.mark.parametrize(("override", "message"), BAD_TRAIN_SETTINGS, ids=[" ".join(c[0]) for c in BAD_TRAIN_SETTINGS])
def test_bad_train_setting_is_one_line_naming_it(tmp_path, override, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model_name_or_path", "unused", "--dataset", "unused.jsonl",
              "--output_dir", str(tmp_path / "out"), *override])
    text = str(exit_info.value.code)
    assert message in text, text
    assert "\n" not in text and text.startswith("lambda-dpo train: ")


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """A tiny model folder with its tokenizer, and one without."""
    from _tiny import gpt2_tokenizer, tiny_llama

    root = tmp_path_factory.mktemp("models")
    tokenizer = gpt2_tokenizer()
    tiny_llama(len(tokenizer)).save_pretrained(root / "full")
    tokenizer.save_pretrained(root / "full")
    tiny_llama(len(tokenizer)).save_pretrained(root / "no_tokenizer")
    return root


def _records(path, extra=()):
    import json

    rows = [{"id": f"r{i}", "prompt": f"question {i}", "responses": ["a b", "c d e", "f"],
             "scores": {"help": [1, 2, 3], "safe": [3, 1, 2]}} for i in range(4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in [*rows, *extra]))
    return str(path)


def _system_record(record_id, words):
    return {"id": record_id, "prompt": [{"role": "system", "content": "be nice " * words},
                                        {"role": "user", "content": "hi"}],
            "responses": ["a", "b"], "scores": {"help": [1, 2], "safe": [2, 1]}}


BAD_TRAIN_RUNS = [  # (override, what the message must name); these get past the settings to the model and data
    (["--model_name_or_path", "MISSING"], "no such folder, and it is not a Hugging Face Hub name"),
    (["--model_name_or_path", "NO_TOKENIZER"], "has no tokenizer (none of tokenizer.json"),
    (["--model_name_or_path", "NOT_A_MODEL"], "is a folder without config.json"),
    (["--output_dir", "/proc/not-here"], "output_dir='/proc/not-here' is not a writable folder"),
    (["--max_prompt_length", "200", "--max_length", "100"], "need 0 < max_prompt_length < max_length"),
    (["--lambda_schedule", "fixed", "--lambda_schedule_kwargs", '{"weights": {"help": 0.5, "safe": 0.6}}'],
     "are not on the simplex"),
    (["--lambda_schedule", "fixed", "--lambda_schedule_kwargs", '{"weights": {"help": 0.5, "x": 0.5}}'],
     "unknown dimension(s) ['x']"),
    # the system text fits alone but not with the λ line: found before training, not at the step that draws it
    (["--dataset", "SYSTEM_FITS_ALONE"], "1 record(s) cannot fit their prompt in max_prompt_length=48 tokens with "
                                         "the λ line"),
    (["--dataset", "SYSTEM_TOO_LONG", "--condition_on_lambda", "false"], "record 'LONG': the prompt cannot fit in 48"),
]


@pytest.mark.parametrize(("override", "message"), BAD_TRAIN_RUNS, ids=[" ".join(c[0]) for c in BAD_TRAIN_RUNS])
def test_bad_model_data_or_output_is_one_line_naming_it(tmp_path, model_dirs, capsys, override, message):
    names = {"MISSING": str(tmp_path / "missing"), "NO_TOKENIZER": str(model_dirs / "no_tokenizer"),
             "NOT_A_MODEL": str(tmp_path),
             "SYSTEM_FITS_ALONE": _records(tmp_path / "near.jsonl", [_system_record("NEAR", 11)]),
             "SYSTEM_TOO_LONG": _records(tmp_path / "long.jsonl", [_system_record("LONG", 40)])}
    override = [names.get(o, o) for o in override]
    args = ["train", "--model_name_or_path", str(model_dirs / "full"), "--dataset", _records(tmp_path / "d.jsonl"),
            "--output_dir", str(tmp_path / "out"), "--max_steps", "1", "--per_device_train_batch_size", "2",
            "--max_length", "128", "--max_prompt_length", "48", "--use_cpu", "true", "--report_to", "none",
            "--save_strategy", "no", "--disable_tqdm", "true", *override]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    text = str(exit_info.value.code)
    assert message in text, text
    assert "\n" not in text and text.startswith("lambda-dpo train: ")
    assert "Traceback" not in capsys.readouterr().err


def test_a_system_text_that_fits_alone_trains_unconditioned(tmp_path, model_dirs):
    """The prompt-budget check above is about the λ line: the same record trains when λ is not rendered."""
    data = _records(tmp_path / "near.jsonl", [_system_record("NEAR", 11)])
    assert main(["train", "--model_name_or_path", str(model_dirs / "full"), "--dataset", data,
                 "--output_dir", str(tmp_path / "out"), "--max_steps", "1", "--per_device_train_batch_size", "2",
                 "--max_length", "128", "--max_prompt_length", "48", "--use_cpu", "true", "--report_to", "none",
                 "--save_strategy", "no", "--disable_tqdm", "true", "--condition_on_lambda", "false"]) == 0


def test_eval_of_a_folder_without_tokenizer_is_one_line(tmp_path, model_dirs, capsys):
    data = _records(tmp_path / "d.jsonl")
    assert main(["eval", "--model", str(model_dirs / "no_tokenizer"), "--data", data,
                 "--out", str(tmp_path / "ev")]) != 0
    err = capsys.readouterr().err.strip()
    assert "has no tokenizer" in err and "Traceback" not in err and err.startswith("lambda-dpo eval: ")


def test_duplicate_yaml_keys_are_rejected_with_the_line(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("beta: 0.1\ntau: 1.0\nbeta: 0.5\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["train", str(config), "--output_dir", str(tmp_path / "out")])
    text = str(exit_info.value.code)
    assert str(config) in text and "'beta' is given twice (line 3)" in text


def test_a_schedule_state_that_is_not_plain_tensors_is_refused(tmp_path):
    """A crafted checkpoint cannot run code on resume: the schedule state loads with weights_only=True."""
    import os

    import torch

    from lambda_dpo.checkpoints import load_schedule_state

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    path = tmp_path / "lambda_schedule_rank0.pt"
    torch.save({"generator_state": Exploit()}, path)
    with pytest.raises(ValueError, match="not a λ schedule state written by lambda-dpo"):
        load_schedule_state(str(path))
    assert not (tmp_path / "pwned").exists()
    torch.save({"name": "uniform", "generator_state": torch.Generator().get_state(), "num_sampled": 3}, path)
    assert load_schedule_state(str(path))["num_sampled"] == 3


def test_a_folder_is_read_file_by_file_with_the_same_rules(tmp_path):
    from lambda_dpo.data import load_listwise

    folder = tmp_path / "data"
    (folder / "more").mkdir(parents=True)
    (folder / "a.jsonl").write_text('{"prompt": "a", "responses": ["x", "y"], "scores": {"h": [1, 0]}}\n{bad json\n')
    (folder / "more" / "b.jsonl").write_text('{"prompt": "b", "responses": ["x", "y"], "scores": {"h": ["4", 0]}}\n')
    data, report = load_listwise(str(folder), return_report=True)
    assert len(data) == 1
    locations = [r.location for r in report.rejections]
    assert locations == [f"{folder}/a.jsonl:2", f"{folder}/more/b.jsonl:1"]


def test_a_truncated_gzip_file_is_one_error_naming_it(tmp_path):
    import gzip

    from lambda_dpo.data import DataError, load_listwise

    line = b'{"prompt": "a", "responses": ["x", "y"], "scores": {"h": [1, 0]}}\n'
    packed = gzip.compress(line * 200)
    path = tmp_path / "data.jsonl.gz"
    path.write_bytes(packed[: len(packed) // 2])
    with pytest.raises(DataError, match=r"data.jsonl.gz: truncated or corrupt gzip file"):
        load_listwise(str(path))


# ------------------------------------------------------------------------------------------------ faults
def _trainer(tmp_path, **overrides):
    from _tiny import gpt2_tokenizer, tiny_llama
    from test_trainer import config, write_records

    from lambda_dpo.data import load_listwise
    from lambda_dpo.trainer import LambdaDPOTrainer

    tokenizer = gpt2_tokenizer()
    data = load_listwise(str(write_records(tmp_path / "d.jsonl", n=8)))
    args = config(tmp_path, **{"max_steps": 4, "save_strategy": "steps", "save_steps": 2, **overrides})
    return LambdaDPOTrainer(tiny_llama(len(tokenizer)), args, train_dataset=data, processing_class=tokenizer,
                            ref_model=tiny_llama(len(tokenizer), seed=1))


def test_resume_skips_a_checkpoint_cut_short_and_says_which_it_uses(tmp_path, caplog):
    import shutil

    from lambda_dpo.checkpoints import complete_checkpoints

    trainer = _trainer(tmp_path)
    trainer.train()
    out = tmp_path / "out"
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    # A kill -9 while checkpoint-6 was written: its trainer_state.json is missing or cut in the middle.
    shutil.copytree(out / "checkpoint-4", out / "checkpoint-6")
    (out / "checkpoint-6" / "trainer_state.json").write_text('{"global_step": 6, "log_hist')
    assert complete_checkpoints(str(out)) == [str(out / "checkpoint-2"), str(out / "checkpoint-4")]
    (out / "checkpoint-4" / "trainer_state.json").unlink()
    resumed = _trainer(tmp_path)
    with caplog.at_level("WARNING", logger="lambda_dpo.trainer"):
        resumed.train(resume_from_checkpoint=True)
    assert any(r.message.startswith("resuming from") and "checkpoint-2, the last complete" in r.message
               for r in caplog.records)
    assert [h["loss"] for h in resumed.state.log_history if "loss" in h][-2:] == pytest.approx(losses[-2:], abs=1e-6)


def test_non_finite_weights_are_never_saved_as_a_checkpoint(tmp_path):
    import torch

    trainer = _trainer(tmp_path, max_steps=2, save_steps=1)
    trainer.train()
    with torch.no_grad():
        next(trainer.model.parameters()).fill_(float("nan"))
    trainer.state.global_step = 3
    with pytest.raises(FloatingPointError, match="non-finite weights at step 3 .*checkpoint-3 was not written"):
        trainer._save_checkpoint(trainer.model, None)
    assert not (tmp_path / "out" / "checkpoint-3").exists()


def test_a_full_disk_leaves_no_partial_checkpoint_and_says_so(tmp_path, monkeypatch):
    import errno

    from transformers import Trainer

    def full_disk(self, output_dir):
        raise OSError(errno.ENOSPC, "No space left on device")

    trainer = _trainer(tmp_path, max_steps=2, save_steps=2)
    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", full_disk)
    with pytest.raises(OSError, match=r"could not write checkpoint-2 to .*checkpoint-2 \(no space left on device\)"):
        trainer.train()
    assert not (tmp_path / "out" / "checkpoint-2").exists()


def test_divergence_without_nan_is_warned_with_the_step(tmp_path, caplog):
    from transformers import TrainerControl, TrainerState

    from lambda_dpo.trainer import DivergenceCallback, LambdaDPOConfig

    args = LambdaDPOConfig(output_dir=str(tmp_path), learning_rate=1e6, report_to="none")
    state, control = TrainerState(), TrainerControl()
    callback = DivergenceCallback()
    with caplog.at_level("WARNING", logger="lambda_dpo.trainer"):
        for step, (loss, grad) in enumerate([(1.4, 3.0), (1.3, 0.0), (1.3, 0.0), (1.3, 0.0), (1.3, 0.0)], 1):
            state.global_step = step
            callback.on_log(args, state, control, logs={"loss": loss, "grad_norm": grad})
        state.global_step = 9
        callback.on_log(args, state, control, logs={"loss": 1.6e5, "grad_norm": 2e5})
    messages = [r.message for r in caplog.records]
    assert sum("gradient norm is exactly 0" in m for m in messages) == 1 and "(step 4)" in messages[0]
    assert any("gradient norm is 2e+05 at step 9" in m for m in messages)
    assert any("loss is 1.6e+05 at step 9, over 10× its first value 1.4" in m for m in messages)


@pytest.mark.parametrize(("extra", "message"), [
    (["--num-samples", "0"], "--num-samples must be ≥ 1, got 0"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be ≥ 1, got 0"),
    (["--temperature", "0"], "--temperature must be > 0 when sampling"),
    (["--top-p", "1.5"], "--top-p must be in (0, 1]"),
    (["--model", "/nonexistent/model"], "no such folder"),
    (["--model", "PLAIN"], "has no lambda_dpo.json: it is not a lambda-dpo model"),
    (["--prompt-is-empty"], "the prompt is empty"),
])
def test_bad_generate_arguments_are_one_line(tmp_path, capsys, extra, message):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.json").write_text("{}")
    prompt = "   " if extra == ["--prompt-is-empty"] else "hello"
    extra = [] if extra == ["--prompt-is-empty"] else [str(tmp_path / "plain") if e == "PLAIN" else e for e in extra]
    args = ["generate", prompt, "--model", str(tmp_path / "plain"), "--lambda", "a=1", *extra]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and err.startswith("lambda-dpo generate: ")


def test_an_unforeseen_error_is_one_line_unless_debug_is_asked_for(monkeypatch, capsys):
    import lambda_dpo.cli.export

    def broken(args):
        raise RuntimeError("something\nbroke")

    monkeypatch.setattr(lambda_dpo.cli.export, "run", broken)
    monkeypatch.delenv("LAMBDA_DPO_DEBUG", raising=False)
    assert main(["export", "--model", "m", "--lambda", "a=1", "--out", "o"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("lambda-dpo export: unexpected RuntimeError: something broke (set LAMBDA_DPO_DEBUG=1 for the "
                   "traceback, and please report it)")
    monkeypatch.setenv("LAMBDA_DPO_DEBUG", "1")
    with pytest.raises(RuntimeError, match="broke"):
        main(["export", "--model", "m", "--lambda", "a=1", "--out", "o"])
