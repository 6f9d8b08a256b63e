"""The demo's procedural multi-objective world: prompts, k candidate responses each, and exact scorers.

A prompt asks about one entity of a small facts table ("Tell me about Mars.", "How do I make tea?"). Every
candidate response has the same shape::

    <opener> <intro> <fact 1> … <fact n> <closer>        e.g.  "Of course! It is a planet. It has two small
                                                               moons. Take care!"

and the candidates of a prompt differ along three measured dimensions:

- ``concise``  = clip((24 − words) / 16, 0, 1): up to 8 words is fully concise, 24 or more words scores 0;
- ``detailed`` = (distinct true facts about the prompt's entity) / 3;
- ``polite``   = clip(0.5 + (courteous phrases − curt phrases) / 4, 0, 1): 0, ½ or 1 for the candidates.

``concise`` and ``detailed`` conflict: every fact costs words. ``polite`` is independent of both because every
opener and closer, courteous or curt, is exactly two words long. A candidate states facts in the table's order
(n distinct across the candidates of a prompt while k ≤ 4): a fixed order keeps the world learnable by a 0.4 M
parameter model in a few hundred steps. Each stated fact is false with probability ``false_fact_rate`` (the same
slot's fact of another entity of that kind, e.g. "It is the capital of Japan." about Paris); a false fact costs words
and adds no detail. This gives ``detailed`` a lever of its own (say true facts) besides the length it shares with
``concise``: when two dimensions are exact opposites, any behaviour that is a function of λ_c − λ_d reaches at best
Spearman ≈ 0.85 between λ_d and score_d over a simplex grid.

Nothing in a candidate depends on λ: λ is only the training-time conditioning, so a model that never sees λ cannot
be steered by it. Held-out prompts are unseen *phrasings* of known entities (one phrasing per entity is held out),
so a model can know the facts without having seen the prompt text.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from lambda_dpo.atomic import write_jsonl
from lambda_dpo.conditioning import render_lambda

DIMENSIONS = ["concise", "detailed", "polite"]
FACTS_PER_ENTITY = 3
CONCISE_FREE_WORDS = 8  # answers this short are fully concise
CONCISE_ZERO_WORDS = 24  # answers this long or longer have concise = 0

COURTEOUS_OPENERS = ("Great question!", "Of course!", "Gladly, friend!")
CURT_OPENERS = ("Ugh, fine.", "Whatever, listen.", "Obviously, duh.")
COURTEOUS_CLOSERS = ("Thank you!", "Take care!", "Kind regards!")
CURT_CLOSERS = ("Stop asking.", "Go away.", "Now leave.")

_TOPIC_PHRASINGS = ("Tell me about {}.", "What do you know about {}?", "Describe {}.")
PHRASINGS = {
    "city": ("What is {}?", *_TOPIC_PHRASINGS),
    "planet": ("What is {}?", *_TOPIC_PHRASINGS),
    "animal": ("What are {}?", *_TOPIC_PHRASINGS),
    "task": ("How do I {}?", "How can I {}?", "What are the steps to {}?", "Explain how to {}."),
}
INTROS = {"city": "It is a city.", "planet": "It is a planet.", "animal": "They are animals.", "task": "Here is how."}

# kind -> name -> its facts, in the order candidates state them.
FACTS: dict[str, dict[str, tuple[str, ...]]] = {
    "city": {
        "Paris": ("It is the capital of France.", "It lies on the Seine.", "It has the Eiffel Tower."),
        "Tokyo": ("It is the capital of Japan.", "It sits on Tokyo Bay.", "It has busy train stations."),
        "Cairo": ("It is the capital of Egypt.", "It lies on the Nile.", "It is near the pyramids."),
        "Rome": ("It is the capital of Italy.", "It has the Colosseum.", "It was built on seven hills."),
    },
    "planet": {
        "Venus": ("It is the hottest planet.", "It spins backwards.", "It has thick clouds."),
        "Mars": ("It is called the Red Planet.", "It has two small moons.", "It has the tallest volcano."),
        "Jupiter": ("It is the largest planet.", "It has a Great Red Spot.", "It has dozens of moons."),
        "Saturn": ("It has bright rings.", "It could float in water.", "It has a moon called Titan."),
    },
    "animal": {
        "penguins": ("They cannot fly.", "They swim very well.", "They live in cold places."),
        "owls": ("They hunt at night.", "They can turn their heads far.", "They fly silently."),
        "camels": ("They live in deserts.", "They store fat in humps.", "They can go weeks without water."),
        "bees": ("They make honey.", "They live in hives.", "They pollinate flowers."),
    },
    "task": {
        "make tea": ("Boil some water.", "Put a tea bag in a cup.", "Pour the hot water."),
        "plant a tree": ("Dig a deep hole.", "Place the roots inside.", "Fill the hole with soil."),
        "bake bread": ("Mix flour and water.", "Let the dough rise.", "Bake it for an hour."),
        "wash a car": ("Rinse it with water.", "Scrub it with soap.", "Dry it with a towel."),
    },
}

_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _normalized(text: str) -> str:
    """Lower-case words joined by single spaces and padded with spaces, so ``" x y " in`` tests whole words."""
    return " " + " ".join(_words(text)) + " "


@dataclass(frozen=True)
class Entity:
    """One row of the facts table."""

    kind: str
    name: str
    facts: tuple[str, ...]


ENTITIES: tuple[Entity, ...] = tuple(
    Entity(kind, name, facts) for kind, table in FACTS.items() for name, facts in table.items()
)
_BY_NAME = {_normalized(e.name): e for e in ENTITIES}


def find_entity(prompt: str | Sequence[Mapping[str, str]]) -> Entity:
    """The entity a prompt asks about, found by its name's words in the prompt (any phrasing, extra text allowed).

    ``prompt`` is the user text or a list of chat messages. Raises ``ValueError`` when no entity, or more than one,
    is named: scoring a response needs to know which facts are true.
    """
    if not isinstance(prompt, str):
        prompt = " ".join(m.get("content", "") for m in prompt if m.get("role") == "user")
    text = _normalized(prompt)
    found = [entity for key, entity in _BY_NAME.items() if key in text]
    if len(found) != 1:
        names = [e.name for e in found] or "none"
        raise ValueError(
            f"prompt {prompt!r} must name exactly one entity of the demo world (found: {names}); known entities: "
            f"{[e.name for e in ENTITIES]}"
        )
    return found[0]


def _count_present(phrases: Sequence[str], text: str) -> int:
    return sum(_normalized(p) in text for p in phrases)


def score_response(prompt: Entity | str | Mapping, response: str | None) -> dict[str, float]:
    """Exact scores in [0, 1] of one response on every dimension (see the module docstring for the formulas).

    ``prompt`` is an :class:`Entity`, a prompt text, or a record with a ``"prompt"``. Any text is accepted as the
    response — empty, ``None`` or garbage from a half-trained model — and only whole-word matches of the world's
    phrases count, each distinct phrase once, so repeating a fact or a courtesy does not raise a score.
    """
    if isinstance(prompt, Mapping):
        prompt = prompt["prompt"]
    entity = prompt if isinstance(prompt, Entity) else find_entity(prompt)
    response = response if isinstance(response, str) else ""
    text = _normalized(response)
    words = len(_words(response))
    courtesy = _count_present(COURTEOUS_OPENERS + COURTEOUS_CLOSERS, text)
    curtness = _count_present(CURT_OPENERS + CURT_CLOSERS, text)
    return {
        "concise": min(1.0, max(0.0, (CONCISE_ZERO_WORDS - words) / (CONCISE_ZERO_WORDS - CONCISE_FREE_WORDS))),
        "detailed": _count_present(entity.facts, text) / len(entity.facts),
        "polite": min(1.0, max(0.0, 0.5 + (courtesy - curtness) / 4)),
    }


def scorer(prompt: str, response: str) -> dict[str, float]:
    """``(prompt text, response text) -> {dimension: score}``: the form evaluation code plugs in."""
    return score_response(prompt, response)


def prompt_text(entity: Entity, phrasing: int) -> str:
    return PHRASINGS[entity.kind][phrasing].format(entity.name)


def render_response(entity: Entity, facts: Sequence[str], opener: str, closer: str) -> str:
    """``"<opener> <intro> <facts…> <closer>"``: the shape of every candidate."""
    return " ".join([opener, INTROS[entity.kind], *facts, closer])


def _stated_facts(entity: Entity, count: int, false_fact_rate: float, rng: random.Random) -> list[str]:
    """The entity's first ``count`` facts, each replaced with probability ``false_fact_rate`` by the same slot's
    fact of another entity of its kind (a plausible falsehood of about the same length)."""
    others = [e for e in ENTITIES if e.kind == entity.kind and e != entity]
    return [
        rng.choice(others).facts[slot] if rng.random() < false_fact_rate else entity.facts[slot]
        for slot in range(count)
    ]


def _candidates(entity: Entity, k: int, false_fact_rate: float, rng: random.Random) -> list[str]:
    """k responses: fact counts distinct while k ≤ 4, false facts drawn per slot, courtesy styles drawn independently
    of both; styles and facts are redrawn until neither the politeness nor the true-fact counts are all tied."""
    levels = list(range(FACTS_PER_ENTITY + 1))
    counts = rng.sample(levels, min(k, len(levels))) + [rng.choice(levels) for _ in range(k - len(levels))]
    while True:
        stated = [_stated_facts(entity, n, false_fact_rate, rng) for n in counts]
        if len({sum(f in entity.facts for f in facts) for facts in stated}) > 1:
            break
    while True:
        styles = [(rng.random() < 0.5, rng.random() < 0.5) for _ in range(k)]
        if len({a + b for a, b in styles}) > 1:
            break
    return [
        render_response(
            entity,
            facts,
            rng.choice(COURTEOUS_OPENERS if courteous_open else CURT_OPENERS),
            rng.choice(COURTEOUS_CLOSERS if courteous_close else CURT_CLOSERS),
        )
        for facts, (courteous_open, courteous_close) in zip(stated, styles)
    ]


def split_prompts(seed: int = 0) -> tuple[list[tuple[Entity, int]], list[tuple[Entity, int]]]:
    """(train, held-out) lists of (entity, phrasing index): one phrasing per entity is held out, chosen by seed."""
    rng = random.Random(f"split-{seed}")
    train, heldout = [], []
    for entity in ENTITIES:
        held = rng.randrange(len(PHRASINGS[entity.kind]))
        for phrasing in range(len(PHRASINGS[entity.kind])):
            (heldout if phrasing == held else train).append((entity, phrasing))
    return train, heldout


def _records(
    pool: list[tuple[Entity, int]], count: int, k: int, false_fact_rate: float, rng: random.Random, split: str
) -> list[dict]:
    # Cycle through the prompt pool, reshuffled each pass, so prompts are used evenly when count > len(pool).
    records, order = [], []
    for i in range(count):
        if not order:
            order = rng.sample(pool, len(pool))
        entity, phrasing = order.pop()
        responses = _candidates(entity, k, false_fact_rate, rng)
        per_response = [score_response(entity, r) for r in responses]
        records.append(
            {
                "id": f"{split}-{i:05d}",
                "prompt": prompt_text(entity, phrasing),
                "responses": responses,
                "scores": {d: [s[d] for s in per_response] for d in DIMENSIONS},
            }
        )
    return records


def make_world(
    seed: int = 0, num_train: int = 1000, num_heldout: int = 16, k: int = 4, false_fact_rate: float = 0.25
) -> tuple[list[dict], list[dict]]:
    """Native listwise records (docs/spec.md §2) ``(train, heldout)``, deterministic under ``seed``.

    Records are ``{"id", "prompt", "responses": [k strings], "scores": {dimension: [k floats]}}``; the scores are
    :func:`score_response` applied to the candidates. Held-out prompt texts never occur in train. Each split
    cycles through its prompts (48 train, 16 held-out), so ``num_heldout=16`` gives each held-out prompt once.
    """
    if k < 2:
        raise ValueError(f"k must be ≥ 2 candidate responses per prompt, got k={k}")
    if not 0.0 <= false_fact_rate < 1.0:
        raise ValueError(f"false_fact_rate must be in [0, 1) (some facts must be true), got {false_fact_rate}")
    if num_train < 0 or num_heldout < 0:
        raise ValueError(f"record counts must be ≥ 0, got num_train={num_train}, num_heldout={num_heldout}")
    train_pool, heldout_pool = split_prompts(seed)
    rng = random.Random(seed)
    return (
        _records(train_pool, num_train, k, false_fact_rate, rng, "train"),
        _records(heldout_pool, num_heldout, k, false_fact_rate, rng, "heldout"),
    )


def fresh_records(prompt: str, count: int, seed: int = 0, k: int = 4, false_fact_rate: float = 0.25) -> list[dict]:
    """``count`` new records for one prompt of the world: fresh candidate sets, drawn as :func:`make_world` draws
    them (deterministic under ``seed``). What the population oracle averages over (``oracle_controllability``)."""
    found = [(e, p) for e in ENTITIES for p in range(len(PHRASINGS[e.kind])) if prompt_text(e, p) == prompt]
    if not found:
        raise ValueError(f"{prompt!r} is not a prompt of the demo world")
    return _records(found[:1], count, k, false_fact_rate, random.Random(f"fresh-{seed}-{prompt}"), "fresh")


def write_world(
    out_dir: str, seed: int = 0, num_train: int = 1000, num_heldout: int = 16, k: int = 4, false_fact_rate: float = 0.25
) -> tuple[str, str]:
    """Write ``train.jsonl`` and ``heldout.jsonl`` of :func:`make_world` into ``out_dir``; return their paths.

    Each file is written to a temporary file and renamed, so a reader never sees a half-written file.
    """
    os.makedirs(out_dir, exist_ok=True)
    train, heldout = make_world(seed, num_train, num_heldout, k, false_fact_rate)
    paths = os.path.join(out_dir, "train.jsonl"), os.path.join(out_dir, "heldout.jsonl")
    for path, records in zip(paths, (train, heldout)):
        write_jsonl(path, records)
    return paths


def vocabulary_texts() -> list[str]:
    """Texts that use every word of the world in the context it occurs (every prompt; per entity, a response with
    all its facts under each opener/closer pair) and the λ line: the corpus to train the demo tokenizer on."""
    texts = [prompt_text(e, p) for e in ENTITIES for p in range(len(PHRASINGS[e.kind]))]
    openers, closers = COURTEOUS_OPENERS + CURT_OPENERS, COURTEOUS_CLOSERS + CURT_CLOSERS
    texts += [render_response(e, e.facts, o, c) for e in ENTITIES for o, c in zip(openers, closers)]
    texts.append(render_lambda([1 / len(DIMENSIONS)] * len(DIMENSIONS), DIMENSIONS))
    return texts
