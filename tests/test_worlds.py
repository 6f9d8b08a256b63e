"""The `support` and `travel` worlds: exact scorers by hand, valid listwise data, and a quick end-to-end run per
world with the default steerable recipe (conditioning: lora) that must steer every dimension at the vertices."""

from __future__ import annotations

from dataclasses import replace

import pytest

from lambda_dpo.data import load_listwise
from lambda_dpo.demo.worlds import WORLDS, get_world


def test_support_scorer_by_hand():
    world = get_world("support")
    reply = ("Dear customer, I am so sorry about this. I understand how you feel. I checked your tracking number. "
             "Please send us a photo. Yours sincerely.")
    # 2 empathy sentences; 1 step of the late parcel (the photo is another problem's step); formal register only
    assert world.scorer("I have a late parcel problem.", reply) == {"empathy": 2.0, "formal": 1.0, "solved": 1.0}
    casual = "Hey there! I am so sorry about this. I am so sorry about this. Cheers!"
    assert world.scorer("Can you fix my late parcel?", casual) == {"empathy": 1.0, "formal": 0.0, "solved": 0.0}
    mixed = "Dear customer, Cheers!"  # a casual phrase breaks the formal register
    assert world.scorer("Help me with a broken screen please.", mixed)["formal"] == 0.0
    assert world.scorer("Help me with a broken screen please.", "") == {"empathy": 0.0, "formal": 0.0, "solved": 0.0}
    with pytest.raises(ValueError, match="exactly one entity"):
        world.scorer("Hello?", reply)


def test_travel_scorer_by_hand():
    world = get_world("travel")
    plan = ("Here is a plan for Kyoto. Walk through the bamboo grove. See the great pyramids. "
            "Buy a day pass to save money. Watch your bag in crowded places. You will love it!")
    scores = world.scorer("Plan a day in Kyoto.", plan)
    words = 33
    assert scores == {"informative": pytest.approx(1 / 3), "thrifty": 0.5, "safe": 1.0, "cheerful": 0.5,
                      "brief": max(0.0, (32 - words) / 20)}
    assert world.scorer("What should I do in Oslo?", "Here is a plan for Oslo.")["brief"] == 1.0


@pytest.mark.parametrize("name", ["support", "travel"])
def test_world_data_is_valid_listwise_with_unseen_heldout_phrasings(tmp_path, name):
    world = get_world(name)
    train_path, heldout_path = world.write_world(str(tmp_path), seed=3, num_train=200, num_heldout=16)
    train = load_listwise(train_path, format="listwise", dimensions=world.dimensions, strict=True)
    heldout = load_listwise(heldout_path, format="listwise", dimensions=world.dimensions, strict=True)
    assert len(train) == 200 and len(heldout) == 16
    train_prompts = {r["prompt"][-1]["content"] for r in train}
    assert not train_prompts & {r["prompt"][-1]["content"] for r in heldout}
    ks = {len(r["responses"]) for r in train}
    assert ks == set(range(world.k_range[0], world.k_range[1] + 1))
    for record in train.select(range(20)):
        prompt = record["prompt"][-1]["content"]
        for d in world.dimensions:  # scores are the scorer's, and every dimension ranks something
            assert record["scores"][d] == [world.scorer(prompt, r)[d] for r in record["responses"]]
            assert len(set(record["scores"][d])) > 1
    assert world.make_world(seed=3, num_train=5)[0] == world.make_world(seed=3, num_train=5)[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["support", "travel"])
