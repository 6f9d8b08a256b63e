"""λ ⇄ text (docs/spec.md §1, "Steering needs conditioning").

The policy sees λ as one line of text in the system message, e.g.
``Preference weights: helpfulness=0.50 honesty=0.20 instruction_following=0.20 truthfulness=0.10``.
Dimensions appear in the dataset's order, each with two decimals. The template and the dimension order are saved
with the trained model (``lambda_dpo.json``) so that generation renders exactly what training rendered.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

DEFAULT_TEMPLATE = "Preference weights: {weights}"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-.]*$")
# Entries are separated by commas ("a=0.7,b=0.3", the CLI form) or by whitespace before the next "name="
# ("a=0.70 b=0.30", the form render_lambda writes), so rendered weights parse back.
_SEPARATOR = re.compile(r"\s*,\s*|\s+(?=[A-Za-z_][A-Za-z0-9_\-.]*\s*=)")


def _as_vector(lambdas: Mapping[str, float] | Sequence[float], dimensions: Sequence[str]) -> list[float]:
    if isinstance(lambdas, Mapping):
        unknown = [name for name in lambdas if name not in dimensions]
        if unknown:
            raise ValueError(f"unknown dimension(s) {unknown}; known dimensions: {list(dimensions)}")
        return [float(lambdas.get(name, 0.0)) for name in dimensions]
    values = [float(v) for v in lambdas]
    if len(values) != len(dimensions):
        raise ValueError(f"λ has {len(values)} values but there are {len(dimensions)} dimensions {list(dimensions)}")
    return values


def render_lambda(
    lambdas: Mapping[str, float] | Sequence[float], dimensions: Sequence[str], template: str = DEFAULT_TEMPLATE
) -> str:
    """Render λ as conditioning text: ``template.format(weights="name=0.50 other=0.50")``.

    ``lambdas`` is a mapping name → weight (unlisted names are 0) or a sequence in ``dimensions`` order;
    a tensor row works too.
    """
    if "{weights}" not in template:
        raise ValueError(f"conditioning template {template!r} must contain the field '{{weights}}'")
    if hasattr(lambdas, "tolist"):
        lambdas = lambdas.tolist()
    values = _as_vector(lambdas, dimensions)
    weights = " ".join(f"{name}={value:.2f}" for name, value in zip(dimensions, values))
    return template.format(weights=weights)


def with_conditioning(system: str | None, conditioning: str) -> str:
    """The system message the policy sees: the conditioning line, then the record's own system text if any."""
    return f"{conditioning}\n{system}" if system else conditioning


def parse_lambda(text: str, dimensions: Sequence[str], normalize: bool = False) -> dict[str, float]:
    """Parse ``"helpfulness=0.7,honesty=0.3"`` into ``{dimension: weight}`` for every dimension.

    Entries are separated by commas or spaces, so the weights text of :func:`render_lambda` parses back.

    Unlisted dimensions get 0. The weights must be ≥ 0 and sum to 1 within 1e-6, unless ``normalize=True``,
    which divides by their sum. Unknown or duplicate names, negative or non-finite values and malformed text
    raise ``ValueError`` with a message that says how to fix it.
    """
    example = _example(dimensions)
    if not text or not text.strip():
        raise ValueError(f"empty λ; write it as name=weight pairs separated by commas, e.g. {example!r}")
    entries = []
    for part in _SEPARATOR.split(text.strip()):
        if part.count("=") != 1:
            raise ValueError(f"malformed λ entry {part!r} in {text!r}: expected name=weight, e.g. {example!r}")
        name, raw = (s.strip() for s in part.split("="))
        if not _NAME.match(name):
            raise ValueError(f"malformed dimension name {name!r} in {text!r}; known dimensions: {list(dimensions)}")
        entries.append((name, raw))
    return _checked_weights(entries, dimensions, normalize, shown=repr(text))


def as_lambda(lam, dimensions: Sequence[str], normalize: bool = False) -> dict[str, float]:
    """λ as ``{dimension: weight}`` for every dimension, from any form a user gives it: ``"a=0.7,b=0.3"`` text
    (:func:`parse_lambda`), a mapping name → weight (unlisted names are 0), or a sequence or tensor row in
    ``dimensions`` order. Every form gets the same checks and messages (simplex unless ``normalize``)."""
    if isinstance(lam, str):
        return parse_lambda(lam, dimensions, normalize=normalize)
    if hasattr(lam, "tolist"):
        lam = lam.tolist()
    if isinstance(lam, Mapping):
        entries = [(str(name), value) for name, value in lam.items()]
    else:
        values = list(lam)
        if len(values) != len(dimensions):
            raise ValueError(f"λ {values} has {len(values)} values; the dimensions are {list(dimensions)}")
        entries = list(zip(dimensions, values))
    return _checked_weights(entries, dimensions, normalize, shown=repr(dict(entries)))


