"""`lambda-dpo export`: a trained model at one fixed λ as a plain Hugging Face model directory.

For a model trained with ``conditioning: lora`` the λ-adapters are folded into the base weights at that λ
(:func:`lambda_dpo.lambda_adapters.merge_lambda`), so the result runs on any stack (vLLM, TGI, llama.cpp after
conversion) with no custom code and no λ line. A text-conditioned model needs no export: give it the λ line as
its system message (the model card shows it). The written directory carries a ``lambda_dpo.json`` that records the
fixed λ and says the model is no longer steerable.
"""

from __future__ import annotations

import json
import os

from lambda_dpo.atomic import atomic_write
from lambda_dpo.model_dir import METADATA_FILE


def export_fixed_lambda(model_dir: str, lambdas: str, out_dir: str, normalize: bool = False) -> dict:
    """Merge ``model_dir``'s λ-adapters at ``lambdas`` (``"a=0.7,b=0.3"``) and save a plain model to ``out_dir``."""
    from lambda_dpo.conditioning import parse_lambda
    from lambda_dpo.generation import load_model
    from lambda_dpo.lambda_adapters import merge_lambda

    model, tokenizer, metadata = load_model(model_dir, device="cpu")
    if metadata.get("conditioning") != "lora" or not metadata.get("condition_on_lambda", True):
        raise ValueError(f"{model_dir} was not trained with conditioning: lora, so there is nothing to merge: a "
                         "text-conditioned model is steered by its λ line (see its README.md), at any λ")
    weights = parse_lambda(lambdas, metadata["dimensions"], normalize=normalize)
    merged = merge_lambda(model, weights)
    os.makedirs(out_dir, exist_ok=True)
    merged.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    fixed = {**metadata, "condition_on_lambda": False, "conditioning": "text", "fixed_lambda": weights,
             "exported_from": os.path.abspath(model_dir)}
    fixed.pop("lambda_adapters", None)
    with atomic_write(os.path.join(out_dir, METADATA_FILE)) as f:
        json.dump(fixed, f, indent=2)
    return weights