def test_recipe_steers_every_dimension_of_a_world_it_was_not_tuned_on(tmp_path, name):
    """A reduced run of the recipe (λ-DPO only): at the vertex that asks only for dimension d, the mean score on d
    is higher than at every other vertex, for every dimension of the world."""
    from lambda_dpo.demo.pipeline import METHODS, QUICK, _controllability, _train_method, prepare
    from lambda_dpo.generation import load_model

    world = WORLDS[name]
    s = replace(QUICK, num_train=1600, sft_steps=250, dpo_steps=200, samples=6, eval_prompts=12)
    train, heldout, tokenizer, sft_dir, _ = prepare(str(tmp_path), s, world)
    trainer, metrics, _ = _train_method("λ-DPO", METHODS["λ-DPO"], sft_dir, str(tmp_path / "model"), train, heldout,
                                        tokenizer, s)
    assert metrics["eval_lambda_reliance"] > 0.1
    model, _, metadata = load_model(str(tmp_path / "model"), device="cpu")
    prompts = [r["prompt"][-1]["content"] for r in heldout.select(range(s.eval_prompts))]
    result = _controllability(model, tokenizer, metadata, prompts, replace(s, grid_n=1), "λ-DPO", world)
    dims = world.dimensions
    vertex = {max(p, key=p.get): scores for p, scores in zip(result.grid, result.mean_scores) if max(p.values()) == 1}
    assert sorted(vertex) == sorted(dims)  # the grid of step 1 is the vertices (and the centre)
    for i, d in enumerate(dims):
        others = {o: round(float(vertex[o][i]), 3) for o in dims if o != d}
        assert vertex[d][i] > max(others.values()), f"{name}/{d}: {vertex[d][i]:.3f} at its vertex vs {others}"


@pytest.mark.parametrize("name", ["demo", "support", "travel"])
def test_fresh_records_are_new_candidate_sets_for_one_prompt(name):
    world = get_world(name)
    _, heldout = world.make_world(seed=0, num_train=0, num_heldout=4)
    prompt = heldout[0]["prompt"]
    records = world.fresh_records(prompt, 30, seed=0)
    assert len(records) == 30 and {r["prompt"] for r in records} == {prompt}
    assert records == world.fresh_records(prompt, 30, seed=0)  # deterministic under its seed
    assert records != world.fresh_records(prompt, 30, seed=1)
    assert len({tuple(r["responses"]) for r in records}) > 20  # new candidate sets, not one repeated
    for record in records:  # scored by the world's own scorer
        for i, response in enumerate(record["responses"]):
            assert {d: record["scores"][d][i] for d in world.dimensions} == world.scorer(prompt, response)
    with pytest.raises(ValueError, match="not a prompt"):
        world.fresh_records("What is the weather like on Mars?", 1)


def test_population_oracle_is_the_targets_expectation_given_the_prompt():
    """The oracle's mean score at each λ equals, up to its sampling noise, the exact expectation of the λ-mixed
    target over the same fresh records (computed here by hand), and it follows λ at the vertices."""
    import numpy as np

    from lambda_dpo.demo.pipeline import DemoSettings, oracle_controllability

    world = get_world("support")
    _, heldout = world.make_world(seed=0, num_train=0, num_heldout=2)
    prompts = [r["prompt"] for r in heldout]
    ranges = np.array([4.0, 1.0, 4.0])
    s = DemoSettings(tau=0.05, grid_n=1, seed=0)
    result = oracle_controllability(None, prompts, s, world, ranges, fresh_records=40, samples=2000)
    for point, means in zip(result.grid, result.mean_scores):
        lam = np.array([point[d] for d in world.dimensions])
        exact = []
        for prompt in prompts:
            for record in world.fresh_records(prompt, 40, seed=0):
                scores = np.array([record["scores"][d] for d in world.dimensions])  # [m, k]
                z = scores / ranges[:, None] / s.tau
                targets = np.exp(z - z.max(axis=1, keepdims=True))
                targets /= targets.sum(axis=1, keepdims=True)
                exact.append(scores @ (lam @ targets))
        assert np.allclose(means, np.mean(exact, axis=0), atol=0.1 * ranges), (point, means, np.mean(exact, axis=0))
    vertex = {max(p, key=p.get): np.asarray(m) for p, m in zip(result.grid, result.mean_scores) if max(p.values()) == 1}
    for d, dimension in enumerate(world.dimensions):
        assert all(vertex[dimension][d] > vertex[other][d] for other in world.dimensions if other != dimension)
