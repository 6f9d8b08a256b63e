"""One-pass reference log-probs (lambda_dpo.logprobs.reference_cache, .batched): values, sharding, the on-disk cache and its fingerprint."""

from __future__ import annotations

import copy
import json
import logging
import math

import pytest
import torch
from _tiny import tiny_llama
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from lambda_dpo.logprobs import build_sequences, sequence_logps
from lambda_dpo.logprobs.reference_cache import (
    compute_reference_logps,
    load_or_compute_reference_logps,
    reference_fingerprint,
)

VOCAB = 101
SETTINGS = {"reduction": "mean", "max_length": 64}


def make_model(seed: int = 0) -> LlamaForCausalLM:
    return tiny_llama(VOCAB, seed=seed).eval()


def make_tokenizer(chat_template: str = "{% for m in messages %}{{ m.content }} {% endfor %}"):
    words = ["<pad>", "<eos>", "<unk>", *"the a cat dog sat on mat is good bad".split()]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    tokenizer.chat_template = chat_template
    return tokenizer


def make_dataset(seed: int = 0) -> Dataset:
    """5 rows with k = 2, 3, 4, 2, 3 responses of varied lengths (token ids in the tiny model's vocabulary)."""
    generator = torch.Generator().manual_seed(seed)

    def tokens(n):
        return torch.randint(1, VOCAB, (n,), generator=generator).tolist()

    rows = []
    for row, k in enumerate([2, 3, 4, 2, 3]):
        responses = [tokens(2 + (row * 3 + j * 5) % 9) for j in range(k)]
        rows.append(
            {"prompt_input_ids": tokens(3 + row), "response_input_ids": responses, "id": f"row-{row}"}
        )
    return Dataset.from_list(rows)


def one_by_one(model, dataset, reduction="mean") -> list[list[float]]:
    """Each response on its own (no batching, no sorting): what the batched pass must reproduce."""
    result = []
    with torch.no_grad():
        for row in dataset:
            values = []
            for response in row["response_input_ids"]:
                batch = build_sequences([row["prompt_input_ids"]], [response], pad_token_id=0)
                values.append(sequence_logps(model, **batch, reduction=reduction).logps.item())
            result.append(values)
    return result


def count_forwards(model) -> list[int]:
    calls = []
    model.register_forward_hook(lambda module, args, output: calls.append(1))
    return calls


def assert_close_lists(actual, expected, atol=1e-5):
    assert [len(row) for row in actual] == [len(row) for row in expected]
    torch.testing.assert_close(
        torch.tensor(sum(actual, [])), torch.tensor(sum(expected, [])), atol=atol, rtol=0
    )


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_batched_pass_matches_one_by_one(reduction):
    model, dataset = make_model(), make_dataset()
    model.train()
    result = compute_reference_logps(
        model, dataset, pad_token_id=0, reduction=reduction, batch_size=3, chunk_size=4, show_progress=False
    )
    assert model.training  # mode restored
    assert_close_lists(result, one_by_one(model.eval(), dataset, reduction))
    assert all(p.grad is None for p in model.parameters())


