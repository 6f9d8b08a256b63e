"""Scorers (docs/spec.md §4): judge a response on every preference dimension, ``(prompt, response) -> {dimension: score}``.

Higher is better on every dimension. Three kinds plug into ``lambda-dpo eval --scorer SPEC`` (repeatable):

- ``module:function`` or ``path/to/file.py:function``: a Python callable with the signature
  ``(prompt: str, response: str) -> dict[str, float]``, e.g. the demo world's ``lambda_dpo.demo.world:scorer``;
- ``DIR``: a local reward model loaded with ``AutoModelForSequenceClassification``, one output per dimension;
  the names come from ``config.id2label`` or from ``dimensions`` (``--scorer-dimensions``);
- ``name=DIR``: a reward model with a single output that scores the one dimension ``name`` (repeat it, one model
  per dimension).

Several specs are merged into one scorer; two specs may not score the same dimension.

Reward models read the (prompt, response) pair the way most are trained: rendered as a user turn and an assistant
turn with the tokenizer's chat template, or, for a tokenizer without one (e.g. an encoder), as a text pair.
The score of a dimension is the model's logit for that output (sequence classification pools the last non-padding
token, so batching with padding does not change the scores).
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path

ScoreFn = Callable[[str, str], Mapping[str, float]]

_DEFAULT_LABEL = re.compile(r"^LABEL_\d+$")
_DIMENSION_SPEC = re.compile(r"^([A-Za-z_][A-Za-z0-9_\-.]*)=(.+)$")


class Scorer:
    """Base of every scorer: ``scorer(prompt, response) -> {dimension: score}`` and a batched ``score_batch``.

    ``dimensions`` lists what the scorer returns, or is None when that is only known after a call (a Python
    callable).
    """

    dimensions: list[str] | None = None
    description: str = "scorer"

    def __call__(self, prompt: str, response: str) -> dict[str, float]:
        return self.score_batch([prompt], [response])[0]

    def score_batch(self, prompts: Sequence[str], responses: Sequence[str]) -> list[dict[str, float]]:
        """Scores of N (prompt, response) pairs: N dicts ``{dimension: score}``."""
        raise NotImplementedError


class CallableScorer(Scorer):
    """A Python function ``(prompt, response) -> {dimension: score}``; every result is checked to be finite."""

    def __init__(self, function: ScoreFn, description: str | None = None):
        if not callable(function):
            raise TypeError(f"a scorer must be callable, got {type(function).__name__}")
        self.function = function
        self.description = description or getattr(function, "__qualname__", repr(function))

    def score_batch(self, prompts: Sequence[str], responses: Sequence[str]) -> list[dict[str, float]]:
        return [self._checked(prompt, response) for prompt, response in zip(prompts, responses)]

    def _checked(self, prompt: str, response: str) -> dict[str, float]:
        scores = self.function(prompt, response)
        if not isinstance(scores, Mapping):
            raise ValueError(
                f"scorer {self.description} returned {type(scores).__name__} for prompt {prompt[:60]!r}; it must "
                "return a dict {dimension: score}"
            )
        out = {}
        for name, value in scores.items():
            try:
                out[str(name)] = float(value)
            except (TypeError, ValueError):
                raise ValueError(
                    f"scorer {self.description} returned a non-numeric score {value!r} for dimension {name!r}"
                ) from None
            if not math.isfinite(out[str(name)]):
                raise ValueError(
                    f"scorer {self.description} returned a non-finite score {value} for dimension {name!r} "
                    f"(prompt {prompt[:60]!r}, response {response[:60]!r})"
                )
        return out


class RewardModelScorer(Scorer):
    """A local ``AutoModelForSequenceClassification`` with one output per dimension.

    Args:
        path: the model directory (config, weights, tokenizer).
        dimensions: names of the outputs, in order; default ``config.id2label`` (which must not be the default
            ``LABEL_0``, … names).
        device: where to run it (default: cuda when available).
        batch_size: pairs per forward in :meth:`score_batch`.
        max_length: longest input in tokens (longer inputs lose their start, keeping the response's end).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        dimensions: Sequence[str] | None = None,
        device: str | None = None,
        batch_size: int = 16,
        max_length: int = 1024,
    ):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        path = str(path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"reward model directory {path!r} does not exist")
        self.description = f"reward model {path}"
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForSequenceClassification.from_pretrained(path).eval()
        self.model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dimensions = self._dimension_names(dimensions)
        self.batch_size, self.max_length = batch_size, max_length
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            # Without it, sequence classification cannot find each row's last token in a padded batch.
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        # Truncate the start: the response (at the end) is what is being judged.
        self.tokenizer.truncation_side = "left"

    def _dimension_names(self, dimensions: Sequence[str] | None) -> list[str]:
        num_labels = self.model.config.num_labels
        if dimensions is not None:
            dimensions = list(dimensions)
            if len(dimensions) != num_labels:
                raise ValueError(
                    f"{self.description} has {num_labels} outputs but {len(dimensions)} dimension names were "
                    f"given ({dimensions}); pass one name per output (--scorer-dimensions)"
                )
            return dimensions
        labels = [self.model.config.id2label[i] for i in range(num_labels)]
        if any(_DEFAULT_LABEL.match(str(label)) for label in labels):
            raise ValueError(
                f"{self.description} does not name its outputs (config.id2label is {labels}); name them with "
                "--scorer-dimensions a,b,… (one per output, in order) or use one model per dimension (name=DIR)"
            )
        return [str(label) for label in labels]

    def _encode(self, prompts: Sequence[str], responses: Sequence[str]):
        if self.tokenizer.chat_template:
            texts = [
                self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}, {"role": "assistant", "content": r}], tokenize=False
                )
                for p, r in zip(prompts, responses)
            ]
            # The template already wrote any special tokens the model expects.
            return self.tokenizer(
                texts, add_special_tokens=False, padding=True, truncation=True, max_length=self.max_length,
                return_tensors="pt",
            )
        return self.tokenizer(
            list(prompts), list(responses), padding=True, truncation=True, max_length=self.max_length,
            return_tensors="pt",
        )

    def score_batch(self, prompts: Sequence[str], responses: Sequence[str]) -> list[dict[str, float]]:
        import torch

        out = []
        device = next(self.model.parameters()).device
        for start in range(0, len(prompts), self.batch_size):
            batch = self._encode(prompts[start : start + self.batch_size], responses[start : start + self.batch_size])
            with torch.no_grad():
                logits = self.model(**{k: v.to(device) for k, v in batch.items()}).logits.float().cpu()
            out += [dict(zip(self.dimensions, row.tolist())) for row in logits]
        return out


