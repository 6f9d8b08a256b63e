"""One converter per input format (docs/spec.md §2): raw rows → validated listwise records.

Every converter takes ``rows``, an iterator of ``(line_or_row, value)`` from :mod:`lambda_dpo.data.sources`,
and yields ``(line_or_row, record)`` or ``(line_or_row, RecordError)``; records span several rows in the
grouping formats and are then located at their first row. Options are keyword-only and listed in each
docstring; ``FORMATS`` maps format names (including presets such as ``helpsteer2``) to converters.

How scores are made, format by format:

- ``listwise``: as given (``null`` = missing).
- ``ultrafeedback``: each aspect's ``Rating``; ``"N/A"`` or anything unparseable is missing (None), never 1.
- ``rated_rows`` / ``helpsteer2`` / ``usr``: the score columns of rows that share a prompt, in row order.
- ``pairwise``: a list [chosen, rejected] scored ``score_chosen``/``score_rejected`` or else (1, 0); with
  ``group_by_prompt=True`` all pairs of a prompt make one list: each response scores the mean of the scores
  it was given if every pair has scores, else it is ranked by net wins (wins − losses), ties broken at random
  (seeded by ``seed`` and the prompt, so reproducible), and scores −rank.
- ``ranked``: ``ranks`` (1 = best) become scores −rank.
- ``qa_feedback``: judgements between outputs (i, j) in ``combinations`` order (1v2, 1v3, 1v4, 2v3, …;
  1 = first preferred, 2 = second, 0 = tie) become win counts: a win counts 1 and a tie ½ to each side.

Length (about 500 lines): one short converter per format behind one registry, so that a reader looks a format up
here and every converter follows the same row → record contract next to the others.
"""

from __future__ import annotations

import inspect
import json
import math
import random
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import partial
from itertools import combinations

from lambda_dpo.data.records import (
    DataSourceError,
    RecordError,
    make_record,
    normalize_messages,
    normalize_response,
    score_value,
    short_repr,
)

Rows = Iterable[tuple[int, object]]
Converted = Iterator[tuple[int, "dict | RecordError"]]

ULTRAFEEDBACK_ASPECTS = ("helpfulness", "honesty", "instruction_following", "truthfulness")
HELPSTEER2_ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")


def _objects(rows: Rows) -> Iterator[tuple[int, Mapping | RecordError]]:
    for position, value in rows:
        if not isinstance(value, (Mapping, RecordError)):
            value = RecordError("wrong_type", "(record)", f"expected a JSON object, got {short_repr(value)}")
        yield position, value


def _per_row(rows: Rows, convert_one: Callable[[Mapping], dict]) -> Converted:
    for position, row in _objects(rows):
        if isinstance(row, RecordError):
            yield position, row
            continue
        try:
            yield position, convert_one(row)
        except RecordError as err:
            yield position, err


def _grouped(rows: Rows, parse_row: Callable, build_record: Callable, group_field: str | None = None) -> Converted:
    """Rows that share a prompt make one record. ``parse_row(row) -> (messages, system, item)`` rejects a bad
    row on its own line; ``build_record(key, group) -> record`` gets the group's ``items`` in row order, and
    the record is located at the group's first row. ``group_field`` groups by that column instead (e.g. a prompt
    id, when the same prompt text was rated again in another annotation batch)."""
    groups: dict[str, dict] = {}
    for position, row in _objects(rows):
        if isinstance(row, RecordError):
            yield position, row
            continue
        try:
            messages, system, item = parse_row(row)
        except RecordError as err:
            yield position, err
            continue
        if group_field is not None:
            group_value = row.get(group_field)
            if group_value is None:
                yield position, RecordError("missing_field", group_field, "the group_field is missing or null")
                continue
            key = json.dumps(["group", group_value], ensure_ascii=False, default=str)
        else:
            key = json.dumps([system, messages], ensure_ascii=False)
        group = groups.setdefault(
            key, {"position": position, "prompt": messages, "system": system, "items": []}
        )
        group["items"].append(item)
    for key, group in groups.items():
        try:
            record = build_record(key, group)
        except RecordError as err:
            yield group["position"], err
        else:
            yield group["position"], record


