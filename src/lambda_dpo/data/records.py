"""Listwise records — the one shape every input format becomes — and their validation (docs/spec.md §2).

A record is the dict

    {"id": str,
     "prompt": [{"role": str, "content": str}, ...],   # the conversation before the response; no system
     "system": str,                                    # "" when none
     "responses": [str, ...],                          # k ≥ 2 assistant texts
     "scores": {dimension: [float | None] * k}}        # None = missing (masked, never "the worst score")

Converters build records with :func:`make_record`, which raises :class:`RecordError` naming the input's field
at fault; the loader turns that into a :class:`Rejection` with the file and line, and collects them in a
:class:`LoadReport`. Rejection kinds (the ``kind`` counted in reports) are listed in ``REJECTION_KINDS``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

REJECTION_KINDS = {
    "malformed_json": "the line is not valid JSON (or not UTF-8)",
    "missing_field": "a required field is absent",
    "wrong_type": "a field has the wrong type",
    "empty_text": "an empty prompt or response",
    "too_few_responses": "fewer than 2 responses",
    "score_length": "a score list's length differs from the number of responses",
    "non_finite_score": "a NaN or infinite score",
    "score_out_of_range": "a score too large for float32 (training's precision)",
    "invalid_text": "text that is not valid Unicode (an unpaired surrogate)",
    "bad_value": "a value outside the allowed set",
    "no_scores": "no preference dimension at all",
    "unknown_dimension": "a dimension not in the requested `dimensions`",
    "duplicate_id": "an id seen earlier in the input",
}


class DataError(ValueError):
    """Base class of the data package's user-facing errors (the CLI prints their message, no traceback)."""


class DataSourceError(DataError):
    """The input as a whole cannot be read: missing file, unknown format, unreachable hub dataset."""


class RecordError(DataError):
    """One record is invalid. ``kind`` is a key of ``REJECTION_KINDS``; ``field`` names the input's field."""

    def __init__(self, kind: str, field: str, reason: str):
        assert kind in REJECTION_KINDS, kind
        super().__init__(f"{field}: {reason}")
        self.kind, self.field, self.reason = kind, field, reason


@dataclass(frozen=True)
class Rejection:
    """A rejected record: ``line`` is the 1-based line in a JSON/JSONL file, or the 0-based row index of a
    Parquet file or hub dataset (``unit="row"``)."""

    file: str
    line: int | str  # str for unit "file_line": "<file in the folder>:<line>"
    field: str
    reason: str
    kind: str
    unit: str = "line"

    @property
    def location(self) -> str:
        if self.unit == "file_line":  # a folder read file by file: line is "<file in the folder>:<line>"
            return f"{os.path.join(self.file, str(self.line))}"
        return f"{self.file}:{self.line}" if self.unit == "line" else f"{self.file}:row {self.line}"

    def __str__(self) -> str:
        return f"{self.location}: {self.field}: {self.reason}"


class DataValidationError(DataError):
    """Records were rejected where that is fatal (``strict=True``, or nothing valid is left)."""

    def __init__(self, message: str, rejections: Sequence[Rejection] = ()):
        super().__init__(message)
        self.rejections = list(rejections)


@dataclass
class LoadReport:
    """What loading one input did: rows read, records kept, every rejection with its location."""

    source: str
    format: str
    format_detected: bool = False
    rows_read: int = 0
    records: int = 0
    dimensions: list[str] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    unscored_dimensions: list[str] = field(default_factory=list)  # dimensions that no record scores
    warnings: list[str] = field(default_factory=list)  # kept records that look like a mistake (see data_warnings)

    def counts_by_reason(self) -> dict[str, int]:
        """Number of rejections per kind (see ``REJECTION_KINDS``), most frequent first."""
        return dict(Counter(r.kind for r in self.rejections).most_common())

    def summary(self, max_examples: int = 5) -> str:
        how = "detected" if self.format_detected else "given"
        lines = [
            f"{self.source}: format {self.format} ({how}); {self.rows_read} rows read, "
            f"{self.records} listwise records kept, {len(self.rejections)} rejected; "
            f"dimensions: {', '.join(self.dimensions) or '-'}"
        ]
        for kind, count in self.counts_by_reason().items():
            lines.append(f"  rejected {count:>6} × {kind}: {REJECTION_KINDS[kind]}")
        lines += [f"  {r}" for r in self.rejections[:max_examples]]
        if 0 < max_examples < len(self.rejections):
            lines.append(f"  ... and {len(self.rejections) - max_examples} more rejections")
        if self.unscored_dimensions:
            lines.append(f"  warning: no record scores dimension(s) {self.unscored_dimensions}")
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _text(value, field: str, what: str = "text") -> str:
    if not isinstance(value, str):
        raise RecordError(
            "wrong_type", field, f"expected {what} (a string), got {type(value).__name__} {short_repr(value)}"
        )
    if not value.strip():
        raise RecordError("empty_text", field, f"{what} is empty; remove the record or fill it in")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:  # a lone surrogate ("\ud800"): no tokenizer or Arrow column can hold it
        raise RecordError("invalid_text", field, f"{what} holds an unpaired surrogate {value[e.start]!r} at "
                          f"character {e.start}, which is not valid Unicode text; fix or remove it") from None
    return value


