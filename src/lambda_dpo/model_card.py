"""The model card (`README.md`) written into every saved λ-DPO model directory.

It carries the Hugging Face front matter (``base_model``, ``library_name``, ``tags``, ``datasets`` when known) and
what a person needs to steer the model anywhere: the dimensions in order, how λ reaches the model (the exact system
line for ``conditioning: text``; the merge command for ``conditioning: lora``), three lines of ``transformers``, an
OpenAI-compatible server request (vLLM, TGI, …), the lambda-dpo commands, the training settings and the last
held-out metrics (ranking accuracy per dimension, λ-reliance).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from lambda_dpo.atomic import atomic_write
from lambda_dpo.conditioning import render_lambda

CARD_FILE = "README.md"
_SETTINGS_SHOWN = ("loss", "conditioning", "lambda_schedule", "lambda_schedule_kwargs", "beta", "tau", "tau_scale",
                   "logprob_reduction", "nll_weight", "reference", "use_lora", "max_length")


def _front_matter(base_model: str | None, dataset: str | None) -> list[str]:
    lines = ["---", "library_name: transformers", "tags:", "- lambda-dpo", "- dpo", "- multi-objective-alignment",
             "- steerable"]
    if base_model and not os.path.isabs(base_model) and not base_model.startswith("."):
        lines.append(f"base_model: {base_model}")  # only a hub name: a local path means nothing to the hub
    if dataset and not os.path.exists(dataset) and "/" in dataset and not dataset.startswith("."):
        lines += ["datasets:", f"- {dataset}"]
    return [*lines, "---", ""]


def render_card(metadata: Mapping[str, Any], metrics: Mapping[str, float] | None = None,
                model_path: str = "path/to/this/model") -> str:
    """The card's Markdown for a model directory's ``lambda_dpo.json`` ``metadata`` and its last eval ``metrics``."""
    dims: Sequence[str] = metadata["dimensions"]
    training = metadata.get("training") or {}
    conditioning = metadata.get("conditioning", "text")
    steerable = metadata.get("condition_on_lambda", True)
    example = [round(1.0 / len(dims), 2)] * len(dims)
    example[-1] = round(1.0 - sum(example[:-1]), 2)
    weights = ",".join(f"{d}={w:.2f}" for d, w in zip(dims, example))
    line = render_lambda(example, dims, metadata.get("conditioning_template", "Preference weights: {weights}"))
    out = _front_matter(training.get("model_name_or_path"), training.get("dataset"))
    out += [f"# {os.path.basename(os.path.abspath(model_path))}", "",
            "A causal language model aligned with several preference dimensions at once by lambda-dpo "
            "(λ-weighted listwise DPO). "
            + ("You **steer it at inference time** by choosing λ, a weight per dimension that sums to 1." if steerable
               else "It was trained as an unconditioned control: it does not read λ."), "",
            "## Dimensions (in this order)", "", *(f"{i + 1}. `{d}`" for i, d in enumerate(dims)), ""]
    if steerable and conditioning == "text":
        out += ["## How to steer it", "",
                "λ is one line at the start of the system message (any serving stack can do this). For "
                f"λ = ({', '.join(f'{d} {w:.2f}' for d, w in zip(dims, example))}):", "", "```text", line, "```", "",
                "With `transformers`:", "", "```python",
                "from transformers import pipeline",
                f'chat = pipeline("text-generation", model="{model_path}")',
                f'print(chat([{{"role": "system", "content": "{line}"}}, '
                '{"role": "user", "content": "How do I bake bread?"}])[0]["generated_text"][-1])', "```", "",
                "With an OpenAI-compatible server (vLLM: `vllm serve " + model_path + "`):", "", "```bash",
                "curl http://localhost:8000/v1/chat/completions -H 'Content-Type: application/json' -d '{",
                f'  "model": "{model_path}",',
                f'  "messages": [{{"role": "system", "content": "{line}"}},',
                '               {"role": "user", "content": "How do I bake bread?"}]}\'', "```", "",
                "Write every dimension with two decimals, in the order above; a system text of your own goes on the "
                "next line.", ""]
    elif steerable:
        out += ["## How to steer it", "",
                "λ reaches this model through λ-mixed adapters (`conditioning: lora`): each linear layer adds "
                "Σ_d λ_d B_d A_d x, stored in `lambda_adapters.safetensors`. `AutoModelForCausalLM` alone loads the "
                "base weights without them. Steer it with lambda-dpo, or merge one λ into plain weights for any "
                "server:", "", "```bash",
                f'lambda-dpo generate --model {model_path} --lambda {weights} "How do I bake bread?"',
                f"lambda-dpo export --model {model_path} --lambda {weights} --out {model_path}-fixed",
                f"vllm serve {model_path}-fixed      # a plain model: no λ line, no custom code", "```", "",
                "```python", "from lambda_dpo import generate",
                f'print(generate("{model_path}", "How do I bake bread?", "{weights}"))', "```", ""]
    out += ["Side by side, or interactively:", "", "```bash",
            f'lambda-dpo generate --model {model_path} --lambda {dims[0]}=1 --lambda {weights} "Hello"',
            f"lambda-dpo playground --model {model_path}     # a web page: sliders, presets, side by side",
            f"lambda-dpo eval --model {model_path} --data heldout.jsonl", "```", ""]
    shown = {k: training[k] for k in _SETTINGS_SHOWN if k in training}
    if shown:
        out += ["## Training", "", "| setting | value |", "|---|---|",
                *(f"| `{k}` | `{json.dumps(v) if not isinstance(v, str) else v}` |" for k, v in shown.items()), ""]
    if metrics:
        rows = [(d, metrics.get(f"eval_accuracy/{d}")) for d in dims]
        out += ["## Held-out metrics (last evaluation)", "", "| metric | value |", "|---|---|",
                *(f"| ranking accuracy, {d} (told λ = {d}) | {v:.3f} |" for d, v in rows if v is not None)]
        for key, label in (("eval_lambda_reliance", "λ-reliance (nats; ≈ 0 means λ is ignored)"),
                           ("eval_lambda_logp_shift", "mean |Δ log π| between one-hot λ (nats)")):
            if metrics.get(key) is not None:
                out.append(f"| {label} | {metrics[key]:.4f} |")
        out.append("")
    return "\n".join(out)


def write_card(output_dir: str, metadata: Mapping[str, Any], metrics: Mapping[str, float] | None = None,
               model_name: str | None = None) -> str:
    """Write ``output_dir/README.md`` atomically; return its path. ``model_name`` (e.g. the hub id) is what the
    examples load (default: ``output_dir``)."""
    path = os.path.join(output_dir, CARD_FILE)
    with atomic_write(path) as f:
        f.write(render_card(metadata, metrics, model_name or output_dir))
    return path