def _require(row: Mapping, name: str, parent: str = ""):
    if name not in row:
        where = f"{parent}.{name}" if parent else name
        raise RecordError(
            "missing_field", where, f"required field is missing (fields present: {sorted(row)})"
        )
    return row[name]


def from_listwise(rows: Rows) -> Converted:
    """Native listwise rows: ``prompt``, ``responses``, ``scores`` {dimension: [number | null]}, optional
    ``id`` and ``system``."""

    def one(row):
        prompt, responses, scores = (_require(row, name) for name in ("prompt", "responses", "scores"))
        return make_record(prompt, responses, scores, record_id=row.get("id"), system=row.get("system"))

    return _per_row(rows, one)


def from_ranked(rows: Rows, *, dimension: str = "preference") -> Converted:
    """``prompt``, ``responses``, ``ranks``: a list (one dimension named ``dimension``) or {dimension: list};
    rank 1 is best, ``null`` is unranked. Scores are −rank."""

    def one(row):
        prompt, responses, ranks = (_require(row, name) for name in ("prompt", "responses", "ranks"))
        if isinstance(ranks, list):
            ranks = {dimension: ranks}
        if not isinstance(ranks, Mapping):
            raise RecordError(
                "wrong_type",
                "ranks",
                f"expected a list of ranks or {{dimension: ranks}}, got {short_repr(ranks)}",
            )
        scores = {}
        for name, values in ranks.items():
            if not isinstance(values, list):
                raise RecordError(
                    "wrong_type", f"ranks.{name}", f"expected a list of ranks, got {short_repr(values)}"
                )
            ranked = [score_value(v, f"ranks.{name}[{i}]") for i, v in enumerate(values)]
            scores[name] = [None if r is None else -r for r in ranked]
        return make_record(
            prompt, responses, scores, record_id=row.get("id"), system=row.get("system"), score_field="ranks"
        )

    return _per_row(rows, one)


def _rating(value) -> float | None:
    """An UltraFeedback ``Rating`` ("1".."5", sometimes a number) → float; "N/A" or unparseable → None."""
    if isinstance(value, bool):
        return None
    try:
        rating = float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError):
        return None
    return rating if math.isfinite(rating) else None


def from_ultrafeedback(rows: Rows, *, aspects: Iterable[str] = ULTRAFEEDBACK_ASPECTS) -> Converted:
    """openbmb/UltraFeedback rows: ``instruction``; ``completions[].response``;
    ``completions[].annotations.<aspect>.Rating``. Any number of completions; a missing, "N/A" or
    unparseable rating is None."""
    aspects = list(aspects)

    def one(row):
        instruction, completions = _require(row, "instruction"), _require(row, "completions")
        if not isinstance(completions, list):
            raise RecordError(
                "wrong_type", "completions", f"expected a list of completions, got {short_repr(completions)}"
            )
        responses, scores = [], {aspect: [] for aspect in aspects}
        for i, completion in enumerate(completions):
            if not isinstance(completion, Mapping):
                raise RecordError(
                    "wrong_type", f"completions[{i}]", f"expected an object, got {short_repr(completion)}"
                )
            responses.append(_require(completion, "response", f"completions[{i}]"))
            annotations = completion.get("annotations") or {}
            if not isinstance(annotations, Mapping):
                raise RecordError(
                    "wrong_type",
                    f"completions[{i}].annotations",
                    f"expected an object, got {short_repr(annotations)}",
                )
            for aspect in aspects:
                annotation = annotations.get(aspect)
                scores[aspect].append(
                    _rating(annotation.get("Rating")) if isinstance(annotation, Mapping) else None
                )
        return make_record(
            instruction,
            responses,
            scores,
            record_id=row.get("id"),
            prompt_field="instruction",
            response_fields=[f"completions[{i}].response" for i in range(len(responses))],
            score_field="completions[].annotations",
        )

    return _per_row(rows, one)


