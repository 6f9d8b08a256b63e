"""Tokenisation of listwise records with the tokenizer's chat template (docs/spec.md §2).

**Default chat template.** ``ensure_chat_template`` gives a tokenizer without one (GPT-2, most base models)
``DEFAULT_CHAT_TEMPLATE``: every message is ``<|role|>`` + newline + content + the EOS token, and the generation
prompt is ``<|assistant|>`` + newline. A system message, a user turn and a response render as::

    <|system|>\\n{system}<eos><|user|>\\n{prompt}<eos><|assistant|>\\n{response}<eos>

The EOS closing the response is one of its tokens, so the model learns to stop. It also sets the pad token to
EOS when there is none (so padding must be masked by the attention mask, never by token id).

**Prompt/response boundary.** Response tokens are the suffix of the templated full conversation after the
templated prompt-with-generation-prompt: ``ids(prompt + response) = ids(prompt) + response_ids``. A BPE may merge
tokens across that boundary (e.g. a response starting with a newline after the template's newline); then the
token prefix does not match, and the response's text (the conversation's text after the prompt's text) is
tokenised on its own, which is how a model continuing the prompt would produce it; these are counted as
``boundary_mismatches``. Response tokens are computed without the record's system message, so they never depend
on the system text: the trainer re-renders only the prompt, with the λ line in the system message, every step.

Only the text after the prompt's last added token is encoded again per response (see ``_encode_prompts``):
the tokens are the same, and tokenising takes ~40% less time (benchmarks/bench_data.py).

**Truncation policy** (counted per record in ``prompt_truncated`` / ``responses_truncated``): a prompt longer
than ``max_prompt_length`` (default ``max_length // 2``) keeps its end — the earliest tokens of its non-system
messages are cut, the system message never is; each response is cut at its end to ``max_length −
max_prompt_length`` tokens, so any prompt that fits its budget plus any response fits ``max_length``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

logger = logging.getLogger("lambda_dpo.data")

DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)


def ensure_chat_template(tokenizer):
    """Give ``tokenizer`` ``DEFAULT_CHAT_TEMPLATE`` if it has no chat template and EOS as pad token if it has
    none; returns the same (modified) tokenizer."""
    if getattr(tokenizer, "eos_token", None) is None and (
        not tokenizer.chat_template or tokenizer.pad_token is None
    ):
        raise ValueError(
            f"{type(tokenizer).__name__} has no EOS token, which the default chat template and padding need; "
            "set tokenizer.eos_token (and a chat_template) before training"
        )
    if not tokenizer.chat_template:
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _conversation(messages: Sequence[Mapping], system: str | None) -> list[dict[str, str]]:
    head = [{"role": "system", "content": system}] if system else []
    return head + [{"role": m["role"], "content": m["content"]} for m in messages]


def _render(tokenizer, conversations: list[list[dict]], add_generation_prompt: bool) -> list[str]:
    if not conversations:
        return []
    return tokenizer.apply_chat_template(
        conversations, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def _fast_backend(tokenizer):
    """The Rust tokenizer behind a fast tokenizer, if calling it directly gives the same ids as the wrapper."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    split_special = bool(getattr(tokenizer, "split_special_tokens", False))
    return backend if backend is not None and backend.encode_special_tokens == split_special else None


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    # The template already wrote any BOS/EOS it wants; the tokenizer must not add its own.
    if not texts:
        return []
    backend = _fast_backend(tokenizer)
    if backend is None:
        return tokenizer(texts, add_special_tokens=False)["input_ids"]
    # Same ids as tokenizer(...), without computing offsets or building a BatchEncoding (a third of the time).
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    return [encoding.ids for encoding in encode(texts, add_special_tokens=False)]


