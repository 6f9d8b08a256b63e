"""λ-mixed low-rank adapters: conditioning on λ in parameter space (``conditioning: lora``; docs/spec.md §1).

Every adapted linear layer ``W`` (all linear layers of the decoder by default; never the output head) gets one
low-rank delta per preference dimension, mixed by the λ of the sequence it is processing::

    y = W x + (α / r) · Σ_d λ_d · B_d A_d x          A_d: [r, in],  B_d: [out, r],  λ: [N, m] (one row per sequence)

Why: a small model may learn to ignore a λ line in its prompt (measured: the policy's log-probs did not move with λ
on a world nobody tuned for). Here λ gates the weights themselves: the gradient reaching ``B_d`` is proportional to
``λ_d``, so at λ = e_d the model *is* ``W + B_d A_d`` and what it learned for dimension d cannot be averaged away.
The idea is Panacea's (λ scales low-rank components; Zhong et al. 2024), in the mixture-of-adapters form that merges
into plain weights: for any fixed λ, ``W_λ = W + (α/r) Σ_d λ_d B_d A_d`` (:func:`merge_lambda`), a standard
checkpoint that any serving stack runs with no custom code.

Hand-written rather than peft: peft mixes adapters with one weight per *model* (``add_weighted_adapter``,
``set_adapter``), while λ-DPO trains every sequence of a batch under its own λ. The deltas run as forward hooks on
the base model's own ``nn.Linear`` modules, so the base model's parameters, names and checkpoint stay untouched;
the adapter parameters live in a submodule ``lambda_adapters`` of the model (the optimiser, DDP and ``.to()`` see
them) and are saved to ``lambda_adapters.safetensors`` next to the base weights.

``B_d`` starts at zero, so a fresh model equals its base (rewards start at 0, as with the text line after SFT).
λ is set with :func:`set_lambdas` before a forward and stays set (a gradient-checkpointed backward recomputes the
forward and must see the same λ); a forward without λ raises instead of silently using the base model.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from lambda_dpo.atomic import atomic_path

ADAPTERS_FILE = "lambda_adapters.safetensors"
ATTRIBUTE = "lambda_adapters"


class LambdaAdapters(nn.Module):
    """The m per-dimension low-rank deltas of every adapted linear layer of one model (see the module docstring).

    ``down[name]``: ``[m·r, in]`` (the stacked ``A_d``), ``up[name]``: ``[out, m·r]`` (the stacked ``B_d``), for the
    linear layer ``name`` of the base model (dots written as ``__``: module keys cannot hold dots).
    """

    def __init__(self, dimensions: Sequence[str], targets: Mapping[str, nn.Module], rank: int, alpha: float):
        super().__init__()
        if rank < 1:
            raise ValueError(f"conditioning_rank must be ≥ 1, got {rank}")
        self.dimensions, self.rank, self.alpha = list(dimensions), int(rank), float(alpha)
        self.scale = self.alpha / self.rank
        m = len(self.dimensions)
        self.down = nn.ParameterDict()
        self.up = nn.ParameterDict()
        for name, linear in targets.items():
            key = name.replace(".", "__")
            factory = {"device": linear.weight.device, "dtype": linear.weight.dtype}
            in_features, out_features = _features(linear)
            down = torch.empty(m * rank, in_features, **factory)
            nn.init.kaiming_uniform_(down, a=math.sqrt(5))  # peft's LoRA init of A
            self.down[key] = nn.Parameter(down)
            self.up[key] = nn.Parameter(torch.zeros(out_features, m * rank, **factory))
        self.target_names = list(targets)
        self.lambdas: torch.Tensor | None = None  # [N, m] or [1, m]; set by set_lambdas
        self._hooks: list[Any] = []

    def config(self) -> dict[str, Any]:
        """What `lambda_dpo.json` records to rebuild these adapters on load."""
        return {"rank": self.rank, "alpha": self.alpha, "target_modules": list(self.target_names)}

    def delta(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """``(α/r) Σ_d λ_d B_d A_d x`` for the layer ``name``; ``x``: ``[N, …, in]`` → ``[N, …, out]``."""
        if self.lambdas is None:
            raise RuntimeError(
                "this model is conditioned on λ by λ-adapters (conditioning: lora) and no λ was set for this forward: "
                "call lambda_dpo.lambda_adapters.set_lambdas(model, λ) first, or load it with "
                "lambda_dpo.generation.load_model / lambda_dpo.generate, which do"
            )
        key = name.replace(".", "__")
        lam = self.lambdas.to(device=x.device, dtype=x.dtype)
        if lam.shape[0] not in (1, x.shape[0]):
            if x.shape[0] % lam.shape[0]:
                raise RuntimeError(f"λ has {lam.shape[0]} rows but the batch has {x.shape[0]} sequences")
            lam = lam.repeat_interleave(x.shape[0] // lam.shape[0], dim=0)  # generate(num_return_sequences=n)
        gate = lam.repeat_interleave(self.rank, dim=1)  # [N, m·r]: λ_d for each of A_d's r rows
        gate = gate.reshape(gate.shape[0], *([1] * (x.dim() - 2)), gate.shape[1])
        hidden = torch.nn.functional.linear(x, self.down[key]) * gate
        return torch.nn.functional.linear(hidden, self.up[key]) * self.scale

    def attach(self, model: nn.Module) -> None:
        modules = dict(model.named_modules())
        for name in self.target_names:
            self._hooks.append(modules[name].register_forward_hook(_Hook(self, name)))

    def detach(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()


class _Hook:
    """Adds the λ-mixed delta of one layer to its output (a class, not a closure, so the model stays picklable)."""

    def __init__(self, adapters: LambdaAdapters, name: str):
        self.adapters, self.name = adapters, name

    def __call__(self, module, args, output):
        return output + self.adapters.delta(self.name, args[0])


def _is_linear(module: nn.Module) -> bool:
    """``nn.Linear``, or transformers' ``Conv1D`` (GPT-2's linear layers: weight stored ``[in, out]``)."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def _features(module: nn.Module) -> tuple[int, int]:
    """``(in, out)`` features of a linear layer of either layout."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    return module.weight.shape[0], module.weight.shape[1]


def default_targets(model: nn.Module, target_modules: Sequence[str] | None = None) -> dict[str, nn.Module]:
    """The linear layers to adapt: those whose name ends with one of ``target_modules`` (e.g. ``q_proj``), or by
    default every linear layer except the output head (its input is the final hidden state, shared by all λ)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    found = {}
    for name, module in model.named_modules():
        if not _is_linear(module) or module is head or name.startswith(ATTRIBUTE):
            continue
        if target_modules is None or any(name == t or name.endswith("." + t) for t in target_modules):
            found[name] = module
    if not found:
        raise ValueError(
            f"no linear layer matches conditioning_target_modules={list(target_modules or [])}: name the model's "
            "linear layers by their last part, e.g. [q_proj, v_proj], or leave it unset for every linear layer"
        )
    return found


