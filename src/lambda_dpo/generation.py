"""λ-steered generation: `lambda_dpo.generate(...)` and `lambda-dpo generate`.

A trained model directory carries `lambda_dpo.json` (dimensions, their order, the conditioning template); generation
renders λ exactly as training did, puts it in the system message, and samples.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from lambda_dpo.conditioning import DEFAULT_TEMPLATE, as_lambda, conditioned_prompt_ids
from lambda_dpo.model_dir import METADATA_FILE

LambdaLike = str | Mapping[str, float] | Sequence[float]


def load_metadata(model_dir: str) -> dict[str, Any]:
    """Read `lambda_dpo.json` from a trained model directory (clear error when it is not one)."""
    path = os.path.join(model_dir, METADATA_FILE)
    if not os.path.isdir(model_dir):
        raise FileNotFoundError(f"model directory {model_dir} does not exist (generation runs offline: give a local "
                                "directory written by `lambda-dpo train`)")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} not found: {model_dir} is not a lambda-dpo model directory (train one with `lambda-dpo train`)"
        )
    with open(path) as f:
        metadata = json.load(f)
    metadata.setdefault("conditioning_template", DEFAULT_TEMPLATE)
    metadata.setdefault("condition_on_lambda", True)
    metadata.setdefault("conditioning", "text")
    return metadata


def text_conditioned(metadata: dict[str, Any]) -> bool:
    """Whether the model reads λ as a line of text in its system message (else λ-adapters, or no λ at all)."""
    return bool(metadata.get("condition_on_lambda", True)) and metadata.get("conditioning", "text") == "text"


def load_model(model_dir: str, device: str | None = None, dtype: str | None = None):
    """(model, tokenizer, metadata) of a trained directory; LoRA adapter directories load through peft."""
    import torch

    from lambda_dpo.model_dir import load_pretrained

    metadata = load_metadata(model_dir)
    tokenizer, model = load_pretrained(model_dir, setting="--model", dtype=getattr(torch, dtype) if dtype else None)
    if metadata["condition_on_lambda"] and metadata["conditioning"] == "lora":
        from lambda_dpo.lambda_adapters import load_adapters

        load_adapters(model, model_dir, metadata["dimensions"], metadata["lambda_adapters"])
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return model.to(device).eval(), tokenizer, metadata


def _is_single(lambdas: Any) -> bool:
    if isinstance(lambdas, (str, Mapping)):
        return True
    return all(isinstance(v, (int, float)) for v in lambdas)


def render_prompt(tokenizer, metadata: dict[str, Any], prompt: str, weights: Mapping[str, float],
                  system: str | None = None) -> list[int]:
    """Token ids of the λ-conditioned prompt, rendered exactly as training rendered it (a λ-adapter model sees
    the plain prompt: λ reaches it through :func:`lambda_dpo.lambda_adapters.set_lambdas`)."""
    return conditioned_prompt_ids(tokenizer, [{"role": "user", "content": prompt}], system,
                                  weights if text_conditioned(metadata) else None, metadata["dimensions"],
                                  metadata["conditioning_template"])


def generate_ids(model, prompts: Sequence[Sequence[int]], *, pad_token_id: int, eos_token_id: int | None,
                 max_new_tokens: int, seed: int | None = None, **generate_kwargs) -> list[list[int]]:
    """The new token ids ``model.generate`` appends to each prompt (one batch, left-padded so that every row
    continues right after its own prompt), as sampled: never decoded and re-encoded. ``generate_kwargs`` are
    ``generate``'s own (``do_sample``, ``temperature``, …); ``seed`` seeds torch's generator first."""
    import torch

    width = max(len(p) for p in prompts)
    device = next(model.parameters()).device
    input_ids = torch.tensor([[pad_token_id] * (width - len(p)) + list(p) for p in prompts], device=device)
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                             pad_token_id=pad_token_id, eos_token_id=eos_token_id, **generate_kwargs)
    return out[:, width:].tolist()


def _sample(model, tokenizer, prompts: list[list[int]], *, max_new_tokens: int, do_sample: bool, temperature: float,
            top_p: float, seed: int | None, **gen_kwargs) -> list[str]:
    sampling = {"temperature": temperature, "top_p": top_p} if do_sample else {}
    ids = generate_ids(model, prompts, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                       max_new_tokens=max_new_tokens, seed=seed, do_sample=do_sample, **sampling, **gen_kwargs)
    return [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]


def sample_responses(model, tokenizer, metadata: dict[str, Any], prompts: list[str], weights: Mapping[str, float],
                     num_samples: int = 1, *, system: str | None = None, max_new_tokens: int = 128,
                     do_sample: bool = True, temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None,
                     **gen_kwargs) -> list[list[str]]:
    """``num_samples`` responses to each of several prompts under one λ, in one batch: ``[P][S]`` strings.

    The shape evaluation's controllability analysis asks of a `sample_fn`.
    """
    from lambda_dpo.lambda_adapters import lambdas_set

    ids = [render_prompt(tokenizer, metadata, p, weights, system) for p in prompts for _ in range(num_samples)]
    with lambdas_set(model, dict(weights) if metadata["condition_on_lambda"] else None):
        texts = _sample(model, tokenizer, ids, max_new_tokens=max_new_tokens, do_sample=do_sample,
                        temperature=temperature, top_p=top_p, seed=seed, **gen_kwargs)
    return [texts[i * num_samples:(i + 1) * num_samples] for i in range(len(prompts))]


def stream_response(model, tokenizer, metadata: dict[str, Any], prompt: str, weights: Mapping[str, float], *,
                    system: str | None = None, max_new_tokens: int = 128, do_sample: bool = True,
                    temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None) -> Iterator[str]:
    """Yield the response to ``prompt`` under one λ as it grows (the whole text so far, each time a token
    arrives): the same sampling as :func:`generate` with that seed, streamed (``transformers.TextIteratorStreamer``,
    ``generate`` running in a thread)."""
    import threading

    from transformers import TextIteratorStreamer

    from lambda_dpo.lambda_adapters import lambdas_set

    ids = render_prompt(tokenizer, metadata, prompt, weights, system)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            with lambdas_set(model, dict(weights) if metadata["condition_on_lambda"] else None):
                _sample(model, tokenizer, [ids], max_new_tokens=max_new_tokens, do_sample=do_sample,
                        temperature=temperature, top_p=top_p, seed=seed, streamer=streamer)
        except BaseException as e:  # handed to the consumer below; the streamer must still end
            failure.append(e)
            streamer.end()

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    text = ""
    for piece in streamer:
        text += piece
        yield text.strip()
    thread.join()
    if failure:
        raise failure[0]


def generate(
    model_dir: str | None,
    prompt: str,
    lambdas: LambdaLike | Sequence[LambdaLike],
    *,
    model=None,
    tokenizer=None,
    metadata: dict[str, Any] | None = None,
    system: str | None = None,
    num_return_sequences: int = 1,
    max_new_tokens: int = 128,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
    normalize: bool = False,
    **gen_kwargs,
) -> list[str] | list[list[str]]:
    """Generate responses to ``prompt`` steered by λ.

    Args:
        model_dir: a directory written by `lambda-dpo train` (or None when ``model``, ``tokenizer`` and
            ``metadata`` are given, e.g. to reuse a loaded model).
        lambdas: one λ — ``"helpfulness=0.7,honesty=0.3"``, a mapping, or weights in the model's dimension order —
            or a list of several.
        normalize: rescale λ to sum to 1 instead of rejecting it.

    Returns:
        For one λ, ``num_return_sequences`` strings; for several, one such list per λ (in order).
    """
    if model is None or tokenizer is None or metadata is None:
        model, tokenizer, metadata = load_model(model_dir)
    single = _is_single(lambdas)
    lambda_list = [lambdas] if single else list(lambdas)
    from lambda_dpo.lambda_adapters import lambdas_set

    ids, rows = [], []
    for lam in lambda_list:
        weights = as_lambda(lam, metadata["dimensions"], normalize)
        ids.extend([render_prompt(tokenizer, metadata, prompt, weights, system)] * num_return_sequences)
        rows.extend([[weights[d] for d in metadata["dimensions"]]] * num_return_sequences)
    with lambdas_set(model, rows if metadata["condition_on_lambda"] else None):
        texts = _sample(model, tokenizer, ids, max_new_tokens=max_new_tokens, do_sample=do_sample,
                        temperature=temperature, top_p=top_p, seed=seed, **gen_kwargs)
    n = num_return_sequences
    grouped = [texts[i * n:(i + 1) * n] for i in range(len(lambda_list))]
    return grouped[0] if single else grouped
