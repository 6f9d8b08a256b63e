"""Model directories: loading a tokenizer and a causal LM by a setting's value, with one-line errors, and the
`lambda_dpo.json` file that makes a directory a λ-DPO model.

A user's model path is either a local folder or a Hugging Face Hub name. transformers answers a missing folder
with a chain of hub errors (``HFValidationError``) and a folder without a tokenizer with a message about
sentencepiece; :func:`load_pretrained` says instead which of the two it is and how to fix it, raising
:class:`ModelLoadError` (a ``ValueError`` the CLIs print as one line).
"""

from __future__ import annotations

import json
import os
from typing import Any

from lambda_dpo.atomic import atomic_write

METADATA_FILE = "lambda_dpo.json"  # the λ-DPO facts of a trained model dir (dimensions, template, …)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


class ModelLoadError(ValueError):
    """A model or tokenizer cannot be loaded from a setting's value; the message names the setting."""


def lambda_dpo_dir_problem(path: str, option: str = "--model") -> str | None:
    """Why ``path`` (given as ``option``) is not a local λ-DPO model directory, in one line; None when it is."""
    if not os.path.isdir(path):
        return f"{option} {path}: no such folder (this runs offline; give a local model directory)"
    if not os.path.exists(os.path.join(path, METADATA_FILE)):
        return (f"{option} {path} has no {METADATA_FILE}: it is not a lambda-dpo model, so it cannot be steered by "
                "λ; train one with `lambda-dpo train`")
    return None


def torch_dtype(bf16: bool = False, fp16: bool = False):
    """The dtype that the Trainer's ``bf16``/``fp16`` flags ask the weights to be loaded in."""
    import torch

    return torch.bfloat16 if bf16 else torch.float16 if fp16 else torch.float32


def check_model_path(path: str, setting: str = "model_name_or_path") -> None:
    """Raise :class:`ModelLoadError` if ``path`` is neither a local folder with a model nor a valid hub name."""
    if os.path.isdir(path):
        if not any(os.path.exists(os.path.join(path, f)) for f in ("config.json", "adapter_config.json")):
            raise ModelLoadError(f"{setting}={path!r} is a folder without config.json (or a LoRA adapter's "
                                 "adapter_config.json), so it holds no model; point it at the folder that "
                                 "save_pretrained wrote")
        return
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    looks_local = os.path.isabs(path) or path.startswith((".", "~")) or os.path.exists(path)
    try:
        validate_repo_id(path)
    except HFValidationError:
        looks_local = True
    if looks_local:
        raise ModelLoadError(f"{setting}={path!r}: no such folder, and it is not a Hugging Face Hub name "
                             "(owner/name); check the path")


def load_pretrained(path: str, *, setting: str = "model_name_or_path", dtype=None, tokenizer: bool = True):
    """``(tokenizer, model)`` from a local folder or a hub name (``tokenizer=False``: ``(None, model)``).

    The tokenizer gets the default chat template if it has none (``ensure_chat_template``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lambda_dpo.data import ensure_chat_template
    from lambda_dpo.distributed import full_weights_unless_zero3_init

    check_model_path(path, setting)
    where = "folder" if os.path.isdir(path) else "hub model"
    loaded_tokenizer = None
    if tokenizer:
        if where == "folder" and not any(os.path.exists(os.path.join(path, f)) for f in TOKENIZER_FILES):
            raise ModelLoadError(f"{setting}={path!r} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save "
                                 "it next to the weights with tokenizer.save_pretrained(that folder)")
        try:
            loaded_tokenizer = ensure_chat_template(AutoTokenizer.from_pretrained(path))
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"{setting}={path!r}: cannot load its tokenizer: {_first_line(e)}") from None
    try:
        with full_weights_unless_zero3_init():  # ZeRO-3 launches: the reference pass needs full weights
            model = AutoModelForCausalLM.from_pretrained(path, **({"dtype": dtype} if dtype is not None else {}))
    except (OSError, ValueError) as e:
        hint = " (the hub needs a network; give a local folder offline)" if where == "hub model" else ""
        raise ModelLoadError(f"{setting}={path!r}: cannot load the {where}{hint}: {_first_line(e)}") from None
    return loaded_tokenizer, model


def write_metadata(output_dir: str, dimensions: list[str], args, model=None,
                   score_ranges: dict[str, float] | None = None) -> dict[str, Any]:
    """Write `lambda_dpo.json`: what generation needs to condition on λ exactly as training did (the mechanism,
    the dimensions in order, the template or the λ-adapters' shape), plus the settings (``args``: a
    `LambdaDPOConfig`) and, under ``tau_scale: range``, the training data's ``score_ranges`` (the unit of τ, which
    evaluation needs to build the same targets). Written atomically (:mod:`lambda_dpo.atomic`)."""
    from lambda_dpo.lambda_adapters import get_adapters

    adapters = get_adapters(model) if model is not None else None
    metadata = {
        "format_version": 1,
        "dimensions": list(dimensions),
        "conditioning": "lora" if adapters is not None else "text",
        "conditioning_template": args.conditioning_template,
        "condition_on_lambda": args.condition_on_lambda,
        "training": json.loads(json.dumps(args.lambda_dpo_settings(), default=str)),
    }
    if score_ranges is not None:
        metadata["training"]["score_ranges"] = score_ranges
    if adapters is not None:
        metadata["lambda_adapters"] = adapters.config()
    with atomic_write(os.path.join(output_dir, METADATA_FILE)) as f:
        json.dump(metadata, f, indent=2)
    return metadata


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