def add_lambda_adapters(model: nn.Module, dimensions: Sequence[str], rank: int = 8, alpha: float | None = None,
                        target_modules: Sequence[str] | None = None) -> LambdaAdapters:
    """Give ``model`` λ-mixed adapters (zero deltas) and return them; they are ``model.lambda_adapters``."""
    if get_adapters(model) is not None:
        raise ValueError("the model already has λ-adapters")
    targets = default_targets(model, target_modules)
    adapters = LambdaAdapters(dimensions, targets, rank, alpha if alpha is not None else rank)
    model.add_module(ATTRIBUTE, adapters)
    adapters.attach(model)
    return adapters


def get_adapters(model: nn.Module) -> LambdaAdapters | None:
    """The λ-adapters of ``model`` (through DDP / accelerate / peft wrappers), or None."""
    seen = 0
    while seen < 8:
        adapters = model._modules.get(ATTRIBUTE) if isinstance(model, nn.Module) else None
        if isinstance(adapters, LambdaAdapters):
            return adapters
        inner = getattr(model, "module", None) or getattr(model, "base_model", None)
        if inner is None or inner is model:
            return None
        model, seen = inner, seen + 1
    return None


def as_lambda_rows(lambdas, dimensions: Sequence[str]) -> torch.Tensor:
    """λ as a float tensor ``[R, m]``: a mapping name → weight, a sequence in ``dimensions`` order, or rows."""
    if isinstance(lambdas, Mapping):
        lambdas = [[float(lambdas.get(d, 0.0)) for d in dimensions]]
    rows = torch.as_tensor(lambdas, dtype=torch.float32)
    rows = rows.reshape(1, -1) if rows.dim() == 1 else rows
    if rows.shape[-1] != len(dimensions):
        raise ValueError(f"λ has {rows.shape[-1]} weights per row; the model's dimensions are {list(dimensions)}")
    return rows