def short_repr(value, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def normalize_messages(value, field: str = "prompt") -> tuple[list[dict[str, str]], str]:
    """A prompt (a string, or a list of ``{"role", "content"}`` messages) → ``(messages, system)``.

    A string becomes one user message. A leading system message is moved out into ``system`` (the trainer
    writes the λ conditioning there); a system message anywhere else is an error.
    """
    if isinstance(value, str):
        return [{"role": "user", "content": _text(value, field, "prompt")}], ""
    if not isinstance(value, list) or not value:
        raise RecordError(
            "wrong_type", field, f"expected a string or a non-empty list of messages, got {short_repr(value)}"
        )
    messages, system = [], ""
    for i, message in enumerate(value):
        where = f"{field}[{i}]"
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise RecordError(
                "wrong_type",
                where,
                f"expected a message {{'role': ..., 'content': ...}}, got {short_repr(message)}",
            )
        role = message["role"]
        if not isinstance(role, str) or not role:
            raise RecordError("wrong_type", f"{where}.role", f"expected a role name, got {short_repr(role)}")
        if not isinstance(message["content"], str):
            raise RecordError(
                "wrong_type", f"{where}.content", f"expected text, got {short_repr(message['content'])}"
            )
        if role == "system":
            if i != 0:
                raise RecordError(
                    "bad_value", f"{where}.role", "a system message must come first in the prompt"
                )
            system = message["content"]
            continue
        messages.append({"role": role, "content": message["content"]})
    if not messages or not any(m["content"].strip() for m in messages):
        raise RecordError("empty_text", field, "the prompt has no non-empty user/assistant message")
    return messages, system


def normalize_response(value, field: str) -> str:
    """A response: a string, or a list holding one assistant message (TRL's conversational format)."""
    if isinstance(value, list):
        if len(value) != 1 or not isinstance(value[0], Mapping) or value[0].get("role") != "assistant":
            raise RecordError("wrong_type", field, f"expected one assistant message, got {short_repr(value)}")
        return _text(value[0].get("content"), f"{field}[0].content", "response")
    return _text(value, field, "response")


FLOAT32_MAX = 3.4028234663852886e38


def score_value(value, field: str) -> float | None:
    """One score: a finite number, or None (missing). Booleans and strings are rejected, not guessed at."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RecordError("wrong_type", field, f"expected a number or null, got {short_repr(value)}")
    try:
        number = float(value)
    except OverflowError:  # an integer of hundreds of digits
        raise RecordError("score_out_of_range", field, f"score {short_repr(str(value), 30)} is too large for a "
                          "float; rescale the scores") from None
    if not math.isfinite(number):
        raise RecordError("non_finite_score", field, f"score is {value}; use null for a missing score")
    if abs(number) > FLOAT32_MAX:
        raise RecordError("score_out_of_range", field, f"score {number:g} does not fit in float32 (|score| ≤ "
                          f"{FLOAT32_MAX:.3g}), which training computes in; rescale the scores")
    return number


def make_record(
    prompt,
    responses,
    scores,
    *,
    record_id=None,
    system=None,
    prompt_field: str = "prompt",
    response_fields: Sequence[str] | None = None,
    score_field: str = "scores",
) -> dict:
    """Validate the parts of one listwise record and return it normalised (see the module docstring).

    The ``*_field`` arguments name the input's own fields so that errors point at what the user wrote
    (e.g. ``completions[2].response`` for UltraFeedback). ``record_id`` is kept (str or int → str);
    a missing id is filled in later by the loader.
    """
    messages, prompt_system = normalize_messages(prompt, prompt_field)
    if system is not None and not isinstance(system, str):
        raise RecordError("wrong_type", "system", f"expected a string, got {short_repr(system)}")
    if system and prompt_system:
        raise RecordError(
            "bad_value", "system", "both a `system` field and a system message in the prompt; keep one"
        )
    if not isinstance(responses, list):
        raise RecordError(
            "wrong_type", "responses", f"expected a list of responses, got {short_repr(responses)}"
        )
    if len(responses) < 2:
        raise RecordError(
            "too_few_responses",
            "responses",
            f"{len(responses)} response(s); a list needs at least 2 to compare",
        )
    response_fields = response_fields or [f"responses[{i}]" for i in range(len(responses))]
    texts = [normalize_response(r, f) for r, f in zip(responses, response_fields)]
    if not isinstance(scores, Mapping):
        raise RecordError(
            "wrong_type", score_field, f"expected {{dimension: [scores]}}, got {short_repr(scores)}"
        )
    if not scores:
        raise RecordError("no_scores", score_field, "no dimension; give at least one {dimension: [k scores]}")
    clean = {}
    for name, values in scores.items():
        where = f"{score_field}.{name}"
        if not isinstance(values, list):
            raise RecordError(
                "wrong_type", where, f"expected a list of {len(texts)} scores, got {short_repr(values)}"
            )
        if len(values) != len(texts):
            raise RecordError(
                "score_length",
                where,
                f"{len(values)} scores for {len(texts)} responses; give one per response",
            )
        clean[str(name)] = [score_value(v, f"{where}[{i}]") for i, v in enumerate(values)]
    if record_id is not None and (isinstance(record_id, bool) or not isinstance(record_id, (str, int))):
        raise RecordError("wrong_type", "id", f"expected a string, got {short_repr(record_id)}")
    return {
        "id": None if record_id is None else str(record_id),
        "prompt": messages,
        "system": system or prompt_system,
        "responses": texts,
        "scores": clean,
    }


def content_id(record: Mapping) -> str:
    """A stable id from a record's content (system, prompt, responses): the same record always gets it."""
    payload = json.dumps([record["system"], record["prompt"], record["responses"]], ensure_ascii=False)
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()[:16]