def from_rated_rows(
    rows: Rows,
    *,
    prompt_field: str = "prompt",
    response_field: str = "response",
    score_fields: Iterable[str] | None = None,
    scores_field: str | None = None,
    group_field: str | None = None,
    max_responses: int | None = None,
) -> Converted:
    """One rated response per row; rows with the same prompt make one list, in row order.

    Scores come from the columns ``score_fields`` (default: every numeric column of the first row) or from
    one column ``scores_field`` holding {dimension: number}. ``null`` (or a dimension absent from
    ``scores_field``) is missing. A row with a bad prompt, response or score is rejected on its own line.

    ``group_field``: rows with the same value there make one list (default: the same prompt text), for data whose
    prompts repeat across annotation batches. ``max_responses``: lists longer than this keep the responses with
    the highest and the lowest mean score, alternately (the widest comparisons; ties keep the earlier row), in row
    order; one forward per response makes a list of hundreds cost a step of hundreds of sequences.
    """
    if max_responses is not None and max_responses < 2:
        raise ValueError(f"max_responses must be ≥ 2 (a list needs two responses), got {max_responses}")
    dimension_order: dict[str, None] = dict.fromkeys(score_fields or ())

    def parse_row(row):
        messages, system = normalize_messages(_require(row, prompt_field), prompt_field)
        response = normalize_response(_require(row, response_field), response_field)
        if scores_field is not None:
            nested = _require(row, scores_field)
            if not isinstance(nested, Mapping):
                reason = f"expected {{dimension: score}}, got {short_repr(nested)}"
                raise RecordError("wrong_type", scores_field, reason)
            row_scores = {str(k): score_value(v, f"{scores_field}.{k}") for k, v in nested.items()}
        else:
            if not dimension_order:
                dimension_order.update(dict.fromkeys(_numeric_columns(row, {prompt_field, response_field})))
            row_scores = {name: score_value(_require(row, name), name) for name in dimension_order}
        dimension_order.update(dict.fromkeys(row_scores))
        return messages, system, (response, row_scores)

    def build_record(key, group):
        items = group["items"]
        if max_responses is not None and len(items) > max_responses:
            items = [items[i] for i in _widest(items, max_responses)]
        responses = [response for response, _ in items]
        scores = {name: [s.get(name) for _, s in items] for name in dimension_order}
        return make_record(
            group["prompt"],
            responses,
            scores,
            system=group["system"],
            response_fields=[response_field] * len(responses),
        )

    return _grouped(rows, parse_row, build_record, group_field)


def _widest(items: list, keep: int) -> list[int]:
    """Indices (in row order) of ``keep`` items: best, worst, second best, second worst … by mean score."""
    def mean(scores):
        values = [v for v in scores.values() if v is not None]
        return sum(values) / len(values) if values else float("-inf")

    best = iter(sorted(range(len(items)), key=lambda i: (-mean(items[i][1]), i)))
    worst = iter(sorted(range(len(items)), key=lambda i: (mean(items[i][1]), i)))
    chosen: set[int] = set()
    for source in [best, worst] * keep:
        if len(chosen) == keep:
            break
        chosen.add(next(i for i in source if i not in chosen))
    return sorted(chosen)


def _numeric_columns(row: Mapping, exclude: set[str]) -> list[str]:
    columns = [
        k
        for k, v in row.items()
        if k not in exclude and isinstance(v, (int, float)) and not isinstance(v, bool)
    ]
    if not columns:
        raise DataSourceError(
            f"rated rows: the first row (fields {sorted(row)}) has no numeric column to use as a score; "
            "pass score_fields=[...] or scores_field=..."
        )
    return columns