def test_shards_interleave_to_the_full_result():
    model, dataset = make_model(), make_dataset()
    full = compute_reference_logps(model, dataset, pad_token_id=0, reduction="mean", show_progress=False)
    shards = [
        compute_reference_logps(
            model, dataset, pad_token_id=0, reduction="mean", show_progress=False, shard_index=i, num_shards=2
        )
        for i in range(2)
    ]
    assert [len(s) for s in shards] == [3, 2]
    interleaved = [shards[i % 2][i // 2] for i in range(len(dataset))]
    assert_close_lists(interleaved, full, atol=1e-6)
    with pytest.raises(ValueError, match="shard_index=2 num_shards=2"):
        compute_reference_logps(model, dataset, pad_token_id=0, reduction="mean", shard_index=2, num_shards=2)


def test_token_lists_give_the_dataset_pass_and_a_non_finite_value_names_the_row():
    from lambda_dpo.logprobs.batched import TokenRows, batched_logps

    model, dataset = make_model(), make_dataset()
    rows = TokenRows(dataset["prompt_input_ids"], dataset["response_input_ids"])
    kwargs = dict(pad_token_id=0, reduction="sum", batch_size=3, show_progress=False)
    assert_close_lists(batched_logps(model, rows, **kwargs), batched_logps(model, dataset, **kwargs), atol=1e-6)
    odd = batched_logps(model, rows, shard_index=1, num_shards=2, **kwargs)
    assert_close_lists(odd, batched_logps(model, dataset, **kwargs)[1::2], atol=1e-6)
    with torch.no_grad():
        model.lm_head.weight.fill_(math.inf)
    with pytest.raises(ValueError, match="the policy log-prob of dataset row 0, response 0 is nan"):
        batched_logps(model, rows, what="policy log-prob", **kwargs)


def test_second_call_is_a_cache_hit_without_running_the_model(tmp_path):
    model, dataset, tokenizer = make_model(), make_dataset(), make_tokenizer()
    fingerprint = reference_fingerprint(model, tokenizer, dataset, SETTINGS)
    kwargs = dict(
        fingerprint=fingerprint, cache_dir=tmp_path, pad_token_id=0, reduction="mean", show_progress=False
    )
    first, hit = load_or_compute_reference_logps(model, dataset, **kwargs)
    assert not hit
    calls = count_forwards(model)
    second, hit = load_or_compute_reference_logps(model, dataset, **kwargs)
    assert hit and calls == [] and second == first
    assert compute_reference_logps(model, dataset, **kwargs) == first and calls == []
    assert [p.name for p in tmp_path.iterdir()] == [
        f"reference_logps-{_single_key(tmp_path)}.json"
    ]  # no temp files
    # Another reduction is another cache entry, never the mean numbers.
    summed, hit = load_or_compute_reference_logps(model, dataset, **{**kwargs, "reduction": "sum"})
    assert not hit and summed != first


def _single_key(directory) -> str:
    (path,) = directory.iterdir()
    return path.stem.removeprefix("reference_logps-")


def test_fingerprint_tracks_weights_tokenizer_data_and_settings():
    model, tokenizer, dataset = make_model(), make_tokenizer(), make_dataset()
    base = reference_fingerprint(model, tokenizer, dataset, SETTINGS)
    # Deterministic: equal inputs rebuilt from scratch give the same fingerprint.
    assert reference_fingerprint(make_model(), make_tokenizer(), make_dataset(), dict(SETTINGS)) == base

    nudged = make_model()
    with torch.no_grad():
        nudged.model.layers[1].mlp.up_proj.weight[3, 5] += 1e-4
    assert reference_fingerprint(nudged, tokenizer, dataset, SETTINGS) != base

    assert (
        reference_fingerprint(model, make_tokenizer("{{ messages[0].content }}"), dataset, SETTINGS) != base
    )
    with_special = make_tokenizer()
    with_special.add_special_tokens({"additional_special_tokens": ["<lambda>"]})
    assert reference_fingerprint(model, with_special, dataset, SETTINGS) != base

    rows = make_dataset().to_list()
    rows[4]["response_input_ids"][2][0] += 1
    assert reference_fingerprint(model, tokenizer, Dataset.from_list(rows), SETTINGS) != base
    # The same tokens split differently between prompt and response are different data.
    rows = make_dataset().to_list()
    rows[0]["response_input_ids"][0].insert(0, rows[0]["prompt_input_ids"].pop())
    assert reference_fingerprint(model, tokenizer, Dataset.from_list(rows), SETTINGS) != base
    # Row order matters (results are per row); other columns do not.
    assert reference_fingerprint(model, tokenizer, dataset.select([1, 0, 2, 3, 4]), SETTINGS) != base
    assert reference_fingerprint(model, tokenizer, dataset.remove_columns("id"), SETTINGS) == base

    assert reference_fingerprint(model, tokenizer, dataset, {**SETTINGS, "max_length": 32}) != base


def test_changed_weights_are_recomputed_not_read_from_cache(tmp_path):
    tokenizer, dataset = make_tokenizer(), make_dataset()
    kwargs = dict(cache_dir=tmp_path, pad_token_id=0, reduction="sum", show_progress=False)
    old_model = make_model(seed=0)
    old, _ = load_or_compute_reference_logps(
        old_model,
        dataset,
        fingerprint=reference_fingerprint(old_model, tokenizer, dataset, SETTINGS),
        **kwargs,
    )
    new_model = make_model(seed=1)
    new, hit = load_or_compute_reference_logps(
        new_model,
        dataset,
        fingerprint=reference_fingerprint(new_model, tokenizer, dataset, SETTINGS),
        **kwargs,
    )
    assert not hit and new != old
    assert_close_lists(new, one_by_one(new_model, dataset, "sum"))


def _corrupt_truncated(text: str) -> str:
    return text[: len(text) // 2]


def _corrupt_value(text: str) -> str:
    content = json.loads(text)
    content["logps"][1][0] += 0.5  # a plausible number, caught by the checksum
    return json.dumps(content)


def _corrupt_row_count(text: str) -> str:
    content = json.loads(text)
    content["logps"].pop()
    content["num_rows"] -= 1
    return json.dumps(content)


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda text: "garbage \x00\x01",
        lambda text: "",
        _corrupt_truncated,
        _corrupt_value,
        _corrupt_row_count,
    ],
    ids=["garbage", "empty", "truncated", "tampered-value", "missing-row"],
)
def test_corrupt_cache_file_is_never_used(tmp_path, corrupt, caplog):
    model, dataset = make_model(), make_dataset()
    fingerprint = reference_fingerprint(model, make_tokenizer(), dataset, SETTINGS)
    kwargs = dict(
        fingerprint=fingerprint, cache_dir=tmp_path, pad_token_id=0, reduction="mean", show_progress=False
    )
    expected, _ = load_or_compute_reference_logps(model, dataset, **kwargs)
    (path,) = tmp_path.iterdir()
    path.write_text(corrupt(path.read_text()))
    with caplog.at_level(logging.WARNING, logger="lambda_dpo.logprobs.reference_cache"):
        result, hit = load_or_compute_reference_logps(model, dataset, **kwargs)
    assert not hit and result == expected
    assert "ignoring reference log-prob cache" in caplog.text and path.name in caplog.text
    _, hit = load_or_compute_reference_logps(model, dataset, **kwargs)  # rewritten whole
    assert hit


def test_interrupted_write_leaves_no_cache_file(tmp_path):
    from lambda_dpo.logprobs.reference_cache import _write_cache

    path = tmp_path / "reference_logps-abc.json"
    with pytest.raises(TypeError):  # json.dump fails half-way through, after writing part of the file
        _write_cache(path, "abc", [[-1.5, -2.0], [object()]])
    assert list(tmp_path.iterdir()) == []


def test_cache_needs_a_fingerprint(tmp_path):
    with pytest.raises(ValueError, match="needs a fingerprint"):
        load_or_compute_reference_logps(
            make_model(),
            make_dataset(),
            fingerprint=None,
            cache_dir=tmp_path,
            pad_token_id=0,
            reduction="mean",
        )


def lora_model(base):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(3)
    # Random A and B (init_lora_weights=False): with adapters on, the outputs really differ from the base.
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return get_peft_model(base, config).eval()


def test_adapter_disabled_gives_the_base_model_numbers():
    dataset = make_dataset()
    base = make_model()
    expected = one_by_one(copy.deepcopy(base), dataset)
    model = lora_model(base)
    disabled = compute_reference_logps(
        model, dataset, pad_token_id=0, reduction="mean", adapter_disabled=True, show_progress=False
    )
    enabled = compute_reference_logps(model, dataset, pad_token_id=0, reduction="mean", show_progress=False)
    assert_close_lists(disabled, expected)
    assert max(abs(a - b) for a, b in zip(sum(enabled, []), sum(expected, []))) > 1e-3
    assert_close_lists(enabled, one_by_one(model, dataset))  # adapters back on afterwards


def test_adapter_disabled_fingerprint_ignores_the_adapters():
    tokenizer, dataset = make_tokenizer(), make_dataset()
    model = lora_model(make_model())
    disabled = reference_fingerprint(model, tokenizer, dataset, SETTINGS, adapter_disabled=True)
    enabled = reference_fingerprint(model, tokenizer, dataset, SETTINGS)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.add_(0.1)
    assert reference_fingerprint(model, tokenizer, dataset, SETTINGS, adapter_disabled=True) == disabled
    assert reference_fingerprint(model, tokenizer, dataset, SETTINGS) != enabled


def test_clear_errors_for_misuse():
    model, dataset = make_model().train(), make_dataset()
    with pytest.raises(ValueError, match="has no PEFT adapters to disable"):
        compute_reference_logps(model, dataset, pad_token_id=0, reduction="mean", adapter_disabled=True)
    assert model.training  # restored even on error
    with pytest.raises(ValueError, match=r"no column\(s\) \['response_input_ids'\]"):
        compute_reference_logps(
            model, dataset.remove_columns("response_input_ids"), pad_token_id=0, reduction="mean"
        )
