"""The demo world (prompts, candidates, exact scorers) and its tiny tokenizer and model."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from scipy.stats import spearmanr

from lambda_dpo.conditioning import render_lambda
from lambda_dpo.demo.tiny import make_tiny_llama, train_tokenizer
from lambda_dpo.demo.world import (
    DIMENSIONS,
    ENTITIES,
    find_entity,
    make_world,
    score_response,
    scorer,
    split_prompts,
    vocabulary_texts,
    write_world,
)


@pytest.fixture(scope="module")
def world():
    return make_world(seed=0, num_train=400, num_heldout=16, k=4)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(vocabulary_texts())


def test_world_is_deterministic_under_its_seed():
    assert make_world(seed=7, num_train=50, num_heldout=10) == make_world(seed=7, num_train=50, num_heldout=10)
    assert make_world(seed=7, num_train=50, num_heldout=10) != make_world(seed=8, num_train=50, num_heldout=10)


def test_records_are_native_listwise_and_scored_by_the_scorer(world):
    train, heldout = world
    assert len(train) == 400 and len(heldout) == 16
    assert len({r["id"] for r in train + heldout}) == 416
    for record in train + heldout:
        assert set(record) == {"id", "prompt", "responses", "scores"}
        assert len(record["responses"]) == 4
        assert list(record["scores"]) == DIMENSIONS
        for i, response in enumerate(record["responses"]):
            assert score_response(record["prompt"], response) == {d: record["scores"][d][i] for d in DIMENSIONS}


def test_every_dimension_ranks_the_candidates_of_every_prompt(world):
    for record in world[0]:
        for dimension in DIMENSIONS:
            assert len(set(record["scores"][dimension])) > 1, (record["id"], dimension)


def test_concise_and_detailed_conflict_and_polite_is_independent(world):
    def mean_spearman(a, b):
        return np.mean([spearmanr(r["scores"][a], r["scores"][b])[0] for r in world[0]])

    assert mean_spearman("concise", "detailed") < -0.7
    assert abs(mean_spearman("polite", "concise")) < 0.15
    assert abs(mean_spearman("polite", "detailed")) < 0.15
    # Steering is only observable if the dimensions prefer different responses: count disagreements of the best.
    best = {d: [int(np.argmax(r["scores"][d])) for r in world[0]] for d in DIMENSIONS}
    for a, b in [("concise", "detailed"), ("concise", "polite"), ("detailed", "polite")]:
        assert np.mean(np.array(best[a]) != np.array(best[b])) > 0.5, (a, b)


def test_scores_are_exact_on_hand_checked_responses():
    # 13 words: (24 - 13) / 16; one true fact of three; two courteous phrases.
    text = "Of course! It is a planet. It has two small moons. Take care!"
    assert score_response("Tell me about Mars.", text) == {"concise": 11 / 16, "detailed": 1 / 3, "polite": 1.0}
    # 19 words; a false fact (Tokyo's) about Paris adds words, not detail; one curt + one courteous phrase.
    text = "Ugh, fine. It is a city. It is the capital of Japan. It lies on the Seine. Thank you!"
    assert score_response("Describe Paris.", text) == {"concise": 5 / 16, "detailed": 1 / 3, "polite": 0.5}
    # Repeating a fact or a courtesy does not raise a score; each distinct phrase counts once.
    text = "It lies on the Seine. It lies on the Seine. Thank you! Thank you!"
    assert score_response("Describe Paris.", text)["detailed"] == 1 / 3
    assert score_response("Describe Paris.", text)["polite"] == 0.75


@pytest.mark.parametrize(
    "garbage",
    ["", None, "   ", "\x00\ufffd☃ 🙂", "moons moons moons " * 200, "Go away. Stop asking. Now leave. Ugh, fine.",
     "<|end|><s> It has two small moons It has the tallest volcano"],
)
def test_scorer_is_robust_to_garbage(garbage):
    scores = scorer("What is Mars?", garbage)
    assert list(scores) == DIMENSIONS
    assert all(0.0 <= v <= 1.0 and np.isfinite(v) for v in scores.values())
    assert score_response("What is Mars?", "") == {"concise": 1.0, "detailed": 0.0, "polite": 0.5}


def test_scorer_recovers_the_entity_from_any_prompt_form():
    assert find_entity("How can I make tea?").name == "make tea"
    assert find_entity("Preference weights: concise=1.00\nWhat do you know about owls?").name == "owls"
    assert find_entity([{"role": "system", "content": "x"}, {"role": "user", "content": "Describe Rome."}]).name == "Rome"
    assert score_response({"prompt": "Describe Rome."}, "It has the Colosseum.")["detailed"] == 1 / 3
    with pytest.raises(ValueError, match="exactly one entity"):
        scorer("Tell me about Atlantis.", "text")
    with pytest.raises(ValueError, match="exactly one entity"):
        scorer("Compare Paris and Rome.", "text")


def test_heldout_prompts_are_unseen_phrasings_of_known_entities(world):
    train, heldout = world
    train_prompts = {r["prompt"] for r in train}
    heldout_prompts = {r["prompt"] for r in heldout}
    assert heldout_prompts and not heldout_prompts & train_prompts
    assert len(heldout_prompts) == len(ENTITIES)  # num_heldout=16: each held-out prompt once
    assert {find_entity(p) for p in heldout_prompts} <= {find_entity(p) for p in train_prompts}
    train_pool, heldout_pool = split_prompts(0)
    assert not set(train_pool) & set(heldout_pool)


def test_candidates_do_not_depend_on_lambda(world):
    # No conditioning text anywhere: λ is added only at training time.
    for record in world[0]:
        assert "Preference" not in record["prompt"] and not any("=" in r for r in record["responses"])


def test_write_world_round_trips_through_the_data_loader(tmp_path):
    from lambda_dpo.data import load_listwise

    train_path, heldout_path = write_world(str(tmp_path), seed=1, num_train=30, num_heldout=6, k=5)
    assert sorted(os.listdir(tmp_path)) == ["heldout.jsonl", "train.jsonl"]  # no temporary file left behind
    with open(train_path) as f:
        records = [json.loads(line) for line in f]
    assert records == make_world(seed=1, num_train=30, num_heldout=6, k=5)[0]
    dataset = load_listwise(heldout_path, strict=True, keep_in_memory=True)
    assert len(dataset) == 6 and dataset[0]["responses"] == make_world(1, 30, 6, 5)[1][0]["responses"]


def test_make_world_rejects_bad_arguments():
    with pytest.raises(ValueError, match="k must be"):
        make_world(k=1)
    with pytest.raises(ValueError, match="false_fact_rate"):
        make_world(false_fact_rate=1.0)


def test_tokenizer_round_trips_the_world_with_word_tokens(tokenizer, world):
    texts = [t for r in world[0][:100] + world[1] for t in [r["prompt"], *r["responses"]]]
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
        assert tokenizer.unk_token_id not in ids
        # One token per word or punctuation mark: nothing of the world is split into sub-words.
        assert len(ids) == len(text.split()) + sum(text.count(c) for c in ".,!?")
    assert max(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts) <= 34  # + <|end|>: 35


def test_tokenizer_reads_lambda_weights_in_two_tokens_each(tokenizer):
    line = render_lambda([0.5, 0.2, 0.3], DIMENSIONS)
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(line, add_special_tokens=False)["input_ids"])
    assert tokens == ["Preference", "▁weights", ":", "▁concise", "=", "0.5", "0", "▁detailed", "=", "0.2", "0",
                      "▁polite", "=", "0.3", "0"]
    for value in ["0.00", "0.07", "0.33", "1.00"]:
        assert tokenizer.decode(tokenizer(value, add_special_tokens=False)["input_ids"]) == value
        assert len(tokenizer(value, add_special_tokens=False)["input_ids"]) == 2
    # Text outside the world still encodes and decodes exactly (ASCII base alphabet).
    odd = "Zebra xylophone 12.5% {curly} \ttab"
    assert tokenizer.decode(tokenizer(odd, add_special_tokens=False)["input_ids"]) == odd


def test_chat_template_is_compact_and_prompt_is_a_prefix(tokenizer):
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Describe Mars."}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert prompt == "<s><|system|>S<|end|><|user|>Describe Mars.<|end|><|assistant|>"
    full = tokenizer.apply_chat_template([*messages, {"role": "assistant", "content": "Go away."}], tokenize=False)
    assert full == prompt + "Go away.<|end|>"
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    assert full_ids[: len(prompt_ids)] == prompt_ids and full_ids[-1] == tokenizer.eos_token_id


def test_tokenizer_and_model_save_and_reload(tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = make_tiny_llama(tokenizer, hidden=32, layers=1, heads=2)
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    line = render_lambda([0.5, 0.2, 0.3], DIMENSIONS) + "\nOf course! It is a city."
    assert reloaded(line)["input_ids"] == tokenizer(line)["input_ids"]
    assert reloaded.chat_template == tokenizer.chat_template and reloaded.eos_token == "<|end|>"
    assert AutoModelForCausalLM.from_pretrained(tmp_path).generation_config.eos_token_id == tokenizer.eos_token_id


def test_tiny_llama_is_small_tied_and_seeded(tokenizer):
    model = make_tiny_llama(tokenizer)
    params = sum(p.numel() for p in model.parameters())
    assert 0.5e6 < params < 3e6
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.config.vocab_size == len(tokenizer)
    same = make_tiny_llama(tokenizer)
    assert all((a == b).all() for a, b in zip(model.parameters(), same.parameters()))
    assert not (make_tiny_llama(tokenizer, seed=1).lm_head.weight == model.lm_head.weight).all()