def _pair(row: Mapping) -> tuple[list[dict], str, str, str, tuple[float, float] | None]:
    """A TRL pair row → (prompt messages, system, chosen, rejected, (score_chosen, score_rejected) | None)."""
    chosen, rejected = _require(row, "chosen"), _require(row, "rejected")
    if "prompt" in row:
        messages, system = normalize_messages(row["prompt"], "prompt")
    else:  # TRL's implicit-prompt format: two full conversations whose shared beginning is the prompt
        if not (isinstance(chosen, list) and isinstance(rejected, list)):
            raise RecordError(
                "missing_field",
                "prompt",
                "no prompt; add a `prompt` field (or give chosen/rejected "
                "as full conversations that share their beginning)",
            )
        shared = 0
        while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
            shared += 1
        messages, system = normalize_messages(chosen[:shared], "chosen")
        chosen, rejected = chosen[shared:], rejected[shared:]
    chosen, rejected = normalize_response(chosen, "chosen"), normalize_response(rejected, "rejected")
    if chosen == rejected:
        raise RecordError("bad_value", "rejected", "chosen and rejected are the same text; drop the row")
    has = ("score_chosen" in row, "score_rejected" in row)
    if has[0] != has[1]:
        missing = "score_rejected" if has[0] else "score_chosen"
        raise RecordError("missing_field", missing, "give both score_chosen and score_rejected, or neither")
    scores = None
    if all(has):
        scores = (
            score_value(row["score_chosen"], "score_chosen"),
            score_value(row["score_rejected"], "score_rejected"),
        )
        if None in scores:
            raise RecordError(
                "wrong_type", "score_chosen", "pair scores cannot be null; drop them or the row"
            )
    return messages, system, chosen, rejected, scores


def from_pairwise(
    rows: Rows, *, group_by_prompt: bool = False, dimension: str = "preference", seed: int = 0
) -> Converted:
    """TRL pairwise rows: standard, conversational or implicit-prompt, optional ``score_chosen`` and
    ``score_rejected``.

    Without grouping each pair is a list of two. With ``group_by_prompt=True`` all pairs of a prompt make one
    ranked list (see the module docstring for how ties are broken)."""
    if not group_by_prompt:

        def one(row):
            messages, system, chosen, rejected, scores = _pair(row)
            return make_record(
                messages,
                [chosen, rejected],
                {dimension: list(scores or (1.0, 0.0))},
                record_id=row.get("id"),
                system=system,
            )

        return _per_row(rows, one)

    def parse_row(row):
        messages, system, chosen, rejected, scores = _pair(row)
        return messages, system, (chosen, rejected, scores)

    def build_record(key, group):
        responses = list(dict.fromkeys(text for pair in group["items"] for text in pair[:2]))
        # Seeded by the prompt, not by file position, so its tie-breaks do not depend on other rows.
        scores = _rank_pairs(responses, group["items"], random.Random(f"{seed}:{key}"))
        return make_record(group["prompt"], responses, {dimension: scores}, system=group["system"])

    return _grouped(rows, parse_row, build_record)


def _rank_pairs(responses: list[str], pairs: list, rng: random.Random) -> list[float]:
    """Scores of ``responses`` from their pairs: the mean score each was given if every pair is scored,
    else −rank by net wins with random tie-breaks."""
    index = {text: i for i, text in enumerate(responses)}
    if all(scores is not None for _, _, scores in pairs):
        given: list[list[float]] = [[] for _ in responses]
        for chosen, rejected, (score_chosen, score_rejected) in pairs:
            given[index[chosen]].append(score_chosen)
            given[index[rejected]].append(score_rejected)
        return [sum(values) / len(values) for values in given]
    net_wins = [0] * len(responses)
    for chosen, rejected, _ in pairs:
        net_wins[index[chosen]] += 1
        net_wins[index[rejected]] -= 1
    tie_breaker = [rng.random() for _ in responses]
    order = sorted(range(len(responses)), key=lambda i: (-net_wins[i], tie_breaker[i]))
    scores = [0.0] * len(responses)
    for rank, i in enumerate(order, start=1):
        scores[i] = -float(rank)
    return scores


_PREDICTION = re.compile(r"^prediction (\d+)$")


