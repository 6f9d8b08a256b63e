"""One no-grad pass of a model over many (prompt, responses) rows: ``result[row][j] = ℓ(responses[row][j] |
prompts[row])``, whatever the model's role (the reference before training, :mod:`.reference_cache`; the policy
or the reference in evaluation, :mod:`lambda_dpo.evaluation.model_eval`).

Rows come as a tokenised ``datasets.Dataset`` (columns ``prompt_input_ids: list[int]`` and ``response_input_ids:
list[list[int]]``, k may differ per row; lengths are read from Arrow and rows fetched per batch, so a large dataset
never becomes Python token lists at once) or as :class:`TokenRows` of plain lists. Sequences are sorted by length,
so each batch of ``batch_size`` sequences carries little padding, and the longest batch runs first (memory trouble
shows at once). ``shard_index``/``num_shards`` compute only rows ``shard_index, shard_index + num_shards, …`` (the
processes of a run split the reference pass that way).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from tqdm.auto import tqdm

from lambda_dpo.logprobs.prefix_sharing import shared_prefix_logps, sharing_pays, sharing_works
from lambda_dpo.logprobs.sequence import build_sequences, sequence_logps

PROMPT_COLUMN = "prompt_input_ids"
RESPONSES_COLUMN = "response_input_ids"
_ARROW_BATCH = 10_000


class TokenRows(NamedTuple):
    """Rows as plain token lists: ``prompts[row]`` and its responses ``responses[row][j]``."""

    prompts: Sequence[Sequence[int]]
    responses: Sequence[Sequence[Sequence[int]]]


def batched_logps(
    model: torch.nn.Module,
    rows,
    *,
    pad_token_id: int,
    reduction: str,
    batch_size: int = 8,
    chunk_size: int | None = 128,
    adapter_disabled: bool = False,
    show_progress: bool = True,
    shard_index: int = 0,
    num_shards: int = 1,
    prefix_sharing: str = "false",
    what: str = "log-prob",
) -> list[list[float]]:
    """ℓ of every response of every row (of this shard) of ``rows`` (a tokenised Dataset or :class:`TokenRows`).

    Runs under ``torch.no_grad`` in eval mode (the model's mode is restored after); ``adapter_disabled=True`` runs
    a PEFT model with its adapters off (its base model); ``prefix_sharing`` ``"true"``/``"auto"`` forwards each
    prompt once for its responses where it pays (:mod:`.prefix_sharing`). ``what`` names the numbers in the
    progress bar and in the error a non-finite value raises (e.g. ``"reference log-prob"``).
    """
    shard = select_rows(rows, shard_index, num_shards)
    prompt_lengths, response_lengths = token_lengths(shard)
    result = [[math.nan] * len(lengths) for lengths in response_lengths]
    device = _device_of(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), adapters_disabled(model, adapter_disabled):
            progress = tqdm(total=sum(map(len, response_lengths)), desc=f"{what}s", unit="seq",
                            disable=not show_progress)
            for batch in _batches(prompt_lengths, response_lengths, batch_size, shared=prefix_sharing != "false"):
                needed = sorted({row for row, _ in batch})
                fetched = dict(zip(needed, _fetch(shard, needed)))
                logps = _batch_logps(model, fetched, batch, pad_token_id, reduction, chunk_size, prefix_sharing,
                                     device)
                for (row, j), value in zip(batch, logps.tolist()):
                    result[row][j] = value
                progress.update(len(batch))
            progress.close()
    finally:
        model.train(was_training)
    _check_finite(result, shard_index, num_shards, what)
    return result


def sequence_lengths(dataset) -> list[list[int]]:
    """Token count of every (prompt, response) sequence: ``result[i][j] = |prompt_i| + |response_ij|``.

    Read from the Arrow columns ``prompt_input_ids`` / ``response_input_ids`` without building Python token lists.
    """
    prompt_lengths, response_lengths = token_lengths(select_rows(dataset, 0, 1))
    return [[prompt + response for response in responses]
            for prompt, responses in zip(prompt_lengths, response_lengths)]


@contextlib.contextmanager
def adapters_disabled(model: torch.nn.Module, disabled: bool):
    """Run the base model of a PEFT model (its adapters off) inside the block; a no-op when ``disabled`` is False."""
    if not disabled:
        yield
    elif hasattr(model, "disable_adapter"):  # peft.PeftModel
        with model.disable_adapter():
            yield
    elif getattr(model, "_hf_peft_config_loaded", False):  # adapters loaded into a transformers model
        model.disable_adapters()
        try:
            yield
        finally:
            model.enable_adapters()
    else:
        raise ValueError(
            f"adapter_disabled=True, but the reference model ({type(model).__name__}) has no PEFT adapters to "
            "disable; use `reference: adapter-disabled` only with `use_lora: true`, else `reference: model`"
        )


# --- rows: a tokenised Dataset or TokenRows ---------------------------------------------------------------------


def select_rows(rows, shard_index: int, num_shards: int):
    """Rows ``shard_index, shard_index + num_shards, …`` (a Dataset reduced to its two token columns)."""
    if not (num_shards >= 1 and 0 <= shard_index < num_shards):
        raise ValueError(f"need 0 <= shard_index < num_shards, got shard_index={shard_index} num_shards={num_shards}")
    if isinstance(rows, TokenRows):
        if len(rows.prompts) != len(rows.responses):
            raise ValueError(f"TokenRows has {len(rows.prompts)} prompts but {len(rows.responses)} response lists")
        return rows if num_shards == 1 else TokenRows(rows.prompts[shard_index::num_shards],
                                                      rows.responses[shard_index::num_shards])
    missing = [c for c in (PROMPT_COLUMN, RESPONSES_COLUMN) if c not in rows.column_names]
    if missing:
        raise ValueError(
            f"the dataset has no column(s) {missing} (it has {rows.column_names}); log-probs need the "
            "tokenised dataset (prompt_input_ids, response_input_ids), not the raw records"
        )
    # Format reset: a caller's set_format("torch") would turn ragged token lists into tensors.
    rows = rows.select_columns([PROMPT_COLUMN, RESPONSES_COLUMN]).with_format(None)
    return rows if num_shards == 1 else rows.select(range(shard_index, len(rows), num_shards))


def arrow_batches(dataset) -> Iterator[pa.Table]:
    """The token columns of a (selected) Dataset as Arrow tables of up to 10,000 rows."""
    yield from dataset.with_format("arrow").iter(batch_size=_ARROW_BATCH)


def token_lengths(rows) -> tuple[list[int], list[list[int]]]:
    """Prompt length per row and response lengths per row (from Arrow for a Dataset: no Python token lists)."""
    if isinstance(rows, TokenRows):
        return [len(p) for p in rows.prompts], [[len(r) for r in rs] for rs in rows.responses]
    prompt_lengths, response_lengths = [], []
    for table in arrow_batches(rows):
        prompt_lengths += pc.list_value_length(table.column(PROMPT_COLUMN)).to_pylist()
        responses = table.column(RESPONSES_COLUMN)
        counts = pc.list_value_length(responses).to_numpy(zero_copy_only=False)
        lengths = pc.list_value_length(pc.list_flatten(responses)).to_numpy(zero_copy_only=False)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        response_lengths += [lengths[a:b].tolist() for a, b in zip(offsets[:-1], offsets[1:])]
    return prompt_lengths, response_lengths


def _fetch(rows, indices: list[int]) -> list[dict]:
    if isinstance(rows, TokenRows):
        return [{PROMPT_COLUMN: list(rows.prompts[i]), RESPONSES_COLUMN: [list(r) for r in rows.responses[i]]}
                for i in indices]
    columns = rows[indices]
    return [{name: columns[name][i] for name in columns} for i in range(len(indices))]


# --- the pass ---------------------------------------------------------------------------------------------------


def _batches(prompt_lengths: list[int], response_lengths: list[list[int]], batch_size: int,
             shared: bool) -> Iterator[list[tuple[int, int]]]:
    """Batches of ``(row, response)`` pairs, longest first (the biggest batch runs first, so memory trouble shows at
    once). Plain: sequences sorted by length, ``batch_size`` per batch. ``shared``: whole rows (every response of a
    prompt together, for prefix sharing) sorted by row length, as many as fit ``batch_size`` sequences (≥ 1 row)."""
    if not shared:
        sequences = [(row, j) for row, lengths in enumerate(response_lengths) for j in range(len(lengths))]
        sequences.sort(key=lambda s: -(prompt_lengths[s[0]] + response_lengths[s[0]][s[1]]))
        for start in range(0, len(sequences), batch_size):
            yield sequences[start:start + batch_size]
        return
    order = sorted(range(len(prompt_lengths)), key=lambda r: -(prompt_lengths[r] + sum(response_lengths[r])))
    batch: list[tuple[int, int]] = []
    for row in order:
        pairs = [(row, j) for j in range(len(response_lengths[row]))]
        if batch and len(batch) + len(pairs) > batch_size:
            yield batch
            batch = []
        batch += pairs
    if batch:
        yield batch


def _batch_logps(model, rows: dict[int, dict], batch: list[tuple[int, int]], pad_token_id: int, reduction: str,
                 chunk_size: int | None, prefix_sharing: str, device) -> torch.Tensor:
    """ℓ of the pairs of one batch (in its order): shared prompts where ``prefix_sharing`` chooses them."""
    prompts = [rows[row][PROMPT_COLUMN] for row, _ in batch]
    responses = [rows[row][RESPONSES_COLUMN][j] for row, j in batch]
    if prefix_sharing != "false":
        order = list(dict.fromkeys(row for row, _ in batch))  # whole rows, in batch order (see _batches)
        shared_prompts = [rows[row][PROMPT_COLUMN] for row in order]
        shared_responses = [rows[row][RESPONSES_COLUMN] for row in order]
        wanted = prefix_sharing == "true" or sharing_pays(model, shared_prompts, shared_responses)
        if wanted and sharing_works(model, shared_prompts, shared_responses, pad_token_id, reduction):
            return shared_prefix_logps(model, shared_prompts, shared_responses, pad_token_id, reduction=reduction,
                                       chunk_size=chunk_size, device=device).logps
    tensors = {name: t.to(device) for name, t in build_sequences(prompts, responses, pad_token_id).items()}
    return sequence_logps(model, **tensors, reduction=reduction, chunk_size=chunk_size).logps


def _device_of(model: torch.nn.Module) -> torch.device:
    device = getattr(model, "device", None)
    return device if isinstance(device, torch.device) else next(model.parameters()).device


def _check_finite(result: list[list[float]], shard_index: int, num_shards: int, what: str) -> None:
    for local_row, values in enumerate(result):
        for j, value in enumerate(values):
            if not math.isfinite(value):
                raise ValueError(
                    f"the {what} of dataset row {shard_index + local_row * num_shards}, response {j} is {value}; "
                    "the model produces non-finite logits (fp16 overflow? load it in bfloat16 or float32)"
                )
