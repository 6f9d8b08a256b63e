"""More procedural worlds with exact scorers, built to be unlike the demo's (`world.py`), so that a recipe tuned on
one world can be confirmed on others (`benchmarks/steering_worlds.py`, docs/worlds.md).

- ``support``: customer-support replies. Three dimensions on other scales than the demo's: ``empathy`` and
  ``solved`` are **integer Likert ratings 0–4** (distinct empathy sentences; correct solution steps for the
  customer's problem), ``formal`` is **binary** 0/1 (register of greeting and sign-off). A reply has at most four
  body sentences, so ``empathy`` and ``solved`` compete for them; ``formal`` is independent. k = 4.
- ``travel``: day plans for a city. **Five dimensions** in [0, 1] with different granularity, and **k varying from 2
  to 6** per prompt: ``informative`` (true attractions of the city, /3), ``thrifty`` (money tips, /2), ``safe``
  (a safety reminder, 0/1), ``cheerful`` (enthusiastic remarks, /2) and ``brief`` (clip((32 − words)/20, 0, 1)),
  which conflicts with all the others.

Every world offers the same interface as the demo's world module: ``DIMENSIONS``, ``make_world(seed, num_train,
num_heldout) -> (train, heldout)`` native listwise records, ``write_world(out_dir, …) -> (train_path,
heldout_path)``, ``scorer(prompt, response) -> {dimension: score}`` (exact; any text accepted) and
``vocabulary_texts()`` (a corpus for the tiny tokenizer). Held-out prompts are unseen phrasings of known entities.
Nothing in a candidate depends on λ.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from lambda_dpo.conditioning import render_lambda

_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _normalized(text: str) -> str:
    return " " + " ".join(_words(text)) + " "


def _count_present(phrases: Sequence[str], text: str) -> int:
    """Distinct phrases present as whole words in the normalised ``text`` (a repeat counts once)."""
    return sum(_normalized(p) in text for p in phrases)


@dataclass
class World:
    """A procedural multi-objective world: entities with their true phrases, prompt phrasings and a response
    builder; the subclasses say how candidates are drawn and scored."""

    name: str
    dimensions: list[str]
    entities: dict[str, tuple[str, ...]]  # entity name -> its true phrases (facts, steps, …), in order
    phrasings: tuple[str, ...]
    k_range: tuple[int, int] = (4, 4)
    extra_texts: list[str] = field(default_factory=list)

    # ---------------------------------------------------------------- prompts
    def find_entity(self, prompt) -> str:
        if not isinstance(prompt, str):
            prompt = " ".join(m.get("content", "") for m in prompt if m.get("role") == "user")
        text = _normalized(prompt)
        found = [name for name in self.entities if _normalized(name) in text]
        if len(found) != 1:
            raise ValueError(f"prompt {prompt!r} must name exactly one entity of the {self.name!r} world "
                             f"(found: {found or 'none'}); known: {list(self.entities)}")
        return found[0]

    def split_prompts(self, seed: int) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
        rng = random.Random(f"{self.name}-split-{seed}")
        train, heldout = [], []
        for entity in self.entities:
            held = rng.randrange(len(self.phrasings))
            for p in range(len(self.phrasings)):
                (heldout if p == held else train).append((entity, p))
        return train, heldout

    # ---------------------------------------------------------------- to be defined by each world
    def candidates(self, entity: str, k: int, rng: random.Random) -> list[str]:
        raise NotImplementedError

    def score(self, entity: str, response: str) -> dict[str, float]:
        raise NotImplementedError

    def vocabulary(self) -> list[str]:
        raise NotImplementedError

    # ---------------------------------------------------------------- shared
    def scorer(self, prompt: str, response: str) -> dict[str, float]:
        """Exact scores of ``response`` to ``prompt`` (any text, empty or garbled included)."""
        return self.score(self.find_entity(prompt), response if isinstance(response, str) else "")

    def _records(self, pool, count: int, rng: random.Random, split: str) -> list[dict]:
        records, order = [], []
        for i in range(count):
            if not order:
                order = rng.sample(pool, len(pool))
            entity, phrasing = order.pop()
            k = rng.randint(*self.k_range)
            while True:  # every dimension must rank something in every record
                responses = self.candidates(entity, k, rng)
                scores = [self.score(entity, r) for r in responses]
                if all(len({s[d] for s in scores}) > 1 for d in self.dimensions) and len(set(responses)) == k:
                    break
            records.append({
                "id": f"{split}-{i:05d}",
                "prompt": self.phrasings[phrasing].format(entity),
                "responses": responses,
                "scores": {d: [s[d] for s in scores] for d in self.dimensions},
            })
        return records

    def make_world(self, seed: int = 0, num_train: int = 1000, num_heldout: int = 16, k: int | None = None):
        """``(train, heldout)`` native listwise records, deterministic under ``seed`` (``k`` is ignored: each world
        draws k from its own ``k_range``)."""
        train_pool, heldout_pool = self.split_prompts(seed)
        rng = random.Random(f"{self.name}-{seed}")
        return (self._records(train_pool, num_train, rng, "train"),
                self._records(heldout_pool, num_heldout, rng, "heldout"))

    def fresh_records(self, prompt: str, count: int, seed: int = 0) -> list[dict]:
        """``count`` new records for one prompt of the world: fresh candidate sets (and k), drawn as
        :meth:`make_world` draws them, deterministic under ``seed``."""
        found = [(e, p) for e in self.entities for p in range(len(self.phrasings))
                 if self.phrasings[p].format(e) == prompt]
        if not found:
            raise ValueError(f"{prompt!r} is not a prompt of the {self.name!r} world")
        return self._records(found[:1], count, random.Random(f"{self.name}-fresh-{seed}-{prompt}"), "fresh")

    def write_world(self, out_dir: str, seed: int = 0, num_train: int = 1000, num_heldout: int = 16,
                    k: int | None = None) -> tuple[str, str]:
        import os

        from lambda_dpo.atomic import write_jsonl

        os.makedirs(out_dir, exist_ok=True)
        train, heldout = self.make_world(seed, num_train, num_heldout)
        paths = os.path.join(out_dir, "train.jsonl"), os.path.join(out_dir, "heldout.jsonl")
        for path, records in zip(paths, (train, heldout)):
            write_jsonl(path, records)
        return paths

    def vocabulary_texts(self) -> list[str]:
        texts = [p.format(e) for e in self.entities for p in self.phrasings]
        texts += self.vocabulary() + self.extra_texts
        texts.append(render_lambda([1 / len(self.dimensions)] * len(self.dimensions), self.dimensions))
        return texts


# ==================================================================================================== support
EMPATHY = ("I am so sorry about this.", "That sounds really frustrating.", "I understand how you feel.",
           "Thank you for your patience.", "I know this matters to you.", "I would be upset too.")
FORMAL = (("Dear customer,", "Yours sincerely."), ("Good afternoon,", "Kind regards."),
          ("Dear valued client,", "Respectfully yours."))
CASUAL = (("Hey there!", "Cheers!"), ("Hi buddy!", "Later!"), ("Yo!", "Peace out!"))
PROBLEMS = {
    "late parcel": ("I checked your tracking number.", "Your parcel is in transit.", "It should arrive in two days.",
                    "I added a voucher to your account."),
    "broken screen": ("Please send us a photo.", "I booked a free repair.", "A courier will collect it.",
                      "You will get a loan device."),
    "double charge": ("I found the second payment.", "I reversed the extra charge.", "The refund takes three days.",
                      "I flagged your card as safe."),
    "lost password": ("I sent a reset link.", "The link works for one hour.", "Choose a new strong password.",
                      "I turned on login alerts."),
    "wrong size": ("I arranged a free return.", "Print the prepaid label.", "Drop it at any post office.",
                   "The new size ships today."),
    "noisy fridge": ("Check that it stands level.", "Clean the back coils.", "I booked a technician visit.",
                     "Your warranty covers the repair."),
    "missing item": ("I checked the packing record.", "One item was left out.", "I sent the missing item.",
                     "It arrives by tomorrow."),
    "cancelled flight": ("I found you a new flight.", "Your seat is confirmed.", "I sent the new ticket by email.",
                         "Your meal voucher is attached."),
}


class SupportWorld(World):
    MAX_BODY = 4

    def __init__(self):
        super().__init__(
            name="support", dimensions=["empathy", "formal", "solved"], entities=PROBLEMS,
            phrasings=("I have a {} problem.", "Help me with a {} please.", "Can you fix my {}?",
                       "What do I do about a {}?"),
            k_range=(4, 4),
        )

    def candidates(self, entity: str, k: int, rng: random.Random) -> list[str]:
        steps = self.entities[entity]
        others = [s for name, ss in self.entities.items() if name != entity for s in ss]
        out = []
        for _ in range(k):
            body = rng.randint(1, self.MAX_BODY)  # body sentences: empathy + steps ≤ 4
            n_empathy = rng.randint(0, body)
            n_steps = body - n_empathy
            # A step is wrong (another problem's) with probability 0.2: it costs a sentence and solves nothing.
            stated = [steps[i] if rng.random() > 0.2 else rng.choice(others) for i in range(n_steps)]
            greeting, signoff = rng.choice(FORMAL if rng.random() < 0.5 else CASUAL)
            out.append(" ".join([greeting, *rng.sample(EMPATHY, n_empathy), *stated, signoff]))
        return out

    def score(self, entity: str, response: str) -> dict[str, float]:
        text = _normalized(response)
        formal = sum(_count_present(pair, text) for pair in FORMAL)
        casual = sum(_count_present(pair, text) for pair in CASUAL)
        return {
            "empathy": float(min(4, _count_present(EMPATHY, text))),
            "formal": 1.0 if formal > 0 and casual == 0 else 0.0,
            "solved": float(_count_present(self.entities[entity], text)),
        }

    def vocabulary(self) -> list[str]:
        texts = []
        for steps in self.entities.values():
            for (g, s) in FORMAL + CASUAL:
                texts.append(" ".join([g, *EMPATHY[:2], *steps, s]))
        texts.append(" ".join(EMPATHY))
        return texts


# ==================================================================================================== travel
CITIES = {
    "Lisbon": ("Ride the old yellow tram.", "Visit the Belem Tower.", "Watch the sunset at a viewpoint."),
    "Kyoto": ("Walk through the bamboo grove.", "Visit the golden temple.", "Try a tea ceremony."),
    "Berlin": ("See the Brandenburg Gate.", "Walk along the old wall.", "Visit Museum Island."),
    "Cusco": ("Explore the Inca ruins.", "Visit the main square.", "Take the train to Machu Picchu."),
    "Cairo": ("See the great pyramids.", "Visit the Egyptian Museum.", "Sail on the Nile."),
    "Oslo": ("Visit the Viking ship museum.", "Walk on the opera house roof.", "Take a ferry on the fjord."),
    "Hanoi": ("Walk around the old quarter.", "Watch the water puppet show.", "Eat a bowl of pho."),
    "Quebec": ("Stroll the old town walls.", "See the Montmorency Falls.", "Visit the Citadel."),
}
THRIFTY = ("Buy a day pass to save money.", "Many museums are free on Sundays.")
SAFE = ("Watch your bag in crowded places.",)
CHEERFUL = ("You will love it!", "What a wonderful day!")


class TravelWorld(World):
    def __init__(self):
        super().__init__(
            name="travel", dimensions=["informative", "thrifty", "safe", "cheerful", "brief"], entities=CITIES,
            phrasings=("Plan a day in {}.", "What should I do in {}?", "Give me ideas for {}.",
                       "I am visiting {} tomorrow."),
            k_range=(2, 6),
        )

    def candidates(self, entity: str, k: int, rng: random.Random) -> list[str]:
        sights = self.entities[entity]
        others = [s for name, ss in self.entities.items() if name != entity for s in ss]
        out = []
        for _ in range(k):
            n = rng.randint(0, 3)
            stated = [sights[i] if rng.random() > 0.2 else rng.choice(others) for i in range(n)]
            parts = [f"Here is a plan for {entity}.", *stated]
            parts += list(THRIFTY[: rng.randint(0, 2)])
            if rng.random() < 0.5:
                parts += list(SAFE)
            parts += list(CHEERFUL[: rng.randint(0, 2)])
            out.append(" ".join(parts))
        return out

    def score(self, entity: str, response: str) -> dict[str, float]:
        text = _normalized(response)
        words = len(_words(response))
        return {
            "informative": _count_present(self.entities[entity], text) / 3,
            "thrifty": _count_present(THRIFTY, text) / 2,
            "safe": float(_count_present(SAFE, text) > 0),
            "cheerful": _count_present(CHEERFUL, text) / 2,
            "brief": min(1.0, max(0.0, (32 - words) / 20)),
        }

    def vocabulary(self) -> list[str]:
        return [" ".join([f"Here is a plan for {e}.", *s, *THRIFTY, *SAFE, *CHEERFUL]) for e, s in self.entities.items()]


WORLDS: dict[str, World] = {"support": SupportWorld(), "travel": TravelWorld()}


def get_world(name: str) -> World:
    if name not in WORLDS:
        raise ValueError(f"unknown world {name!r}; worlds: {list(WORLDS)}")
    return WORLDS[name]


# `--scorer lambda_dpo.demo.worlds:support_scorer` / `…:travel_scorer` for `lambda-dpo eval`.
def support_scorer(prompt: str, response: str) -> dict[str, float]:
    return WORLDS["support"].scorer(prompt, response)


def travel_scorer(prompt: str, response: str) -> dict[str, float]:
    return WORLDS["travel"].scorer(prompt, response)


class DemoWorld:
    """The demo's own world (`world.py`) behind the same interface as :class:`World`."""

    name = "demo"

    def __init__(self):
        from lambda_dpo.demo import world

        self._module = world
        self.dimensions = list(world.DIMENSIONS)

    def scorer(self, prompt: str, response: str) -> dict[str, float]:
        return self._module.scorer(prompt, response)

    def fresh_records(self, prompt: str, count: int, seed: int = 0) -> list[dict]:
        return self._module.fresh_records(prompt, count, seed=seed)

    def make_world(self, seed: int = 0, num_train: int = 1000, num_heldout: int = 16, k: int = 4):
        return self._module.make_world(seed, num_train, num_heldout, k)

    def write_world(self, out_dir: str, seed: int = 0, num_train: int = 1000, num_heldout: int = 16, k: int = 4):
        return self._module.write_world(out_dir, seed=seed, num_train=num_train, num_heldout=num_heldout, k=k)

    def vocabulary_texts(self) -> list[str]:
        return self._module.vocabulary_texts()


WORLDS["demo"] = DemoWorld()