def _encode_prompts(tokenizer, texts: list[str]) -> tuple[list[list[int]], list[tuple[int, int]]]:
    """Prompt ids, and for each prompt the (tokens, characters) up to and including its last added token.

    Added (special) tokens cut a text into pieces that a fast tokenizer tokenises independently, so a prompt
    and any conversation that continues it share their tokens up to that point, and only the text after it
    needs encoding again per response. (0, 0) — encode everything — where that does not hold: slow
    tokenizers, Metaspace pre-tokenizers that treat the first piece differently (``prepend_scheme="first"``,
    e.g. Llama 2), tokens matched after normalisation, or a prompt ending with the added token itself.
    """
    backend = _fast_backend(tokenizer)
    pre_tokenizer = (
        b"" if backend is None or backend.pre_tokenizer is None else backend.pre_tokenizer.__getstate__()
    )
    if backend is None or b'"prepend_scheme":"first"' in pre_tokenizer:
        return _encode(tokenizer, texts), [(0, 0)] * len(texts)
    anchors_ok = {
        i for i, t in tokenizer.added_tokens_decoder.items() if not t.normalized or backend.normalizer is None
    }
    ids, anchors = [], []
    for encoding in backend.encode_batch(texts, add_special_tokens=False):
        last = next((j for j in range(len(encoding.ids) - 2, -1, -1) if encoding.ids[j] in anchors_ok), None)
        anchors.append((0, 0) if last is None else (last + 1, encoding.offsets[last][1]))
        ids.append(encoding.ids)
    return ids, anchors


def encode_prompt(
    tokenizer, messages: Sequence[Mapping], system: str | None, max_prompt_tokens: int | None = None
) -> list[int]:
    """Token ids of the chat-templated prompt with the generation prompt; ``system`` (if non-empty) as the
    system message.

    If longer than ``max_prompt_tokens``, the end of the prompt is kept: the earliest tokens of the non-system
    messages' contents are cut (message by message, keeping every message and its role); the system message is
    never cut. Raises ``ValueError`` if even the system message and template alone do not fit.
    """
    conversation = _conversation(messages, system)
    ids = _encode(tokenizer, _render(tokenizer, [conversation], True))[0]
    if max_prompt_tokens is None or len(ids) <= max_prompt_tokens:
        return ids
    first = 1 if system else 0
    for index in range(first, len(conversation)):
        content_ids = _encode(tokenizer, [conversation[index]["content"]])[0]
        keep = len(content_ids)
        while len(ids) > max_prompt_tokens and keep > 0:
            # Re-tokenising the cut text can merge differently, hence the loop until it fits.
            keep = max(0, keep - (len(ids) - max_prompt_tokens))
            text = tokenizer.decode(content_ids[len(content_ids) - keep :]) if keep else ""
            conversation[index]["content"] = text.lstrip("\ufffd")  # a cut inside a multi-byte character
            ids = _encode(tokenizer, _render(tokenizer, [conversation], True))[0]
        if len(ids) <= max_prompt_tokens:
            return ids
    raise ValueError(
        f"the prompt cannot fit in {max_prompt_tokens} tokens: with every message emptied, the system message "
        f"({len(system or '')} characters) and the chat template still take {len(ids)} tokens; raise "
        "max_prompt_length or shorten the system text"
    )


def shortest_prompt_lengths(tokenizer, prompts: Sequence[Sequence[Mapping]], systems: Sequence[str]) -> list[int]:
    """Tokens each prompt takes with every non-system message emptied: what truncation cannot go below (the
    system message, the roles and the template), so ``encode_prompt`` raises when this exceeds its budget."""
    emptied = [_conversation([{**m, "content": ""} for m in p], s) for p, s in zip(prompts, systems)]
    return [len(ids) for ids in _encode(tokenizer, _render(tokenizer, emptied, True))]


TOKEN_COLUMNS = (
    "prompt_input_ids",
    "response_input_ids",
    "prompt_truncated",
    "responses_truncated",
    "boundary_mismatches",
)


