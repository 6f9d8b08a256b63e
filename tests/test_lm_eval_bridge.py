"""lm-evaluation-harness bridge: offline local tasks (one multiple-choice, one generation), the λ system
instruction, and clear failures (hub data without network, lm-eval missing)."""

from __future__ import annotations

import sys

import pytest
from _tiny import DATA, gpt2_tokenizer, tiny_llama

from lambda_dpo.evaluation.lm_eval_bridge import LmEvalError, lambda_system_instruction, run_lm_eval
from lambda_dpo.evaluation.report import render_markdown

TASKS = DATA / "lm_eval_tasks"
METADATA = {"dimensions": ["a", "b"], "conditioning_template": "Preference weights: {weights}",
            "condition_on_lambda": True}


@pytest.fixture(scope="module")
def tokenizer():
    return gpt2_tokenizer()


def test_local_tasks_run_offline_with_the_lambda_system_instruction(tmp_path, monkeypatch, tokenizer):
    monkeypatch.chdir(tmp_path)  # relative data_files must resolve against the YAML's folder, not the cwd
    model = tiny_llama(len(tokenizer)).eval()
    seen = []
    model.get_input_embeddings().register_forward_hook(lambda module, args, out: seen.extend(args[0].tolist()))
    instruction = lambda_system_instruction(METADATA, {"a": 0.25, "b": 0.75})
    assert instruction == "Preference weights: a=0.25 b=0.75"
    out = run_lm_eval(model, tokenizer, ["tiny_mc", "tiny_gen"], include_path=TASKS, system_instruction=instruction,
                      batch_size=4)
    mc, gen = out["tasks"]["tiny_mc"], out["tasks"]["tiny_gen"]
    assert set(mc) == {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr"} and 0 <= mc["acc"] <= 1
    assert set(gen) == {"exact_match", "exact_match_stderr"} and 0 <= gen["exact_match"] <= 1
    assert out["num_samples"] == {"tiny_mc": 4, "tiny_gen": 4}
    # Every question the model read (generation steps after the first see only new tokens) is chat-templated
    # with the λ line as its system message.
    texts = [tokenizer.decode(ids).replace(tokenizer.pad_token, " ").strip() for ids in seen]  # pad = eos here
    questions = [text for text in texts if "Question:" in text]
    assert any("How many legs does a spider have?" in q for q in questions)  # multiple choice
    assert any("What is two plus two?" in q for q in questions)  # generation
    assert all(q.startswith("<|system|>\nPreference weights: a=0.25 b=0.75") for q in questions)

    report = render_markdown({
        "model": "m", "data": "d", "num_records": 0, "dimensions": ["a", "b"], "models": ["model"],
        "lm_eval": {"settings": out["settings"], "models": {"model": out}},
    })
    assert f"| tiny_mc | acc | {mc['acc']:.3f} ± {mc['acc_stderr']:.3f} |" in report
    assert f"| tiny_gen | exact_match | {gen['exact_match']:.3f}" in report


def test_unconditioned_model_gets_no_system_instruction():
    assert lambda_system_instruction({**METADATA, "condition_on_lambda": False}, {"a": 1.0, "b": 0.0}) is None
    assert lambda_system_instruction(METADATA, None) is None


def test_hub_task_without_network_fails_with_advice(tmp_path, monkeypatch, tokenizer):
    import datasets.config
    import huggingface_hub.constants

    # Simulate "no network" without waiting for connection retries.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    (tmp_path / "hub_arc.yaml").write_text(
        (TASKS / "tiny_mc.yaml").read_text().replace("task: tiny_mc", "task: hub_arc")
        .replace("dataset_path: json", "dataset_path: allenai/ai2_arc\ndataset_name: ARC-Challenge")
    )
    with pytest.raises(LmEvalError, match=r"could not load task 'hub_arc' \(dataset_path='allenai/ai2_arc'\).*"
                                          r"needs a network.*--lm-eval-include-path"):
        run_lm_eval(tiny_llama(len(tokenizer)), tokenizer, ["hub_arc"], include_path=tmp_path)


def test_missing_lm_eval_and_bad_paths_are_explained(monkeypatch, tokenizer):
    with pytest.raises(LmEvalError, match="not a directory of task YAMLs"):
        run_lm_eval(None, tokenizer, ["tiny_mc"], include_path="/no/such/folder")
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # makes `import lm_eval` fail
    with pytest.raises(LmEvalError, match=r"pip install 'lambda-dpo\[lm-eval\]'"):
        run_lm_eval(None, tokenizer, ["tiny_mc"], include_path=TASKS)