def _example(dimensions: Sequence[str]) -> str:
    return ",".join(f"{d}={1 / len(dimensions):.2f}" for d in list(dimensions)[:2]) if dimensions else "name=1.0"


def _checked_weights(entries, dimensions: Sequence[str], normalize: bool, shown: str) -> dict[str, float]:
    """``(name, weight)`` entries (weights as numbers or text) → ``{dimension: weight}``, checked; ``shown`` is how
    the λ appears in messages."""
    dimensions = list(dimensions)
    result = {name: 0.0 for name in dimensions}
    seen: set[str] = set()
    for name, raw in entries:
        if name not in result:
            raise ValueError(f"unknown dimension {name!r} in {shown}; known dimensions: {dimensions}")
        if name in seen:
            raise ValueError(f"dimension {name!r} is given twice in {shown}")
        seen.add(name)
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise ValueError(f"weight {raw!r} of {name!r} is not a number (in {shown})") from None
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"weight of {name!r} must be a finite number ≥ 0, got {raw!r}")
        result[name] = value
    total = sum(result.values())
    if normalize:
        if total <= 0:
            raise ValueError(f"λ {shown} has no positive weight, so it cannot be normalised")
        return {name: value / total for name, value in result.items()}
    if abs(total - 1.0) > 1e-6:
        raise ValueError(
            f"λ weights must sum to 1 (they sum to {total:.6g} in {shown}); fix them or pass normalize=True "
            "(--normalize on the command line)"
        )
    return result


def conditioned_prompt_ids(
    tokenizer,
    messages: Sequence[Mapping[str, str]],
    system: str | None,
    lambdas: Mapping[str, float] | Sequence[float] | None,
    dimensions: Sequence[str],
    template: str = DEFAULT_TEMPLATE,
    max_prompt_tokens: int | None = None,
) -> list[int]:
    """Token ids of the prompt as the policy sees it: the λ line first in the system message, then the record's
    own system text; ``lambdas=None`` renders the unconditioned prompt (what the reference sees).

    The one place where training, generation and evaluation render a λ-conditioned prompt, so all three agree.
    """
    from lambda_dpo.data import encode_prompt

    if lambdas is not None:
        system = with_conditioning(system, render_lambda(lambdas, dimensions, template))
    return encode_prompt(tokenizer, messages, system or "", max_prompt_tokens)


def widest_lambda_line(tokenizer, dimensions: Sequence[str], template: str = DEFAULT_TEMPLATE) -> str:
    """The λ line with the most tokens that training can render: each weight (two decimals, 0.00 … 1.00) chosen
    as the value whose ``name=value`` takes the most tokens. Not on the simplex; a bound for length checks."""
    values = [f"{v / 100:.2f}" for v in range(101)]
    widest = [
        max(values, key=lambda v, d=d: len(tokenizer(f" {d}={v}", add_special_tokens=False)["input_ids"]))
        for d in dimensions
    ]
    return template.format(weights=" ".join(f"{d}={v}" for d, v in zip(dimensions, widest)))


def check_prompt_budget(dataset, tokenizer, dimensions: Sequence[str], template: str, max_prompt_tokens: int) -> None:
    """Raise ``ValueError`` naming the records whose system text plus the widest λ line (and the chat template)
    cannot fit in ``max_prompt_tokens``: truncation never cuts the system message, so training would fail on them
    at whatever step first draws them. Checked once, before training starts."""
    from lambda_dpo.data import shortest_prompt_lengths

    line = widest_lambda_line(tokenizer, dimensions, template)
    systems = [with_conditioning(system, line) for system in dataset["system"]]
    lengths = shortest_prompt_lengths(tokenizer, dataset["prompt"], systems)
    over = [(record_id, n) for record_id, n in zip(dataset["id"], lengths) if n > max_prompt_tokens]
    if over:
        shown = ", ".join(f"{record_id!r} ({n} tokens)" for record_id, n in over[:5])
        more = f" and {len(over) - 5} more" if len(over) > 5 else ""
        raise ValueError(
            f"{len(over)} record(s) cannot fit their prompt in max_prompt_length={max_prompt_tokens} tokens with the "
            f"λ line ({line!r}): their system text, the λ line and the chat template alone need more: {shown}{more}; "
            "raise max_prompt_length (and max_length) or shorten those records' system text"
        )