class CombinedScorer(Scorer):
    """Several scorers merged: each contributes its dimensions; a dimension scored twice is an error."""

    def __init__(self, scorers: Sequence[Scorer]):
        if not scorers:
            raise ValueError("CombinedScorer needs at least one scorer")
        self.scorers = list(scorers)
        self.description = " + ".join(s.description for s in self.scorers)
        known = [d for s in self.scorers for d in (s.dimensions or [])]
        repeated = sorted({d for d in known if known.count(d) > 1})
        if repeated:
            raise ValueError(f"dimension(s) {repeated} are scored by more than one --scorer; keep one scorer each")
        self.dimensions = known if all(s.dimensions is not None for s in self.scorers) else None

    def score_batch(self, prompts: Sequence[str], responses: Sequence[str]) -> list[dict[str, float]]:
        merged = [{} for _ in prompts]
        for scorer in self.scorers:
            for target, scores in zip(merged, scorer.score_batch(prompts, responses)):
                clash = sorted(set(target) & set(scores))
                if clash:
                    raise ValueError(
                        f"dimension(s) {clash} are scored by more than one --scorer ({self.description}); "
                        "keep one scorer per dimension"
                    )
                target.update(scores)
        return merged


def load_callable(spec: str) -> ScoreFn:
    """The function named by ``module:function`` or ``path/to/file.py:function``."""
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name.isidentifier():
        raise ValueError(
            f"scorer {spec!r} is not of the form module:function or path/to/file.py:function "
            "(e.g. lambda_dpo.demo.world:scorer)"
        )
    if target.endswith(".py"):
        if not os.path.isfile(target):
            raise FileNotFoundError(f"scorer file {target!r} (from {spec!r}) does not exist")
        module_spec = importlib.util.spec_from_file_location(Path(target).stem, target)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as error:
            raise ValueError(
                f"cannot import module {target!r} of scorer {spec!r}: {error}; install it or put it on PYTHONPATH"
            ) from None
    function = getattr(module, name, None)
    if not callable(function):
        raise ValueError(f"{target!r} has no callable {name!r} (scorer {spec!r})")
    return function


def load_scorer(
    specs: Iterable[str], dimensions: Sequence[str] | None = None, device: str | None = None, batch_size: int = 16
) -> Scorer:
    """One scorer from ``--scorer`` specs (see the module docstring); ``dimensions`` names a multi-output reward
    model's outputs (``--scorer-dimensions``)."""
    scorers: list[Scorer] = []
    specs = list(specs)
    if not specs:
        raise ValueError("no scorer given: pass --scorer module:function, --scorer DIR or --scorer name=DIR")
    for spec in specs:
        match = _DIMENSION_SPEC.match(spec)
        if os.path.isdir(spec):
            scorers.append(RewardModelScorer(spec, dimensions, device=device, batch_size=batch_size))
        elif match:
            name, path = match.groups()
            if not os.path.isdir(path):
                raise FileNotFoundError(f"scorer {spec!r}: reward model directory {path!r} does not exist")
            outputs = _outputs(path)
            if outputs != 1:
                raise ValueError(
                    f"scorer {spec!r}: {path} has {outputs} outputs; a name=DIR scorer must have exactly one "
                    "(num_labels = 1); score a multi-output model with --scorer DIR"
                )
            scorers.append(RewardModelScorer(path, [name], device, batch_size))
        else:
            scorers.append(CallableScorer(load_callable(spec), description=spec))
    return scorers[0] if len(scorers) == 1 else CombinedScorer(scorers)


def _outputs(path: str) -> int:
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(path).num_labels


__all__ = [
    "CallableScorer",
    "CombinedScorer",
    "RewardModelScorer",
    "ScoreFn",
    "Scorer",
    "load_callable",
    "load_scorer",
]
