"""Reference log-probabilities: one pass before training, cached on disk (docs/spec.md §1, "Reference model").

The reference is unconditioned, ``π_ref(y | x)``, so ℓ_ref of each (prompt, response) never changes during training:
it is computed once per response and stored. The cache file is keyed by a fingerprint of everything that determines
the numbers (reference weights, tokenizer, tokenised data, settings); a stale, foreign, half-written or corrupt file
is never used, it is recomputed.

Typical use (``ref_model`` is a frozen model, or the policy's PeftModel with ``adapter_disabled=True``)::

    fingerprint = reference_fingerprint(ref_model, tokenizer, dataset, {"max_length": 1024}, adapter_disabled=False)
    ref_logps, cache_hit = load_or_compute_reference_logps(
        ref_model, dataset, fingerprint=fingerprint, cache_dir="runs/x/cache", pad_token_id=tokenizer.pad_token_id,
        reduction="mean")

Rows need ``prompt_input_ids: list[int]`` and ``response_input_ids: list[list[int]]`` (k may differ per row); the
result has one list of k floats per row. ``shard_index``/``num_shards`` compute only rows
``shard_index, shard_index + num_shards, …``; :func:`gather_reference_logps` uses them to split the pass across the
processes of a multi-process run (``accelerate launch`` / ``torchrun``) and gathers the shards back into one table.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import xxhash

from lambda_dpo.atomic import atomic_write
from lambda_dpo.logprobs.batched import (
    PROMPT_COLUMN,
    RESPONSES_COLUMN,
    arrow_batches,
    batched_logps,
    select_rows,
    token_lengths,
)

logger = logging.getLogger(__name__)

CACHE_FORMAT = "lambda-dpo/reference-logps"
CACHE_VERSION = 1


def reference_fingerprint(
    model: torch.nn.Module, tokenizer, dataset, settings: dict, *, adapter_disabled: bool = False
) -> str:
    """A hex digest of everything the reference log-probs depend on.

    Hashes (a) every state-dict tensor of the reference (name, shape, dtype and bytes; with
    ``adapter_disabled=True`` the PEFT adapter tensors are skipped, since the reference then does not use them),
    (b) the tokenizer's full ``save_pretrained`` serialisation (vocabulary, merges, special tokens, chat template),
    (c) the token columns of ``dataset`` (content, not the ``datasets`` fingerprint, which is random for in-memory
    datasets), (d) ``settings`` (reduction, max_length, … as JSON) and ``adapter_disabled``.
    """
    digest = xxhash.xxh3_128()
    digest.update(f"{CACHE_FORMAT}/{CACHE_VERSION}".encode())
    digest.update(b"weights")
    _hash_weights(model, digest, adapter_disabled)
    digest.update(b"tokenizer")
    _hash_tokenizer(tokenizer, digest)
    digest.update(b"data")
    _hash_token_columns(dataset, digest)
    digest.update(b"settings")
    digest.update(json.dumps({**settings, "adapter_disabled": adapter_disabled}, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def compute_reference_logps(model: torch.nn.Module, dataset, *, cache_dir: str | os.PathLike | None = None,
                            fingerprint: str | None = None, **pass_options) -> list[list[float]]:
    """ℓ_ref of every response of every row (of this shard): ``result[i][j]`` for row i, response j.

    ``pass_options`` are the keywords of :func:`lambda_dpo.logprobs.batched.batched_logps` (``pad_token_id`` and
    ``reduction`` required; ``batch_size``, ``chunk_size``, ``adapter_disabled`` — True runs the PEFT model with
    its adapters disabled, the base model as the reference —, ``show_progress``, ``shard_index``/``num_shards``,
    ``prefix_sharing``). With ``cache_dir`` (and ``fingerprint``) it goes through
    :func:`load_or_compute_reference_logps`.
    """
    if cache_dir is not None:
        return load_or_compute_reference_logps(model, dataset, fingerprint=fingerprint, cache_dir=cache_dir,
                                               **pass_options)[0]
    return batched_logps(model, dataset, what="reference log-prob", **pass_options)


def load_or_compute_reference_logps(model: torch.nn.Module, dataset, *, fingerprint: str | None,
                                    cache_dir: str | os.PathLike, shard_index: int = 0, num_shards: int = 1,
                                    **pass_options) -> tuple[list[list[float]], bool]:
    """``(reference log-probs, cache_hit)``: read the cache file if it is valid, else compute and write it.

    The file is ``<cache_dir>/reference_logps-<key>.json``, ``key`` = hash of ``fingerprint`` (see
    :func:`reference_fingerprint`) and this pass's own settings (reduction, adapter_disabled, shard). It is written
    atomically (:mod:`lambda_dpo.atomic`) and carries its row count, every row's response count and a checksum of
    its values; a file failing any check is ignored with a warning. ``pass_options``: as
    :func:`compute_reference_logps`.
    """
    path, key, cached = _lookup(dataset, fingerprint, cache_dir, pass_options, shard_index, num_shards)
    if cached is not None:
        return cached, True
    logps = batched_logps(model, dataset, what="reference log-prob", shard_index=shard_index, num_shards=num_shards,
                          **pass_options)
    _write_cache(path, key, logps)
    return logps, False


def gather_reference_logps(model: torch.nn.Module, dataset, *, fingerprint: str | None,
                           cache_dir: str | os.PathLike, show_progress: bool = True,
                           **pass_options) -> tuple[list[list[float]], bool]:
    """``(reference log-probs of every row, in dataset order, cache_hit)``, computed by all processes together.

    A collective: every process of the run (accelerate's ``PartialState``; a plain script is one process) must call
    it with the same dataset, and gets the full table. The main process looks the table up in the cache (the file of
    :func:`load_or_compute_reference_logps` with one shard, so runs with any number of processes share it) and
    broadcasts the result; on a hit nobody computes. On a miss process r of n computes rows r, r + n, r + 2n, …, the
    shards are all-gathered to every process and interleaved back into dataset order, and the main process writes
    the cache file (atomically) while the others wait at a barrier. The table travels between processes, not
    through the file, so ``cache_dir`` need not be shared between machines. Only the main process's
    ``fingerprint`` is used. ``pass_options``: as :func:`compute_reference_logps` (without the shard).
    """
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list, gather_object

    state = PartialState()
    path, key, cached = _lookup(dataset, fingerprint, cache_dir, pass_options, 0, 1, read=state.is_main_process)
    (cached,) = broadcast_object_list([cached])
    if cached is not None:
        return cached, True
    shard = batched_logps(model, dataset, what="reference log-prob", show_progress=show_progress and state.is_main_process,
                          shard_index=state.process_index, num_shards=state.num_processes, **pass_options)
    shards = gather_object([shard])  # [shard of process 0, shard of process 1, …] on every process
    # Row i was computed by process i mod n, as its (i // n)-th row.
    logps = [shards[i % len(shards)][i // len(shards)] for i in range(len(dataset))]
    if state.is_main_process:
        _write_cache(path, key, logps)
    state.wait_for_everyone()
    return logps, False


def _lookup(dataset, fingerprint: str | None, cache_dir, pass_options: dict, shard_index: int, num_shards: int,
            read: bool = True) -> tuple[Path, str, list[list[float]] | None]:
    """The cache file of this pass, its key, and its table when ``read`` and the file is valid (else None)."""
    if not fingerprint:
        raise ValueError("caching reference log-probs needs a fingerprint; compute one with "
                         "reference_fingerprint(model, tokenizer, dataset, settings) or pass cache_dir=None")
    key = _cache_key(fingerprint, pass_options["reduction"], pass_options.get("adapter_disabled", False),
                     shard_index, num_shards)
    path = Path(cache_dir) / f"reference_logps-{key}.json"
    if not read:
        return path, key, None
    expected_counts = [len(lengths) for lengths in token_lengths(select_rows(dataset, shard_index, num_shards))[1]]
    cached = _read_cache(path, key, expected_counts)
    if cached is not None:
        logger.info("reference log-probs: cache hit %s", path)
    return path, key, cached


REFERENCE_COLUMN = "reference_logps"


def attach_reference_logps(ref_model: torch.nn.Module, tokenizer, datasets: list, config,
                           adapter_disabled: bool = False) -> list:
    """Each tokenised dataset of ``datasets`` (None stays None) with a ``reference_logps`` column: ℓ_ref of every
    response, from the cache or one pass split over the processes of the run (:func:`gather_reference_logps`, a
    collective). ``config`` is the run's `LambdaDPOConfig`: its reference, reduction and lengths key the cache
    (with the weights, the tokenizer and the tokens), and it gives the device, batch and chunk sizes and the cache
    folder (``reference_cache_dir``, default ``<output_dir>/reference_cache``). The model runs on this process's
    device for the pass and goes back where it was."""
    settings = {"reference": config.reference, "reduction": config.logprob_reduction,
                "max_length": config.max_length, "max_prompt_length": config.max_prompt_length}
    cache_dir = config.reference_cache_dir or os.path.join(config.output_dir, "reference_cache")
    previous_device = next(ref_model.parameters()).device
    if previous_device != config.device:  # this process's device (cuda:<local rank>, …)
        ref_model.to(config.device)
    out = []
    for dataset in datasets:
        if dataset is None:
            out.append(None)
            continue
        fingerprint = reference_fingerprint(ref_model, tokenizer, dataset, settings, adapter_disabled=adapter_disabled)
        # Every process computes a shard and receives the whole table (a cache hit: nobody computes).
        logps, _ = gather_reference_logps(
            ref_model, dataset, fingerprint=fingerprint, cache_dir=cache_dir, pad_token_id=tokenizer.pad_token_id,
            reduction=config.logprob_reduction, batch_size=config.per_device_eval_batch_size,
            chunk_size=config.logprob_chunk_size, adapter_disabled=adapter_disabled,
            show_progress=not config.disable_tqdm, prefix_sharing=config.prefix_sharing,
        )
        if REFERENCE_COLUMN in dataset.column_names:
            dataset = dataset.remove_columns(REFERENCE_COLUMN)
        out.append(dataset.add_column(REFERENCE_COLUMN, logps))
    if previous_device != config.device:
        ref_model.to(previous_device)
    return out


# --- fingerprint helpers ---------------------------------------------------------------------------------------


def _hash_weights(model: torch.nn.Module, digest, adapter_disabled: bool) -> None:
    from accelerate.utils import extract_model_from_parallel

    model = extract_model_from_parallel(model)  # DDP's "module." prefix must not change the hash
    skipped = _adapter_prefixes(model) if adapter_disabled else ()
    for name, tensor in model.state_dict().items():
        if name.startswith(skipped):
            continue
        if tensor.is_meta:
            raise ValueError(
                f"cannot fingerprint the reference: tensor {name!r} is on the meta device (offloaded or "
                "partitioned weights); load the reference model fully on one device"
            )
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        flat = tensor.detach().reshape(-1).contiguous().cpu()
        digest.update(flat.view(torch.uint8).numpy())  # hashed through the buffer protocol: no extra copy


def _adapter_prefixes(model: torch.nn.Module) -> tuple[str, ...]:
    """State-dict name prefixes of PEFT adapter weights (LoRA A/B, …, and ``modules_to_save`` copies)."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
        from peft.utils.other import ModulesToSaveWrapper
    except ImportError:
        return ()
    prefixes = []
    for module_name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer):
            prefixes += [f"{module_name}.{attr}." for attr in module.adapter_layer_names]
        elif isinstance(module, ModulesToSaveWrapper):
            prefixes.append(f"{module_name}.modules_to_save.")
    return tuple(prefixes)


