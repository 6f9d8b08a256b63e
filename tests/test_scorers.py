"""Scorers: Python callables by spec, reward models (one multi-output model, or one model per dimension)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _tiny import gpt2_tokenizer
from transformers import LlamaConfig, LlamaForSequenceClassification

from lambda_dpo.demo import world
from lambda_dpo.evaluation.sampling import GenerationPrompt, score_responses, win_rate_report
from lambda_dpo.evaluation.scorers import CallableScorer, CombinedScorer, RewardModelScorer, load_scorer

PAIRS = [
    ("Tell me about Mars.", "Of course! It is a planet. It has two small moons. Take care!"),
    ("How do I make tea?", "Ugh, fine. Here is how. Boil some water. Put a tea bag in a cup. Pour the hot water. Go away."),
    ("What are bees?", "Great question! They are animals."),
]


@pytest.fixture(scope="module")
def tokenizer():
    return gpt2_tokenizer()


@pytest.fixture(scope="module")
def reward_models(tmp_path_factory, tokenizer):
    """Saved tiny reward models: ``named`` (3 outputs named by id2label), ``unnamed`` (2 default-named outputs),
    ``a`` and ``b`` (one output each); ``{name: (directory, model)}``."""
    root = tmp_path_factory.mktemp("reward_models")
    specs = {"named": (3, dict(enumerate(["concise", "detailed", "polite"]))), "unnamed": (2, None),
             "a": (1, None), "b": (1, None)}
    return {name: (str(root / name), save_reward_model(root / name, tokenizer, n, labels, seed=i))
            for i, (name, (n, labels)) in enumerate(specs.items())}


def save_reward_model(path, tokenizer, num_labels, id2label=None, seed=0):
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=num_labels,
                         **({"id2label": id2label} if id2label else {}))
    model = LlamaForSequenceClassification(config)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model


def manual_scores(model, tokenizer, prompt, response):
    """The reward model's logits for one pair, with no padding: what batching must reproduce."""
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], tokenize=False
    )
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    model.config.pad_token_id = tokenizer.pad_token_id
    with torch.no_grad():
        return model(input_ids=ids).logits[0].tolist()


def test_callable_scorer_by_module_spec_is_the_demo_world_scorer():
    scorer = load_scorer(["lambda_dpo.demo.world:scorer"])
    assert isinstance(scorer, CallableScorer)
    for prompt, response in PAIRS:
        assert scorer(prompt, response) == world.score_response(prompt, response)
    batch = scorer.score_batch([p for p, _ in PAIRS], [r for _, r in PAIRS])
    assert batch == [world.score_response(p, r) for p, r in PAIRS]
    assert set(batch[0]) == set(world.DIMENSIONS)


def test_callable_scorer_by_file_spec_and_its_errors(tmp_path):
    path = tmp_path / "judge.py"
    path.write_text(
        "def length(prompt, response):\n    return {'short': -len(response)}\n"
        "def broken(prompt, response):\n    return [1.0]\n"
        "def infinite(prompt, response):\n    return {'short': float('inf')}\n"
    )
    assert load_scorer([f"{path}:length"])("p", "abc") == {"short": -3.0}
    with pytest.raises(ValueError, match="must return a dict"):
        load_scorer([f"{path}:broken"])("p", "r")
    with pytest.raises(ValueError, match="non-finite score inf for dimension 'short'"):
        load_scorer([f"{path}:infinite"])("p", "r")
    with pytest.raises(ValueError, match="has no callable 'missing'"):
        load_scorer([f"{path}:missing"])
    with pytest.raises(ValueError, match="cannot import module 'no_such_module'"):
        load_scorer(["no_such_module:score"])
    with pytest.raises(ValueError, match="module:function"):
        load_scorer(["not-a-spec"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_scorer(["helpfulness=/no/such/dir"])


def test_reward_model_scorer_names_outputs_and_batches_like_single_pairs(reward_models, tokenizer):
    path, model = reward_models["named"]
    scorer = load_scorer([path], batch_size=2)  # a batch of 2 + a batch of 1, with padding
    assert isinstance(scorer, RewardModelScorer) and scorer.dimensions == ["concise", "detailed", "polite"]
    batch = scorer.score_batch([p for p, _ in PAIRS], [r for _, r in PAIRS])
    for (prompt, response), scores in zip(PAIRS, batch):
        assert list(scores) == scorer.dimensions
        assert list(scores.values()) == pytest.approx(manual_scores(model, tokenizer, prompt, response), abs=1e-5)
    # Different responses get different scores: the scorer reads the response, not only the prompt.
    assert batch[0] != scorer(PAIRS[0][0], "Go away.")


def test_reward_model_without_output_names_needs_scorer_dimensions(reward_models):
    path, _ = reward_models["unnamed"]
    with pytest.raises(ValueError, match="--scorer-dimensions"):
        load_scorer([path])
    with pytest.raises(ValueError, match="has 2 outputs but 3 dimension names"):
        load_scorer([path], dimensions=["a", "b", "c"])
    assert load_scorer([path], dimensions=["a", "b"]).dimensions == ["a", "b"]


def test_one_reward_model_per_dimension(reward_models, tokenizer):
    scorer = load_scorer([f"a={reward_models['a'][0]}", f"b={reward_models['b'][0]}"])
    assert isinstance(scorer, CombinedScorer) and scorer.dimensions == ["a", "b"]
    prompt, response = PAIRS[0]
    scores = scorer(prompt, response)
    for name in ("a", "b"):
        expected = manual_scores(reward_models[name][1], tokenizer, prompt, response)[0]
        assert scores[name] == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ValueError, match="has 3 outputs; a name=DIR scorer must have exactly one"):
        load_scorer([f"a={reward_models['named'][0]}"])
    with pytest.raises(ValueError, match=r"\['a'\] are scored by more than one --scorer"):
        load_scorer([f"a={reward_models['a'][0]}", f"a={reward_models['b'][0]}"])


def test_reward_model_scores_feed_win_rates(reward_models):
    """The evaluation's use of a scorer: scores [P, S, m] of generated responses, then paired win rates."""
    scorer = load_scorer([reward_models["unnamed"][0]], dimensions=["a", "b"])
    prompts = [GenerationPrompt(p) for p, _ in PAIRS]
    responses = [[r, r + " More."] for _, r in PAIRS]  # P = 3 prompts × S = 2 samples
    scores = score_responses(scorer, prompts, responses, ["a", "b"])
    assert scores.shape == (3, 2, 2)
    assert scores[2, 1].tolist() == pytest.approx(list(scorer(PAIRS[2][0], PAIRS[2][1] + " More.").values()))
    # Against itself every pair ties: ½; against a copy shifted up on "a" it loses every λ_a-weighted pair.
    same = win_rate_report(scores, scores, {"a": 0.5, "b": 0.5}, ["a", "b"])
    assert same["lambda_weighted"] == {"mean": 0.5, "stderr": 0.0} and same["n"] == 6
    better = scores + np.array([1.0, 0.0])
    report = win_rate_report(scores, better, {"a": 1.0, "b": 0.0}, ["a", "b"])
    assert report["lambda_weighted"]["mean"] == 0.0 and report["per_dimension"]["b"]["mean"] == 0.5
    with pytest.raises(ValueError, match=r"no score for \['c'\]"):
        score_responses(scorer, prompts, responses, ["a", "c"])
