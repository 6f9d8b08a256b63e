"""Tokenisation: chat template, prompt/response boundary under BPE, truncation policy, caching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import Dataset, concatenate_datasets
from transformers import AutoTokenizer

from lambda_dpo.data import (
    DEFAULT_CHAT_TEMPLATE,
    encode_prompt,
    ensure_chat_template,
    load_listwise,
    tokenize_listwise,
    truncation_summary,
)
from lambda_dpo.data.tokenize import _encode_prompts

EOS = "<|endoftext|>"


@pytest.fixture(scope="module")
def tokenizer():
    return ensure_chat_template(
        AutoTokenizer.from_pretrained(Path(__file__).parent / "data" / "gpt2_tokenizer")
    )


def listwise(tmp_path: Path, records: list[dict], **kwargs):
    path = tmp_path / f"records{len(list(tmp_path.iterdir()))}.jsonl"
    path.write_text(
        "".join(json.dumps({"scores": {"h": list(range(len(r["responses"])))}, **r}) + "\n" for r in records)
    )
    return load_listwise(path, keep_in_memory=True, **kwargs)


def listwise_in_memory(records: list[dict], features):
    scored = [
        {"id": f"extra{i}", "system": "", **r, "scores": {"preference": [0.0] * len(r["responses"])}}
        for i, r in enumerate(records)
    ]
    return Dataset.from_list(scored, features=features)


def full_ids(tokenizer, messages, response):
    text = tokenizer.apply_chat_template(
        [*messages, {"role": "assistant", "content": response}], tokenize=False
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"], text


def test_default_template_and_pad_token(data_dir):
    fresh = AutoTokenizer.from_pretrained(data_dir / "gpt2_tokenizer")
    assert fresh.chat_template is None and fresh.pad_token is None
    assert ensure_chat_template(fresh) is fresh
    assert fresh.chat_template == DEFAULT_CHAT_TEMPLATE and fresh.pad_token == EOS
    text = fresh.apply_chat_template(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert text == f"<|system|>\nS{EOS}<|user|>\nU{EOS}<|assistant|>\n"  # as documented in the module
    fresh.chat_template = "{{ messages[0]['content'] }}"
    assert (
        ensure_chat_template(fresh).chat_template == "{{ messages[0]['content'] }}"
    )  # an own template is kept


def test_response_tokens_are_the_suffix_of_the_full_conversation(tmp_path, tokenizer):
    records = [
        {"prompt": "Name a colour.", "responses": ["Blue.", " Red, with a leading space", "über-grün ✓"]},
        {
            "prompt": [
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Bye?"},
            ],
            "responses": ["Bye.", "See you\nlater."],
        },
    ]
    tokenized = tokenize_listwise(listwise(tmp_path, records), tokenizer, max_length=256)
    for row in tokenized:
        assert (
            row["boundary_mismatches"] == 0
            and not row["prompt_truncated"]
            and row["responses_truncated"] == 0
        )
        for response, response_ids in zip(row["responses"], row["response_input_ids"]):
            expected, _ = full_ids(tokenizer, row["prompt"], response)
            assert row["prompt_input_ids"] + response_ids == expected
            assert (
                tokenizer.decode(response_ids) == response + EOS
            )  # the end-of-turn token is a response token


def metaspace_tokenizer(data_dir: Path):
    """A Llama-2-like tokenizer (Metaspace, prepend_scheme="first"), trained here on fixture text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    backend.decoder = decoders.Metaspace(prepend_scheme="first")
    text = (data_dir / "helpsteer2" / "train_sample.jsonl").read_text().split('"')
    backend.train_from_iterator(text, trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "</s>"]))
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>")


CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.mark.parametrize("variant", ["gpt2-default-template", "gpt2-chatml-added-tokens", "metaspace-first"])
def test_only_re_encoding_after_the_last_added_token_gives_the_full_conversation_tokens(variant, data_dir):
    if (
        variant == "metaspace-first"
    ):  # its first text piece is tokenised differently: the shortcut must be off
        tok = ensure_chat_template(metaspace_tokenizer(data_dir))
    else:
        tok = ensure_chat_template(AutoTokenizer.from_pretrained(data_dir / "gpt2_tokenizer"))
    if variant == "gpt2-chatml-added-tokens":
        tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
        tok.chat_template = CHATML
    records = load_listwise(data_dir / "qa_feedback" / "dev_feedback_sample.json", keep_in_memory=True)
    extra = [
        {
            "prompt": [
                {"role": "user", "content": "Grüße, ✓?"},
                {"role": "assistant", "content": "Ja."},
                {"role": "user", "content": "Und?"},
            ],
            "responses": ["Fine", " fine", "\n\nfine"],
        }
    ]
    records = concatenate_datasets([records, listwise_in_memory(extra, records.features)])
    prompts = [
        tok.apply_chat_template(r, tokenize=False, add_generation_prompt=True) for r in records["prompt"]
    ]
    uses_shortcut = [anchor != (0, 0) for anchor in _encode_prompts(tok, prompts)[1]]
    assert all(uses_shortcut) if variant.startswith("gpt2") else not any(uses_shortcut)
    tokenized = tokenize_listwise(records, tok, max_length=2048)
    for row in tokenized:
        for response, response_ids in zip(row["responses"], row["response_input_ids"]):
            expected, text = full_ids(tok, row["prompt"], response)
            if (
                row["boundary_mismatches"] == 0
                or expected[: len(row["prompt_input_ids"])] == row["prompt_input_ids"]
            ):
                assert row["prompt_input_ids"] + response_ids == expected, (variant, response[:40])
            else:
                assert tok.decode(row["prompt_input_ids"] + response_ids) == tok.decode(expected)


def test_bpe_merge_across_the_boundary_is_handled(tmp_path, tokenizer):
    # The template's "\n" before the response and the response's "\n\n" merge into other tokens ("\n\n" + "\n").
    tokenized = tokenize_listwise(
        listwise(tmp_path, [{"prompt": "Hi", "responses": ["\n\nHello", "Hello"]}]), tokenizer, max_length=64
    )
    row = tokenized[0]
    assert row["boundary_mismatches"] == 1
    expected, text = full_ids(tokenizer, row["prompt"], "\n\nHello")
    assert expected[: len(row["prompt_input_ids"])] != row["prompt_input_ids"]  # the mismatch is real
    merged_ids = row["prompt_input_ids"] + row["response_input_ids"][0]
    assert tokenizer.decode(merged_ids) == text  # the same text, split at the prompt boundary
    assert row["response_input_ids"][0] == tokenizer("\n\nHello" + EOS, add_special_tokens=False)["input_ids"]


def test_response_tokens_do_not_depend_on_the_system_text(tmp_path, tokenizer):
    record = {"prompt": "Explain rain.", "responses": ["Water falls.", "Clouds cry."]}
    plain = tokenize_listwise(listwise(tmp_path, [record]), tokenizer, max_length=128)[0]
    system = "Preference weights: helpfulness=0.70 honesty=0.30"
    conditioned = tokenize_listwise(
        listwise(tmp_path, [{**record, "system": system}]), tokenizer, max_length=128
    )[0]
    assert conditioned["response_input_ids"] == plain["response_input_ids"]
    assert conditioned["prompt_input_ids"] != plain["prompt_input_ids"]
    assert conditioned["prompt_input_ids"] == encode_prompt(tokenizer, conditioned["prompt"], system, 64)
    # What the trainer does each step: a new system text with the same response ids is the full conversation.
    other = "Preference weights: helpfulness=0.10 honesty=0.90"
    expected, _ = full_ids(tokenizer, [{"role": "system", "content": other}, *plain["prompt"]], "Clouds cry.")
    assert encode_prompt(tokenizer, plain["prompt"], other) + plain["response_input_ids"][1] == expected