def set_lambdas(model: nn.Module, lambdas) -> None:
    """Set λ for the next forwards of ``model``: ``[m]`` or a mapping (every sequence), or ``[N, m]`` (per sequence).

    A no-op for a model without λ-adapters (a text-conditioned or plain model)."""
    adapters = get_adapters(model)
    if adapters is not None:
        adapters.lambdas = as_lambda_rows(lambdas, adapters.dimensions)


@contextlib.contextmanager
def lambdas_set(model: nn.Module, lambdas) -> Iterator[None]:
    """:func:`set_lambdas` for the forwards inside the block (evaluation and generation); restores the previous λ."""
    adapters = get_adapters(model)
    if adapters is None or lambdas is None:
        yield
        return
    previous = adapters.lambdas
    adapters.lambdas = as_lambda_rows(lambdas, adapters.dimensions)
    try:
        yield
    finally:
        adapters.lambdas = previous


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' tensors, keyed ``down.<layer>`` / ``up.<layer>``, on the CPU (what :func:`save_adapters` writes)."""
    adapters = get_adapters(model)
    return {k: v.detach().cpu().contiguous() for k, v in adapters.state_dict().items()}


def save_adapters(model: nn.Module, directory: str) -> str:
    """Write the adapters to ``directory/lambda_adapters.safetensors`` atomically; return the path."""
    from safetensors.torch import save_file

    path = os.path.join(directory, ADAPTERS_FILE)
    with atomic_path(path) as temporary:
        save_file(adapter_state(model), temporary, metadata={"format": "pt"})
    return path


def load_adapters(model: nn.Module, directory: str, dimensions: Sequence[str], config: Mapping[str, Any]) -> None:
    """Rebuild the adapters described by ``config`` (`lambda_dpo.json`'s ``lambda_adapters``) on ``model`` and load
    their weights from ``directory`` (safetensors: no code runs from the file)."""
    from safetensors.torch import load_file

    path = os.path.join(directory, ADAPTERS_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: {directory} was trained with conditioning: lora and its λ-adapters "
                                "are missing (copy the whole model directory)")
    adapters = get_adapters(model)
    if adapters is None:
        targets = [t.split(".")[-1] for t in config["target_modules"]]
        adapters = add_lambda_adapters(model, dimensions, rank=config["rank"], alpha=config["alpha"],
                                       target_modules=sorted(set(targets)))
    state = load_file(path)
    missing, unexpected = adapters.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not fit this model's λ-adapters (missing {list(missing)[:3]}, unexpected "
                         f"{list(unexpected)[:3]}): was the model directory assembled from different runs?")


def merge_lambda(model: nn.Module, lambdas) -> nn.Module:
    """Fold the adapters at one fixed λ into the base weights and remove them: ``W ← W + (α/r) Σ_d λ_d B_d A_d``.

    The result is a plain model (no hooks, no extra parameters) whose outputs equal the adapted model's at that λ:
    save it with ``save_pretrained`` and serve it anywhere. Modifies ``model`` in place and returns it."""
    adapters = get_adapters(model)
    if adapters is None:
        raise ValueError("the model has no λ-adapters to merge (it was not trained with conditioning: lora)")
    lam = as_lambda_rows(lambdas, adapters.dimensions)
    if lam.shape[0] != 1:
        raise ValueError("merge_lambda takes one λ")
    modules = dict(model.named_modules())
    gate = lam[0].repeat_interleave(adapters.rank)
    with torch.no_grad():
        for name in adapters.target_names:
            key = name.replace(".", "__")
            weight = modules[name].weight
            up, down = adapters.up[key].float(), adapters.down[key].float()
            delta = (up * gate.to(up.device)) @ down * adapters.scale  # [out, in]
            weight.add_((delta if isinstance(modules[name], nn.Linear) else delta.T).to(weight.dtype))
    adapters.detach()
    del model._modules[ATTRIBUTE]
    return model