def from_qa_feedback(
    rows: Rows, *, dimension: str = "preference", include_passages: bool = False
) -> Converted:
    """FineGrainedRLHF QA-Feedback rows: ``question``, ``prediction 1..n``, ``preference`` (n(n−1)/2
    judgements in ``combinations`` order: 1 = first preferred, 2 = second, 0 = tie) → win counts (tie = ½).
    ``include_passages=True`` appends the retrieved ``passages`` to the question."""

    def one(row):
        question, preference = _require(row, "question"), _require(row, "preference")
        numbers = sorted(int(m.group(1)) for m in map(_PREDICTION.match, row) if m)
        if numbers != list(range(1, len(numbers) + 1)):
            raise RecordError(
                "missing_field",
                "prediction N",
                f"expected fields 'prediction 1'..'prediction n', found numbers {numbers}",
            )
        pairs = list(combinations(range(len(numbers)), 2))
        if not isinstance(preference, list):
            raise RecordError(
                "wrong_type", "preference", f"expected a list of judgements, got {short_repr(preference)}"
            )
        if len(preference) != len(pairs):
            raise RecordError(
                "score_length",
                "preference",
                f"{len(preference)} judgements for {len(numbers)} outputs; "
                f"expected {len(pairs)} (one per pair)",
            )
        wins = [0.0] * len(numbers)
        for n, ((a, b), judgement) in enumerate(zip(pairs, preference)):
            if judgement not in (0, 1, 2) or isinstance(judgement, bool):
                raise RecordError(
                    "bad_value", f"preference[{n}]", f"got {short_repr(judgement)}; expected 0 (tie), 1 or 2"
                )
            if judgement == 0:
                wins[a] += 0.5
                wins[b] += 0.5
            else:
                wins[a if judgement == 1 else b] += 1.0
        prompt = question
        if include_passages and isinstance(question, str) and row.get("passages"):
            prompt = (
                question
                + "\n\nPassages:\n"
                + "\n".join(
                    f"{p[0]}: {' '.join(p[1:])}" for p in row["passages"] if isinstance(p, list) and p
                )
            )
        fields = [f"prediction {n}" for n in numbers]
        return make_record(
            prompt,
            [row[f] for f in fields],
            {dimension: wins},
            record_id=row.get("id"),
            prompt_field="question",
            response_fields=fields,
            score_field="preference",
        )

    return _per_row(rows, one)


FORMATS: dict[str, Callable[..., Converted]] = {
    "listwise": from_listwise,
    "ultrafeedback": from_ultrafeedback,
    "rated_rows": from_rated_rows,
    "helpsteer2": partial(from_rated_rows, score_fields=HELPSTEER2_ATTRIBUTES),
    "usr": partial(
        from_rated_rows, prompt_field="source", response_field="system_output", scores_field="scores"
    ),
    "pairwise": from_pairwise,
    "ranked": from_ranked,
    "qa_feedback": from_qa_feedback,
}


def detect_format(row: Mapping) -> str:
    """The format of a dataset from the fields of its first record (see ``FORMATS``)."""
    keys = set(row)
    rules = [
        ("listwise", {"prompt", "responses", "scores"}),
        ("ranked", {"prompt", "responses", "ranks"}),
        ("ultrafeedback", {"instruction", "completions"}),
        ("pairwise", {"chosen", "rejected"}),
        ("qa_feedback", {"question", "preference", "prediction 1"}),
        ("usr", {"source", "system_output", "scores"}),
        ("helpsteer2", {"prompt", "response", *HELPSTEER2_ATTRIBUTES}),
        ("rated_rows", {"prompt", "response"}),
    ]
    for name, required in rules:
        if required <= keys:
            return name
    raise DataSourceError(
        f"cannot detect the format from the first record's fields {sorted(keys)}; pass format= one of "
        f"{sorted(FORMATS)} (and its field options, e.g. prompt_field=... for rated_rows)"
    )


def converter_options(name: str) -> list[str]:
    """The keyword options a format accepts (``seed`` is passed by the loader where used)."""
    function = FORMATS[name]
    base = function.func if isinstance(function, partial) else function
    return [p.name for p in inspect.signature(base).parameters.values() if p.kind is p.KEYWORD_ONLY]