def test_long_prompt_keeps_its_end_and_the_whole_system_message(tmp_path, tokenizer):
    words = " ".join(f"w{i}" for i in range(200))
    system = "KEEP THIS WHOLE SYSTEM TEXT"
    row = tokenize_listwise(
        listwise(tmp_path, [{"prompt": words, "system": system, "responses": ["a", "b"]}]),
        tokenizer,
        max_length=100,
        max_prompt_length=40,
    )[0]
    text = tokenizer.decode(row["prompt_input_ids"])
    assert row["prompt_truncated"] and len(row["prompt_input_ids"]) <= 40
    assert text.startswith(f"<|system|>\n{system}{EOS}<|user|>\n")
    assert text.endswith(f" w198 w199{EOS}<|assistant|>\n") and " w0 " not in text


def test_truncation_cuts_the_earliest_messages_first(tokenizer):
    messages = [
        {"role": "user", "content": "old " * 80},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "the final question?"},
    ]
    ids = encode_prompt(tokenizer, messages, "sys", max_prompt_tokens=45)
    text = tokenizer.decode(ids)
    assert (
        len(ids) <= 45
        and "<|assistant|>\nok" in text
        and text.endswith(f"the final question?{EOS}<|assistant|>\n")
    )
    assert text.startswith(f"<|system|>\nsys{EOS}<|user|>\n") and text.count("old") < 80


def test_system_message_that_cannot_fit_is_an_error(tokenizer):
    with pytest.raises(ValueError, match="raise max_prompt_length or shorten the system text"):
        encode_prompt(
            tokenizer, [{"role": "user", "content": "hi"}], "a long system text " * 10, max_prompt_tokens=20
        )


def test_responses_are_cut_to_fit_max_length_and_counted(tmp_path, tokenizer):
    long_response = "word " * 100
    tokenized = tokenize_listwise(
        listwise(tmp_path, [{"prompt": "p", "responses": [long_response, "short"]}]), tokenizer, max_length=64
    )  # default max_prompt_length = 64 // 2
    row = tokenized[0]
    assert [len(ids) for ids in row["response_input_ids"]] == [32, len(tokenizer("short" + EOS)["input_ids"])]
    assert row["responses_truncated"] == 1
    assert truncation_summary(tokenized) == {
        "records": 1,
        "responses": 2,
        "prompts_truncated": 0,
        "responses_truncated": 1,
        "boundary_mismatches": 0,
        "max_prompt_tokens": len(row["prompt_input_ids"]),
        "max_response_tokens": 32,
    }
    with pytest.raises(ValueError, match="need 0 < max_prompt_length < max_length"):
        tokenize_listwise(tokenized, tokenizer, max_length=64, max_prompt_length=64)


def test_tokenisation_is_cached_under_the_dataset_fingerprint(tmp_path, data_dir):
    path = data_dir / "ultrafeedback" / "sample.jsonl"
    fresh = ensure_chat_template(AutoTokenizer.from_pretrained(data_dir / "gpt2_tokenizer"))
    first = tokenize_listwise(load_listwise(path, cache_dir=tmp_path), fresh, max_length=128)
    cache_file = Path(first.cache_files[0]["filename"])
    assert cache_file.is_relative_to(tmp_path)
    written = cache_file.stat().st_mtime_ns
    again = ensure_chat_template(AutoTokenizer.from_pretrained(data_dir / "gpt2_tokenizer"))
    second = tokenize_listwise(load_listwise(path, cache_dir=tmp_path), again, max_length=128)
    assert second._fingerprint == first._fingerprint and second.cache_files == first.cache_files
    assert cache_file.stat().st_mtime_ns == written  # read back, not recomputed
    assert second["response_input_ids"] == first["response_input_ids"]
    other = tokenize_listwise(load_listwise(path, cache_dir=tmp_path), again, max_length=64)
    assert other._fingerprint != first._fingerprint  # other settings, other cache entry