def _tokenize_batch(batch: dict, tokenizer, max_length: int, max_prompt_length: int) -> dict:
    prompts, systems = batch["prompt"], batch["system"]
    # Responses are cut from conversations without the system message, so they cannot depend on it.
    bare = [_conversation(prompt, None) for prompt in prompts]
    bare_texts = _render(tokenizer, bare, True)
    bare_ids, anchors = _encode_prompts(tokenizer, bare_texts)
    turns = [
        (i, [*bare[i], {"role": "assistant", "content": r}])
        for i, rs in enumerate(batch["responses"])
        for r in rs
    ]
    full_texts = _render(tokenizer, [conversation for _, conversation in turns], False)
    tail_ids = _encode(tokenizer, [text[anchors[i][1] :] for (i, _), text in zip(turns, full_texts)])

    budget = max_length - max_prompt_length
    out = {name: [] for name in TOKEN_COLUMNS}
    for i, (prompt, system) in enumerate(zip(prompts, systems)):
        prompt_ids = encode_prompt(tokenizer, prompt, system) if system else bare_ids[i]
        truncated = len(prompt_ids) > max_prompt_length
        if truncated:
            try:
                prompt_ids = encode_prompt(tokenizer, prompt, system, max_prompt_length)
            except ValueError as e:
                raise ValueError(f"record {batch['id'][i]!r}: {e}") from None
        out["prompt_input_ids"].append(prompt_ids)
        out["prompt_truncated"].append(truncated)
        out["response_input_ids"].append([])
        out["responses_truncated"].append(0)
        out["boundary_mismatches"].append(0)
    for (i, _), text, ids in zip(turns, full_texts, tail_ids):
        if not text.startswith(bare_texts[i]):
            raise ValueError(
                f"record {batch['id'][i]!r}: the chat template renders the prompt differently once a response "
                "follows it, so the response tokens cannot be separated; use a template whose generation "
                "prompt is a prefix of the rendered conversation"
            )
        prompt_tail = bare_ids[i][anchors[i][0] :]  # the prompt's tokens that `ids` starts with, if clean
        if ids[: len(prompt_tail)] == prompt_tail:
            response_ids = ids[len(prompt_tail) :]
        else:  # BPE merged across the boundary: tokenise the response's text on its own
            response_ids = _encode(tokenizer, [text[len(bare_texts[i]) :]])[0]
            out["boundary_mismatches"][i] += 1
        out["responses_truncated"][i] += len(response_ids) > budget
        out["response_input_ids"][i].append(response_ids[:budget])
    return out


def tokenize_listwise(
    dataset, tokenizer, *, max_length: int, max_prompt_length: int | None = None, num_proc=None
):
    """Add token columns to a listwise dataset (see the module docstring for the boundary and truncation rules).

    Adds ``prompt_input_ids: [int]`` (``encode_prompt(tokenizer, prompt, system, max_prompt_length)``),
    ``response_input_ids: [[int]]`` (k lists, template end-of-turn tokens included, each at most
    ``max_length − max_prompt_length`` long), ``prompt_truncated: bool``, ``responses_truncated: int`` and
    ``boundary_mismatches: int``. ``max_prompt_length`` defaults to ``max_length // 2``. Runs through
    ``Dataset.map``, so a disk-backed dataset's result is cached under its fingerprint.
    """
    max_prompt_length = max_length // 2 if max_prompt_length is None else max_prompt_length
    if not 0 < max_prompt_length < max_length:
        raise ValueError(
            f"need 0 < max_prompt_length < max_length, got max_prompt_length={max_prompt_length}, "
            f"max_length={max_length}"
        )
    ensure_chat_template(tokenizer)
    tokenized = dataset.map(
        _tokenize_batch,
        batched=True,
        batch_size=500,
        num_proc=num_proc,
        fn_kwargs={"tokenizer": tokenizer, "max_length": max_length, "max_prompt_length": max_prompt_length},
        desc="Tokenising listwise records",
    )
    logger.info("tokenised %s", truncation_summary(tokenized))
    return tokenized


def truncation_summary(tokenized) -> dict[str, int]:
    """Counts over a tokenised listwise dataset: records, responses, prompts/responses truncated, boundary
    mismatches, and the longest prompt and response in tokens."""
    import pyarrow.compute as pc

    counts = ("records", "responses", "prompts_truncated", "responses_truncated", "boundary_mismatches")
    summary = dict.fromkeys((*counts, "max_prompt_tokens", "max_response_tokens"), 0)
    columns = list(TOKEN_COLUMNS)
    for table in tokenized.select_columns(columns).with_format("arrow").iter(batch_size=10_000):
        responses = pc.list_flatten(table["response_input_ids"])
        summary["records"] += table.num_rows
        summary["responses"] += len(responses)
        summary["prompts_truncated"] += pc.sum(table["prompt_truncated"].cast("int64")).as_py() or 0
        summary["responses_truncated"] += pc.sum(table["responses_truncated"]).as_py() or 0
        summary["boundary_mismatches"] += pc.sum(table["boundary_mismatches"]).as_py() or 0
        longest_prompt = pc.max(pc.list_value_length(table["prompt_input_ids"])).as_py() or 0
        longest_response = pc.max(pc.list_value_length(responses)).as_py() or 0
        summary["max_prompt_tokens"] = max(summary["max_prompt_tokens"], longest_prompt)
        summary["max_response_tokens"] = max(summary["max_response_tokens"], longest_response)
    return summary