def _hash_tokenizer(tokenizer, digest) -> None:
    with tempfile.TemporaryDirectory() as directory:
        tokenizer.save_pretrained(directory)
        for path in sorted(Path(directory).rglob("*")):
            if path.is_file():
                digest.update(path.name.encode())
                digest.update(path.read_bytes())


def _hash_token_columns(dataset, digest) -> None:
    """Hash the token columns' lengths and values (as int64, so the hash does not depend on Arrow's int width)."""
    for table in arrow_batches(select_rows(dataset, 0, 1)):
        for column in (PROMPT_COLUMN, RESPONSES_COLUMN):
            values = table.column(column)
            while pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
                digest.update(pc.list_value_length(values).fill_null(-1).to_numpy().astype(np.int64))
                values = pc.list_flatten(values)
            digest.update(values.to_numpy().astype(np.int64))


# --- cache file ------------------------------------------------------------------------------------------------


def _cache_key(fingerprint: str, reduction: str, adapter_disabled: bool, shard_index: int, num_shards: int) -> str:
    settings = {"fingerprint": fingerprint, "reduction": reduction, "adapter_disabled": adapter_disabled,
                "shard_index": shard_index, "num_shards": num_shards}
    return xxhash.xxh3_128(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def _checksum(logps: list[list[float]]) -> str:
    return xxhash.xxh3_128(json.dumps(logps).encode()).hexdigest()


def _read_cache(path: Path, key: str, expected_counts: list[int]) -> list[list[float]] | None:
    """The cached log-probs if ``path`` holds a complete, matching file; None (with a warning if it exists) else."""
    if not path.exists():
        return None
    try:
        content = json.loads(path.read_text())
        logps = content["logps"]
        problems = [
            (content.get("format"), CACHE_FORMAT, "format"),
            (content.get("version"), CACHE_VERSION, "version"),
            (content.get("key"), key, "key"),
            (content.get("num_rows"), len(expected_counts), "num_rows"),
            ([len(row) for row in logps], expected_counts, "responses per row"),
            (content.get("checksum"), _checksum(logps), "checksum"),
        ]
        wrong = [f"{field} is {found!r:.60}, expected {want!r:.60}" for found, want, field in problems if found != want]
        if not wrong and not all(math.isfinite(v) for row in logps for v in row):
            wrong = ["non-finite values"]
    except (OSError, ValueError, KeyError, TypeError) as error:  # json.JSONDecodeError is a ValueError
        wrong = [f"unreadable ({type(error).__name__}: {error})"]
    if wrong:
        logger.warning("ignoring reference log-prob cache %s (%s); recomputing it", path, "; ".join(wrong))
        return None
    return logps


def _write_cache(path: Path, key: str, logps: list[list[float]]) -> None:
    content = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "key": key, "num_rows": len(logps),
               "checksum": _checksum(logps), "logps": logps}
    with atomic_write(path) as file:
        json.dump(content, file)


__all__ = [
    "attach_reference_logps",
    "compute_reference_logps",
    "gather_reference_logps",
    "load_or_compute_reference_logps",
    "reference_fingerprint",
]
